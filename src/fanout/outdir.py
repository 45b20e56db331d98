"""The output directory: fanout's own, and held by one run at a time.

A run holds ``OUT/.fanout-lock`` with an exclusive ``flock`` for as long as it runs, and writes
its pid, host and run id into it. The kernel releases the lock when the process ends, however
it ends (``kill -9`` included), so a lock is never stale: a directory whose lock is free is
free. The lock file stays behind as the mark of a directory fanout writes to, so that the
directory of a killed run, which has no run record yet, is still recognised as fanout's.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from fanout.errors import FanoutError
from fanout.ledger import RECORD_NAME

LOCK_NAME = ".fanout-lock"
PART_SUFFIX = ".part"
"""The suffix of the temporary files ``fanout.atomic`` writes (``.<name>.<random>.part``)."""


def check_out_dir(out: Path) -> None:
    """Refuse an output directory holding files that fanout did not write."""
    if out.exists() and not out.is_dir():
        raise FanoutError(f"output directory {out} is a file")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not ((out / RECORD_NAME).exists() or (out / LOCK_NAME).exists()):
        raise FanoutError(
            f"output directory {out} holds files fanout did not write; choose another with --out"
        )


@contextlib.contextmanager
def claimed(out: Path, run_id: str) -> Iterator[None]:
    """Hold ``out`` for run ``run_id`` until the block ends; refuse it if another run holds
    it. Temporary files an interrupted download left there are removed first."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle = _lock(out / LOCK_NAME)
    except OSError as exc:
        raise FanoutError(f"cannot use output directory {out}: {exc.strerror or exc}") from None
    try:
        holder = {"run_id": run_id, "pid": os.getpid(), "host": socket.gethostname()}
        with contextlib.suppress(OSError):  # the lock holds even if this cannot be written
            os.ftruncate(handle, 0)
            os.pwrite(handle, json.dumps(holder).encode("utf-8") + b"\n", 0)
        remove_partial_files(out)
        yield
    finally:
        os.close(handle)


def _lock(path: Path) -> int:
    """An open descriptor of ``path`` holding its exclusive lock; FanoutError naming the
    holder if another process has it."""
    while True:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(handle)
            raise FanoutError(f"output directory {path.parent} {_holder(path)}") from None
        except BaseException:
            os.close(handle)
            raise
        # Someone may have replaced the file between open and lock: hold the one on disk.
        if os.path.exists(path) and os.stat(path).st_ino == os.fstat(handle).st_ino:
            return handle
        os.close(handle)


def _holder(path: Path) -> str:
    """Who holds the lock at ``path``, in words."""
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        return (
            f"is in use by run {holder['run_id']} (pid {holder['pid']} on {holder['host']});"
            " wait for it to end or choose another --out"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "is in use by another fanout run; wait for it to end or choose another --out"


def remove_partial_files(out: Path) -> None:
    """Delete what downloads into ``out`` that never finished left behind (a killed run's)."""
    for directory, _, names in os.walk(out):
        for name in names:
            if name.startswith(".") and name.endswith(PART_SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(directory, name))
