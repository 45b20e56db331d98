"""What a run costs as it grows: storage requests per task against Azurite."""

from __future__ import annotations

from pathlib import Path

import pytest
from azurite import Azurite
from batch_emulator import Running
from batch_runs import on_batch
from conftest import write_inputs, write_job
from counting_proxy import Seen, counting_proxy

pytestmark = pytest.mark.azurite

TASKS = 1500  # two chunks of submission


def under(seen: Seen, part: str) -> bool:
    """Whether a request is about blobs under ``…/part/…`` (a blob, or a listing of them)."""
    return f"/{part}/" in seen.path or any(f"/{part}/" in p for p in seen.query.get("prefix", []))


def test_staging_and_collecting_cost_two_requests_per_task(
    batch: Running, batch_env: dict[str, str], azurite: Azurite, azure_container: str, job_dir: Path
) -> None:
    write_inputs(job_dir, {f"in{n:04d}.txt": str(n) for n in range(TASKS)})
    write_job(
        job_dir,
        {
            "job": {
                "name": "counted",
                "inputs": ["*.txt"],
                "command": "cp {input} {input_stem}.out",
                "outputs": ["*.out"],
            },
            "backends.azure-batch": {"slots": 8},
        },
    )
    with counting_proxy(azurite) as counted:
        env = {**batch_env, "AZURE_STORAGE_CONNECTION_STRING": counted.azurite.connection_string}
        result = on_batch(job_dir / "job.toml", azure_container, env, "--out", job_dir / "out")
    assert result.returncode == 0, result.stderr + result.stdout
    assert len(list((job_dir / "out").rglob("*.out"))) == TASKS

    own = counted.own()
    staging = [seen for seen in own if under(seen, "staged")]
    collecting = [seen for seen in own if under(seen, "outputs")]
    downloads = [seen for seen in collecting if seen.method == "GET" and not seen.listing]
    listings = [seen for seen in collecting if seen.listing]
    assert len(downloads) == TASKS  # one GET per output ...
    assert not [seen for seen in collecting if seen.method == "HEAD"]  # ... and no HEAD
    assert len(listings) <= TASKS / 10  # listings per poll, not per task
    assert len(staging) <= TASKS + 2  # one listing, one upload per input
    assert len(staging) + len(collecting) <= 2 * TASKS + TASKS / 10
