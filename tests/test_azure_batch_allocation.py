"""azure-batch against the allocation failures of a real account, set on the emulator's fault
knobs: quotas, no capacity, slow nodes, a pool that never gets a node, stale resize errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from azure.batch import models as m
from batch_emulator import Running, make_pool
from batch_runs import nothing_left, on_batch
from conftest import load_record, wait_until, write_inputs, write_job

pytestmark = pytest.mark.azurite


def quick_job(job_dir: Path, count: int = 2, **settings: object) -> Path:
    write_inputs(job_dir, {f"t{n}.txt": f"input {n}" for n in range(count)})
    return write_job(
        job_dir,
        {
            "job": {
                "name": "alloc",
                "inputs": ["*.txt"],
                "command": "cp {input} {input_stem}.out",
                "outputs": ["*.out"],
            },
            "backends.azure-batch": {"slots": 2, **settings},
        },
    )


def stop_line(output: str, words: str) -> str:
    """The one line of ``output`` that carries ``words``; fails if there is none, several or a
    traceback."""
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if words in line]
    assert len(lines) == 1, output
    return lines[0]


@pytest.mark.parametrize(
    ("code", "nodes", "says"),
    [
        ("AccountCoreQuotaReached", {}, "quota of dedicated cores for the VM family of"),
        (
            "AccountLowPriorityCoreQuotaReached",
            {"nodes": 0, "spot_nodes": 1},
            "quota of spot (low-priority) cores",
        ),
        ("AllocationFailed", {}, "no capacity for standard_d2s_v3 in this region"),
        ("AllocationTimedout", {}, "no standard_d2s_v3 capacity in this region"),
    ],
)
def test_a_pool_that_gets_no_node_stops_the_run_saying_what_to_do(
    code: str,
    nodes: dict[str, int],
    says: str,
    batch: Running,
    batch_env: dict[str, str],
    azure_container: str,
    job_dir: Path,
) -> None:
    batch.emulator.faults.set_resize_error(code)
    result = on_batch(quick_job(job_dir, **nodes), azure_container, batch_env)
    assert result.returncode == 1, result.stderr + result.stdout
    line = stop_line(result.stderr + result.stdout, code)
    assert "got no nodes" in line and says in line
    if "quota" in says:
        assert "Azure portal, Batch account, Quotas" in line
    else:
        assert "another vm_size" in line
    assert nothing_left(batch)


def test_slow_nodes_are_waited_for(
    batch: Running, batch_env: dict[str, str], azure_container: str, job_dir: Path
) -> None:
    batch.emulator.faults.node_start_s = 2
    env = {**batch_env, "FANOUT_AZURE_BATCH_ALLOCATION_TIMEOUT": "60s"}
    result = on_batch(quick_job(job_dir), azure_container, env, "--out", job_dir / "out")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "nodes: 0 of 1 ready" in result.stdout
    assert all(task["state"] == "succeeded" for task in load_record(job_dir / "out")["tasks"])
    assert nothing_left(batch)


def test_a_pool_with_no_node_coming_and_no_error_stops_after_the_allocation_timeout(
    batch: Running, batch_env: dict[str, str], azure_container: str, job_dir: Path
) -> None:
    batch.emulator.faults.stuck_resizes = True
    env = {**batch_env, "FANOUT_AZURE_BATCH_ALLOCATION_TIMEOUT": "3s"}
    result = on_batch(quick_job(job_dir), azure_container, env)
    assert result.returncode == 1, result.stderr + result.stdout
    line = stop_line(result.stderr + result.stdout, "had no node ready in 3s")
    assert "0 of 1 nodes allocated" in line and "allocation_timeout" in line
    assert nothing_left(batch)


def test_stale_resize_errors_are_ignored(
    batch: Running, batch_env: dict[str, str], azure_container: str, job_dir: Path
) -> None:
    faults, client = batch.emulator.faults, batch.client()
    faults.stale_resize_errors = True
    faults.set_resize_error("AllocationFailed", "shared")
    make_pool(client, "shared", nodes=1)
    wait_until(lambda: client.get_pool("shared").allocation_state == "steady")
    faults.set_resize_error(None, "shared")
    client.begin_resize_pool(
        "shared", m.BatchPoolResizeOptions(target_dedicated_nodes=1), polling_interval=0.2
    ).result()
    wait_until(lambda: client.get_pool("shared").current_dedicated_nodes == 1)
    pool = client.get_pool("shared")
    assert [error.code for error in pool.resize_errors or []] == ["AllocationFailed"]

    result = on_batch(quick_job(job_dir, pool_id="shared"), azure_container, batch_env)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "AllocationFailed" not in result.stderr + result.stdout
