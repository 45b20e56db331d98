"""The run: stage, provision, submit, monitor, collect, clean up, record.

The scheduler owns the flow and the ledger and knows nothing about any cloud: a backend runs
tasks, storage moves bytes. A run that is interrupted (Ctrl-C, SIGTERM) cancels its tasks,
tears down what its backend created, records where it stopped, and can be resumed.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fanout.backend import (
    Backend,
    OutputFile,
    PoolSpec,
    ResourceFile,
    RunContext,
    TaskSpec,
    TaskState,
    TaskUpdate,
)
from fanout.collect import MissingOutput, collect_outputs
from fanout.errors import ExitCode, FanoutError, SetupError, StorageError
from fanout.ledger import FileRecord, Ledger, TaskRecord, new_run_id, now_iso
from fanout.outdir import check_out_dir, claimed
from fanout.prepare import DEFAULT_OUT, Prepared
from fanout.progress import Reporter
from fanout.redact import redact
from fanout.resume import reconcile, resumed_ledger
from fanout.storage import StagedFile, Storage
from fanout.taskids import MAX_ID_LENGTH

log = logging.getLogger(__name__)

COLLECT_CONCURRENCY = 8
SUBMIT_CHUNK = 1000
"""Tasks built and handed to the backend at once."""
POLL_TIMEOUT_S = 0.5
STDERR_TAIL_LINES = 20


class Interrupted(BaseException):
    """Raised in the main thread by SIGINT or SIGTERM; carries the exit status to use."""

    def __init__(self, exit_code: ExitCode) -> None:
        super().__init__(exit_code.name)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Outcome:
    """How a run ended."""

    exit_code: ExitCode
    ledger: Ledger
    record_path: Path | None
    """None if the run record could not be written (``errors`` says why)."""
    errors: tuple[str, ...] = ()
    """What stopped the run or went wrong at its end, one line each."""


def run(prepared: Prepared, reporter: Reporter) -> Outcome:
    """Carry out a prepared run from start to finish (or to a clean interruption)."""
    section = prepared.job.spec
    lifetime = section.job.budget + section.storage.expiry_margin
    expires = datetime.now(UTC) + timedelta(seconds=lifetime)
    storage = Storage(prepared.signer_cls(prepared.storage_url, expires))
    resuming = prepared.options.resume is not None
    if resuming:  # reading the ledger needs the storage
        storage.check_reachable()
        ledger = resumed_ledger(prepared, storage)
    else:
        ledger = new_ledger(prepared, storage)
    out = Path(ledger.out)
    check_out_dir(out)
    earlier_job_ids = tuple(ledger.job_ids)
    ledger.job_ids.append(attempt_job_id(prepared.job.name, ledger.run_id, len(earlier_job_ids)))
    context = RunContext(
        run_id=ledger.run_id,
        job_id=ledger.job_ids[-1],
        job_dir=prepared.job.directory,
        budget_s=section.job.budget,
        earlier_job_ids=earlier_job_ids,
    )
    backend = prepared.backend_cls(prepared.settings, context)
    backend.preflight()
    if not resuming:
        storage.check_reachable()  # may create the storage root: only once all else is checked
    with claimed(out, ledger.run_id):
        changed = reconcile(ledger, prepared.plan) if resuming else []
        return _Run(prepared, storage, ledger, backend, reporter, changed).execute()


def attempt_job_id(job: str, run_id: str, attempt: int) -> str:
    """The backend's job id for one attempt at a run: ``<job>-<run-id>``, then ``-1``, ``-2``…
    for resumed attempts; at most 64 characters, as Azure Batch requires."""
    suffix = f"-{run_id}" + (f"-{attempt}" if attempt else "")
    return job[: MAX_ID_LENGTH - len(suffix)] + suffix


def new_ledger(prepared: Prepared, storage: Storage) -> Ledger:
    """The ledger of a new run of the prepared job."""
    job, section = prepared.job, prepared.job.spec.job
    tasks = {
        task.id: TaskRecord(
            id=task.id,
            input=str(task.input),
            inputs=[str(path) for path in task.inputs] if len(task.inputs) > 1 else None,
            command=task.command,
        )
        for task in prepared.plan.tasks
    }
    return Ledger(
        storage=storage,
        run_id=new_run_id(),
        job=job.name,
        job_file=str(job.path),
        backend=prepared.backend_cls.name,
        out=str((prepared.options.out or DEFAULT_OUT).resolve()),
        tasks=tasks,
        setup=list(section.setup),
        env=dict(section.env),
    )


class _Run:
    """One run in progress: the state the phases share."""

    def __init__(
        self,
        prepared: Prepared,
        storage: Storage,
        ledger: Ledger,
        backend: Backend,
        reporter: Reporter,
        changed: list[TaskRecord],
    ) -> None:
        self.prepared = prepared
        self.section = prepared.job.spec.job
        self.storage = storage
        self.ledger = ledger
        self.backend = backend
        self.reporter = reporter
        self.out = Path(ledger.out)
        self.changed = {record.id for record in changed}
        """Tasks whose input changed since an earlier attempt: never adopted from it."""
        self.started = False
        """Whether tasks may have run: from then on, an error ends the run with status 1."""
        self._journal_trouble: str | None = None

    def execute(self) -> Outcome:
        stopped_by: ExitCode | None = None
        failure: FanoutError | None = None
        errors: list[str] = []
        completed = False
        provisioned = False
        try:
            self._collect_left_behind()
            pending = [r for r in self.ledger.tasks.values() if r.state == "pending"]
            self.ledger.save()  # before the backend creates anything: the job ids are in it
            if pending:
                provisioned = True  # a half-finished provision still needs a teardown
                resumed = len(self.ledger.job_ids) > 1
                candidates = {r.id for r in pending} - self.changed
                adopted = self.backend.reattach(candidates) if resumed else set()
                if adopted:
                    self.started = True
                    log.info("reattached to %d tasks of an earlier attempt", len(adopted))
                to_submit = [r for r in pending if r.id not in adopted]
                if to_submit:
                    self._provision_and_submit(to_submit)
                self._monitor({record.id for record in pending})
            completed = True
        except Interrupted as stop:
            stopped_by = stop.exit_code
        except SetupError as exc:
            self._fail_unfinished(str(exc))
            completed = True
        except FanoutError as exc:  # the run stops here; it can be resumed
            failure = exc
            errors.append(str(exc))
        finally:
            # Also on an unexpected error: stop what runs, release what was made, record it.
            with signals_deferred():
                record_path = self._release(provisioned, completed, errors)
        if stopped_by is not None:
            exit_code = stopped_by
        elif failure is not None and not self.started:  # nothing ran: as if refused at once
            exit_code = failure.exit_code
        elif errors or self._any_failed():
            exit_code = ExitCode.TASKS_FAILED
        else:
            exit_code = ExitCode.OK
        self.reporter.finished(self.ledger, record_path, exit_code)
        return Outcome(exit_code, self.ledger, record_path, tuple(errors))

    def _release(self, provisioned: bool, completed: bool, errors: list[str]) -> Path | None:
        """Stop what still runs, tear down what the backend made and write the run record:
        each step even if the one before it failed (its error joins ``errors``)."""
        try:
            if provisioned and not completed:
                self.backend.cancel()
        except FanoutError as exc:
            errors.append(str(exc))
        try:
            if provisioned:
                self.backend.teardown(keep=self._any_failed())
        except FanoutError as exc:
            errors.append(str(exc))
        if provisioned:
            self.ledger.leftovers = self.backend.leftovers()
        return self._record(completed, errors)

    def _collect_left_behind(self) -> None:
        """On a resumed run: bring home the outputs of tasks that succeeded but could not be
        collected then; those whose outputs are not complete in storage run again."""
        for record in [r for r in self.ledger.tasks.values() if r.uncollected]:
            self._collect(record)
            if record.state == "succeeded":
                self.ledger.note_finished(record)
            elif not record.uncollected:
                record.reset()

    def _provision_and_submit(self, tasks: list[TaskRecord]) -> None:
        """Stage the app files, provision, stage the tasks' inputs while the nodes come up
        (on Batch a pool takes minutes), record what they hold, submit."""
        app_files = set(self.prepared.plan.app_files)
        inputs = {Path(path) for record in tasks for path in record.all_inputs}
        try:
            sizes = sum(path.stat().st_size for path in app_files | inputs)
        except OSError as exc:
            raise FanoutError(f"cannot stage files to {self.storage.url}: {exc}") from None
        self.reporter.staging_started(len(app_files | inputs), sizes)
        app = self._stage(app_files)
        log.info("provisioning nodes on backend %s", self.backend.name)
        self.backend.provision(self._pool_spec(app))
        staged = self._stage(inputs)
        self.ledger.save()  # with the inputs' digests, before any task runs
        self._submit(tasks, staged)

    def _stage(self, files: set[Path]) -> dict[Path, StagedFile]:
        """Upload ``files``, and record what they hold."""
        log.info("staging %d files to %s", len(files), self.storage.url)
        try:
            # Before reading them: a file changed while it is staged then looks changed.
            mtimes = {path: path.stat().st_mtime_ns for path in files}
            staged = self.storage.stage(
                files,
                self.storage.path("jobs", self.ledger.job, "staged"),
                on_progress=self.reporter.staged,
            )
        except (OSError, StorageError) as exc:
            raise FanoutError(f"cannot stage files to {self.storage.url}: {exc}") from None
        for path, item in staged.items():
            self.ledger.files[str(path)] = FileRecord(
                item.digest.size, item.digest.md5, mtimes[path]
            )
        return staged

    def _pool_spec(self, staged: dict[Path, StagedFile]) -> PoolSpec:
        app_files = tuple(
            ResourceFile(self.storage.read_url(staged[path].path), path.name)
            for path in self.prepared.plan.app_files
        )
        return PoolSpec(app_files=app_files, setup=tuple(self.section.setup), env=self.section.env)

    def _submit(self, pending: list[TaskRecord], staged: dict[Path, StagedFile]) -> None:
        """Hand the tasks to the backend in chunks, each built just before it goes: a run of
        many tasks never holds every task's specification at once."""
        leftovers = set(self.storage.list_dirs(self._outputs_path()))
        log.info("submitting %d tasks to backend %s", len(pending), self.backend.name)
        self.started = True
        for start in range(0, len(pending), SUBMIT_CHUNK):
            chunk = pending[start : start + SUBMIT_CHUNK]
            self.backend.submit([self._task_spec(r, staged, leftovers) for r in chunk])
        self.backend.all_submitted()
        self.reporter.tasks_submitted(len(pending), self.ledger.tasks.values())

    def _task_spec(
        self, record: TaskRecord, staged: dict[Path, StagedFile], leftovers: set[str]
    ) -> TaskSpec:
        sources = [staged[Path(path)] for path in record.all_inputs]
        destination = self._outputs_path(record.id)
        if record.id in leftovers:  # from an attempt that was interrupted
            self.storage.remove(destination)
        return TaskSpec(
            id=record.id,
            command=record.command,
            resource_files=tuple(
                ResourceFile(self.storage.read_url(source.path), source.source.name)
                for source in sources
            ),
            output_files=tuple(
                OutputFile(pattern, self.storage.write_url(destination))
                for pattern in self.section.outputs
            ),
            env=self.section.env,
            max_retries=self.section.retries,
            timeout_s=self.section.timeout,
            logs_destination=self.storage.write_url(self._logs_path(record.id)),
        )

    def _monitor(self, outstanding: set[str]) -> None:
        collecting: dict[Future[None], str] = {}
        with ThreadPoolExecutor(COLLECT_CONCURRENCY, thread_name_prefix="collect") as collector:
            while outstanding:
                timeout = 0.05 if collecting else POLL_TIMEOUT_S
                updates = self.backend.poll(timeout)
                self.reporter.backend_status(self.backend.status())
                succeeded = []
                for update in updates:
                    log.debug("task %s: %s", update.task_id, update.state.value)
                    record = self.ledger.tasks[update.task_id]
                    _apply(record, update)
                    if update.state is TaskState.SUCCEEDED:
                        succeeded.append(record)
                    elif update.state is TaskState.FAILED:  # in the pool, as downloads are
                        collecting[collector.submit(self._record_failure, record)] = record.id
                    else:
                        self.reporter.task_changed(record)
                listed = self._outputs_listed(succeeded)
                for record in succeeded:  # downloads in the pool: they must not hold up polls
                    future = collector.submit(self._collect, record, listed.get(record.id))
                    collecting[future] = record.id
                finished = []
                for future in [f for f in collecting if f.done()]:
                    record = self.ledger.tasks[collecting.pop(future)]
                    future.result()
                    outstanding.discard(record.id)
                    self.ledger.note_finished(record)
                    finished.append(record)
                self._flush_journal()  # durable before the run moves on
                for record in finished:
                    self.reporter.task_changed(record)

    def _outputs_listed(self, records: list[TaskRecord]) -> dict[str, dict[str, dict[str, Any]]]:
        """The files each of ``records`` left in storage, in a constant number of listings
        (``Storage.files_of``). On trouble, none: each task's own listing then says what."""
        if not records:
            return {}
        try:
            return self.storage.files_of(self._outputs_path(), [r.id for r in records])
        except Exception:  # whatever the storage's library raises; told task by task
            return {}

    def _flush_journal(self) -> None:
        """Journal the tasks that finished. Storage trouble does not stop the run: the tasks
        stay noted for the next flush, and the trouble is told once."""
        try:
            self.ledger.flush()
        except Exception as exc:  # whatever the storage's library raises
            message = redact(f"cannot record progress in {self.storage.url}: {exc}")
            if message != self._journal_trouble:
                log.warning("%s; trying again as tasks finish", message)
            self._journal_trouble = message
        else:
            self._journal_trouble = None

    def _collect(self, record: TaskRecord, files: dict[str, dict[str, Any]] | None = None) -> None:
        """Bring a succeeded task's outputs home (``files``: what it left in storage, if they
        were listed already); a task without them has failed."""
        prefix = self._outputs_path(record.id)
        try:
            if files is None:
                files = self.storage.files_under(prefix)
            record.outputs = collect_outputs(
                self.storage, prefix, files, self.section.outputs, self.out, record.id
            )
            record.state, record.error, record.uncollected = "succeeded", None, False
        except MissingOutput as exc:
            record.state, record.error, record.uncollected = "failed", str(exc), False
        except (OSError, StorageError) as exc:
            record.state, record.error = "failed", redact(f"cannot collect outputs: {exc}")
            record.uncollected = True  # they are in storage: --resume brings them home

    def _record_failure(self, record: TaskRecord) -> None:
        record.stderr_tail = redact(self._stderr_tail(record.id))
        record.state = "failed"

    def _stderr_tail(self, task_id: str) -> str:
        """From the backend, or else from the logs it uploaded (``TaskSpec.logs_destination``)."""
        tail = self.backend.task_logs(task_id, STDERR_TAIL_LINES)
        if tail:
            return tail
        try:
            data = self.storage.read_tail(f"{self._logs_path(task_id)}/stderr.txt", 64 * 1024)
        except (OSError, StorageError):
            return ""
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-STDERR_TAIL_LINES:])

    def _outputs_path(self, *task_id: str) -> str:
        return "/".join((self.ledger.run_path, "outputs", *task_id))

    def _logs_path(self, task_id: str) -> str:
        return "/".join((self.ledger.run_path, "logs", task_id))

    def _fail_unfinished(self, reason: str) -> None:
        for record in self.ledger.tasks.values():
            if record.state in ("pending", "running"):
                record.state, record.error = "failed", redact(f"not run: {reason}")

    def _any_failed(self) -> bool:
        return any(record.state == "failed" for record in self.ledger.tasks.values())

    def _record(self, completed: bool, errors: list[str]) -> Path | None:
        """Save the ledger and write the run record, each even if the other cannot be (its
        trouble joins ``errors``); unfinished tasks run again on resume."""
        for record in self.ledger.tasks.values():
            if record.state == "running":
                record.state = "pending"
        self.ledger.status = "finished" if completed else "interrupted"
        self.ledger.finished = now_iso()
        try:
            self.ledger.save()
        except Exception as exc:  # whatever the storage's library raises
            errors.append(redact(f"cannot save the run's ledger in {self.storage.url}: {exc}"))
        try:
            return self.ledger.write_record()
        except OSError as exc:
            errors.append(f"cannot write the run record in {self.out}: {exc.strerror or exc}")
            return None


def _apply(record: TaskRecord, update: TaskUpdate) -> None:
    """Copy what a backend reported into the task's record."""
    record.state = "running"
    record.attempts = update.attempts or record.attempts
    record.node = update.node or record.node
    record.exit_code = update.exit_code
    record.error = None if update.error is None else redact(update.error)
    if update.started is not None and update.finished is not None:
        record.duration_s = round(update.finished - update.started, 3)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM while cleaning up, so a second Ctrl-C cannot orphan nodes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def interruptible() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into ``Interrupted`` in the main thread, for a clean stop."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        code = ExitCode.INTERRUPTED if signum == signal.SIGINT else ExitCode.TERMINATED
        raise Interrupted(code)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
