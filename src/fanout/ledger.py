"""The run ledger: what a run planned, created and finished, kept in the run's storage.

The ledger is what ``--resume`` reads to finish an interrupted run, and the source of the run
record (``OUT/fanout-run.json``) a user reads. It lives in two parts under the run's folder:

- ``ledger.json``, a snapshot of the whole ledger, written at the start and the end of a run
  (and when it is interrupted);
- ``journal-<n>.jsonl``, the tasks that finished since snapshot ``n``, one JSON line each,
  appended as they finish: what a run saves while it goes costs what changed, not the whole
  run, and a task is recorded durably once its outputs are home (``flush``).

A snapshot names the journal that follows it; an older journal, left by a run killed between
writing a snapshot and removing it, is ignored, so a task's line is never applied over a newer
snapshot.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fanout.atomic import atomic_write
from fanout.errors import FanoutError
from fanout.storage import Storage

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
"""Version 2 added the journal and the files' digests; version 1 ledgers are still read."""
RECORD_NAME = "fanout-run.json"
SNAPSHOT_NAME = "ledger.json"


@dataclass(slots=True)
class OutputRecord:
    """One collected file: its path relative to the output directory, size and md5."""

    path: str
    bytes: int
    md5: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "bytes": self.bytes, "md5": self.md5}


@dataclass(frozen=True, slots=True)
class FileRecord:
    """An input or app file as the run staged it, to tell on ``--resume`` whether it changed:
    size and modification time first (cheap), md5 when they differ."""

    bytes: int
    md5: str
    mtime_ns: int


@dataclass(slots=True)
class TaskRecord:
    """What is known about one task. ``state`` is pending, running, succeeded or failed."""

    id: str
    input: str
    """The task's input; its first, if it has several."""
    command: str
    inputs: list[str] | None = None
    """Every input of a task that has several (``[job] inputs_per_task``)."""
    state: str = "pending"
    exit_code: int | None = None
    attempts: int = 0
    duration_s: float | None = None
    node: str | None = None
    outputs: list[OutputRecord] = field(default_factory=list)
    error: str | None = None
    stderr_tail: str | None = None
    uncollected: bool = False
    """The task succeeded but its outputs could not be brought home (a full disk, storage
    out of reach): they wait in storage, and ``--resume`` collects them without running it."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskRecord:
        outputs = [OutputRecord(**output) for output in data.pop("outputs", [])]
        return cls(**data, outputs=outputs)

    def to_json(self) -> dict[str, Any]:
        # Not dataclasses.asdict: its deep copies dominate a run of many quick tasks.
        record = {name: getattr(self, name) for name in self.__slots__}
        record["outputs"] = [output.to_json() for output in self.outputs]
        return record

    def reset(self) -> None:
        """Forget a previous attempt, so that the task runs again."""
        self.state, self.exit_code, self.attempts = "pending", None, 0
        self.duration_s, self.node, self.outputs = None, None, []
        self.error, self.stderr_tail, self.uncollected = None, None, False

    @property
    def all_inputs(self) -> list[str]:
        return self.inputs or [self.input]

    @property
    def finished(self) -> bool:
        return self.state in ("succeeded", "failed")


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
    setup: list[str] = field(default_factory=list)
    """``[job] setup`` as the run started with it."""
    env: dict[str, str] = field(default_factory=dict)
    """``[job] env`` as the run started with it."""
    files: dict[str, FileRecord] = field(default_factory=dict)
    """Every input and app file staged, by local path."""
    started: str = field(default_factory=now_iso)
    finished: str | None = None
    status: str = "running"
    """running, interrupted (stopped before its end: Ctrl-C, or an error), or finished."""
    job_ids: list[str] = field(default_factory=list)
    """The backend job of each attempt at this run (a resumed run adds one), oldest first."""
    leftovers: list[str] = field(default_factory=list)
    """What the run created and did not remove, as its backend reported after teardown."""
    journal: int = 0
    """The number of the journal that follows the last snapshot."""
    _unflushed: dict[str, TaskRecord] = field(default_factory=dict)

    @staticmethod
    def runs_path(storage: Storage, job: str) -> str:
        return storage.path("jobs", job, "runs")

    @property
    def run_path(self) -> str:
        return f"{self.runs_path(self.storage, self.job)}/{self.run_id}"

    @classmethod
    def load(cls, storage: Storage, job: str, run_id: str) -> Ledger:
        """The ledger of ``run_id``: its last snapshot and the journal that follows it."""
        path = f"{cls.runs_path(storage, job)}/{run_id}/{SNAPSHOT_NAME}"
        try:
            data = storage.read_json(path)
        except FileNotFoundError:
            raise FanoutError(f"no run '{run_id}' of job '{job}' in {storage.url}") from None
        except ValueError as exc:
            raise FanoutError(f"the ledger of run '{run_id}' is damaged ({exc}): {path}") from None
        version = data.pop("version", 1) if isinstance(data, dict) else None
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise FanoutError(
                f"run '{run_id}' was recorded by a newer fanout (ledger version {version});"
                " upgrade fanout to resume it"
            )
        try:
            tasks = {t["id"]: TaskRecord.from_json(t) for t in data.pop("tasks")}
            files = {name: FileRecord(**digest) for name, digest in data.pop("files", {}).items()}
            data.pop("storage", None)
            ledger = cls(storage=storage, tasks=tasks, files=files, **data)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise FanoutError(f"the ledger of run '{run_id}' is damaged ({exc}): {path}") from None
        for record in ledger._journaled():
            if record.id in ledger.tasks:
                ledger.tasks[record.id] = record
        return ledger

    @classmethod
    def latest_resumable(cls, storage: Storage, job: str) -> str | None:
        """The id of the most recent run of ``job`` that did not finish, or finished with
        tasks that did not succeed, if any."""
        for run_id in reversed(storage.list_dirs(cls.runs_path(storage, job))):
            ledger = cls.load(storage, job, run_id)
            if ledger.status != "finished" or ledger.unsucceeded():
                return run_id
        return None

    def unsucceeded(self) -> list[TaskRecord]:
        return [record for record in self.tasks.values() if record.state != "succeeded"]

    def save(self) -> None:
        """Write a snapshot of the whole ledger, and start a new journal after it."""
        old_journal, self.journal = self._journal_path(), self.journal + 1
        try:
            self.storage.write_json(f"{self.run_path}/{SNAPSHOT_NAME}", self._snapshot())
        except BaseException:
            self.journal -= 1
            raise
        self._unflushed.clear()
        self.storage.remove(old_journal)

    def note_finished(self, record: TaskRecord) -> None:
        """``record`` has reached its end: journal it at the next ``flush``."""
        self._unflushed[record.id] = record

    def flush(self) -> None:
        """Append the tasks noted since the last flush to the journal, in one write that is
        durable when it returns. On a storage error they stay noted for the next flush."""
        if not self._unflushed:
            return
        lines = "".join(
            json.dumps(record.to_json(), separators=(",", ":")) + "\n"
            for record in self._unflushed.values()
        )
        self.storage.append(self._journal_path(), lines.encode("utf-8"))
        self._unflushed.clear()

    def _journal_path(self) -> str:
        return f"{self.run_path}/journal-{self.journal}.jsonl"

    def _journaled(self) -> list[TaskRecord]:
        """The records of the current journal, oldest first. A last line cut short by a
        crash while it was written is dropped."""
        data = self.storage.read_bytes(self._journal_path())
        if data is None:
            return []
        records = []
        for number, line in enumerate(data.splitlines(), start=1):
            try:
                records.append(TaskRecord.from_json(json.loads(line)))
            except (ValueError, TypeError, KeyError) as exc:
                if number < data.count(b"\n"):
                    raise FanoutError(
                        f"the journal of run '{self.run_id}' is damaged at line {number}"
                        f" ({exc}): {self._journal_path()}"
                    ) from None
                log.warning("run %s: the journal's last line is incomplete", self.run_id)
        return records

    def _snapshot(self) -> dict[str, Any]:
        return {**self.to_json(), "journal": self.journal}

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
            "setup": self.setup,
            "env": self.env,
            "files": {name: dataclasses.asdict(digest) for name, digest in self.files.items()},
            "tasks": [task.to_json() for task in self.tasks.values()],
        }

    def write_record(self) -> Path:
        """Write the run record into the output directory."""
        path = Path(self.out) / RECORD_NAME
        with atomic_write(path) as out:
            out.write(json.dumps(self.to_json(), indent=1).encode("utf-8"))
        return path


def read_record(out: Path) -> dict[str, Any] | None:
    """The run record in ``out``, if there is a readable one."""
    try:
        data = json.loads((out / RECORD_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
