"""Shared helpers: write job files, run the real ``fanout`` command in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from azurite import Azurite, start_azurite
from batch_emulator import Running, running_emulator
from fanout_azure.emulator.command import DEFAULT_ACCOUNT, DEFAULT_KEY

REPO = Path(__file__).resolve().parents[1]

# The suite tests the plugins of this repository, whatever else is installed beside them.
os.environ["FANOUT_PLUGINS"] = "fanout-azure"
TOPWORDS = REPO / "node_task" / "topwords.py"


def toml_value(value: Any) -> str:
    """``value`` as TOML (strings, numbers, booleans, lists and tables of those)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def write_job(directory: Path, tables: dict[str, dict[str, Any]]) -> Path:
    """Write ``job.toml`` in ``directory`` from ``{"job": {...}, "backends.local": {...}}``."""
    lines = []
    for table, fields in tables.items():
        lines.append(f"[{table}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in fields.items())
        lines.append("")
    path = directory / "job.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def write_inputs(directory: Path, contents: dict[str, str]) -> None:
    for name, text in contents.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def run_fanout(
    *args: str | os.PathLike[str],
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``fanout ARGS`` as a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "fanout", *map(str, args)],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_until(condition: Callable[[], bool], timeout: float = 60) -> None:
    """Poll ``condition`` until it holds; fail the test if it does not within ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status and "\nState:\tX" not in status


def load_record(out: Path) -> dict[str, Any]:
    record: dict[str, Any] = json.loads((out / "fanout-run.json").read_text())
    return record


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    """An empty directory for a job file and its inputs."""
    directory = tmp_path / "job"
    directory.mkdir()
    return directory


@pytest.fixture
def fanout() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_fanout


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """A real Azurite blob service for the whole session (see tests/azurite.py)."""
    with start_azurite(tmp_path_factory.mktemp("azurite")) as service:
        yield service


@pytest.fixture
def azure_container(azurite: Azurite) -> Iterator[str]:
    """The name of a fresh, empty container in ``azurite``, deleted after the test."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    with azurite.blob_service() as service:
        service.create_container(name)
        yield name
        service.delete_container(name)


@pytest.fixture
def batch(tmp_path: Path) -> Iterator[Running]:
    """A Batch emulator for one test (see tests/batch_emulator.py)."""
    with running_emulator(tmp_path) as running:
        yield running


@pytest.fixture
def received(batch: Running) -> Any:
    """Record what each operation of ``batch`` receives."""
    from batch_runs import Received

    seen = Received()
    operations = batch.emulator.operations

    def recording(name: str, handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def record(request: Any) -> Any:
            seen.requests.append((name, request.path, request.query, request.headers, request.body))
            return handler(request)

        return record

    for name, handler in list(operations.items()):
        operations[name] = recording(name, handler)
    return seen


@pytest.fixture
def batch_env(batch: Running, azurite: Azurite, tmp_path: Path) -> dict[str, str]:
    return {
        "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
        "AZURE_BATCH_ENDPOINT": batch.endpoint,
        "AZURE_BATCH_ACCOUNT": DEFAULT_ACCOUNT,
        "AZURE_BATCH_ACCESS_KEY": DEFAULT_KEY,
        "FANOUT_AZURE_BATCH_POLL_INTERVAL": "0.2",
        "FANOUT_LOCAL_ROOT": str(tmp_path / "nodes"),
    }
