"""Helpers for runs of the azure-batch backend against the in-process emulator and Azurite."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batch_emulator import Running
from conftest import run_fanout, write_inputs, write_job


@dataclass
class Received:
    """Every request the emulator received, parsed: operation, path, query, headers, body."""

    requests: list[tuple[str, str, Any, dict[str, str], Any]] = field(default_factory=list)

    def operations(self, name: str | None = None) -> list[Any]:
        return [r for r in self.requests if name is None or r[0] == name]

    def count(self, name: str) -> int:
        return len(self.operations(name))

    def bodies(self, name: str) -> list[Any]:
        return [request[4] for request in self.operations(name)]


def on_batch(
    job_file: Path, container: str, env: dict[str, str], *options: Any
) -> subprocess.CompletedProcess[str]:
    return run_fanout(
        "run", job_file, "--backend", "azure-batch", "--storage", f"az://{container}/runs",
        *options, cwd=job_file.parent, env=env,
    )  # fmt: skip


def nothing_left(batch: Running) -> bool:
    """No job, and no pool that is not on its way out."""
    client = batch.client()
    jobs = list(client.list_jobs())
    pools = [pool for pool in client.list_pools() if pool.state != "deleting"]
    return not jobs and not pools


def start_run(
    job_dir: Path, container: str, env: dict[str, str], *options: str
) -> subprocess.Popen[str]:
    """``fanout run job.toml`` in ``job_dir`` on azure-batch, in the background; outputs in
    ``job_dir/out``."""
    command = [sys.executable, "-m", "fanout", "run", "job.toml", "--backend", "azure-batch"]
    command += ["--storage", f"az://{container}/runs", "--out", "out", *options]
    return subprocess.Popen(
        command,
        cwd=job_dir,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def counter_job(job_dir: Path, name: str, count: int, **batch_settings: object) -> Path:
    """A job whose tasks note each start in ``started/`` and wait for the file ``release``."""
    write_inputs(job_dir, {f"t{n}.txt": f"input {n}" for n in range(count)})
    (job_dir / "started").mkdir()
    command = (
        'echo x >> "$STARTED/{task_id}"; i=0;'
        ' while [ ! -e "$RELEASE" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done;'
        " cp {input} {input_stem}.out"
    )
    tables: dict[str, dict[str, object]] = {
        "job": {
            "name": name,
            "inputs": ["*.txt"],
            "command": command,
            "outputs": ["*.out"],
            "env": {"STARTED": str(job_dir / "started"), "RELEASE": str(job_dir / "release")},
        }
    }
    if batch_settings:
        tables["backends.azure-batch"] = batch_settings
    return write_job(job_dir, tables)


def starts(job_dir: Path) -> dict[str, int]:
    return {path.name: len(path.read_text().split()) for path in (job_dir / "started").iterdir()}
