"""azure-batch when the client dies or its answers are lost: nothing left billing, nothing lost.

The client is killed (``kill -9``, no cleanup at all) at chosen moments, found by holding one
request of the emulator until it is dead; then the test waits, with the client never restarted,
for the service to remove the nodes by itself.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from batch_emulator import Running
from batch_runs import Received, counter_job, nothing_left, on_batch, start_run, starts
from conftest import run_fanout, wait_until, write_inputs, write_job
from fanout_azure.emulator.errors import server_busy

pytestmark = pytest.mark.azurite

LEASE_S = 3


@contextmanager
def held(
    batch: Running, operation: str, *, nth: int = 1, carried_out: bool, body_has: str = ""
) -> Iterator[threading.Event]:
    """Hold the ``nth`` request of ``operation`` whose body names ``body_has`` (after carrying
    it out, or before) until the block ends; it is then answered 503 unexecuted, or not at all
    if carried out. Yields an event set once the request is held."""
    holding, release = threading.Event(), threading.Event()
    handler = batch.emulator.operations[operation]
    calls = 0

    def hold(request: Any) -> Any:
        nonlocal calls
        if body_has not in json.dumps(request.body):
            return handler(request)
        calls += 1
        if calls != nth:
            return handler(request)
        if carried_out:
            handler(request)
        holding.set()
        release.wait(timeout=120)
        raise server_busy()

    batch.emulator.operations[operation] = hold
    try:
        yield holding
    finally:
        release.set()
        batch.emulator.operations[operation] = handler


def quick_job(job_dir: Path, name: str, count: int, **settings: object) -> Path:
    write_inputs(job_dir, {f"t{n}.txt": f"input {n}" for n in range(count)})
    return write_job(
        job_dir,
        {
            "job": {
                "name": name,
                "inputs": ["*.txt"],
                "command": "cp {input} {input_stem}.out",
                "outputs": ["*.out"],
            },
            "backends.azure-batch": {"slots": 4, **settings},
        },
    )


def no_pool(batch: Running) -> bool:
    return all(pool.state == "deleting" for pool in batch.client().list_pools())


MOMENTS: dict[str, tuple[str, int, bool, str]] = {
    "creating the job": ("Jobs_CreateJob", 1, True, ""),
    "between two chunks of tasks": ("Tasks_CreateTaskCollection", 2, False, ""),
    "renewing the job's lease": ("Jobs_UpdateJob", 1, False, "maxWallClockTime"),
    "before the job is set to end with its tasks": (
        "Jobs_UpdateJob",
        1,
        False,
        "onAllTasksComplete",
    ),
}


@pytest.mark.parametrize("moment", MOMENTS)
def test_a_client_killed_while_it_adds_tasks_leaves_nothing_billing(
    moment: str, batch: Running, batch_env: dict[str, str], azure_container: str, job_dir: Path
) -> None:
    operation, nth, carried_out, body_has = MOMENTS[moment]
    quick_job(job_dir, "dead", 150)  # two task collections: 100 and 50
    env = {**batch_env, "FANOUT_AZURE_BATCH_SUBMIT_LEASE": f"{LEASE_S}s"}
    hold = held(batch, operation, nth=nth, carried_out=carried_out, body_has=body_has)
    with hold as holding:
        run = start_run(job_dir, azure_container, env)
        assert holding.wait(timeout=60), run.communicate(timeout=5)
        run.kill()
        run.communicate(timeout=30)
    # The service ends the job at its lease, and its auto-pool with it: no client needed.
    wait_until(lambda: no_pool(batch), timeout=60)
    (job,) = batch.client().list_jobs()
    assert job.state == "completed"

    cleaned = run_fanout("clean", "--backend", "azure-batch", cwd=job_dir, env=batch_env)
    assert cleaned.returncode == 0, cleaned.stderr
    assert f"deleted job {job.id}" in cleaned.stdout
    wait_until(lambda: nothing_left(batch), timeout=30)


def test_a_client_killed_while_it_follows_the_tasks_leaves_a_job_that_ends_with_them(
    batch: Running, batch_env: dict[str, str], azure_container: str, job_dir: Path
) -> None:
    counter_job(job_dir, "following", 2, slots=2)
    run = start_run(job_dir, azure_container, batch_env)  # the default lease: 10 minutes
    wait_until(lambda: len(starts(job_dir)) == 2)
    # Once the job is set to end with its tasks (the request log shows it), it is followed.
    wait_until(lambda: any(line.startswith("PATCH /jobs/") for line in batch.requests()))
    run.kill()
    run.communicate(timeout=30)
    (job_dir / "release").touch()
    wait_until(lambda: no_pool(batch), timeout=60)  # as the last task ends, not at a deadline
    (job,) = batch.client().list_jobs()
    assert job.state == "completed"
    assert job.execution_info.termination_reason == "AllTasksComplete"


LOST: dict[str, tuple[str, dict[str, object]]] = {
    "the job's creation": ("Jobs_CreateJob", {}),
    "a task collection": ("Tasks_CreateTaskCollection", {}),
    "the update that ends the job with its tasks": ("Jobs_UpdateJob", {}),
    "a kept pool's creation": ("Pools_CreatePool", {"pool_id": "warm", "keep_pool": True}),
}


@pytest.mark.parametrize("request_", LOST)
def test_a_lost_answer_is_success(
    request_: str,
    batch: Running,
    received: Received,
    batch_env: dict[str, str],
    azure_container: str,
    job_dir: Path,
) -> None:
    """Carried out, never answered: sent again, the service's "already done" is success."""
    operation, settings = LOST[request_]
    quick_job(job_dir, "lost", 3, **settings)
    batch.emulator.lost.lose(operation)
    result = on_batch(job_dir / "job.toml", azure_container, batch_env, "--out", job_dir / "out")
    assert result.returncode == 0, result.stderr + result.stdout
    assert received.count(operation) == 2
    assert sorted(p.name for p in (job_dir / "out").rglob("*.out")) == [
        "t0.out",
        "t1.out",
        "t2.out",
    ]
    assert not list(batch.client().list_jobs())


def test_a_job_that_ends_before_its_last_tasks_are_in_is_resumable(
    batch: Running, batch_env: dict[str, str], azure_container: str, job_dir: Path
) -> None:
    """Someone ends the job while the client adds tasks: the rest are reported not run, and
    ``--resume`` runs them in a new job."""
    quick_job(job_dir, "cut", 150)
    job_ids: list[str] = []

    def end_job_first(handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def add(request: Any) -> Any:
            if not job_ids:
                job_ids.append(request.path.split("/")[2])
                batch.emulator.account.terminate_job(job_ids[0])
            return handler(request)

        return add

    operations = batch.emulator.operations
    original = operations["Tasks_CreateTaskCollection"]
    operations["Tasks_CreateTaskCollection"] = end_job_first(original)
    result = on_batch(job_dir / "job.toml", azure_container, batch_env, "--out", job_dir / "out")
    operations["Tasks_CreateTaskCollection"] = original
    assert result.returncode == 1, result.stderr + result.stdout
    assert "ended before all its tasks were in" in result.stderr
    assert "Traceback" not in result.stderr
    assert "--resume" in result.stdout

    resumed = on_batch(
        job_dir / "job.toml", azure_container, batch_env, "--out", job_dir / "out", "--resume"
    )
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert len(list((job_dir / "out").rglob("*.out"))) == 150
    assert nothing_left(batch)


def test_resume_stops_an_adopted_task_whose_input_changed(
    batch: Running,
    received: Received,
    batch_env: dict[str, str],
    azure_container: str,
    job_dir: Path,
) -> None:
    counter_job(job_dir, "edited", 2, slots=2)
    run = start_run(job_dir, azure_container, batch_env)
    wait_until(lambda: len(starts(job_dir)) == 2)
    wait_until(lambda: any(line.startswith("PATCH /jobs/") for line in batch.requests()))
    run.kill()
    run.communicate(timeout=30)

    (job_dir / "t1.txt").write_text("edited 1")  # t1 still runs in the first job, on the old
    resumed = start_run(job_dir, azure_container, batch_env, "--resume")
    wait_until(lambda: starts(job_dir).get("t1") == 2)  # stopped there, run again here
    (job_dir / "release").touch()
    stdout, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, stderr + stdout
    assert "t1.txt changed since run" in stderr
    assert received.count("Tasks_TerminateTask") == 1
    assert starts(job_dir) == {"t0": 1, "t1": 2}  # t0 adopted, not run again
    assert (job_dir / "out" / "t1" / "t1.out").read_text() == "edited 1"
    assert (job_dir / "out" / "t0" / "t0.out").read_text() == "input 0"
    assert nothing_left(batch)


def test_a_run_whose_budget_ran_out_is_finished_by_resume(
    batch: Running, batch_env: dict[str, str], azure_container: str, job_dir: Path
) -> None:
    write_inputs(job_dir, {f"t{n}.txt": str(n) for n in range(3)})
    quick = job_dir / "quick"
    write_job(
        job_dir,
        {
            "job": {
                "name": "overrun",
                "inputs": ["*.txt"],
                "command": f"[ -e {quick} ] || sleep 60; cp {{input}} {{input_stem}}.out",
                "outputs": ["*.out"],
                "budget": "4s",
            }
        },
    )
    first = on_batch(job_dir / "job.toml", azure_container, batch_env, "--out", job_dir / "out")
    assert first.returncode == 1, first.stderr + first.stdout
    assert "run what did not succeed with" in first.stdout

    quick.touch()
    resumed = on_batch(
        job_dir / "job.toml", azure_container, batch_env, "--out", job_dir / "out", "--resume"
    )
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert sorted(p.read_text() for p in (job_dir / "out").rglob("*.out")) == ["0", "1", "2"]
    assert nothing_left(batch)
