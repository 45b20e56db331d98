"""Pools, jobs and tasks through their lives, with the official SDK: a job's wall clock, resizing
both ways, filtered listings, a pool deleted under a running task, and the limits of a request."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from azure.batch import BatchClient
from azure.batch import models as m
from azure.batch.models._models import BatchJobTerminateOptions
from azure.core.exceptions import HttpResponseError
from batch_emulator import IMAGE, Running, make_pool, pool_exists
from conftest import process_alive, wait_until

# Not exported from azure.batch.models; azure-batch 15.1 cannot terminate a job without it.
TERMINATE = BatchJobTerminateOptions(termination_reason="UserTerminate")
IGNORES_SIGTERM = "trap '' TERM; "
"""A shell prefix whose ``sleep`` outlives SIGTERM: it holds its pool in ``deleting`` for the
emulator's grace period before SIGKILL."""


def make_job(
    client: BatchClient,
    job_id: str,
    pool_id: str,
    constraints: m.BatchJobConstraints | None = None,
) -> None:
    pool_info = m.BatchPoolInfo(pool_id=pool_id)
    client.create_job(
        m.BatchJobCreateOptions(id=job_id, pool_info=pool_info, constraints=constraints)
    )


def run_sleeper(client: BatchClient, job_id: str, pid_file: Path, prefix: str = "") -> int:
    """Add task ``sleeper``, a ``sleep 300``; once it runs, the pid of its process."""
    command = f'/bin/sh -c "{prefix}echo $$ > {pid_file}; exec sleep 300"'
    client.create_task(job_id, m.BatchTaskCreateOptions(id="sleeper", command_line=command))
    wait_until(lambda: pid_file.is_file() and pid_file.read_text().strip().isdigit())
    return int(pid_file.read_text())


def refused(call: Callable[[], object]) -> tuple[int | None, str | None]:
    """The status and Batch error code ``call`` is refused with."""
    with pytest.raises(HttpResponseError) as caught:
        call()
    return caught.value.status_code, caught.value.error.code if caught.value.error else None


def execution(
    client: BatchClient, job_id: str, task_id: str
) -> tuple[str | None, m.BatchTaskExecutionInfo]:
    """A task's state and its ``executionInfo``."""
    task = client.get_task(job_id, task_id)
    assert task.execution_info is not None
    return task.state, task.execution_info


def node_count(client: BatchClient, pool_id: str) -> int:
    return len(list(client.list_nodes(pool_id)))


def test_a_job_over_its_wall_clock_is_terminated_with_its_running_task(
    batch: Running, tmp_path: Path
) -> None:
    client = batch.client()
    make_pool(client, "clock")
    constraints = m.BatchJobConstraints(max_wall_clock_time=timedelta(seconds=2))
    make_job(client, "clock", "clock", constraints=constraints)
    pid = run_sleeper(client, "clock", tmp_path / "sleeper.pid")
    assert client.get_job("clock").state == "active"

    wait_until(lambda: client.get_job("clock").state == "completed")
    job_info = client.get_job("clock").execution_info
    assert job_info is not None
    assert job_info.termination_reason == "MaxWallClockTimeExpiry"
    state, info = execution(client, "clock", "sleeper")
    assert (state, info.result) == ("completed", "failure")
    assert info.failure_info is not None
    assert info.failure_info.code == "TaskEnded"
    assert not process_alive(pid)


def test_a_pool_resizes_up_and_down_through_the_sdk_poller(batch: Running) -> None:
    client = batch.client()
    make_pool(client, "elastic")
    wait_until(lambda: client.get_pool("elastic").allocation_state == "steady")
    assert node_count(client, "elastic") == 1

    for target in (3, 1):  # the SDK's poller returns once allocationState is steady again
        resize = m.BatchPoolResizeOptions(target_dedicated_nodes=target)
        client.begin_resize_pool("elastic", resize, polling_interval=1).result()
        pool = client.get_pool("elastic")
        assert (pool.allocation_state, pool.current_dedicated_nodes) == ("steady", target)
        assert node_count(client, "elastic") == target


def test_resizing_down_requeues_the_task_of_a_busy_node(batch: Running, tmp_path: Path) -> None:
    client = batch.client()
    make_pool(client, "shrink")
    make_job(client, "shrink", "shrink")
    pid = run_sleeper(client, "shrink", tmp_path / "sleeper.pid")

    resize = m.BatchPoolResizeOptions(target_dedicated_nodes=0)
    client.begin_resize_pool("shrink", resize, polling_interval=1).result()
    assert node_count(client, "shrink") == 0
    state, info = execution(client, "shrink", "sleeper")
    assert (state, info.requeue_count) == ("active", 1)
    assert not process_alive(pid)


def test_jobs_list_with_a_filter_on_state_and_a_selection(batch: Running) -> None:
    client = batch.client()
    for job_id in ("open", "closed"):
        make_job(client, job_id, "none")
    client.begin_terminate_job("closed", TERMINATE, polling_interval=1).result()

    completed = list(client.list_jobs(filter="state eq 'completed'", select=["id", "state"]))
    assert [(job.id, job.state) for job in completed] == [("closed", "completed")]
    assert completed[0].pool_info is None  # not selected
    active = list(client.list_jobs(filter="state eq 'active'", select=["id"]))
    assert [job.id for job in active] == ["open"]
    assert active[0].state is None


def test_a_deleting_pool_refuses_changes_and_lists_as_deleting(
    batch: Running, tmp_path: Path
) -> None:
    client = batch.client()
    make_pool(client, "stays")
    make_pool(client, "going")
    make_job(client, "going", "going")
    run_sleeper(client, "going", tmp_path / "sleeper.pid", prefix=IGNORES_SIGTERM)
    poller = client.begin_delete_pool("going", polling_interval=1)

    assert client.get_pool("going").state == "deleting"
    resize = m.BatchPoolResizeOptions(target_dedicated_nodes=2)
    # begin_* sends its request at once: a refusal raises before there is a poller
    resizing = refused(lambda: client.begin_resize_pool("going", resize))
    assert resizing == (409, "PoolBeingDeleted")
    assert refused(lambda: client.begin_delete_pool("going")) == (409, "PoolBeingDeleted")
    deleting = list(client.list_pools(filter="state eq 'deleting'", select=["id", "state"]))
    assert [(pool.id, pool.state) for pool in deleting] == [("going", "deleting")]
    assert deleting[0].vm_size is None  # not selected
    active = list(client.list_pools(filter="state eq 'active'", select=["id"]))
    assert [pool.id for pool in active] == ["stays"]

    poller.result()
    assert not pool_exists(client, "going")


def test_deleting_a_pool_requeues_its_running_task(batch: Running, tmp_path: Path) -> None:
    client = batch.client()
    make_pool(client, "doomed")
    make_job(client, "orphan", "doomed")
    pid = run_sleeper(client, "orphan", tmp_path / "sleeper.pid")

    client.begin_delete_pool("doomed", polling_interval=1).result()
    assert not pool_exists(client, "doomed")
    assert not process_alive(pid)
    state, info = execution(client, "orphan", "sleeper")
    assert (state, info.requeue_count) == ("active", 1)
    assert client.get_job_task_counts("orphan").task_counts.active == 1


def test_a_completed_job_takes_no_more_tasks(batch: Running) -> None:
    client = batch.client()
    make_job(client, "finished", "none")
    client.begin_terminate_job("finished", TERMINATE, polling_interval=1).result()
    task = m.BatchTaskCreateOptions(id="late", command_line="true")
    assert refused(lambda: client.create_task("finished", task)) == (409, "JobCompleted")
    assert list(client.list_tasks("finished")) == []


def test_a_task_collection_over_100_tasks_is_refused(batch: Running) -> None:
    client = batch.client()
    make_job(client, "many", "none")
    group = m.BatchTaskGroup(
        task_values=[m.BatchTaskCreateOptions(id=f"t{n}", command_line="true") for n in range(101)]
    )
    status, _code = refused(lambda: client.create_task_collection("many", group))
    assert status == 400
    assert list(client.list_tasks("many")) == []
    assert "POST /jobs/many/addtaskcollection 400" in batch.requests()


def test_a_body_over_1_mb_is_refused_as_too_large(batch: Running) -> None:
    client = batch.client()
    make_job(client, "big", "none")
    padding = "x" * 11_000
    group = m.BatchTaskGroup(
        task_values=[
            m.BatchTaskCreateOptions(id=f"t{n}", command_line=f"echo {padding}") for n in range(100)
        ]
    )
    assert refused(lambda: client.create_task_collection("big", group)) == (
        413,
        "RequestBodyTooLarge",
    )
    assert list(client.list_tasks("big")) == []


def test_an_auto_pool_kept_alive_outlives_its_job(batch: Running) -> None:
    client = batch.client()
    spec = m.BatchAutoPoolSpecification(
        auto_pool_id_prefix="kept",
        pool_lifetime_option="job",
        keep_alive=True,
        pool=m.BatchPoolSpecification(
            vm_size="standard_d2s_v3", virtual_machine_configuration=IMAGE
        ),
    )
    pool_info = m.BatchPoolInfo(auto_pool_specification=spec)
    client.create_job(m.BatchJobCreateOptions(id="brief", pool_info=pool_info))
    job_info = client.get_job("brief").execution_info
    assert job_info is not None and job_info.pool_id is not None
    client.begin_terminate_job("brief", TERMINATE, polling_interval=1).result()
    assert client.get_pool(job_info.pool_id).state == "active"


@pytest.mark.parametrize("size", [0, 1001])
def test_a_page_size_out_of_range_is_refused(batch: Running, size: int) -> None:
    client = batch.client()
    status, code = refused(lambda: list(client.list_pools(max_results=size)))
    assert (status, code) == (400, "InvalidQueryParameterValue")


def test_an_active_task_of_a_terminated_job_can_be_terminated(batch: Running) -> None:
    client = batch.client()
    make_job(client, "halted", "none")
    client.create_task("halted", m.BatchTaskCreateOptions(id="waiting", command_line="true"))
    client.begin_terminate_job("halted", TERMINATE, polling_interval=1).result()
    assert client.get_task("halted", "waiting").state == "active"  # as the service leaves it
    client.terminate_task("halted", "waiting")
    state, info = execution(client, "halted", "waiting")
    assert (state, info.result) == ("completed", "failure")
