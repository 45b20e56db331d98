"""The official azure-batch SDK against the emulator, directly (not through fanout).

Pools with start tasks, jobs, hundreds of tasks through ``create_tasks``, failures, retries,
timeouts, SAS resource and output files in a real Azurite, auto-pools, a wrong key — and every
answer of a whole run checked against the official REST description.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from azure.batch import BatchClient
from azure.batch import models as m
from azure.batch.models._models import BatchJobTerminateOptions
from azure.core.exceptions import (
    HttpResponseError,
    ResourceNotFoundError,
)
from azure.storage.blob import (
    BlobSasPermissions,
    ContainerSasPermissions,
    generate_blob_sas,
    generate_container_sas,
)
from azurite import Azurite
from batch_emulator import IMAGE, Running, make_pool, pool_exists
from conftest import wait_until
from fanout_azure.emulator.spec import response_problems

# azure-batch 15.1 cannot terminate a job without this body (it then sends no content type);
# the model is not exported from azure.batch.models.
TERMINATE = BatchJobTerminateOptions(termination_reason="UserTerminate")


def nodes_ready(client: BatchClient, pool_id: str, count: int) -> Callable[[], bool]:
    def ready() -> bool:
        states = [node.state for node in client.list_nodes(pool_id)]
        return len(states) == count and all(
            state in ("idle", "running", "starttaskfailed") for state in states
        )

    return ready


def job_done(client: BatchClient, job_id: str, total: int) -> Callable[[], bool]:
    def done() -> bool:
        counts = client.get_job_task_counts(job_id).task_counts
        return counts.completed == total

    return done


def test_whole_lifecycle_with_250_tasks(batch: Running) -> None:
    client = batch.client()
    start = m.BatchStartTask(
        command_line="/bin/sh -c 'echo ready > $AZ_BATCH_NODE_SHARED_DIR/ready'",
        wait_for_success=True,
    )
    make_pool(client, "lifecycle", nodes=2, slots=2, start_task=start)
    assert client.pool_exists("lifecycle")
    wait_until(nodes_ready(client, "lifecycle", 2))
    client.create_job(
        m.BatchJobCreateOptions(id="job-1", pool_info=m.BatchPoolInfo(pool_id="lifecycle"))
    )
    tasks = [
        m.BatchTaskCreateOptions(
            id=f"t{number:03d}",
            command_line=f"/bin/sh -c 'cat $AZ_BATCH_NODE_SHARED_DIR/ready; echo {number}'",
        )
        for number in range(250)
    ]
    client.create_tasks("job-1", tasks)
    collections = [
        line for line in batch.requests() if line.startswith("POST /jobs/job-1/addtaskcollection")
    ]
    assert len(collections) == 3
    wait_until(job_done(client, "job-1", 250), timeout=120)

    counts = client.get_job_task_counts("job-1")
    assert counts.task_counts.succeeded == 250
    assert counts.task_slot_counts.completed == 250
    completed = list(
        client.list_tasks("job-1", filter="state eq 'completed'", select=["id", "executionInfo"])
    )
    assert len(completed) == 250
    assert all(task.execution_info.exit_code == 0 for task in completed)
    assert {task.node_info.node_id for task in client.list_tasks("job-1")} == {
        node.id for node in client.list_nodes("lifecycle")
    }
    output = b"".join(client.download_task_file("job-1", "t042", "stdout.txt"))
    assert output == b"ready\n42\n"
    names = {entry.name for entry in client.list_task_files("job-1", "t042")}
    assert {"stdout.txt", "stderr.txt"} <= names

    client.begin_delete_job("job-1", polling_interval=1).result()
    with pytest.raises(ResourceNotFoundError):
        client.get_job("job-1")
    client.begin_delete_pool("lifecycle", polling_interval=1).result()
    assert not pool_exists(client, "lifecycle")


def test_list_pages_through_next_links(batch: Running) -> None:
    client = batch.client()
    client.create_job(
        m.BatchJobCreateOptions(id="paging", pool_info=m.BatchPoolInfo(pool_id="none"))
    )
    client.create_tasks(
        "paging", [m.BatchTaskCreateOptions(id=f"t{n}", command_line="true") for n in range(30)]
    )
    listed = list(client.list_tasks("paging", max_results=7, select=["id", "state"]))
    assert sorted(task.id for task in listed) == sorted(f"t{n}" for n in range(30))
    assert all(task.state == "active" and task.command_line is None for task in listed)
    pages = [line for line in batch.requests() if line.startswith("GET /jobs/paging/tasks ")]
    assert len(pages) == 5


def test_a_failing_start_task_keeps_tasks_off_its_node(batch: Running) -> None:
    client = batch.client()
    start = m.BatchStartTask(
        command_line="/bin/sh -c 'echo broken setup >&2; exit 3'", wait_for_success=True
    )
    make_pool(client, "broken", nodes=1, start_task=start)
    wait_until(nodes_ready(client, "broken", 1))
    (node,) = list(client.list_nodes("broken"))
    assert node.state == "starttaskfailed"
    assert node.start_task_info.exit_code == 3
    assert node.start_task_info.result == "failure"
    assert node.start_task_info.failure_info.category == "usererror"
    client.create_job(
        m.BatchJobCreateOptions(id="stuck", pool_info=m.BatchPoolInfo(pool_id="broken"))
    )
    client.create_task("stuck", m.BatchTaskCreateOptions(id="never", command_line="true"))
    time.sleep(1)
    assert client.get_task("stuck", "never").state == "active"


def test_a_failing_task_is_retried_then_fails(batch: Running) -> None:
    client = batch.client()
    make_pool(client, "retry")
    client.create_job(
        m.BatchJobCreateOptions(id="retry", pool_info=m.BatchPoolInfo(pool_id="retry"))
    )
    client.create_task(
        "retry",
        m.BatchTaskCreateOptions(
            id="flaky",
            command_line="/bin/sh -c 'echo attempt >&2; exit 7'",
            constraints=m.BatchTaskConstraints(max_task_retry_count=2),
        ),
    )
    wait_until(job_done(client, "retry", 1))
    task = client.get_task("retry", "flaky")
    assert task.execution_info.retry_count == 2
    assert task.execution_info.exit_code == 7
    assert task.execution_info.result == "failure"
    assert task.execution_info.failure_info.category == "usererror"
    assert client.get_job_task_counts("retry").task_counts.failed == 1


def test_a_task_over_its_wall_clock_is_ended(batch: Running) -> None:
    client = batch.client()
    make_pool(client, "slow")
    client.create_job(m.BatchJobCreateOptions(id="slow", pool_info=m.BatchPoolInfo(pool_id="slow")))
    client.create_task(
        "slow",
        m.BatchTaskCreateOptions(
            id="sleeper",
            command_line="sleep 60",
            constraints=m.BatchTaskConstraints(max_wall_clock_time=timedelta(seconds=1)),
        ),
    )
    wait_until(job_done(client, "slow", 1), timeout=30)
    info = client.get_task("slow", "sleeper").execution_info
    assert info.result == "failure"
    assert info.failure_info.code == "TaskEnded"  # what the service reports for a wall clock


def test_a_terminated_task_and_job(batch: Running) -> None:
    client = batch.client()
    make_pool(client, "stop", slots=2)
    client.create_job(m.BatchJobCreateOptions(id="stop", pool_info=m.BatchPoolInfo(pool_id="stop")))
    client.create_task("stop", m.BatchTaskCreateOptions(id="a", command_line="sleep 60"))
    client.create_task("stop", m.BatchTaskCreateOptions(id="b", command_line="sleep 60"))
    wait_until(lambda: client.get_task("stop", "a").state == "running")
    client.terminate_task("stop", "a")
    wait_until(lambda: client.get_task("stop", "a").state == "completed")
    client.begin_terminate_job("stop", TERMINATE, polling_interval=1).result()
    job = client.get_job("stop")
    assert job.state == "completed"
    assert job.execution_info.termination_reason == "UserTerminate"
    assert client.get_task("stop", "b").state == "completed"


def test_resource_and_output_files_through_azurite(
    batch: Running, azurite: Azurite, azure_container: str
) -> None:
    with azurite.blob_service() as service:
        container = service.get_container_client(azure_container)
        container.upload_blob("inputs/words.txt", b"alpha beta")
        container.upload_blob("inputs/more/other.txt", b"gamma")
    expiry = datetime.now(UTC) + timedelta(hours=1)
    read = generate_blob_sas(
        azurite.account,
        azure_container,
        "inputs/words.txt",
        account_key=azurite.key,
        permission=BlobSasPermissions(read=True),
        expiry=expiry,
    )
    listing = generate_container_sas(
        azurite.account,
        azure_container,
        account_key=azurite.key,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=expiry,
    )
    write = generate_container_sas(
        azurite.account,
        azure_container,
        account_key=azurite.key,
        permission=ContainerSasPermissions(create=True, write=True),
        expiry=expiry,
    )
    container_url = f"{azurite.endpoint}/{azure_container}"
    client = batch.client()
    make_pool(client, "files")
    client.create_job(
        m.BatchJobCreateOptions(id="files", pool_info=m.BatchPoolInfo(pool_id="files"))
    )
    client.create_task(
        "files",
        m.BatchTaskCreateOptions(
            id="copy",
            command_line="/bin/sh -c 'cat words.txt more/inputs/more/other.txt > result.txt'",
            resource_files=[
                m.ResourceFile(
                    http_url=f"{container_url}/inputs/words.txt?{read}", file_path="words.txt"
                ),
                m.ResourceFile(
                    storage_container_url=f"{container_url}?{listing}",
                    blob_prefix="inputs/more/",
                    file_path="more",
                ),
            ],
            output_files=[
                m.OutputFile(
                    file_pattern="result.txt",
                    destination=m.OutputFileDestination(
                        container=m.OutputFileBlobContainerDestination(
                            container_url=f"{container_url}?{write}", path="out/result.txt"
                        )
                    ),
                    upload_options=m.OutputFileUploadConfiguration(upload_condition="tasksuccess"),
                )
            ],
        ),
    )
    wait_until(job_done(client, "files", 1))
    task = client.get_task("files", "copy")
    assert task.execution_info.result == "success", task.execution_info
    with azurite.blob_service() as service:
        blob = service.get_blob_client(azure_container, "out/result.txt")
        assert blob.download_blob().readall() == b"alpha betagamma"


def test_a_failed_download_fails_the_task_as_a_user_error(batch: Running, azurite: Azurite) -> None:
    client = batch.client()
    make_pool(client, "nofile")
    client.create_job(
        m.BatchJobCreateOptions(id="nofile", pool_info=m.BatchPoolInfo(pool_id="nofile"))
    )
    client.create_task(
        "nofile",
        m.BatchTaskCreateOptions(
            id="missing",
            command_line="true",
            resource_files=[
                m.ResourceFile(http_url=f"{azurite.endpoint}/none/x.txt", file_path="x.txt")
            ],
        ),
    )
    wait_until(job_done(client, "nofile", 1))
    info = client.get_task("nofile", "missing").execution_info
    assert info.result == "failure"
    assert info.failure_info.category == "usererror"


def test_a_wrong_key_is_refused(batch: Running) -> None:
    client = batch.client(key="d3Jvbmcga2V5IGZvciB0aGUgZW11bGF0b3I=")
    with pytest.raises(HttpResponseError) as caught:
        client.get_pool("any")
    assert caught.value.status_code == 403
    assert caught.value.error.code == "AuthenticationFailed"


def test_ids_follow_the_service_rules(batch: Running) -> None:
    client = batch.client()
    make_pool(client, "Same")
    with pytest.raises(HttpResponseError) as caught:
        make_pool(client, "same")
    assert caught.value.status_code == 409
    assert caught.value.error.code == "PoolExists"
    with pytest.raises(HttpResponseError) as caught:
        make_pool(client, "no spaces allowed")
    assert caught.value.status_code == 400
    with pytest.raises(HttpResponseError) as caught:
        make_pool(client, "x" * 65)
    assert caught.value.status_code == 400


def test_an_auto_pool_goes_with_its_job(batch: Running) -> None:
    client = batch.client()
    spec = m.BatchAutoPoolSpecification(
        auto_pool_id_prefix="auto",
        pool_lifetime_option="job",
        pool=m.BatchPoolSpecification(
            vm_size="standard_d2s_v3",
            virtual_machine_configuration=IMAGE,
            target_dedicated_nodes=1,
        ),
    )
    client.create_job(
        m.BatchJobCreateOptions(
            id="autojob",
            pool_info=m.BatchPoolInfo(auto_pool_specification=spec),
            all_tasks_complete_mode="terminatejob",
        )
    )
    pool_id = client.get_job("autojob").execution_info.pool_id
    assert client.pool_exists(pool_id)
    client.create_task("autojob", m.BatchTaskCreateOptions(id="one", command_line="true"))
    wait_until(lambda: client.get_job("autojob").state == "completed")
    assert client.get_job("autojob").execution_info.termination_reason == "AllTasksComplete"
    wait_until(lambda: not pool_exists(client, pool_id))


def test_supported_images_include_one_past_its_end_of_life(batch: Running) -> None:
    images = list(batch.client().list_supported_images())
    skus = {image.node_agent_sku_id for image in images}
    assert {"batch.node.ubuntu 22.04", "batch.node.ubuntu 24.04"} <= skus
    now = datetime.now(UTC)
    assert any(
        image.batch_support_end_of_life and image.batch_support_end_of_life < now
        for image in images
    )


def test_every_answer_of_a_run_matches_the_official_description(batch: Running) -> None:
    client = batch.client()
    make_pool(client, "checked", nodes=1, slots=2, start_task=m.BatchStartTask(command_line="true"))
    wait_until(nodes_ready(client, "checked", 1))
    client.create_job(
        m.BatchJobCreateOptions(id="checked", pool_info=m.BatchPoolInfo(pool_id="checked"))
    )
    client.create_tasks(
        "checked",
        [m.BatchTaskCreateOptions(id=f"t{n}", command_line="/bin/sh -c 'exit 0'") for n in range(5)]
        + [m.BatchTaskCreateOptions(id="bad", command_line="/bin/sh -c 'exit 1'")],
    )
    wait_until(job_done(client, "checked", 6))
    client.get_pool("checked")
    list(client.list_pools())
    list(client.list_nodes("checked"))
    list(client.list_jobs())
    list(client.list_tasks("checked"))
    client.get_task("checked", "bad")
    list(client.list_task_files("checked", "bad"))
    list(client.list_supported_images())
    with pytest.raises(ResourceNotFoundError):
        client.get_job("absent")
    client.begin_terminate_job("checked", TERMINATE, polling_interval=1).result()
    client.begin_delete_job("checked", polling_interval=1).result()
    client.begin_delete_pool("checked", polling_interval=1).result()

    problems = []
    checked = 0
    for operation_id, _path, status, body, _version in batch.answers:
        if body is None or not operation_id:
            continue
        checked += 1
        problems += response_problems(operation_id, status, body)
    assert checked >= 15
    assert problems == []
