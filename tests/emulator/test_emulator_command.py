"""``fanout batch-emulator`` as a user runs it: a real process on a port it picks, driven with the
official SDK, stopped with SIGTERM or SIGINT; every process it started must be gone after it."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from azure.batch import BatchClient
from azure.batch import models as m
from azure.core.credentials import AzureNamedKeyCredential
from batch_emulator import IMAGE
from conftest import process_alive, wait_until
from fanout_azure.emulator.command import DEFAULT_ACCOUNT, DEFAULT_KEY

LOG_LINE = re.compile(r"(GET|HEAD|POST|PUT|PATCH|DELETE) /[^?\s]* \d{3}")


@dataclass
class Served:
    """A ``fanout batch-emulator`` process and what it printed on start."""

    process: subprocess.Popen[str]
    endpoint: str
    account: str
    key: str

    def client(self) -> BatchClient:
        return BatchClient(self.endpoint, AzureNamedKeyCredential(self.account, self.key))


@contextmanager
def batch_emulator(root: Path, request_log: Path) -> Iterator[Served]:
    """Start the command on port 0 and read its banner; kill it if the test fails early."""
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "fanout", "batch-emulator", "--port", "0"),
            *("--root", str(root), "--request-log", str(request_log)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = [process.stdout.readline() for _ in range(3)]
        endpoint = re.fullmatch(r"Batch emulator listening on (http://\S+)\n", banner[0])
        assert endpoint is not None, banner
        account, key = (line.split(": ", 1)[1].strip() for line in banner[1:])
        yield Served(process, endpoint.group(1), account, key)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def pid_in(path: Path) -> Callable[[], bool]:
    def written() -> bool:
        return path.is_file() and path.read_text().strip().isdigit()

    return written


def start_sleepers(client: BatchClient, pids: Path) -> tuple[int, int]:
    """A node whose start task leaves a ``sleep 300`` behind, a task running another: their
    pids."""
    start_task = m.BatchStartTask(
        command_line=f"/bin/sh -c 'sleep 300 & echo $! > {pids}/start.pid; wait'",
        wait_for_success=False,
    )
    client.create_pool(
        m.BatchPoolCreateOptions(
            id="p1",
            vm_size="standard_d2s_v3",
            virtual_machine_configuration=IMAGE,
            target_dedicated_nodes=1,
            start_task=start_task,
        )
    )
    wait_until(lambda: [node.state for node in client.list_nodes("p1")] == ["idle"])
    client.create_job(m.BatchJobCreateOptions(id="j1", pool_info=m.BatchPoolInfo(pool_id="p1")))
    client.create_task(
        "j1",
        m.BatchTaskCreateOptions(
            id="t1", command_line=f"/bin/sh -c 'echo $$ > {pids}/task.pid; exec sleep 300'"
        ),
    )
    for name in ("start.pid", "task.pid"):
        wait_until(pid_in(pids / name))
    return int((pids / "start.pid").read_text()), int((pids / "task.pid").read_text())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_emulator_and_every_process_it_started(
    tmp_path: Path, signum: signal.Signals
) -> None:
    pids, log = tmp_path / "pids", tmp_path / "requests.log"
    pids.mkdir()
    with batch_emulator(tmp_path / "root", log) as served:
        assert served.endpoint.startswith("http://127.0.0.1:")
        assert not served.endpoint.endswith(":0")
        assert (served.account, served.key) == (DEFAULT_ACCOUNT, DEFAULT_KEY)
        started = start_sleepers(served.client(), pids)
        assert all(process_alive(pid) for pid in started)

        served.process.send_signal(signum)
        assert served.process.wait(timeout=10) == 0
        assert [pid for pid in started if process_alive(pid)] == []

    lines = log.read_text().splitlines()
    assert all(LOG_LINE.fullmatch(line) for line in lines), lines
    for expected in (
        "POST /pools 201",
        "GET /pools/p1/nodes 200",
        "POST /jobs 201",
        "POST /jobs/j1/tasks 201",
    ):
        assert expected in lines
