"""A Batch emulator in this process, for a test, and an official SDK client for it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from azure.batch import BatchClient
from azure.batch import models as m
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import ResourceNotFoundError
from fanout_azure.emulator.command import DEFAULT_ACCOUNT, DEFAULT_KEY
from fanout_azure.emulator.server import BatchEmulator


@dataclass
class Running:
    """A running emulator: where it answers, what it answered, what it logged."""

    emulator: BatchEmulator
    log_path: Path
    answers: list[tuple[str, str, int, Any, str]] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return self.emulator.endpoint

    def client(self, key: str = DEFAULT_KEY) -> BatchClient:
        return BatchClient(self.endpoint, AzureNamedKeyCredential(DEFAULT_ACCOUNT, key))

    def requests(self) -> list[str]:
        return self.log_path.read_text().splitlines()


@contextmanager
def running_emulator(tmp_path: Path) -> Iterator[Running]:
    """Serve the emulator on a free port until the block ends, logging its requests."""
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
        )
        emulator.start()
        try:
            yield Running(emulator, log_path, answers)
        finally:
            emulator.stop()


IMAGE = m.VirtualMachineConfiguration(
    image_reference=m.BatchVmImageReference(
        publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts"
    ),
    node_agent_sku_id="batch.node.ubuntu 22.04",
)


def make_pool(
    client: BatchClient,
    pool_id: str,
    nodes: int = 1,
    slots: int = 1,
    start_task: m.BatchStartTask | None = None,
    spot: int = 0,
    **call_options: Any,
) -> None:
    """A pool of ``nodes`` dedicated and ``spot`` low-priority Ubuntu 22.04 nodes with
    ``slots`` task slots each."""
    client.create_pool(
        m.BatchPoolCreateOptions(
            id=pool_id,
            vm_size="standard_d2s_v3",
            virtual_machine_configuration=IMAGE,
            target_dedicated_nodes=nodes,
            target_low_priority_nodes=spot,
            task_slots_per_node=slots,
            start_task=start_task,
        ),
        **call_options,
    )


def pool_exists(client: BatchClient, pool_id: str) -> bool:
    """``client.pool_exists``, which in azure-batch 15.1 raises on 404 instead of saying False."""
    try:
        return bool(client.pool_exists(pool_id))
    except ResourceNotFoundError:
        return False
