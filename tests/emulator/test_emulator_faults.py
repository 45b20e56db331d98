"""The failures of a real account, on demand: each fault knob set from outside the emulator (its
admin endpoint, or ``fanout batch-emulator``'s options) and observed through the official SDK."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from azure.batch import BatchClient
from azure.batch import models as m
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError, ServiceResponseError
from batch_emulator import Running, make_pool
from conftest import wait_until


def admin(endpoint: str, document: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    """GET (no document) or POST the admin endpoint; its status and JSON answer."""
    data = json.dumps(document).encode() if document is not None else None
    request = urllib.request.Request(
        f"{endpoint}/_emulator/faults", data=data, method="POST" if data else "GET"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def resize(client: BatchClient, pool_id: str, options: m.BatchPoolResizeOptions) -> None:
    client.begin_resize_pool(pool_id, options, polling_interval=0.2).result()


def steady(client: BatchClient, pool_id: str) -> m.BatchPool:
    wait_until(lambda: client.get_pool(pool_id).allocation_state == "steady")
    return client.get_pool(pool_id)


def states(client: BatchClient, pool_id: str) -> list[str]:
    return sorted(node.state for node in client.list_nodes(pool_id))


def test_resize_errors_on_every_pool_then_on_one(batch: Running) -> None:
    client = batch.client()
    status, knobs = admin(batch.endpoint, {"resizeErrors": {"*": "AccountCoreQuotaReached"}})
    assert (status, knobs["resizeErrors"]) == (200, {"*": "AccountCoreQuotaReached"})
    make_pool(client, "quota", nodes=2)
    pool = steady(client, "quota")
    assert (pool.target_dedicated_nodes, pool.current_dedicated_nodes) == (2, 0)
    (error,) = pool.resize_errors
    assert error.code == "AccountCoreQuotaReached"
    assert error.message == "The specified account has reached core quota"
    assert list(client.list_nodes("quota")) == []

    admin(batch.endpoint, {"resizeErrors": {"*": None, "capacity": "AllocationFailed"}})
    make_pool(client, "capacity", nodes=0, spot=1)
    make_pool(client, "fine", nodes=1)
    assert [e.code for e in steady(client, "capacity").resize_errors] == ["AllocationFailed"]
    assert steady(client, "fine").resize_errors is None
    wait_until(lambda: states(client, "fine") == ["idle"])


def test_resize_errors_go_with_a_later_successful_resize_unless_stale(batch: Running) -> None:
    client = batch.client()
    admin(batch.endpoint, {"resizeErrors": {"p": "AllocationTimedout"}})
    make_pool(client, "p", nodes=1)
    assert [e.code for e in steady(client, "p").resize_errors] == ["AllocationTimedout"]
    admin(batch.endpoint, {"resizeErrors": {"p": None}})
    resize(client, "p", m.BatchPoolResizeOptions(target_dedicated_nodes=1))
    assert steady(client, "p").resize_errors is None
    assert steady(client, "p").current_dedicated_nodes == 1

    admin(batch.endpoint, {"resizeErrors": {"p": "AllocationTimedout"}, "staleResizeErrors": True})
    resize(client, "p", m.BatchPoolResizeOptions(target_dedicated_nodes=2))
    assert [e.code for e in steady(client, "p").resize_errors] == ["AllocationTimedout"]
    admin(batch.endpoint, {"resizeErrors": {"p": None}})
    resize(client, "p", m.BatchPoolResizeOptions(target_dedicated_nodes=2))
    pool = steady(client, "p")
    assert pool.current_dedicated_nodes == 2
    assert [e.code for e in pool.resize_errors] == ["AllocationTimedout"]  # stale, left over


def test_the_low_priority_quota_fails_only_spot_growth(batch: Running) -> None:
    client = batch.client()
    admin(batch.endpoint, {"resizeErrors": {"*": "AccountLowPriorityCoreQuotaReached"}})
    make_pool(client, "p", nodes=1, spot=2)
    pool = steady(client, "p")
    assert (pool.current_dedicated_nodes, pool.current_low_priority_nodes) == (1, 0)
    assert [e.code for e in pool.resize_errors] == ["AccountLowPriorityCoreQuotaReached"]


def test_a_stuck_resize_stays_resizing_with_nothing_coming(batch: Running) -> None:
    client = batch.client()
    admin(batch.endpoint, {"stuckResizes": True})
    make_pool(client, "p", nodes=1)
    time.sleep(1)
    pool = client.get_pool("p")
    assert (pool.allocation_state, pool.resize_errors) == ("resizing", None)
    assert list(client.list_nodes("p")) == []
    client.begin_delete_pool("p", polling_interval=0.2).result()  # a stuck pool still goes


def test_nodes_that_take_seconds_to_come_up(batch: Running) -> None:
    client = batch.client()
    admin(batch.endpoint, {"nodeStartSeconds": 1.5})
    started = time.monotonic()
    make_pool(client, "slow", nodes=2)
    wait_until(lambda: len(states(client, "slow")) == 2)
    assert states(client, "slow") == ["starting", "starting"]
    wait_until(lambda: states(client, "slow") == ["idle", "idle"])
    assert time.monotonic() - started >= 1.5


def sleeper(task_id: str, seconds: float) -> m.BatchTaskCreateOptions:
    return m.BatchTaskCreateOptions(id=task_id, command_line=f"sleep {seconds}")


def test_a_preempted_spot_task_is_requeued_and_completes_elsewhere(batch: Running) -> None:
    client = batch.client()
    make_pool(client, "spot", nodes=0, spot=1)
    wait_until(lambda: states(client, "spot") == ["idle"])
    client.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="spot")))
    client.create_task("j", sleeper("t", 2))
    wait_until(lambda: client.get_task("j", "t").state == "running")
    (spot_node,) = client.list_nodes("spot")

    status, done = admin(batch.endpoint, {"preempt": {"pool": "spot"}})
    assert (status, done["preempted"]) == (200, [spot_node.id])
    wait_until(lambda: client.get_task("j", "t").state == "active")
    assert states(client, "spot") == ["preempted"]
    counts = {c.pool_id: c for c in client.list_pool_node_counts()}["spot"]
    assert (counts.low_priority.preempted, counts.low_priority.total) == (1, 1)

    resize(
        client,
        "spot",
        m.BatchPoolResizeOptions(target_dedicated_nodes=1, target_low_priority_nodes=1),
    )
    wait_until(lambda: client.get_task("j", "t").state == "completed", timeout=30)
    task = client.get_task("j", "t")
    assert task.execution_info.result == "success"
    assert (task.execution_info.requeue_count, task.execution_info.retry_count) == (1, 0)
    assert task.node_info.node_id != spot_node.id and task.node_info.node_id.endswith("_d")


def test_a_node_turning_unusable_has_its_tasks_requeued(batch: Running) -> None:
    client = batch.client()
    make_pool(client, "p", nodes=2)
    wait_until(lambda: states(client, "p") == ["idle", "idle"])
    client.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
    client.create_task("j", sleeper("t", 1))
    wait_until(lambda: client.get_task("j", "t").state == "running")
    first = client.get_task("j", "t").node_info.node_id
    status, done = admin(batch.endpoint, {"unusable": {"pool": "p", "node": first}})
    assert (status, done["madeUnusable"]) == (200, [first])
    assert client.get_node("p", first).state == "unusable"
    wait_until(lambda: client.get_task("j", "t").state == "completed", timeout=30)
    task = client.get_task("j", "t")
    assert task.execution_info.result == "success" and task.node_info.node_id != first
    assert task.execution_info.requeue_count == 1


def test_nodes_lost_after_seconds(batch: Running) -> None:
    client = batch.client()
    admin(batch.endpoint, {"preemptSpotAfterSeconds": 1, "unusableAfterSeconds": 2})
    make_pool(client, "p", nodes=1, spot=1)
    wait_until(lambda: states(client, "p") == ["idle", "idle"])
    wait_until(lambda: states(client, "p") == ["preempted", "unusable"])
    by_kind = {node.is_dedicated: node.state for node in client.list_nodes("p")}
    assert by_kind == {False: "preempted", True: "unusable"}


def test_busy_outage_and_lost_answers_from_outside(batch: Running) -> None:
    client = batch.client()
    make_pool(client, "p", nodes=0)
    assert admin(batch.endpoint, {"busyEvery": 2})[1]["busyEvery"] == 2
    calls = []
    for _ in range(4):
        try:
            client.get_pool("p", retry_total=0)
            calls.append(200)
        except HttpResponseError as error:
            calls.append(error.status_code)
    assert calls == [200, 503, 200, 503]
    admin(batch.endpoint, {"busyEvery": 0, "outageSeconds": 1.5})
    with pytest.raises(HttpResponseError) as caught:
        client.get_pool("p", retry_total=0)
    assert caught.value.status_code == 503
    time.sleep(1.6)
    assert client.get_pool("p", retry_total=0).id == "p"
    knobs = admin(batch.endpoint, {"loseAnswers": {"Jobs_CreateJob": 1}})[1]
    assert knobs["loseAnswers"] == {"Jobs_CreateJob": 1}
    with pytest.raises(ServiceResponseError):
        client.create_job(
            m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")), retry_total=0
        )
    assert client.get_job("j").id == "j"  # carried out all the same
    assert admin(batch.endpoint)[1]["loseAnswers"] == {}


def test_the_admin_endpoint_refuses_what_it_cannot_do(batch: Running) -> None:
    before = admin(batch.endpoint)[1]
    for document in (
        {"busyEvery": 3, "nodeStartSeconds": -1},
        {"resizeErrors": {"*": "NoSuchError"}},
        {"preempt": {}},
        {"unknownKnob": 1},
    ):
        status, answer = admin(batch.endpoint, document)
        assert status == 400 and answer["error"]
    assert admin(batch.endpoint) == (200, before)
    make_pool(batch.client(), "p", nodes=1)
    wait_until(lambda: states(batch.client(), "p") == ["idle"])
    (node,) = batch.client().list_nodes("p")
    status, answer = admin(batch.endpoint, {"preempt": {"pool": "p", "node": node.id}})
    assert status == 400 and "dedicated" in answer["error"]
    assert admin(batch.endpoint, {"preempt": {"pool": "absent"}})[0] == 400
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"{batch.endpoint}/_emulator/other", timeout=10)
    assert caught.value.code == 404
    assert "GET /_emulator/faults 200" in batch.requests()


@contextmanager
def served(tmp_path: Path, *options: str) -> Iterator[tuple[str, BatchClient]]:
    """``fanout batch-emulator`` on a free port with ``options``; its endpoint and a client."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fanout",
            "batch-emulator",
            "--port",
            "0",
            "--root",
            str(tmp_path),
            *options,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = [process.stdout.readline() for _ in range(3)]
        found = re.fullmatch(r"Batch emulator listening on (http://\S+)\n", banner[0])
        assert found is not None, banner
        account, key = (line.split(": ", 1)[1].strip() for line in banner[1:])
        yield found.group(1), BatchClient(found.group(1), AzureNamedKeyCredential(account, key))
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_the_command_sets_every_knob_from_the_start(tmp_path: Path) -> None:
    options = (
        *("--resize-error", "quota=AccountCoreQuotaReached", "--stale-resize-errors"),
        "--stuck-resizes",
        *("--node-start-seconds", "0.5", "--preempt-spot-after", "1", "--unusable-after", "30"),
        *("--busy-every", "0", "--outage", "0", "--lose-answers", "Jobs_CreateJob:2"),
    )
    with served(tmp_path, *options) as (endpoint, client):
        assert admin(endpoint)[1] == {
            "busyEvery": 0,
            "outageSeconds": 0.0,
            "loseAnswers": {"Jobs_CreateJob": 2},
            "resizeErrors": {"quota": "AccountCoreQuotaReached"},
            "staleResizeErrors": True,
            "stuckResizes": True,
            "nodeStartSeconds": 0.5,
            "preemptSpotAfterSeconds": 1.0,
            "unusableAfterSeconds": 30.0,
        }
        admin(endpoint, {"stuckResizes": False})
        make_pool(client, "quota", nodes=1)
        assert [e.code for e in steady(client, "quota").resize_errors] == [
            "AccountCoreQuotaReached"
        ]
        make_pool(client, "spot", nodes=0, spot=1)
        wait_until(lambda: states(client, "spot") == ["preempted"], timeout=30)


def test_the_command_refuses_a_resize_error_it_does_not_know(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fanout", "batch-emulator", "--resize-error", "Nope"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "AccountCoreQuotaReached" in result.stderr
