"""Deleting tasks (``Tasks_DeleteTask``) and the busy fault (``busy_every``), with the official SDK.

A deleted task leaves listings and counts at once; a running one is ended first, its process
group with it; a job that ends with its tasks completes when the last task left is done. With
``busy_every`` the emulator refuses every N-th request 503 ``ServerBusy`` unexecuted, and the
SDK's own retry policy gets through.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from azure.batch import BatchClient
from azure.batch import models as m
from azure.batch.models._models import BatchJobTerminateOptions
from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceModifiedError, ResourceNotFoundError
from batch_emulator import Running, make_pool
from click.testing import CliRunner
from conftest import process_alive, wait_until
from fanout_azure.emulator.command import DEFAULT_ACCOUNT, DEFAULT_KEY, batch_emulator
from fanout_azure.emulator.server import BatchEmulator
from fanout_azure.emulator.spec import response_problems
from test_recordings import Capture, compare, recorded

TERMINATE = BatchJobTerminateOptions(termination_reason="UserTerminate")


def make_job(client: BatchClient, job_id: str, pool_id: str, *, terminate: bool = False) -> None:
    mode = m.BatchAllTasksCompleteMode.TERMINATE_JOB if terminate else None
    client.create_job(
        m.BatchJobCreateOptions(
            id=job_id, pool_info=m.BatchPoolInfo(pool_id=pool_id), all_tasks_complete_mode=mode
        )
    )


def sleeper(task_id: str, pid_file: Path) -> m.BatchTaskCreateOptions:
    """A task that writes its shell's pid to ``pid_file``, then sleeps 300 s in that process."""
    command = f'/bin/sh -c "echo $$ > {pid_file}; exec sleep 300"'
    return m.BatchTaskCreateOptions(id=task_id, command_line=command)


def pid_of(pid_file: Path) -> int:
    wait_until(lambda: pid_file.is_file() and pid_file.read_text().strip().isdigit())
    return int(pid_file.read_text())


def refused(call: Callable[[], object]) -> tuple[int | None, str | None]:
    """The status and Batch error code ``call`` is refused with."""
    with pytest.raises(HttpResponseError) as caught:
        call()
    return caught.value.status_code, caught.value.error.code if caught.value.error else None


def state_of(client: BatchClient, job_id: str, task_id: str) -> Callable[[], str | None]:
    return lambda: client.get_task(job_id, task_id).state


def task_directories(batch: Running, job_id: str, task_id: str) -> list[Path]:
    """The task's directories on every node of the emulator."""
    root = batch.emulator.account.root
    return list(root.glob(f"pools/*/node-*/workitems/{job_id}/job-1/{task_id}"))


def spec_problems(batch: Running) -> list[str]:
    return [
        problem
        for operation_id, _path, status, body, _version in batch.answers
        if operation_id == "Tasks_DeleteTask"
        for problem in response_problems(operation_id, status, body)
    ]


# ------------------------------------------------------------------------------- Tasks_DeleteTask


def test_deleting_a_completed_task_removes_it_and_its_files(batch: Running) -> None:
    client, capture = batch.client(), Capture()
    make_pool(client, "p")
    make_job(client, "j", "p")
    client.create_task("j", m.BatchTaskCreateOptions(id="done", command_line="echo hello"))
    client.create_task("j", m.BatchTaskCreateOptions(id="kept", command_line="true"))
    wait_until(lambda: client.get_job_task_counts("j").task_counts.completed == 2)
    assert task_directories(batch, "j", "done")

    client.delete_task("j", "done", raw_response_hook=capture.hook)
    # the nearest recorded delete under a task: 200, no body, the standard headers only
    compare(capture, recorded("files[async]", "DELETE", "/tasks/test_task/files/stdout.txt"))
    assert capture.body is None
    assert "etag" not in capture.headers and "content-type" not in capture.headers

    assert refused(lambda: client.get_task("j", "done")) == (404, "TaskNotFound")
    assert [task.id for task in client.list_tasks("j")] == ["kept"]
    counts = client.get_job_task_counts("j").task_counts
    assert (counts.completed, counts.succeeded, counts.active, counts.running) == (1, 1, 0, 0)
    assert task_directories(batch, "j", "done") == []
    assert task_directories(batch, "j", "kept")
    assert refused(lambda: list(client.list_task_files("j", "done"))) == (404, "TaskNotFound")
    assert "DELETE /jobs/j/tasks/done 200" in batch.requests()
    # its id is free again
    client.create_task("j", m.BatchTaskCreateOptions(id="done", command_line="true"))
    wait_until(lambda: state_of(client, "j", "done")() == "completed")
    assert spec_problems(batch) == []


def test_deleting_a_running_task_ends_its_process_first(batch: Running, tmp_path: Path) -> None:
    client = batch.client()
    make_pool(client, "p")
    make_job(client, "j", "p")
    client.create_task("j", sleeper("sleeper", tmp_path / "sleeper.pid"))
    pid = pid_of(tmp_path / "sleeper.pid")
    assert process_alive(pid)

    client.delete_task("j", "sleeper")
    assert not process_alive(pid)  # gone before the answer
    assert list(client.list_tasks("j")) == []
    counts = client.get_job_task_counts("j").task_counts
    assert (counts.active, counts.running, counts.completed) == (0, 0, 0)
    assert task_directories(batch, "j", "sleeper") == []
    assert client.get_job("j").state == "active"
    # its slot is free: the next task runs on the pool's single node
    client.create_task("j", m.BatchTaskCreateOptions(id="next", command_line="true"))
    wait_until(lambda: state_of(client, "j", "next")() == "completed")
    (node,) = client.list_nodes("p")
    assert node.running_tasks_count == 0


def test_a_deleted_waiting_task_never_runs(batch: Running, tmp_path: Path) -> None:
    client = batch.client()
    make_pool(client, "p")
    make_job(client, "j", "p")
    client.create_task("j", sleeper("sleeper", tmp_path / "sleeper.pid"))
    pid = pid_of(tmp_path / "sleeper.pid")
    marker = tmp_path / "ran"
    client.create_task("j", m.BatchTaskCreateOptions(id="waiting", command_line=f"touch {marker}"))
    assert client.get_task("j", "waiting").state == "active"  # the only slot is taken

    client.delete_task("j", "waiting")
    assert client.get_job_task_counts("j").task_counts.active == 0
    client.delete_task("j", "sleeper")
    assert not process_alive(pid)
    time.sleep(1)  # several dispatch rounds with the slot free
    assert not marker.exists()


def test_deleting_what_is_not_there(batch: Running) -> None:
    client = batch.client()
    make_job(client, "j", "none")
    client.create_task("j", m.BatchTaskCreateOptions(id="once", command_line="true"))
    assert refused(lambda: client.delete_task("j", "absent")) == (404, "TaskNotFound")
    assert refused(lambda: client.delete_task("absent", "once")) == (404, "JobNotFound")
    client.delete_task("j", "once")
    assert refused(lambda: client.delete_task("j", "once")) == (404, "TaskNotFound")
    assert spec_problems(batch) == []


def test_a_task_of_a_completed_job_cannot_be_deleted(batch: Running) -> None:
    client = batch.client()
    make_job(client, "j", "none")
    client.create_task("j", m.BatchTaskCreateOptions(id="stays", command_line="true"))
    client.begin_terminate_job("j", TERMINATE, polling_interval=1).result()
    assert refused(lambda: client.delete_task("j", "stays")) == (409, "JobCompleted")
    assert [task.id for task in client.list_tasks("j")] == ["stays"]
    assert spec_problems(batch) == []


def test_an_if_match_that_fails_keeps_the_task(batch: Running) -> None:
    client = batch.client()
    make_job(client, "j", "none")
    client.create_task("j", m.BatchTaskCreateOptions(id="t", command_line="true"))
    etag = client.get_task("j", "t").etag
    matching = MatchConditions.IfNotModified
    with pytest.raises(ResourceModifiedError) as caught:
        client.delete_task("j", "t", etag="0x8DC000000000000", match_condition=matching)
    assert caught.value.status_code == 412
    assert client.get_task("j", "t").id == "t"
    client.delete_task("j", "t", etag=etag, match_condition=matching)
    assert list(client.list_tasks("j")) == []


def test_deleting_the_last_unfinished_task_completes_a_terminatejob_job(
    batch: Running, tmp_path: Path
) -> None:
    client = batch.client()
    make_pool(client, "p", slots=2)
    make_job(client, "j", "p", terminate=True)
    # in one request, so that "quick" cannot complete the job alone before "sleeper" is added
    group = m.BatchTaskGroup(
        task_values=[
            m.BatchTaskCreateOptions(id="quick", command_line="true"),
            sleeper("sleeper", tmp_path / "sleeper.pid"),
        ]
    )
    client.create_task_collection("j", group)
    pid = pid_of(tmp_path / "sleeper.pid")
    wait_until(lambda: state_of(client, "j", "quick")() == "completed")
    assert client.get_job("j").state == "active"

    client.delete_task("j", "sleeper")
    assert not process_alive(pid)
    wait_until(lambda: client.get_job("j").state == "completed")
    info = client.get_job("j").execution_info
    assert info is not None and info.termination_reason == "AllTasksComplete"
    assert [task.id for task in client.list_tasks("j")] == ["quick"]


# ------------------------------------------------------------------------------------ busy_every


@contextmanager
def busy_emulator(tmp_path: Path, every: int) -> Iterator[Running]:
    """An emulator refusing every ``every``-th request, logging its requests."""
    log_path = tmp_path / "requests.log"
    with log_path.open("a") as log:
        answers: list[tuple[str, str, int, Any, str]] = []
        emulator = BatchEmulator(
            "127.0.0.1",
            0,
            DEFAULT_ACCOUNT,
            DEFAULT_KEY,
            tmp_path / "nodes",
            request_log=log,
            observer=lambda *answer: answers.append(answer),
            busy_every=every,
        )
        emulator.start()
        try:
            yield Running(emulator, log_path, answers)
        finally:
            emulator.stop()


def test_every_third_request_busy_and_the_sdk_retries_through(tmp_path: Path) -> None:
    with busy_emulator(tmp_path, 3) as batch:
        client = batch.client()
        started = time.monotonic()
        make_pool(client, "p")
        make_job(client, "j", "p")
        tasks = [m.BatchTaskCreateOptions(id=f"t{n}", command_line="true") for n in range(5)]
        result = client.create_tasks("j", tasks)
        assert result.result_values is not None
        assert sorted(item.task_id for item in result.result_values) == [f"t{n}" for n in range(5)]
        assert {item.status for item in result.result_values} == {"success"}
        wait_until(lambda: client.get_job_task_counts("j").task_counts.completed == 5)
        assert len(list(client.list_tasks("j"))) == 5
        client.delete_task("j", "t0")
        assert client.get_job("j").state == "active"
        elapsed = time.monotonic() - started

        lines = batch.requests()
    statuses = [line.rsplit(" ", 1)[1] for line in lines]
    refusals = [line for line in lines if line.endswith(" 503")]
    assert len(refusals) == len(lines) // 3 >= 3
    # POST /jobs/j/addtaskcollection was the third request: refused, then retried and done
    assert lines[2] == "POST /jobs/j/addtaskcollection 503"
    assert lines[3] == "POST /jobs/j/addtaskcollection 200"
    for index, line in enumerate(lines):  # each refusal is followed by its retry, which passes
        if statuses[index] == "503":
            request = line.rsplit(" ", 1)[0]
            assert any(
                later.startswith(f"{request} ") and not later.endswith(" 503")
                for later in lines[index + 1 :]
            ), line
    assert elapsed >= len(refusals) * 0.9  # the SDK waited Retry-After each time
    refused_answers = [answer for answer in batch.answers if answer[2] == 503]
    assert len(refused_answers) == len(refusals)
    assert all(operation_id == "" for operation_id, *_ in refused_answers)
    assert all(answer[3]["code"] == "ServerBusy" for answer in refused_answers)


def test_a_busy_answer_is_a_batch_server_busy_with_retry_after(tmp_path: Path) -> None:
    with busy_emulator(tmp_path, 2) as batch:
        client, capture = batch.client(), Capture()
        with pytest.raises(ResourceNotFoundError):
            client.get_pool("absent", retry_total=0)
        with pytest.raises(HttpResponseError) as caught:
            client.get_pool("absent", retry_total=0, raw_response_hook=capture.hook)
        assert caught.value.status_code == 503  # not 404: the request was not executed
        assert caught.value.error is not None and caught.value.error.code == "ServerBusy"
        assert capture.headers["retry-after"] == "1"
        assert batch.requests() == ["GET /pools/absent 404", "GET /pools/absent 503"]
        assert response_problems("Pools_GetPool", 503, capture.body) == []


def test_busy_every_zero_refuses_nothing(tmp_path: Path) -> None:
    with busy_emulator(tmp_path, 0) as batch:
        client = batch.client()
        for _ in range(4):
            assert list(client.list_pools(retry_total=0)) == []
        assert batch.requests() == ["GET /pools 200"] * 4


def test_the_command_documents_busy_every_and_refuses_a_negative_one() -> None:
    runner = CliRunner()
    shown = runner.invoke(batch_emulator, ["--help"], terminal_width=200)
    assert shown.exit_code == 0
    assert "--busy-every N" in shown.output
    assert "503 ServerBusy" in shown.output and "Retry-After: 1" in shown.output
    wrong = runner.invoke(batch_emulator, ["--busy-every", "-1"])
    assert wrong.exit_code == 2
    with pytest.raises(ValueError):
        BatchEmulator("127.0.0.1", 0, DEFAULT_ACCOUNT, DEFAULT_KEY, Path(), busy_every=-1)
