"""The azure-batch backend across runs: pools kept for later runs, resuming after the client
died, and ``fanout clean``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from azure.batch import BatchClient
from azure.batch import models as m
from batch_emulator import IMAGE, Running, make_pool
from batch_runs import Received, counter_job, nothing_left, on_batch, start_run, starts
from conftest import load_record, run_fanout, wait_until, write_inputs, write_job

pytestmark = pytest.mark.azurite


def test_a_kept_pool_serves_the_next_run_and_clean_leaves_it(
    batch: Running,
    received: Received,
    batch_env: dict[str, str],
    azure_container: str,
    job_dir: Path,
) -> None:
    job_file = counter_job(job_dir, "kept", 2, pool_id="warm", keep_pool=True)
    (job_dir / "release").touch()
    first = on_batch(job_file, azure_container, batch_env, "--out", job_dir / "out1")
    assert first.returncode == 0, first.stderr + first.stdout
    assert received.count("Pools_CreatePool") == 1
    assert load_record(job_dir / "out1")["leftovers"] == ["pool warm (kept: keep_pool)"]
    second = on_batch(job_file, azure_container, batch_env, "--out", job_dir / "out2")
    assert second.returncode == 0, second.stderr + second.stdout
    assert received.count("Pools_CreatePool") == 1  # the second run reused it
    assert (job_dir / "out2" / "t1" / "t1.out").read_text() == "input 1"
    assert [pool.id for pool in batch.client().list_pools()] == ["warm"]

    listed = run_fanout(
        "clean", "--backend", "azure-batch", "--dry-run", cwd=job_dir, env=batch_env
    )
    assert listed.returncode == 0, listed.stderr
    assert "nothing to clean" in listed.stdout  # a kept pool is not a leftover
    everything = run_fanout(
        "clean", "--backend", "azure-batch", "--all", cwd=job_dir, env=batch_env
    )
    assert everything.returncode == 0, everything.stderr
    assert "deleted pool warm kept with keep_pool" in everything.stdout
    assert nothing_left(batch)


def test_clean_deletes_fanouts_leftovers_and_nothing_else(
    batch: Running, batch_env: dict[str, str], tmp_path: Path
) -> None:
    client = batch.client()
    make_pool(client, "theirs")
    mark = [m.BatchMetadataItem(name="fanout-run", value="20261125-000000-dead")]
    for job_id, metadata in (("left-behind", mark), ("their-job", None)):
        client.create_job(
            m.BatchJobCreateOptions(
                id=job_id, pool_info=m.BatchPoolInfo(pool_id="theirs"), metadata=metadata
            )
        )
    client.update_job(
        "left-behind", m.BatchJobUpdateOptions(all_tasks_complete_mode="terminatejob")
    )
    client.create_task("left-behind", m.BatchTaskCreateOptions(id="t", command_line="true"))
    wait_until(lambda: client.get_job("left-behind").state == "completed")

    dry = run_fanout("clean", "--backend", "azure-batch", "--dry-run", cwd=tmp_path, env=batch_env)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        "would delete job left-behind (completed, run 20261125-000000-dead)"
    ]
    done = run_fanout("clean", "--backend", "azure-batch", cwd=tmp_path, env=batch_env)
    assert done.returncode == 0, done.stderr
    assert sorted(job.id for job in client.list_jobs()) == ["their-job"]
    assert [pool.id for pool in client.list_pools()] == ["theirs"]


def test_clean_exits_1_when_something_could_not_be_deleted_and_deletes_the_rest(
    batch: Running, received: Received, batch_env: dict[str, str], tmp_path: Path
) -> None:
    client = batch.client()
    mark = [m.BatchMetadataItem(name="fanout-run", value="20261125-000000-dead")]
    client.create_pool(
        m.BatchPoolCreateOptions(
            id="left-pool", vm_size="standard_d2s_v3", virtual_machine_configuration=IMAGE,
            target_dedicated_nodes=1, metadata=mark,
        )
    )  # fmt: skip
    client.create_job(
        m.BatchJobCreateOptions(
            id="left-job", pool_info=m.BatchPoolInfo(pool_id="left-pool"), metadata=mark
        )
    )
    client.create_task("left-job", m.BatchTaskCreateOptions(id="t", command_line="true"))
    client.update_job("left-job", m.BatchJobUpdateOptions(all_tasks_complete_mode="terminatejob"))
    wait_until(lambda: client.get_job("left-job").state == "completed")
    wait_until(lambda: client.get_job("left-job").state == "completed")
    # Every delete of a job is carried out but never answered: the client cannot tell.
    batch.emulator.lost.lose("Jobs_DeleteJob", 100)

    done = run_fanout("clean", "--backend", "azure-batch", cwd=tmp_path, env=batch_env)
    assert done.returncode == 1, done.stderr + done.stdout
    job_line, pool_line = done.stdout.splitlines()
    assert job_line.startswith(
        "could not delete job left-job (completed, run 20261125-000000-dead):"
        " Batch could not be reached while deleting left-job"
    )
    assert pool_line == "deleted pool left-pool (run 20261125-000000-dead)"
    assert done.stderr.splitlines() == [
        "fanout: error: 1 of 2 could not be deleted; run fanout clean again later to retry"
    ]
    assert received.count("Pools_DeletePool") == 1


def test_ctrl_c_during_clean_says_what_it_means(
    batch: Running, batch_env: dict[str, str], tmp_path: Path
) -> None:
    client = batch.client()
    mark = [m.BatchMetadataItem(name="fanout-run", value="20261125-000000-dead")]
    make_pool(client, "theirs")
    client.create_job(
        m.BatchJobCreateOptions(
            id="left", pool_info=m.BatchPoolInfo(pool_id="theirs"), metadata=mark
        )
    )
    batch.emulator.account.terminate_job("left")
    wait_until(lambda: client.get_job("left").state == "completed")
    batch.emulator.lost.lose("Jobs_DeleteJob", 100)  # the delete hangs on in retries
    command = [sys.executable, "-m", "fanout", "clean", "--backend", "azure-batch"]
    clean = subprocess.Popen(
        command, cwd=tmp_path, env={**os.environ, **batch_env}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_until(lambda: any("DELETE /jobs/left" in line for line in batch.requests()))
    clean.send_signal(signal.SIGINT)
    _, stderr = clean.communicate(timeout=30)
    assert clean.returncode == 130
    assert stderr.splitlines() == [
        "fanout: interrupted; what is listed above was dealt with, run fanout clean again for"
        " the rest"
    ]


def test_resume_after_the_client_died_runs_no_task_twice(
    batch: Running,
    received: Received,
    batch_env: dict[str, str],
    azure_container: str,
    job_dir: Path,
) -> None:
    counter_job(job_dir, "survivor", 3, nodes=1, slots=3)
    run = start_run(job_dir, azure_container, batch_env)
    wait_until(lambda: len(starts(job_dir)) == 3)
    run.kill()  # no cleanup at all: the job and its auto-pool go on
    run.communicate(timeout=30)
    client = batch.client()
    (job,) = client.list_jobs()
    assert job.state == "active"

    (job_dir / "release").touch()
    resumed = run_fanout("run", "job.toml", "--backend", "azure-batch", "--resume",
                         "--storage", f"az://{azure_container}/runs", "--out", "out",
                         cwd=job_dir, env=batch_env)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert starts(job_dir) == {"t0": 1, "t1": 1, "t2": 1}  # reattached, nothing run again
    assert received.count("Tasks_CreateTaskCollection") == 1
    record = load_record(job_dir / "out")
    assert record["status"] == "finished"
    assert all(task["state"] == "succeeded" for task in record["tasks"])
    assert (job_dir / "out" / "t2" / "t2.out").read_text() == "input 2"
    assert record["job_ids"][0] == job.id and len(record["job_ids"]) == 2
    assert nothing_left(batch)


def test_resume_after_the_job_ended_collects_what_it_finished(
    batch: Running,
    received: Received,
    batch_env: dict[str, str],
    azure_container: str,
    job_dir: Path,
) -> None:
    counter_job(job_dir, "finisher", 2, nodes=1, slots=2)
    run = start_run(job_dir, azure_container, batch_env)
    client = batch.client()
    wait_until(lambda: len(starts(job_dir)) == 2 and _ends_by_itself(client))
    run.kill()
    run.communicate(timeout=30)
    (job_dir / "release").touch()
    (job,) = client.list_jobs()
    wait_until(lambda: client.get_job(job.id).state == "completed")  # terminatejob, by itself

    resumed = run_fanout("run", "job.toml", "--backend", "azure-batch", "--resume",
                         "--storage", f"az://{azure_container}/runs", "--out", "out",
                         cwd=job_dir, env=batch_env)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert starts(job_dir) == {"t0": 1, "t1": 1}
    assert received.count("Jobs_CreateJob") == 1  # nothing left to run: no new job
    assert (job_dir / "out" / "t0" / "t0.out").read_text() == "input 0"
    assert nothing_left(batch)


def _ends_by_itself(client: BatchClient) -> bool:
    """Whether the run's job is set to end once all its tasks have completed."""
    return any(job.all_tasks_complete_mode == "terminatejob" for job in client.list_jobs())


def mended_job(job_dir: Path) -> None:
    """Three tasks: ``ok`` succeeds at once; ``bad`` fails until the file ``fixed`` exists,
    then waits like ``slow`` for the file ``release``."""
    write_inputs(job_dir, {"ok.txt": "fine", "bad.txt": "broken", "slow.txt": "slow"})
    (job_dir / "started").mkdir()
    command = (
        'echo x >> "$STARTED/{task_id}";'
        ' if [ {task_id} = bad ] && [ ! -e "$FIXED" ]; then exit 5; fi;'
        ' if [ {task_id} != ok ]; then while [ ! -e "$RELEASE" ]; do sleep 0.1; done; fi;'
        " cp {input} {input_stem}.out"
    )
    write_job(
        job_dir,
        {
            "job": {
                "name": "mended",
                "inputs": ["*.txt"],
                "command": command,
                "outputs": ["*.out"],
                "env": {
                    "STARTED": str(job_dir / "started"),
                    "RELEASE": str(job_dir / "release"),
                    "FIXED": str(job_dir / "fixed"),
                },
            },
            "backends.azure-batch": {"nodes": 1, "slots": 3},
        },
    )


@pytest.mark.parametrize("deaths", [1, 2])
def test_resume_reruns_only_what_failed_while_the_client_was_away(
    batch: Running,
    received: Received,
    batch_env: dict[str, str],
    azure_container: str,
    job_dir: Path,
    deaths: int,
) -> None:
    """The first attempt dies with ok done, bad failed and slow running; bad is mended. With
    two deaths the second attempt dies too, slow still in the first job and bad in the
    second: the third must follow both."""
    mended_job(job_dir)
    run = start_run(job_dir, azure_container, batch_env)
    client = batch.client()
    wait_until(lambda: _ends_by_itself(client) and _completed(client) == 2)  # ok and bad
    run.kill()
    run.communicate(timeout=30)

    (job_dir / "fixed").touch()
    resumed = start_run(job_dir, azure_container, batch_env, "--resume")
    wait_until(lambda: starts(job_dir).get("bad") == 2)  # bad runs again, in a new job
    if deaths == 2:
        resumed.kill()
        resumed.communicate(timeout=30)
        resumed = start_run(job_dir, azure_container, batch_env, "--resume")
    (job_dir / "release").touch()
    stdout, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, stderr + stdout
    assert starts(job_dir) == {"ok": 1, "slow": 1, "bad": 2}  # only the failure ran again
    assert received.count("Jobs_CreateJob") == 2  # a last attempt with nothing to run adds none
    assert received.count("Tasks_DeleteTask") == 0
    record = load_record(job_dir / "out")
    assert all(task["state"] == "succeeded" for task in record["tasks"])
    assert len(record["job_ids"]) == 1 + deaths
    assert (job_dir / "out" / "bad" / "bad.out").read_text() == "broken"
    assert nothing_left(batch)


def _completed(client: BatchClient) -> int:
    return sum(
        client.get_job_task_counts(job.id).task_counts.completed for job in client.list_jobs()
    )


def test_a_kept_pool_gives_nodes_that_join_later_this_runs_urls(
    batch: Running,
    received: Received,
    batch_env: dict[str, str],
    azure_container: str,
    job_dir: Path,
) -> None:
    write_inputs(job_dir, {"a.txt": "alpha"})
    (job_dir / "tool.sh").write_text('tr a-z A-Z < "$1"\n')

    def write(budget: str, margin: str, nodes: int) -> Path:
        return write_job(
            job_dir,
            {
                "job": {
                    "name": "warmed",
                    "inputs": ["*.txt"],
                    "app": ["tool.sh"],
                    "setup": ["test -s tool.sh"],
                    "command": "sh $FANOUT_APP_DIR/tool.sh {input} > {input_stem}.out",
                    "outputs": ["*.out"],
                    "budget": budget,
                },
                "storage": {"expiry_margin": margin},
                "backends.azure-batch": {"pool_id": "warm", "keep_pool": True, "nodes": nodes},
            },
        )

    started = time.monotonic()
    first = on_batch(write("15s", "1s", 1), azure_container, batch_env, "--out", job_dir / "o1")
    assert first.returncode == 0, first.stderr + first.stdout
    time.sleep(max(0.0, started + 17 - time.monotonic()))  # the first run's URLs have expired

    second = on_batch(write("1h", "1h", 2), azure_container, batch_env, "--out", job_dir / "o2")
    assert second.returncode == 0, second.stderr + second.stdout
    (update,) = received.bodies("Pools_UpdatePool")
    assert all("sig=" in file["httpUrl"] for file in update["startTask"]["resourceFiles"])
    client = batch.client()
    # The node the second run added downloads the app with the second run's URLs.
    wait_until(lambda: sorted(n.state for n in client.list_nodes("warm")) == ["idle", "idle"])
    assert "setup failed" not in second.stdout + second.stderr
