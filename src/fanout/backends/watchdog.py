"""A watchdog that ends a local run's tasks when the fanout process running them dies.

Tasks run in sessions of their own, so neither a terminal's hang-up nor the death of fanout
reaches them. The watchdog is a child process in a session of its own too, deaf to SIGINT and
SIGTERM (so that a signal meant for fanout cannot end it first). fanout tells it, through a
pipe, the process group of each task (and of the setup) as it starts (``+PGID``) and as it ends
(``-PGID``). When the pipe reaches its end because fanout died (the kernel closes it, even
after ``kill -9``), the watchdog ends every group it still knows and exits. At teardown, with
no group left, fanout stops it.

One watchdog per run, not a process per task: a task starts as fast as without it. A group
ended between the moment its end is sent and the moment fanout dies would be ended twice; its
id cannot pass to another process group in that instant unless pids wrap around in it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time

from fanout.backends.process_groups import end_groups
from fanout.errors import BackendError

log = logging.getLogger(__name__)

MODULE = "fanout.backends.watchdog"
PIPE_CHUNK = 1 << 16
PAUSE_S = 0.1
"""How long the watchdog sleeps between two reads. Lines wait in the pipe meanwhile (64 KiB
of them, thousands of tasks, before a write would wait), and an end of the pipe is noticed
this much later at most."""


class Watchdog:
    """fanout's end of the pipe: starts the watchdog and tells it which groups to end."""

    def __init__(self) -> None:
        try:
            self._process = subprocess.Popen(
                # -P: not the current directory first in sys.path, where a fanout.py of the
                # user's would shadow fanout.
                [sys.executable, "-P", "-m", MODULE],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            raise BackendError(f"cannot start the local backend's watchdog: {exc}") from None
        assert self._process.stdin is not None
        self._pipe = self._process.stdin.fileno()

    def watch(self, pgid: int) -> None:
        """The group ``pgid`` runs: end it if fanout dies."""
        self._send(f"+{pgid}\n")

    def forget(self, pgid: int) -> None:
        """The group ``pgid`` has ended."""
        self._send(f"-{pgid}\n")

    def close(self) -> None:
        """Stop the watchdog, once every group it was told of has ended (it has nothing left
        to do; stopping it spares waiting for its next read)."""
        if self._process.poll() is not None:  # its error, if any, went to stderr
            log.warning("the watchdog had stopped early (exit status %s)", self._process.returncode)
        self._process.kill()
        self._process.wait()
        assert self._process.stdin is not None
        self._process.stdin.close()

    def _send(self, line: str) -> None:
        # One write of a few bytes: atomic on a pipe, so slot threads need no lock. An
        # OSError means someone ended the watchdog: there is nobody left to tell.
        with contextlib.suppress(OSError):
            os.write(self._pipe, line.encode())


def main() -> None:
    """The watchdog: read the pipe to its end, then end the groups still running."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    watched: set[int] = set()
    unread = b""
    while chunk := os.read(0, PIPE_CHUNK):
        *lines, unread = (unread + chunk).split(b"\n")
        for line in lines:
            pgid = int(line[1:])
            if line.startswith(b"+"):
                watched.add(pgid)
            else:
                watched.discard(pgid)
        time.sleep(PAUSE_S)  # let lines gather: one wake-up for many tasks
    end_groups(watched)


if __name__ == "__main__":
    main()
