"""Updating jobs, reading a node's files, and filtered task lists: the official azure-batch SDK
against the emulator.

``update_job`` (PATCH) and ``replace_job`` (PUT) with the service's rules — only active jobs,
no way back from ``terminatejob``, a job whose tasks are all done completing as soon as it asks
to — node files such as a failed start task's ``startup/stderr.txt``, and ``list_tasks`` with
a time filter and ``$select``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise
from typing import Any

import pytest
from azure.batch import BatchClient
from azure.batch import models as m
from azure.batch.models._models import BatchJobTerminateOptions
from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceModifiedError, ResourceNotFoundError
from batch_emulator import IMAGE, Running, make_pool, pool_exists
from conftest import wait_until
from fanout_azure.emulator.spec import response_problems
from test_recordings import Capture, compare, recorded


def refused(call: Callable[[], Any]) -> tuple[int, str | None]:
    """The status and Batch error code of a call the emulator refuses. The SDK's file downloads
    (streamed) leave ``error`` unset: the code is then read from the body."""
    with pytest.raises(HttpResponseError) as caught:
        call()
    error = caught.value.error
    if error is not None:
        code = error.code
    else:
        body = caught.value.response.read() if caught.value.response is not None else b""
        code = json.loads(body).get("code") if body else None
    return caught.value.status_code or 0, code


def all_done(client: BatchClient, job_id: str, total: int) -> Callable[[], bool]:
    return lambda: client.get_job_task_counts(job_id).task_counts.completed == total


def idle_pool(client: BatchClient, pool_id: str, **options: Any) -> None:
    make_pool(client, pool_id, **options)
    wait_until(lambda: [node.state for node in client.list_nodes(pool_id)] == ["idle"])


def new_job(client: BatchClient, job_id: str, pool_id: str, **options: Any) -> None:
    pool_info = m.BatchPoolInfo(pool_id=pool_id)
    client.create_job(m.BatchJobCreateOptions(id=job_id, pool_info=pool_info, **options))


# ------------------------------------------------------------------------------------ update job


def test_update_changes_what_it_names_and_keeps_the_rest(batch: Running) -> None:
    client, capture = batch.client(), Capture()
    new_job(
        client,
        "patched",
        "nowhere",
        priority=10,
        constraints=m.BatchJobConstraints(max_task_retry_count=3),
        metadata=[m.BatchMetadataItem(name="owner", value="me")],
    )
    before = client.get_job("patched")
    update = m.BatchJobUpdateOptions(
        priority=900, metadata=[m.BatchMetadataItem(name="stage", value="two")]
    )
    client.update_job("patched", update, raw_response_hook=capture.hook)
    compare(capture, recorded("jobs[sync]", "PATCH", "/jobs/batch_job1_bb11edc"))
    assert capture.headers["dataserviceid"] == f"{batch.endpoint}/jobs/patched"

    job = client.get_job("patched")
    assert job.priority == 900
    assert [(item.name, item.value) for item in job.metadata] == [("stage", "two")]
    assert job.constraints.max_task_retry_count == 3  # not named: kept
    assert job.all_tasks_complete_mode == "noaction"
    assert job.etag != before.etag and job.etag == capture.headers["etag"]
    assert job.last_modified >= before.last_modified

    client.update_job(
        "patched",
        m.BatchJobUpdateOptions(
            constraints=m.BatchJobConstraints(max_wall_clock_time=timedelta(hours=1)),
            max_parallel_tasks=4,
            allow_task_preemption=True,
        ),
    )
    job = client.get_job("patched")
    assert job.constraints.max_wall_clock_time == timedelta(hours=1)
    assert job.constraints.max_task_retry_count == 0  # constraints are replaced as a whole
    assert job.max_parallel_tasks == 4
    assert job.allow_task_preemption is True
    assert job.priority == 900


def test_replace_sets_every_property_it_leaves_out_to_its_default(batch: Running) -> None:
    client, capture = batch.client(), Capture()
    new_job(
        client,
        "replaced",
        "nowhere",
        priority=10,
        max_parallel_tasks=2,
        metadata=[m.BatchMetadataItem(name="owner", value="me")],
    )
    job = client.get_job("replaced")
    replacement = m.BatchJob(
        pool_info=job.pool_info,
        priority=500,
        constraints=m.BatchJobConstraints(max_task_retry_count=3),
    )
    client.replace_job("replaced", replacement, raw_response_hook=capture.hook)
    compare(capture, recorded("jobs[sync]", "PUT", "/jobs/batch_job1_bb11edc"))
    job = client.get_job("replaced")
    assert job.priority == 500
    assert job.constraints.max_task_retry_count == 3
    assert job.max_parallel_tasks == -1
    assert not job.metadata


def test_terminatejob_on_a_job_whose_tasks_are_done_completes_it_and_its_auto_pool(
    batch: Running,
) -> None:
    client = batch.client()
    auto = m.BatchAutoPoolSpecification(
        pool_lifetime_option="job",
        pool=m.BatchPoolSpecification(
            vm_size="standard_d2s_v3", virtual_machine_configuration=IMAGE, target_dedicated_nodes=1
        ),
    )
    client.create_job(
        m.BatchJobCreateOptions(
            id="finished", pool_info=m.BatchPoolInfo(auto_pool_specification=auto)
        )
    )
    pool_id = client.get_job("finished").execution_info.pool_id
    client.create_tasks(
        "finished", [m.BatchTaskCreateOptions(id=f"t{n}", command_line="true") for n in range(3)]
    )
    wait_until(all_done(client, "finished", 3))
    time.sleep(0.3)
    assert client.get_job("finished").state == "active"  # noaction: it waits for more tasks

    client.update_job("finished", m.BatchJobUpdateOptions(all_tasks_complete_mode="terminatejob"))
    wait_until(lambda: client.get_job("finished").state == "completed", timeout=10)
    job = client.get_job("finished")
    assert job.execution_info.termination_reason == "AllTasksComplete"
    assert job.all_tasks_complete_mode == "terminatejob"
    wait_until(lambda: not pool_exists(client, pool_id))


def test_terminatejob_before_the_last_task_ends_completes_the_job_with_it(batch: Running) -> None:
    client = batch.client()
    idle_pool(client, "later", slots=2)
    new_job(client, "later", "later")
    client.create_task("later", m.BatchTaskCreateOptions(id="quick", command_line="true"))
    client.create_task("later", m.BatchTaskCreateOptions(id="slow", command_line="sleep 1"))
    wait_until(lambda: client.get_task("later", "slow").state == "running")
    client.update_job("later", m.BatchJobUpdateOptions(all_tasks_complete_mode="terminatejob"))
    assert client.get_job("later").state == "active"
    wait_until(lambda: client.get_job("later").state == "completed", timeout=10)
    assert client.get_task("later", "slow").execution_info.result == "success"
    assert client.get_job("later").execution_info.termination_reason == "AllTasksComplete"


def test_terminatejob_on_a_job_without_tasks_waits_for_its_tasks(batch: Running) -> None:
    client = batch.client()
    idle_pool(client, "empty")
    new_job(client, "empty", "empty")
    client.update_job("empty", m.BatchJobUpdateOptions(all_tasks_complete_mode="terminatejob"))
    time.sleep(0.5)
    assert client.get_job("empty").state == "active"
    client.create_task("empty", m.BatchTaskCreateOptions(id="only", command_line="true"))
    wait_until(lambda: client.get_job("empty").state == "completed", timeout=10)


def test_updates_the_service_refuses(batch: Running) -> None:
    client = batch.client()
    new_job(client, "strict", "nowhere", all_tasks_complete_mode="terminatejob")
    noaction = m.BatchJobUpdateOptions(all_tasks_complete_mode="noaction")
    assert refused(lambda: client.update_job("strict", noaction)) == (400, "InvalidPropertyValue")
    too_high = m.BatchJobUpdateOptions(priority=5000)
    assert refused(lambda: client.update_job("strict", too_high)) == (400, "OutOfRangePriority")
    no_slots = m.BatchJobUpdateOptions(max_parallel_tasks=0)
    assert refused(lambda: client.update_job("strict", no_slots)) == (400, "InvalidPropertyValue")
    moved = m.BatchJobUpdateOptions(pool_info=m.BatchPoolInfo(pool_id="elsewhere"))
    assert refused(lambda: client.update_job("strict", moved)) == (
        409,
        "OperationInvalidForCurrentState",
    )
    same_pool = m.BatchJobUpdateOptions(pool_info=m.BatchPoolInfo(pool_id="nowhere"), priority=1)
    client.update_job("strict", same_pool)
    assert client.get_job("strict").priority == 1
    with pytest.raises(ResourceNotFoundError):
        client.update_job("absent", m.BatchJobUpdateOptions(priority=1))

    stale = client.get_job("strict").etag
    client.update_job("strict", m.BatchJobUpdateOptions(priority=2))
    with pytest.raises(ResourceModifiedError) as caught:
        client.update_job(
            "strict",
            m.BatchJobUpdateOptions(priority=3),
            etag=stale,
            match_condition=MatchConditions.IfNotModified,
        )
    assert caught.value.status_code == 412
    current = client.get_job("strict").etag
    client.update_job(
        "strict",
        m.BatchJobUpdateOptions(priority=3),
        etag=current,
        match_condition=MatchConditions.IfNotModified,
    )
    assert client.get_job("strict").priority == 3

    ending = BatchJobTerminateOptions(termination_reason="done")  # not in azure.batch.models
    client.begin_terminate_job("strict", ending, polling_interval=1).result()
    later = m.BatchJobUpdateOptions(priority=4)
    assert refused(lambda: client.update_job("strict", later)) == (409, "JobCompleted")


def test_a_shorter_wall_clock_ends_the_job(batch: Running) -> None:
    client = batch.client()
    idle_pool(client, "clock")
    new_job(client, "clock", "clock")
    client.create_task("clock", m.BatchTaskCreateOptions(id="long", command_line="sleep 60"))
    wait_until(lambda: client.get_task("clock", "long").state == "running")
    limit = m.BatchJobConstraints(max_wall_clock_time=timedelta(seconds=1))
    client.update_job("clock", m.BatchJobUpdateOptions(constraints=limit))
    wait_until(lambda: client.get_job("clock").state == "completed", timeout=15)
    job = client.get_job("clock")
    assert job.execution_info.termination_reason == "MaxWallClockTimeExpiry"
    assert client.get_task("clock", "long").state == "completed"


def test_an_updated_retry_count_applies_to_later_failures(batch: Running) -> None:
    client = batch.client()
    idle_pool(client, "retries")
    new_job(client, "retries", "retries")
    retry = m.BatchJobConstraints(max_task_retry_count=2)
    client.update_job("retries", m.BatchJobUpdateOptions(constraints=retry))
    client.create_task(
        "retries", m.BatchTaskCreateOptions(id="flaky", command_line="/bin/sh -c 'exit 4'")
    )
    wait_until(all_done(client, "retries", 1))
    task = client.get_task("retries", "flaky")
    assert task.constraints.max_task_retry_count == 2
    assert task.execution_info.retry_count == 2


def test_max_parallel_tasks_runs_one_task_at_a_time(batch: Running) -> None:
    client = batch.client()
    idle_pool(client, "serial", slots=4)
    new_job(client, "serial", "serial")
    client.update_job("serial", m.BatchJobUpdateOptions(max_parallel_tasks=1))
    client.create_tasks(
        "serial",
        [m.BatchTaskCreateOptions(id=f"t{n}", command_line="sleep 0.3") for n in range(3)],
    )
    wait_until(all_done(client, "serial", 3), timeout=20)
    runs = sorted(
        (task.execution_info.start_time, task.execution_info.end_time)
        for task in client.list_tasks("serial")
    )
    for (_, end), (start, _) in pairwise(runs):
        assert start >= end


# ----------------------------------------------------------------------------------- update pool


def test_a_pool_update_gives_nodes_that_join_later_the_new_start_task(batch: Running) -> None:
    client = batch.client()
    version = '/bin/sh -c "echo {} > $AZ_BATCH_NODE_SHARED_DIR/version"'
    make_pool(client, "p", start_task=m.BatchStartTask(command_line=version.format("v1")))
    wait_until(lambda: [node.state for node in client.list_nodes("p")] == ["idle"])
    client.update_pool(
        "p",
        m.BatchPoolUpdateOptions(
            start_task=m.BatchStartTask(command_line=version.format("v2")),
            metadata=[m.BatchMetadataItem(name="k", value="v")],
        ),
    )
    pool = client.get_pool("p")
    assert version.format("v2") == pool.start_task.command_line
    assert [(item.name, item.value) for item in pool.metadata] == [("k", "v")]
    assert pool.vm_size == "standard_d2s_v3"  # what the update did not name stays

    client.begin_resize_pool("p", m.BatchPoolResizeOptions(target_dedicated_nodes=2)).result()
    wait_until(lambda: [node.state for node in client.list_nodes("p")] == ["idle", "idle"])
    versions = {
        node.id: b"".join(client.download_node_file("p", node.id, "shared/version")).strip()
        for node in client.list_nodes("p")
    }
    assert sorted(versions.values()) == [b"v1", b"v2"]  # the first node kept what it ran


def test_pool_updates_the_service_refuses(batch: Running) -> None:
    client = batch.client()
    make_pool(client, "busy")
    wait_until(lambda: [node.state for node in client.list_nodes("busy")] == ["idle"])
    resized = m.BatchPoolUpdateOptions(task_slots_per_node=4)
    assert refused(lambda: client.update_pool("busy", resized)) == (
        409,
        "OperationInvalidForCurrentState",
    )
    assert refused(lambda: client.update_pool("nope", resized)) == (404, "PoolNotFound")


# ------------------------------------------------------------------------------------ node files


def test_a_failed_start_task_leaves_its_output_in_the_node_startup_directory(
    batch: Running,
) -> None:
    client, capture = batch.client(), Capture()
    start = m.BatchStartTask(
        command_line="/bin/sh -c 'echo preparing; echo broken setup >&2; exit 3'",
        wait_for_success=True,
    )
    make_pool(client, "broken", start_task=start)
    wait_until(lambda: [n.state for n in client.list_nodes("broken")] == ["starttaskfailed"])
    (node,) = client.list_nodes("broken")

    stderr = b"".join(client.download_node_file("broken", node.id, "startup/stderr.txt"))
    assert stderr == b"broken setup\n"
    b"".join(
        client.download_node_file(
            "broken", node.id, "startup/stdout.txt", raw_response_hook=capture.hook
        )
    )
    assert capture.status == 200
    compare(capture, recorded("files[async]", "GET", "test_task%5Cstderr.txt"))
    part = client.download_node_file("broken", node.id, "startup/stdout.txt", ocp_range="bytes=0-3")
    assert b"".join(part) == b"prep"

    properties = client.get_node_file_properties(
        "broken", node.id, "startup/stderr.txt", raw_response_hook=capture.hook
    )
    compare(capture, recorded("files[async]", "HEAD", "test_task%5Cstderr.txt"))
    assert properties.content_length == len(b"broken setup\n")
    assert properties.is_directory is False
    assert properties.file_mode
    assert "startup%2Fstderr.txt" in properties.url
    directory = client.get_node_file_properties("broken", node.id, "startup")
    assert directory.is_directory is True

    top = {entry.name: entry for entry in client.list_node_files("broken", node.id)}
    assert {"shared", "startup", "workitems"} <= set(top)
    assert all(entry.is_directory for entry in top.values())
    listed = list(
        client.list_node_files(
            "broken",
            node.id,
            recursive=True,
            filter="startswith(name, 'startup')",
            raw_response_hook=capture.hook,
        )
    )
    compare(capture, recorded("files[async]", "GET", "/files"), "BatchNodeFile")
    files = {entry.name: entry for entry in listed}
    assert {"startup", "startup/stdout.txt", "startup/stderr.txt", "startup/wd"} <= set(files)
    assert files["startup/stderr.txt"].properties.content_length == len(b"broken setup\n")
    assert files["startup/stderr.txt"].url.endswith(
        f"/pools/broken/nodes/{node.id}/files/startup/stderr.txt"
    )
    problems = [
        problem
        for operation_id, _path, status, body, _version in batch.answers
        if operation_id.startswith("Nodes_") and body is not None
        for problem in response_problems(operation_id, status, body)
    ]
    assert problems == []


def test_node_files_that_are_not_there(batch: Running) -> None:
    client = batch.client()
    idle_pool(client, "plain")
    (node,) = client.list_nodes("plain")
    new_job(client, "plain", "plain")
    client.create_task(
        "plain",
        m.BatchTaskCreateOptions(
            id="linker", command_line="/bin/sh -c 'echo hi; ln -s /etc/hostname outside'"
        ),
    )
    wait_until(all_done(client, "plain", 1))
    task_dir = client.get_task("plain", "linker").node_info.task_root_directory
    assert task_dir == "workitems/plain/job-1/linker"
    output = b"".join(client.download_node_file("plain", node.id, f"{task_dir}/stdout.txt"))
    assert output == b"hi\n"

    def missing(file_path: str, pool_id: str = "plain", node_id: str = node.id) -> str | None:
        call = lambda: b"".join(client.download_node_file(pool_id, node_id, file_path))  # noqa: E731
        status, code = refused(call)
        assert status == 404
        return code

    assert missing("startup/stderr.txt") == "FileNotFound"  # no start task: no output
    assert missing("startup") == "FileNotFound"  # a directory has no content
    assert missing("../../../../etc/hostname") == "FileNotFound"
    assert missing("startup/../../x") == "FileNotFound"
    assert missing(f"{task_dir}/wd/outside") == "FileNotFound"  # a link out of the node
    assert missing("startup/stderr.txt", node_id="tvmps_none_d") == "NodeNotFound"
    assert missing("startup/stderr.txt", pool_id="none") == "PoolNotFound"
    with pytest.raises(ResourceNotFoundError):
        client.get_node_file_properties("plain", node.id, "nothing.txt")
    with pytest.raises(ResourceNotFoundError):
        list(client.list_node_files("plain", "tvmps_none_d"))
    call = lambda: b"".join(  # noqa: E731
        client.download_node_file(
            "plain", node.id, f"{task_dir}/stdout.txt", ocp_range="bytes=10-20"
        )
    )
    assert refused(call) == (416, "InvalidRange")


# ------------------------------------------------------------------------------ filtered lists


def test_list_tasks_by_state_and_time_with_select(batch: Running) -> None:
    client = batch.client()
    idle_pool(client, "timed", slots=2)
    new_job(client, "timed", "timed")
    client.create_tasks(
        "timed", [m.BatchTaskCreateOptions(id=f"early{n}", command_line="true") for n in range(2)]
    )
    wait_until(all_done(client, "timed", 2))
    time.sleep(1.1)
    cutoff = datetime.now(UTC).replace(microsecond=0)  # after the early ones, to the second
    time.sleep(0.1)
    client.create_tasks(
        "timed", [m.BatchTaskCreateOptions(id=f"late{n}", command_line="true") for n in range(2)]
    )
    client.create_task("timed", m.BatchTaskCreateOptions(id="waiting", command_line="sleep 30"))
    wait_until(all_done(client, "timed", 4))

    select = ["id", "executionInfo", "nodeInfo", "stateTransitionTime"]
    stamp = cutoff.strftime("%Y-%m-%dT%H:%M:%SZ")
    late = list(
        client.list_tasks(
            "timed",
            filter=f"state eq 'completed' and stateTransitionTime ge datetime'{stamp}'",
            select=select,
        )
    )
    assert sorted(task.id for task in late) == ["late0", "late1"]
    for task in late:
        assert task.execution_info.exit_code == 0
        assert task.node_info.pool_id == "timed"
        assert task.state_transition_time >= cutoff
        assert task.state is None and task.command_line is None  # not selected

    # The same moment written in another zone, and with seven fractional digits.
    elsewhere = cutoff.astimezone(timezone(timedelta(hours=2))).strftime("%Y-%m-%dT%H:%M:%S+02:00")
    early = list(
        client.list_tasks(
            "timed", filter=f"stateTransitionTime lt datetime'{elsewhere}'", select=["id"]
        )
    )
    assert sorted(task.id for task in early) == ["early0", "early1"]
    fine = cutoff.strftime("%Y-%m-%dT%H:%M:%S.0000000Z")
    counted = client.list_tasks(
        "timed", filter=f"state eq 'completed' and stateTransitionTime ge datetime'{fine}'"
    )
    assert len(list(counted)) == 2
    assert refused(
        lambda: list(client.list_tasks("timed", filter="stateTransitionTime ge datetime'soon'"))
    ) == (400, "InvalidQueryParameterValue")
