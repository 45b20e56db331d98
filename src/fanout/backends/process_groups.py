"""Ending process groups: everything a task started, not only the process fanout started.

Each task (and the setup) runs in a session of its own, so its process group's id is the pid
of the process fanout started, and whatever it starts in the background stays in that group
unless it leaves on purpose. Standard library only: the watchdog
(``fanout.backends.watchdog``) uses this too, and it starts with nothing else.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable

KILL_GRACE_S = 2.0
"""How long a group has between SIGTERM and SIGKILL."""
POLL_S = 0.02


def end_groups(pgids: Iterable[int], grace_s: float = KILL_GRACE_S) -> None:
    """End every process of each group in ``pgids``, all at once: SIGTERM, then SIGKILL for
    what still runs after ``grace_s``; return once nothing in them runs.

    A zombie does not count as running: it waits for its parent, or for init once its
    parent is gone (which in a container may take a second or more), and it holds no
    resource. The caller need not be the parent of anything in the groups.
    """
    left = [pgid for pgid in set(pgids) if _signal(pgid, signal.SIGTERM)]
    left = _wait_gone(left, grace_s)
    for pgid in left:
        _signal(pgid, signal.SIGKILL)
    _wait_gone(left, grace_s)  # SIGKILL lands asynchronously


def _signal(pgid: int, signum: int) -> bool:
    """Send ``signum`` to the group; whether it has a process (a zombie too) to receive it."""
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _wait_gone(pgids: list[int], timeout: float) -> list[int]:
    """The groups of ``pgids`` still running after at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        running = _running(pgids)
        if not running or time.monotonic() >= deadline:
            return running
        time.sleep(POLL_S)


def _running(pgids: list[int]) -> list[int]:
    """Those of ``pgids`` with a process that is not a zombie."""
    present = [pgid for pgid in pgids if _signal(pgid, 0)]
    if not present:  # the common case, without a scan of every process
        return []
    try:
        entries = os.listdir("/proc")
    except OSError:  # no procfs: a group with a zombie left counts as running
        return present
    running = {_running_group(entry) for entry in entries if entry.isdigit()}
    return [pgid for pgid in present if pgid in running]


def _running_group(pid: str) -> int | None:
    """The group of process ``pid``, unless it has exited (or is a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()  # the name may hold spaces
    except (OSError, IndexError):
        return None
    state, _parent, group = fields[:3]
    return None if state in (b"Z", b"X") else int(group)
