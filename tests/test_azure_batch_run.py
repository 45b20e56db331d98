"""The azure-batch backend end to end: fanout as a subprocess, the Batch emulator in this
process (so that the test sees every request it received), the data in Azurite."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
from azurite import Azurite
from batch_emulator import Running, make_pool
from batch_runs import Received, counter_job, nothing_left, on_batch, start_run, starts
from conftest import REPO, load_record, run_fanout, wait_until, write_inputs, write_job
from fanout_azure.batch_tasks import split_container_url
from fanout_azure.emulator.command import DEFAULT_KEY

pytestmark = pytest.mark.azurite

EXAMPLE = REPO / "examples" / "topwords" / "job.toml"
FOOTERS = ("Job:", "Node:", "Pool:")


def outputs(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): "\n".join(
            line for line in path.read_text().splitlines() if not line.startswith(FOOTERS)
        )
        for path in sorted(directory.rglob("*_OUTPUT.txt"))
    }


def mentions_sas(value: Any) -> bool:
    return "sig=" in json.dumps(value)


def test_split_container_url() -> None:
    assert split_container_url("https://acct.blob.core.windows.net/c/a/b?sv=1&sig=x") == (
        "https://acct.blob.core.windows.net/c?sv=1&sig=x",
        "a/b",
    )
    assert split_container_url("http://127.0.0.1:10000/devstoreaccount1/c/a%20b/?sig=x") == (
        "http://127.0.0.1:10000/devstoreaccount1/c?sig=x",
        "a b",
    )


def test_example_gives_the_local_outputs_with_no_secret_in_any_task(
    batch: Running,
    received: Received,
    batch_env: dict[str, str],
    azure_container: str,
    tmp_path: Path,
) -> None:
    local = run_fanout(
        "run", EXAMPLE, "--storage", tmp_path / "store", "--out", tmp_path / "local",
        cwd=tmp_path, env=batch_env,
    )  # fmt: skip
    assert local.returncode == 0, local.stderr + local.stdout
    result = on_batch(EXAMPLE, azure_container, batch_env, "--out", tmp_path / "batch")
    assert result.returncode == 0, result.stderr + result.stdout
    expected = outputs(tmp_path / "local")
    assert len(expected) == 3
    assert outputs(tmp_path / "batch") == expected

    assert "nodes: 1 of 1 ready" in result.stdout  # progress while nodes come up
    record = load_record(tmp_path / "batch")
    assert record["backend"] == "azure-batch"
    assert record["leftovers"] == []
    assert all(task["state"] == "succeeded" and task["node"] for task in record["tasks"])

    (job,) = received.bodies("Jobs_CreateJob")
    assert job["id"] == record["job_ids"][0]
    # A lease the client renews while it adds tasks: a dead client's job ends within it.
    assert job["constraints"]["maxWallClockTime"] == "PT10M00S"
    assert {"name": "fanout-run", "value": record["run_id"]} in job["metadata"]
    auto_pool = job["poolInfo"]["autoPoolSpecification"]
    assert auto_pool["poolLifetimeOption"] == "job"
    start_task = auto_pool["pool"]["startTask"]
    assert start_task["waitForSuccess"] is True
    assert all(mentions_sas(file) for file in start_task["resourceFiles"])
    assert not mentions_sas(start_task["commandLine"])
    # The job ends by itself once its tasks are in, even if fanout dies now; the default
    # budget is its deadline.
    (update,) = received.bodies("Jobs_UpdateJob")
    assert update == {
        "onAllTasksComplete": "terminatejob",
        "constraints": {"maxWallClockTime": "P1D"},
    }
    assert received.operations()[-1][0] != "Tasks_CreateTaskCollection"

    tasks = [
        task for body in received.bodies("Tasks_CreateTaskCollection") for task in body["value"]
    ]
    assert len(tasks) == 3
    for task in tasks:
        assert task["commandLine"].startswith("/bin/sh -c ")
        assert not mentions_sas(task["commandLine"])
        assert not mentions_sas(task.get("environmentSettings", []))
        assert all(mentions_sas(file) for file in task["resourceFiles"])
        assert task["constraints"]["maxTaskRetryCount"] == 1
        assert task["constraints"]["maxWallClockTime"] in ("PT2M", "PT02M00S")  # the SDK's way

    # The account key never travels; SharedKey sends a signature made with it.
    assert DEFAULT_KEY not in json.dumps(received.requests, default=str)
    assert nothing_left(batch)


def test_250_tasks_cost_few_requests(
    batch: Running, received: Received, batch_env: dict[str, str], azure_container: str
) -> None:
    job_dir = Path(batch_env["FANOUT_LOCAL_ROOT"]).parent / "many"
    write_inputs(job_dir, {f"in{n:03}.txt": str(n) for n in range(250)})
    write_job(
        job_dir,
        {
            "job": {
                "name": "many",
                "inputs": ["*.txt"],
                "command": "cp {input} {input_stem}.out",
                "outputs": ["*.out"],
            },
            "backends.azure-batch": {"nodes": 2, "slots": 8},
        },
    )
    result = on_batch(job_dir / "job.toml", azure_container, batch_env, "--out", job_dir / "out")
    assert result.returncode == 0, result.stderr + result.stdout
    assert len(list((job_dir / "out").rglob("*.out"))) == 250

    assert received.count("Tasks_CreateTaskCollection") <= 3
    polls = received.count("Jobs_GetJobTaskCounts")
    listings = received.count("Tasks_ListTasks")
    assert listings <= 2 * polls + 2, (listings, polls)  # listing is per poll, not per task
    assert received.count("Tasks_GetTask") == 0
    gone = [a for a in batch.answers if a[0] == "Pools_GetPool" and a[2] == 404]
    assert len(gone) <= 1  # a pool that went with its job is not asked for again
    assert nothing_left(batch)


def test_a_setup_failure_is_reported_with_its_stderr(
    batch: Running, batch_env: dict[str, str], azure_container: str, job_dir: Path
) -> None:
    write_inputs(job_dir, {"a.txt": "a"})
    write_job(
        job_dir,
        {
            "job": {
                "name": "badsetup",
                "inputs": ["*.txt"],
                "setup": ["echo 'no such package: frobnicate' >&2", "exit 3"],
                "command": "cp {input} out.txt",
                "outputs": ["out.txt"],
            }
        },
    )
    result = on_batch(job_dir / "job.toml", azure_container, batch_env, "--out", job_dir / "out")
    assert result.returncode == 1, result.stderr + result.stdout
    (task,) = load_record(job_dir / "out")["tasks"]
    assert task["state"] == "failed"
    assert "setup failed" in task["error"] and "exit code 3" in task["error"]
    assert "no such package: frobnicate" in task["error"]
    assert "Traceback" not in result.stderr
    assert nothing_left(batch)


def test_a_failing_task_is_retried_then_reported(
    batch: Running, batch_env: dict[str, str], azure_container: str, job_dir: Path
) -> None:
    write_inputs(job_dir, {"good.txt": "fine", "bad.txt": "broken"})
    write_job(
        job_dir,
        {
            "job": {
                "name": "flaky",
                "inputs": ["*.txt"],
                "command": (
                    "if grep -q broken {input}; then echo 'cannot parse {input_name}' >&2;"
                    " exit 4; fi; cp {input} {input_stem}.out"
                ),
                "outputs": ["*.out"],
                "retries": 2,
            }
        },
    )
    result = on_batch(job_dir / "job.toml", azure_container, batch_env, "--out", job_dir / "out")
    assert result.returncode == 1, result.stderr + result.stdout
    tasks = {task["id"]: task for task in load_record(job_dir / "out")["tasks"]}
    assert tasks["good"]["state"] == "succeeded" and tasks["good"]["attempts"] == 1
    bad = tasks["bad"]
    assert bad["state"] == "failed"
    assert bad["attempts"] == 3
    assert bad["exit_code"] == 4
    assert "FailureExitCode" in bad["error"]
    assert "cannot parse bad.txt" in bad["stderr_tail"], result.stderr
    assert "bad" in result.stdout
    assert nothing_left(batch)


def test_ctrl_c_leaves_nothing_the_run_created(
    batch: Running, batch_env: dict[str, str], azure_container: str, job_dir: Path
) -> None:
    client = batch.client()
    make_pool(client, "someone-elses")
    write_inputs(job_dir, {f"t{n}.txt": str(n) for n in range(4)})
    write_job(
        job_dir,
        {
            "job": {
                "name": "interrupted",
                "inputs": ["*.txt"],
                "command": "sleep 300",
                "outputs": ["*.out"],
            }
        },
    )
    run = start_run(job_dir, azure_container, batch_env)
    wait_until(lambda: _running_tasks(batch) >= 1)
    run.send_signal(signal.SIGINT)
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 130, stderr + stdout
    assert "Traceback" not in stderr
    assert [job.id for job in client.list_jobs()] == []
    pools = {pool.id: pool.state for pool in client.list_pools()}
    assert pools.pop("someone-elses") == "active"  # never anything it did not create
    assert all(state == "deleting" for state in pools.values())
    record = load_record(job_dir / "out")
    assert record["status"] == "interrupted"
    assert record["leftovers"] == []
    hint = (
        f"resume it with: fanout run {job_dir / 'job.toml'} --backend azure-batch"
        f" --storage az://{azure_container}/runs --resume {record['run_id']}"
    )
    assert hint in stdout


def _running_tasks(batch: Running) -> int:
    client = batch.client()
    jobs = list(client.list_jobs())
    return sum(client.get_job_task_counts(job.id).task_counts.running for job in jobs)


def test_reusing_a_pool_creates_none(
    batch: Running,
    received: Received,
    batch_env: dict[str, str],
    azure_container: str,
    job_dir: Path,
) -> None:
    make_pool(batch.client(), "shared", nodes=1, slots=2)
    received.requests.clear()
    write_inputs(job_dir, {"a.txt": "alpha", "b.txt": "beta"})
    app = job_dir / "tool.sh"
    app.write_text('tr a-z A-Z < "$1"\n')
    write_job(
        job_dir,
        {
            "job": {
                "name": "reuse",
                "inputs": ["*.txt"],
                "app": ["tool.sh"],
                "command": "sh $FANOUT_APP_DIR/tool.sh {input} > {input_stem}.out",
                "outputs": ["*.out"],
            },
            "backends.azure-batch": {"pool_id": "shared"},
        },
    )
    result = on_batch(job_dir / "job.toml", azure_container, batch_env, "--out", job_dir / "out")
    assert result.returncode == 0, result.stderr + result.stdout
    assert (job_dir / "out" / "a" / "a.out").read_text() == "ALPHA"
    assert received.count("Pools_CreatePool") == 0
    (job,) = received.bodies("Jobs_CreateJob")
    assert job["poolInfo"] == {"poolId": "shared"}
    assert [pool.id for pool in batch.client().list_pools()] == ["shared"]
    assert list(batch.client().list_jobs()) == []


def test_a_wrong_key_exits_2_having_created_nothing(
    batch: Running,
    received: Received,
    batch_env: dict[str, str],
    azure_container: str,
    azurite: Azurite,
    tmp_path: Path,
) -> None:
    env = {**batch_env, "AZURE_BATCH_ACCESS_KEY": "d3JvbmcK" + DEFAULT_KEY[8:]}
    result = on_batch(EXAMPLE, azure_container, env, "--out", tmp_path / "out")
    assert result.returncode == 2, result.stderr + result.stdout
    assert result.stderr.count("\n") == 1 and "authentication failed" in result.stderr
    assert all(name.endswith(("_GetPool", "_ListPools")) for name, *_ in received.requests)
    with azurite.blob_service() as service:
        assert list(service.get_container_client(azure_container).list_blobs()) == []
    assert not (tmp_path / "out").exists()


def test_a_throttled_service_slows_the_run_down_but_does_not_fail_it(
    batch: Running,
    received: Received,
    batch_env: dict[str, str],
    azure_container: str,
    job_dir: Path,
) -> None:
    write_inputs(job_dir, {f"in{n}.txt": str(n) for n in range(5)})
    write_job(
        job_dir,
        {
            "job": {
                "name": "throttled",
                "inputs": ["*.txt"],
                "command": "cp {input} {input_stem}.out",
                "outputs": ["*.out"],
                "budget": "3h",
            }
        },
    )
    batch.emulator.busy.every = 4  # every 4th request: 503 ServerBusy, Retry-After: 1
    result = on_batch(job_dir / "job.toml", azure_container, batch_env, "--out", job_dir / "out")
    batch.emulator.busy.every = 0
    assert result.returncode == 0, result.stderr + result.stdout
    assert len(list((job_dir / "out").rglob("*.out"))) == 5
    assert any(line.endswith(" 503") for line in batch.requests())
    (update,) = received.bodies("Jobs_UpdateJob")
    assert update["constraints"]["maxWallClockTime"] in ("PT3H", "PT03H00M00S")  # the budget
    assert nothing_left(batch)


def test_a_reused_pool_grows_to_the_nodes_asked_for(
    batch: Running, batch_env: dict[str, str], azure_container: str, job_dir: Path
) -> None:
    make_pool(batch.client(), "small", nodes=1)
    write_inputs(job_dir, {"a.txt": "a"})
    write_job(
        job_dir,
        {
            "job": {
                "name": "grow",
                "inputs": ["*.txt"],
                "command": "cp {input} a.out",
                "outputs": ["a.out"],
            },
            "backends.azure-batch": {"pool_id": "small", "nodes": 3},
        },
    )
    result = on_batch(job_dir / "job.toml", azure_container, batch_env, "--out", job_dir / "out")
    assert result.returncode == 0, result.stderr + result.stdout
    assert batch.client().get_pool("small").target_dedicated_nodes == 3


def test_tasks_a_job_ended_before_running_are_reported_failed(
    batch: Running, batch_env: dict[str, str], azure_container: str, job_dir: Path
) -> None:
    write_inputs(job_dir, {f"t{n}.txt": str(n) for n in range(3)})
    write_job(
        job_dir,
        {
            "job": {
                "name": "overrun",
                "inputs": ["*.txt"],
                "command": "sleep 60",
                "outputs": ["*.out"],
                "budget": "4s",  # the job's maxWallClockTime: one slot cannot run all three
            }
        },
    )
    result = on_batch(job_dir / "job.toml", azure_container, batch_env, "--out", job_dir / "out")
    assert result.returncode == 1, result.stderr + result.stdout
    tasks = load_record(job_dir / "out")["tasks"]
    assert all(task["state"] == "failed" for task in tasks)
    never_ran = [task for task in tasks if "ended (MaxWallClockTimeExpiry)" in task["error"]]
    assert len(never_ran) >= 2, tasks
    assert "Traceback" not in result.stderr
    assert nothing_left(batch)


def test_a_pool_deleted_under_the_run_stops_it_in_one_line(
    batch: Running, batch_env: dict[str, str], azure_container: str, job_dir: Path
) -> None:
    client = batch.client()
    make_pool(client, "borrowed")
    write_inputs(job_dir, {"a.txt": "a"})
    write_job(
        job_dir,
        {
            "job": {
                "name": "orphaned",
                "inputs": ["*.txt"],
                "command": "sleep 60",
                "outputs": ["*.out"],
            },
            "backends.azure-batch": {"pool_id": "borrowed"},
        },
    )
    run = start_run(job_dir, azure_container, batch_env)
    wait_until(lambda: _running_tasks(batch) >= 1)
    client.begin_delete_pool("borrowed", polling_interval=1)
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 1, stderr + stdout  # it started: not a refusal (2)
    assert stderr.strip().splitlines() == [
        "fanout: error: pool 'borrowed' was deleted while the run was using it"
    ]
    assert "resume it with" in stdout
    assert list(client.list_jobs()) == []  # the run's job went too


def test_a_short_outage_of_the_service_does_not_stop_a_run(
    batch: Running, batch_env: dict[str, str], azure_container: str, job_dir: Path
) -> None:
    counter_job(job_dir, "outage", 2, slots=2)
    run = start_run(job_dir, azure_container, batch_env)
    wait_until(lambda: _running_tasks(batch) == 2)
    # Longer than the SDK's own retries (three, a second apart): a poll fails, and the next.
    batch.emulator.busy.refuse_for(8)
    (job_dir / "release").touch()
    stdout, stderr = run.communicate(timeout=90)
    assert run.returncode == 0, stderr + stdout
    assert "ServerBusy" in stderr and "asking again" in stderr
    assert (job_dir / "out" / "t1" / "t1.out").read_text() == "input 1"
    assert nothing_left(batch)


def test_tasks_whose_submission_got_no_answer_are_added_once(
    batch: Running,
    received: Received,
    batch_env: dict[str, str],
    azure_container: str,
    job_dir: Path,
) -> None:
    counter_job(job_dir, "unanswered", 5)
    (job_dir / "release").touch()
    batch.emulator.lost.lose("Tasks_CreateTaskCollection")  # carried out, answer lost
    result = on_batch(job_dir / "job.toml", azure_container, batch_env, "--out", job_dir / "out")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "adding them again" in result.stderr
    assert received.count("Tasks_CreateTaskCollection") == 2
    assert starts(job_dir) == {f"t{n}": 1 for n in range(5)}  # none was added twice
    assert nothing_left(batch)


def test_an_input_name_with_a_line_break_is_refused_before_anything_is_created(
    batch: Running,
    received: Received,
    batch_env: dict[str, str],
    azure_container: str,
    azurite: Azurite,
    job_dir: Path,
) -> None:
    # Azurite would take the blob, but Azure Blob Storage refuses control characters in names.
    write_inputs(job_dir, {"fine.txt": "a", "two\nlines.txt": "b"})
    write_job(
        job_dir,
        {
            "job": {
                "name": "linebreak",
                "inputs": ["*.txt"],
                "command": "cp {input} {input_stem}.out",
                "outputs": ["*.out"],
            }
        },
    )
    result = on_batch(job_dir / "job.toml", azure_container, batch_env, "--out", job_dir / "out")
    assert result.returncode == 2, result.stderr + result.stdout
    assert result.stderr.splitlines() == [
        f"fanout: error: {job_dir / 'job.toml'}: [job] inputs: '{job_dir}/two\\nlines.txt':"
        " a file name may not hold a control character (here U+000A), which Azure Blob"
        " Storage refuses; rename the file"
    ]
    assert received.requests == []
    with azurite.blob_service() as service:
        assert list(service.get_container_client(azure_container).list_blobs()) == []
    assert not (job_dir / "out").exists()


def test_a_storage_batch_nodes_cannot_reach_is_refused_before_anything_is_staged(
    batch: Running, received: Received, batch_env: dict[str, str], job_dir: Path, tmp_path: Path
) -> None:
    write_inputs(job_dir, {"a.txt": "a"})
    write_job(
        job_dir,
        {"job": {"name": "local-store", "inputs": ["*.txt"], "command": "cp {input} a.out"}},
    )
    store = tmp_path / "store"
    result = run_fanout("run", "job.toml", "--backend", "azure-batch", "--storage", store,
                        "--out", "out", cwd=job_dir, env=batch_env)  # fmt: skip
    assert result.returncode == 2, result.stderr + result.stdout
    assert result.stderr.splitlines() == [
        f"fanout: error: backend 'azure-batch' cannot use storage file://{store}: Batch nodes"
        " reach storage only through Azure Blob SAS URLs; use --storage az://CONTAINER/prefix"
    ]
    assert received.requests == []  # no preflight even, let alone a job
    assert not store.exists()
    assert not (job_dir / "out").exists()
