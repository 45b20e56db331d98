"""The everyday control operations and monitoring listings, with the official SDK: node counts,
usage metrics, removing and rebooting nodes, autoscale, disabling and enabling jobs,
reactivating tasks — and every answer checked against the description."""

from __future__ import annotations

from pathlib import Path

import pytest
from azure.batch import BatchClient
from azure.batch import models as m
from azure.batch.models._models import BatchNodeRebootOptions
from azure.core.exceptions import HttpResponseError
from batch_emulator import IMAGE, Running, make_pool
from conftest import wait_until
from fanout_azure.emulator.spec import response_problems

# azure-batch 15.1 cannot reboot a node without this body; the model is not exported.
REBOOT = BatchNodeRebootOptions(node_reboot_kind="requeue")

DOCUMENTED_FORMULA = """startingNumberOfVMs = 1;
maxNumberofVMs = 25;
pendingTaskSamplePercent = $PendingTasks.GetSamplePercent(180 * TimeInterval_Second);
pendingTaskSamples = pendingTaskSamplePercent < 70 ? startingNumberOfVMs :
    avg($PendingTasks.GetSample(180 * TimeInterval_Second));
$TargetDedicatedNodes=min(maxNumberofVMs, pendingTaskSamples);
$NodeDeallocationOption = taskcompletion;"""
"""The "pending tasks" example of Microsoft's "Create a formula to automatically scale compute
nodes in a Batch pool", as published."""


def problems(batch: Running) -> list[str]:
    return [
        problem
        for operation_id, _path, status, body, version in batch.answers
        if operation_id and body is not None
        for problem in response_problems(operation_id, status, body, version=version)
    ]


def states(client: BatchClient, pool_id: str) -> list[str]:
    return sorted(node.state for node in client.list_nodes(pool_id))


def job_on(client: BatchClient, job_id: str, pool_id: str) -> None:
    client.create_job(
        m.BatchJobCreateOptions(id=job_id, pool_info=m.BatchPoolInfo(pool_id=pool_id))
    )


def test_node_counts_and_usage_metrics(batch: Running) -> None:
    client = batch.client()
    make_pool(client, "p", nodes=2)
    wait_until(lambda: states(client, "p") == ["idle", "idle"])
    (counts,) = client.list_pool_node_counts()
    assert (counts.pool_id, counts.dedicated.idle, counts.dedicated.total) == ("p", 2, 2)
    assert counts.low_priority.total == 0
    assert list(client.list_pool_usage_metrics()) == []
    assert problems(batch) == []


def test_removing_nodes_shrinks_the_pool(batch: Running) -> None:
    client = batch.client()
    make_pool(client, "p", nodes=3)
    wait_until(lambda: states(client, "p") == ["idle"] * 3)
    gone = [node.id for node in client.list_nodes("p")][:2]
    client.begin_remove_nodes(
        "p", m.BatchNodeRemoveOptions(node_ids=gone), polling_interval=0.2
    ).result()
    wait_until(lambda: client.get_pool("p").allocation_state == "steady")
    pool = client.get_pool("p")
    assert (pool.target_dedicated_nodes, pool.current_dedicated_nodes) == (1, 1)
    assert not {node.id for node in client.list_nodes("p")} & set(gone)
    with pytest.raises(HttpResponseError) as caught:
        client.begin_remove_nodes("p", m.BatchNodeRemoveOptions(node_ids=["absent"])).result()
    assert caught.value.error is not None and caught.value.error.code == "NodeNotFound"
    assert problems(batch) == []


def test_a_rebooted_node_runs_its_start_task_again_and_requeues_its_task(
    batch: Running, tmp_path: Path
) -> None:
    client = batch.client()
    starts = tmp_path / "starts"
    start = m.BatchStartTask(command_line=f"/bin/sh -c 'echo started >> {starts}'")
    make_pool(client, "p", nodes=1, start_task=start)
    wait_until(lambda: states(client, "p") == ["idle"] and starts.is_file())
    job_on(client, "j", "p")
    client.create_task("j", m.BatchTaskCreateOptions(id="t", command_line="sleep 2"))
    wait_until(lambda: client.get_task("j", "t").state == "running")
    (node,) = client.list_nodes("p")
    client.begin_reboot_node("p", node.id, REBOOT, polling_interval=0.2).result()
    wait_until(lambda: client.get_task("j", "t").state == "completed", timeout=30)
    task = client.get_task("j", "t")
    assert task.execution_info.result == "success"
    assert task.execution_info.requeue_count == 1
    assert starts.read_text() == "started\nstarted\n"
    assert problems(batch) == []


def test_a_failed_task_reactivated_runs_again(batch: Running, tmp_path: Path) -> None:
    client = batch.client()
    make_pool(client, "p")
    job_on(client, "j", "p")
    flag = tmp_path / "fixed"
    client.create_task(
        "j", m.BatchTaskCreateOptions(id="t", command_line=f"/bin/sh -c 'test -e {flag}'")
    )
    wait_until(lambda: client.get_task("j", "t").state == "completed")
    assert client.get_task("j", "t").execution_info.result == "failure"
    flag.touch()
    client.reactivate_task("j", "t")
    wait_until(lambda: client.get_task("j", "t").state == "completed")
    assert client.get_task("j", "t").execution_info.result == "success"
    with pytest.raises(HttpResponseError) as caught:
        client.reactivate_task("j", "t")
    assert caught.value.status_code == 409
    assert problems(batch) == []


def test_a_disabled_job_starts_nothing_until_enabled(batch: Running, tmp_path: Path) -> None:
    client = batch.client()
    make_pool(client, "p")
    job_on(client, "j", "p")
    client.create_task("j", m.BatchTaskCreateOptions(id="running", command_line="sleep 30"))
    wait_until(lambda: client.get_task("j", "running").state == "running")
    client.begin_disable_job(
        "j", m.BatchJobDisableOptions(disable_tasks="requeue"), polling_interval=0.2
    ).result()
    wait_until(lambda: client.get_job("j").state == "disabled")
    assert client.get_task("j", "running").state == "active"
    client.delete_task("j", "running")
    marker = tmp_path / "ran"
    client.create_task("j", m.BatchTaskCreateOptions(id="later", command_line=f"touch {marker}"))
    wait_until(lambda: client.get_job("j").state == "disabled")
    assert not marker.exists() and client.get_task("j", "later").state == "active"
    client.begin_enable_job("j", polling_interval=0.2).result()
    wait_until(lambda: client.get_task("j", "later").state == "completed")
    assert marker.exists() and client.get_job("j").state == "active"
    assert problems(batch) == []


def test_autoscale_enable_evaluate_disable(batch: Running) -> None:
    client = batch.client()
    make_pool(client, "p", nodes=0)
    job_on(client, "j", "p")
    client.create_tasks(
        "j", [m.BatchTaskCreateOptions(id=f"t{n}", command_line="true") for n in range(3)]
    )
    client.enable_pool_auto_scale(
        "p",
        m.BatchPoolEnableAutoScaleOptions(
            auto_scale_formula="$TargetDedicatedNodes = min(2, max($PendingTasks.GetSample(1)))"
        ),
    )
    wait_until(lambda: client.get_job_task_counts("j").task_counts.completed == 3, timeout=30)
    pool = client.get_pool("p")
    assert pool.enable_auto_scale and pool.target_dedicated_nodes == 2
    assert pool.auto_scale_run.results.startswith("$TargetDedicatedNodes=2;")

    run = client.evaluate_pool_auto_scale(
        "p", m.BatchPoolEvaluateAutoScaleOptions(auto_scale_formula=DOCUMENTED_FORMULA)
    )
    assert run.results.startswith(
        "$TargetDedicatedNodes=1;$TargetLowPriorityNodes=0;$NodeDeallocationOption=taskcompletion;"
    )
    assert client.get_pool("p").target_dedicated_nodes == 2  # evaluating changes nothing
    with pytest.raises(HttpResponseError) as caught:
        client.evaluate_pool_auto_scale(
            "p",
            m.BatchPoolEvaluateAutoScaleOptions(auto_scale_formula="$X = $CPUPercent.GetSample(1)"),
        )
    assert caught.value.error is not None and caught.value.error.code == "InvalidAutoScaleFormula"

    client.disable_pool_auto_scale("p")
    pool = client.get_pool("p")
    assert not pool.enable_auto_scale and pool.target_dedicated_nodes == 2
    with pytest.raises(HttpResponseError) as caught:
        client.evaluate_pool_auto_scale(
            "p", m.BatchPoolEvaluateAutoScaleOptions(auto_scale_formula="$TargetDedicatedNodes=1")
        )
    assert caught.value.status_code == 409
    assert problems(batch) == []


def test_a_pool_created_scaling_itself_as_fanout_creates_it(batch: Running) -> None:
    client = batch.client()
    client.create_pool(
        m.BatchPoolCreateOptions(
            id="auto",
            vm_size="standard_d2s_v3",
            virtual_machine_configuration=IMAGE,
            enable_auto_scale=True,
            auto_scale_formula=DOCUMENTED_FORMULA,
        )
    )
    wait_until(lambda: states(client, "auto") == ["idle"])
    pool = client.get_pool("auto")
    assert (pool.target_dedicated_nodes, pool.target_low_priority_nodes) == (1, 0)
    with pytest.raises(HttpResponseError) as caught:
        client.create_pool(
            m.BatchPoolCreateOptions(
                id="broken",
                vm_size="standard_d2s_v3",
                virtual_machine_configuration=IMAGE,
                enable_auto_scale=True,
                auto_scale_formula="$TargetDedicatedNodes = percentile($ActiveTasks, 90)",
            )
        )
    assert (caught.value.status_code, caught.value.error.code) == (400, "InvalidAutoScaleFormula")
    assert problems(batch) == []
