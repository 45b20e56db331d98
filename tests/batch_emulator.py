"""A Batch emulator in this process, for a test, and an official SDK client for it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from azure.batch import BatchClient
from azure.core.credentials import AzureNamedKeyCredential
from fanout_azure.emulator.command import DEFAULT_ACCOUNT, DEFAULT_KEY
from fanout_azure.emulator.server import BatchEmulator


@dataclass
class Running:
    """A running emulator: where it answers, what it answered, what it logged."""

    emulator: BatchEmulator
    log_path: Path
    answers: list[tuple[str, str, int, Any]] = field(default_factory=list)

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
        answers: list[tuple[str, str, int, Any]] = []
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
