"""The run ledger: what a run planned, created and finished, kept in the run's storage.

The ledger is what ``--resume`` reads to finish an interrupted run, and the source of the run
record (``OUT/fanout-run.json``) a user reads. It is rewritten whole, at most once per
``SAVE_INTERVAL_S`` while tasks finish (so a thousand quick tasks do not cost a thousand
uploads) and always at the start and the end of a run, or when it is interrupted.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fanout.atomic import atomic_write
from fanout.errors import FanoutError
from fanout.storage import Storage

SAVE_INTERVAL_S = 1.0
FORMAT_VERSION = 1
RECORD_NAME = "fanout-run.json"


@dataclass
class OutputRecord:
    """One collected file: its path relative to the output directory, size and md5."""

    path: str
    bytes: int
    md5: str


@dataclass
class TaskRecord:
    """What is known about one task. ``state`` is pending, running, succeeded or failed."""

    id: str
    input: str
    command: str
    state: str = "pending"
    exit_code: int | None = None
    attempts: int = 0
    duration_s: float | None = None
    node: str | None = None
    outputs: list[OutputRecord] = field(default_factory=list)
    error: str | None = None
    stderr_tail: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskRecord:
        outputs = [OutputRecord(**output) for output in data.pop("outputs", [])]
        return cls(**data, outputs=outputs)

    def to_json(self) -> dict[str, Any]:
        # Not dataclasses.asdict: its deep copies dominate a run of many quick tasks.
        return {**vars(self), "outputs": [vars(output) for output in self.outputs]}

    def reset(self) -> None:
        """Forget a previous attempt, so that the task runs again."""
        self.state, self.exit_code, self.attempts = "pending", None, 0
        self.duration_s, self.node, self.outputs = None, None, []
        self.error, self.stderr_tail = None, None


def new_run_id() -> str:
    """A run id that sorts by start time and is valid in Azure Batch ids."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Ledger:
    """A run's ledger, and where in storage it lives."""

    storage: Storage
    run_id: str
    job: str
    job_file: str
    backend: str
    out: str
    tasks: dict[str, TaskRecord]
    started: str = field(default_factory=now_iso)
    finished: str | None = None
    status: str = "running"
    job_ids: list[str] = field(default_factory=list)
    """The backend job of each attempt at this run (a resumed run adds one), oldest first."""
    leftovers: list[str] = field(default_factory=list)
    """What the run created and did not remove, as its backend reported after teardown."""
    _saved_at: float = 0.0

    @staticmethod
    def runs_path(storage: Storage, job: str) -> str:
        return storage.path("jobs", job, "runs")

    @property
    def run_path(self) -> str:
        return f"{self.runs_path(self.storage, self.job)}/{self.run_id}"

    @classmethod
    def load(cls, storage: Storage, job: str, run_id: str) -> Ledger:
        path = f"{cls.runs_path(storage, job)}/{run_id}/ledger.json"
        try:
            data = storage.read_json(path)
        except FileNotFoundError:
            raise FanoutError(f"no run '{run_id}' of job '{job}' in {storage.url}") from None
        except ValueError as exc:
            raise FanoutError(f"the ledger of run '{run_id}' is damaged ({exc}): {path}") from None
        try:
            tasks = {t["id"]: TaskRecord.from_json(t) for t in data.pop("tasks")}
            data.pop("version", None)
            data.pop("storage", None)
            return cls(storage=storage, tasks=tasks, **data)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise FanoutError(f"the ledger of run '{run_id}' is damaged ({exc}): {path}") from None

    @classmethod
    def latest_unfinished(cls, storage: Storage, job: str) -> str | None:
        """The id of the most recent run of ``job`` that did not finish, if any."""
        for run_id in reversed(storage.list_dirs(cls.runs_path(storage, job))):
            if cls.load(storage, job, run_id).status != "finished":
                return run_id
        return None

    def save(self, force: bool = True) -> None:
        """Write the ledger; unless ``force``, only if the last write is old enough."""
        if not force and time.monotonic() - self._saved_at < SAVE_INTERVAL_S:
            return
        self.storage.write_json(f"{self.run_path}/ledger.json", self.to_json())
        self._saved_at = time.monotonic()

    def to_json(self) -> dict[str, Any]:
        """The run record: the ledger as ``OUT/fanout-run.json`` shows it."""
        return {
            "version": FORMAT_VERSION,
            "run_id": self.run_id,
            "job": self.job,
            "job_file": self.job_file,
            "backend": self.backend,
            "storage": self.storage.url,
            "out": self.out,
            "status": self.status,
            "started": self.started,
            "finished": self.finished,
            "job_ids": self.job_ids,
            "leftovers": self.leftovers,
            "tasks": [task.to_json() for task in self.tasks.values()],
        }

    def write_record(self) -> Path:
        """Write the run record into the output directory."""
        path = Path(self.out) / RECORD_NAME
        with atomic_write(path) as out:
            out.write(json.dumps(self.to_json(), indent=1).encode("utf-8"))
        return path
