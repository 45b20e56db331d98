"""Bringing a task's outputs home, and checking outputs a previous run brought home."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fsspec.utils import glob_translate

from fanout.ledger import OutputRecord
from fanout.storage import Storage, file_digest


class MissingOutput(Exception):
    """A declared output pattern matched no file the task produced."""


def collect_outputs(
    storage: Storage,
    prefix: str,
    files: dict[str, dict[str, Any]],
    patterns: list[str],
    out_dir: Path,
    task_id: str,
) -> list[OutputRecord]:
    """Download ``files`` (listed under ``prefix``, by relative path, with their details) to
    ``out_dir/task_id``, one request each; each pattern must match one of them.

    Raises ``MissingOutput`` naming the first pattern that matched nothing.
    """
    for pattern in patterns:
        matches = re.compile(glob_translate(pattern)).match
        if not any(matches(relative) for relative in files):
            raise MissingOutput(f"missing output: no file matches '{pattern}'")
    records = []
    for relative, info in files.items():
        local = f"{task_id}/{relative}"
        digest = storage.download(f"{prefix}/{relative}", out_dir / local, info)
        records.append(OutputRecord(path=local, bytes=digest.size, md5=digest.md5))
    return records


def outputs_intact(out_dir: Path, outputs: list[OutputRecord]) -> bool:
    """Whether every recorded output is still in ``out_dir`` with its size and md5."""
    for output in outputs:
        path = out_dir / output.path
        if not path.is_file() or path.stat().st_size != output.bytes:
            return False
        if file_digest(path).md5 != output.md5:
            return False
    return True
