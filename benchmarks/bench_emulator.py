"""The Batch emulator under load: 10,000 no-op tasks through the official SDK.

The emulator runs as ``fanout batch-emulator`` in a process of its own (so it does not share a
GIL with the client) with a pool of 2 nodes x 8 slots; the tasks (``true``) are added with the
SDK's ``create_tasks`` and run to completion. Reported: the time to add them and creations per
second, the wall time until all are completed (task counts polled once a second), and the
requests by kind from the emulator's request log.

    python benchmarks/bench_emulator.py [--tasks 10000] [--concurrency 4]

Target: at least 500 task creations per second.
"""

from __future__ import annotations

import argparse
import collections
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from azure.batch import BatchClient
from azure.batch import models as m
from azure.core.credentials import AzureNamedKeyCredential
from fanout_azure.emulator.command import DEFAULT_ACCOUNT, DEFAULT_KEY

NODES = 2
SLOTS = 8
TARGET_PER_SECOND = 500
IMAGE = m.VirtualMachineConfiguration(
    image_reference=m.BatchVmImageReference(
        publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts"
    ),
    node_agent_sku_id="batch.node.ubuntu 22.04",
)
_ID_SEGMENT = re.compile(r"(/(?:pools|jobs|tasks|nodes)/)[^/]+")


def start_emulator(work: Path) -> tuple[subprocess.Popen[str], str]:
    """``fanout batch-emulator`` on a free port, and the endpoint it printed."""
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "fanout", "batch-emulator", "--port", "0"),
            *("--root", str(work / "nodes"), "--request-log", str(work / "requests.log")),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    found = re.search(r"https?://\S+", first)
    if found is None:
        process.kill()
        raise SystemExit(f"the emulator printed no endpoint: {first!r}")
    return process, found.group(0)


def stop_emulator(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


def prepare(client: BatchClient) -> None:
    """A pool of NODES x SLOTS, its nodes ready, and a job on it."""
    client.create_pool(
        m.BatchPoolCreateOptions(
            id="bench",
            vm_size="standard_d2s_v3",
            virtual_machine_configuration=IMAGE,
            target_dedicated_nodes=NODES,
            task_slots_per_node=SLOTS,
        )
    )
    while not all_idle(client):
        time.sleep(0.1)
    client.create_job(
        m.BatchJobCreateOptions(id="bench", pool_info=m.BatchPoolInfo(pool_id="bench"))
    )


def all_idle(client: BatchClient) -> bool:
    states = [node.state for node in client.list_nodes("bench")]
    return len(states) == NODES and all(state == "idle" for state in states)


def add_tasks(client: BatchClient, count: int, concurrency: int) -> float:
    """Add ``count`` no-op tasks; the seconds it took."""
    tasks = [m.BatchTaskCreateOptions(id=f"t{n:06d}", command_line="true") for n in range(count)]
    started = time.perf_counter()
    client.create_tasks("bench", tasks, max_concurrency=concurrency)
    return time.perf_counter() - started


def wait_for_completion(client: BatchClient, count: int) -> None:
    while True:
        counts = client.get_job_task_counts("bench").task_counts
        if counts.completed >= count:
            if counts.failed:
                raise SystemExit(f"{counts.failed} tasks failed")
            return
        time.sleep(1)


def request_kinds(log: Path) -> collections.Counter[str]:
    """Requests by method, path shape (ids replaced by ``{id}``) and status."""
    kinds: collections.Counter[str] = collections.Counter()
    for line in log.read_text().splitlines():
        method, path, status = line.split(" ")
        shape = _ID_SEGMENT.sub(r"\1{id}", path)
        kinds[f"{method} {shape} {status}"] += 1
    return kinds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=4, help="create_tasks threads")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fanout-bench-emulator-") as scratch:
        work = Path(scratch)
        process, endpoint = start_emulator(work)
        try:
            client = BatchClient(endpoint, AzureNamedKeyCredential(DEFAULT_ACCOUNT, DEFAULT_KEY))
            prepare(client)
            started = time.perf_counter()
            adding = add_tasks(client, args.tasks, args.concurrency)
            wait_for_completion(client, args.tasks)
            total = time.perf_counter() - started
        finally:
            stop_emulator(process)
        kinds = request_kinds(work / "requests.log")
    rate = args.tasks / adding
    print(f"tasks: {args.tasks} on {NODES} nodes x {SLOTS} slots")
    print(f"added in {adding:.2f} s: {rate:.0f} creations/s (target >= {TARGET_PER_SECOND})")
    print(f"all completed {total:.2f} s after the first was added: {args.tasks / total:.0f}/s")
    print(f"requests: {sum(kinds.values())}")
    for kind, count in kinds.most_common():
        print(f"  {count:6d}  {kind}")
    return 0 if rate >= TARGET_PER_SECOND else 1


if __name__ == "__main__":
    sys.exit(main())
