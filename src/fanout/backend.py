"""The contract between the scheduler and a compute backend.

A backend turns "these nodes, these tasks" into real processes somewhere and reports how they
went; the scheduler owns everything else (staging, the ledger, collecting outputs, the summary).
Files travel the way Azure Batch moves them: a task receives **resource files** (a URL and a
path in its working directory) and sends **output files** (a glob in its working directory and a
destination URL prefix). A backend registers itself through the ``fanout_register_backends``
hook; see ``fanout.hookspecs``.
"""

from __future__ import annotations

import abc
import enum
import signal
from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from fanout.signing import Signer


class Capability(enum.Enum):
    """Things a backend may or may not be able to do; the scheduler checks before it starts."""

    SETUP = "setup"
    """Runs ``[job] setup`` once on each node before its first task."""
    RETRIES = "retries"
    """Runs a failed task again, up to ``TaskSpec.max_retries`` more times."""
    TIMEOUT = "timeout"
    """Stops a task that runs longer than ``TaskSpec.timeout_s``."""


class TaskState(enum.Enum):
    """What the backend says about a task."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ResourceFile:
    """A file a node downloads from ``url`` to ``path`` before running something."""

    url: str
    path: str


@dataclass(frozen=True, slots=True)
class OutputFile:
    """Files matching ``pattern`` in the working directory, uploaded under ``destination``.

    Each match keeps its path relative to the working directory: ``pattern = "out/*.txt"`` and
    a file ``out/a.txt`` go to ``fanout.transfer.join_url(destination, "out/a.txt")`` — the
    destination may be a signed URL whose query string must stay at the end. The node-side
    helpers ``fetch``, ``deliver``, ``matching_files`` and ``join_url`` are in
    ``fanout.transfer``.
    """

    pattern: str
    destination: str


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """The nodes a run needs: what each one receives once and runs once."""

    app_files: tuple[ResourceFile, ...] = ()
    setup: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """One task, as the backend runs it.

    ``command`` is a shell command line (``/bin/sh -c``). ``env`` holds the job's variables; the
    backend adds the node environment (``FANOUT_*`` and ``AZ_BATCH_*``) itself.
    """

    id: str
    command: str
    resource_files: tuple[ResourceFile, ...] = ()
    output_files: tuple[OutputFile, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    max_retries: int = 0
    timeout_s: float | None = None
    logs_destination: str | None = None
    """Where a backend that keeps logs remotely may put the task's ``stdout.txt`` and
    ``stderr.txt`` (a URL prefix like an output destination's, outside the outputs)."""


@dataclass(frozen=True, slots=True)
class TaskUpdate:
    """A change in a task's state, as reported by ``Backend.poll``.

    A finished task (SUCCEEDED or FAILED) is reported once, after its last attempt.
    ``SUCCEEDED`` means the command exited 0 and its outputs were uploaded; the scheduler
    still checks that every declared output exists.
    """

    task_id: str
    state: TaskState
    attempts: int = 0
    exit_code: int | None = None
    node: str | None = None
    error: str | None = None
    started: float | None = None
    """Epoch seconds when the last attempt started."""
    finished: float | None = None
    """Epoch seconds when the last attempt ended."""


@dataclass(frozen=True)
class RunContext:
    """What a backend knows about the run it serves."""

    run_id: str
    job_id: str
    """A unique id for this attempt at the run's job, valid as an Azure Batch id. It is in the
    run ledger before ``provision`` is called; a resumed run gets a new one."""
    job_dir: Path
    """The job file's directory: relative paths in backend settings start here."""
    budget_s: float
    """How long the run may take (``[job] budget``): nothing it starts should outlive it, even
    if this process dies."""
    earlier_job_ids: tuple[str, ...] = ()
    """The job ids of earlier attempts at this run, oldest first (when resuming)."""


@dataclass(frozen=True)
class CleanedItem:
    """Something ``fanout clean`` found that an earlier run left on a backend."""

    description: str
    """What it is, on one line: ``job topwords-20261125-052400-8a49 (completed, run …)``."""
    problem: str | None = None
    """Why it could not be deleted, on one line; None once it is deleted (or on its way out),
    and on a dry run."""


class NoSettings(BaseModel):
    """Settings of a backend that has none."""

    model_config = ConfigDict(extra="forbid")


class Backend(abc.ABC):
    """A place that runs tasks. One instance serves one run.

    The scheduler calls, in order: ``preflight``, ``reattach`` (when resuming), ``provision``,
    ``submit`` (once or more) and ``all_submitted``, ``poll`` until every task has finished,
    then ``teardown``.
    ``cancel`` may come at any time after ``provision``. Methods raise
    ``fanout.errors.BackendError`` for a failure that stops the run; a failing *task* is
    reported through ``poll`` instead.
    """

    name: ClassVar[str]
    """The name users pass to ``--backend``."""
    settings_model: ClassVar[type[BaseModel]] = NoSettings
    """The ``[backends.NAME]`` table; each field is also ``FANOUT_<NAME>_<FIELD>`` in the
    environment."""
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    max_command_length: ClassVar[int | None] = None
    """The longest command line the backend can run, in bytes (UTF-8) as ``command_length``
    counts them, or ``None`` for no limit. A job with a longer one is refused before anything
    starts, in a dry run too: a command line the system cannot start would otherwise fail
    every task, late and one by one."""

    def __init__(self, settings: BaseModel, context: RunContext) -> None:
        self.settings = settings
        self.context = context

    @classmethod
    def unusable_storage(cls, url: str, signer: type[Signer]) -> str | None:
        """Why this backend's nodes cannot work with the storage at ``url``, whose URLs for
        nodes ``signer`` hands out (``fanout.plugins.signer_for``): the end of one line, naming
        what to use instead; None when they can. Asked before anything is checked, staged or
        created (``--dry-run`` too). By default every storage will do."""
        return None

    @classmethod
    def command_length(cls, task_id: str, command: str) -> int:
        """How much of ``max_command_length`` the command of task ``task_id`` takes: by default
        its length in UTF-8; a backend that wraps the command (in a shell's quotes, after
        lines of its own) counts what it sends."""
        return len(command.encode())

    def preflight(self) -> None:  # noqa: B027 - a hook with nothing to check by default
        """Check that the backend can run (reachable, credentials accepted); create nothing."""

    def reattach(self, pending: Set[str]) -> set[str]:
        """On a resumed run, before ``provision``: of the ``pending`` tasks (those the run
        still needs), the ids of those that an earlier attempt (``RunContext.earlier_job_ids``)
        left running or finished with the backend, and that ``poll`` will report. The
        scheduler does not submit them again. A task that an earlier attempt still runs or
        queues and that is not adopted — it is not in ``pending`` when its input changed
        since — must be stopped there, so that nothing runs twice or on stale input. By
        default nothing outlives a run, so there are none."""
        return set()

    @abc.abstractmethod
    def provision(self, pool: PoolSpec) -> None:
        """Make nodes ready: each receives ``pool.app_files`` and runs ``pool.setup`` once."""

    @abc.abstractmethod
    def submit(self, tasks: Sequence[TaskSpec]) -> None:
        """Queue ``tasks``; they run as slots free up. Called once per chunk of the run's
        tasks (a thousand at most), then ``all_submitted``."""

    def all_submitted(self) -> None:  # noqa: B027 - a hook with nothing to do by default
        """Every task of this attempt has been submitted: a backend whose jobs end by
        themselves once their tasks have (Azure Batch's terminatejob) can now say so."""

    @abc.abstractmethod
    def poll(self, timeout: float) -> list[TaskUpdate]:
        """State changes since the last call, waiting up to ``timeout`` seconds for one."""

    def status(self) -> str | None:
        """One line on the nodes for the progress display (``nodes: 3 of 10 ready``), if the
        backend has something to say; called after each ``poll``."""
        return None

    def task_logs(self, task_id: str, tail: int = 20) -> str:
        """The last ``tail`` lines of the task's stderr from its last attempt ("" if none)."""
        return ""

    @abc.abstractmethod
    def cancel(self) -> None:
        """Stop submitting and stop every running task; return when they are gone."""

    @abc.abstractmethod
    def teardown(self, keep: bool = False) -> None:
        """Release what ``provision`` created. ``keep`` asks to keep it for inspection."""

    @classmethod
    def clean(
        cls, settings: BaseModel, job_dir: Path, *, dry_run: bool, everything: bool
    ) -> Iterable[CleanedItem]:
        """For ``fanout clean``: find what earlier runs left on this backend — only what
        carries fanout's marks — and delete it unless ``dry_run``. ``everything`` also takes
        what may still be in use or was kept on purpose. One item per thing found, with the
        reason when it could not be deleted; a generator lets each show as it is done. Raise
        ``BackendError`` only when the backend cannot be asked at all."""
        return []

    def leftovers(self) -> list[str]:
        """After ``teardown``: what this run created and did not remove (kept on purpose, or
        failed to delete), one line each, for the run record."""
        return []


def exit_status(code: int) -> str:
    """How a command ended, for an error message: ``exit code 3``, or ``killed by SIGKILL``
    for a negative code, which is how Python and Azure Batch report a process ended by a
    signal. A shell reports a child killed by signal N as exit code 128 + N, which a program
    may also exit with on its own: that stays an exit code."""
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def setup_script(commands: Sequence[str]) -> str:
    """``[job] setup`` as one ``/bin/sh -c`` script that stops at the first failing command.

    One shell for all commands, so a ``cd`` or ``export`` in one line holds for the next.
    """
    return "\n".join(("set -e", *commands))
