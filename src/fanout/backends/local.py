"""The local backend: tasks as processes on this machine, in a Batch-like node environment.

One node, ``slots`` tasks at a time. The node directory mirrors an Azure Batch node's::

    <root>/<run-id>/<node-id>/
        shared/                 app files land and setup runs here (FANOUT_APP_DIR)
        startup/                stdout.txt and stderr.txt of the setup
        workitems/<job-id>/job-1/<task-id>/attempt-<n>/
            wd/                 the task's working directory, with its resource files
            stdout.txt, stderr.txt

Resource files are fetched and outputs delivered through ``fanout.transfer``, the same code
path a remote node uses, so a job that works here moves its data the same way in the cloud.
Each task runs in a session (process group) of its own: a timeout, a cancel or the end of the
run's budget kills the whole group, and nothing a task started outlives it — nor the fanout
process, which a watchdog (``fanout.backends.watchdog``) outlives to end what it left running.
"""

from __future__ import annotations

import os
import queue
import select
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from fanout.backend import (
    Backend,
    Capability,
    PoolSpec,
    ResourceFile,
    RunContext,
    TaskSpec,
    TaskState,
    TaskUpdate,
    exit_status,
    setup_script,
)
from fanout.backends.process_groups import end_groups
from fanout.backends.watchdog import Watchdog
from fanout.errors import SetupError
from fanout.hookspecs import hookimpl
from fanout.redact import CREDENTIAL_VARIABLES
from fanout.transfer import TransferError, deliver, fetch, join_url, matching_files

NODE_ID = "local-0"
POOL_ID = "local"
LONGEST_POLL_S = 86400.0
"""The longest single wait for a task to exit: poll() takes at most 2**31 - 1 ms."""
MAX_ARG_STRLEN = 32 * 4096
"""Linux's limit on one string of a program's arguments or environment, its NUL included."""


class LocalSettings(BaseModel):
    """The ``[backends.local]`` table."""

    model_config = ConfigDict(extra="forbid")

    slots: int = Field(
        default_factory=lambda: os.cpu_count() or 1, ge=1, description="Tasks run at once."
    )
    root: Path | None = Field(
        default=None,
        description="Where node directories go (default: .fanout/local beside the job file).",
    )
    keep: bool = Field(
        default=False,
        description="Keep node directories after a run in which every task succeeded.",
    )


class LocalBackend(Backend):
    """Runs tasks as processes on this machine, in a Batch-like node environment."""

    name = "local"
    settings_model = LocalSettings
    capabilities: ClassVar[frozenset[Capability]] = frozenset(Capability)
    max_command_length: ClassVar[int | None] = MAX_ARG_STRLEN - 1
    """The command is one argument of ``/bin/sh -c``. The environment and the arguments
    together must also fit the system's ``ARG_MAX`` (a quarter of the stack's limit, 2 MiB by
    default, never less than 128 KiB): that depends on the environment of the moment, so a task
    that goes beyond it fails when it starts, with "Argument list too long"."""

    def __init__(self, settings: BaseModel, context: RunContext) -> None:
        super().__init__(settings, context)
        assert isinstance(settings, LocalSettings)
        self._slots = settings.slots
        self._keep = settings.keep
        root = settings.root or Path(".fanout") / "local"
        self.run_dir = (context.job_dir / root).resolve() / context.run_id
        self.node_dir = self.run_dir / NODE_ID
        self._deadline = time.monotonic() + context.budget_s
        self._budget_ran_out = f"the run's budget of {_seconds(context.budget_s)} ran out"
        self._pending: queue.Queue[TaskSpec | None] = queue.Queue()
        self._updates: queue.Queue[TaskUpdate] = queue.Queue()
        self._running: dict[str, subprocess.Popen[bytes]] = {}
        self._last_attempt: dict[str, Path] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._workers: list[threading.Thread] = []
        self._janitor = ThreadPoolExecutor(1, thread_name_prefix="janitor")
        self._watchdog: Watchdog | None = None
        self._pool_env: dict[str, str] = {}
        self._machine_env = {
            name: value for name, value in os.environ.items() if name not in CREDENTIAL_VARIABLES
        }

    @property
    def shared_dir(self) -> Path:
        return self.node_dir / "shared"

    @property
    def _job_dir(self) -> Path:
        """Where this run's tasks get their directories, as on a Batch node."""
        return self.node_dir / "workitems" / self.context.job_id / "job-1"

    def provision(self, pool: PoolSpec) -> None:
        self._watchdog = Watchdog()
        startup = self.node_dir / "startup"
        for directory in (self.shared_dir, startup / "wd", self._job_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self._pool_env = dict(pool.env)
        try:
            for resource in pool.app_files:
                fetch(resource.url, self.shared_dir / resource.path)
        except TransferError as exc:
            raise SetupError(f"setup failed on node {NODE_ID}: {exc}") from None
        if pool.setup:
            self._run_setup(pool, startup)
        for number in range(self._slots):
            worker = threading.Thread(target=self._work, name=f"slot-{number}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def submit(self, tasks: Sequence[TaskSpec]) -> None:
        for task in tasks:
            self._pending.put(task)

    def poll(self, timeout: float) -> list[TaskUpdate]:
        try:
            updates = [self._updates.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                updates.append(self._updates.get_nowait())
            except queue.Empty:
                return updates

    def task_logs(self, task_id: str, tail: int = 20) -> str:
        attempt_dir = self._last_attempt.get(task_id)
        if attempt_dir is None:
            return ""
        return _tail(attempt_dir / "stderr.txt", tail)

    def cancel(self) -> None:
        self._stopping.set()
        while True:
            try:
                self._pending.get_nowait()
            except queue.Empty:
                break
        with self._lock:
            running = [process.pid for process in self._running.values()]
        end_groups(running)
        self._stop_workers()

    def teardown(self, keep: bool = False) -> None:
        self._stop_workers()
        self._janitor.shutdown(wait=True)
        if self._watchdog is not None:
            self._watchdog.close()
        if not (keep or self._keep):
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _stop_workers(self) -> None:
        for _ in self._workers:
            self._pending.put(None)
        for worker in self._workers:
            worker.join()
        self._workers.clear()

    def _time_left(self) -> float:
        """Seconds until the run's budget runs out."""
        return self._deadline - time.monotonic()

    def _run_setup(self, pool: PoolSpec, startup: Path) -> None:
        env = self._environment({"AZ_BATCH_TASK_WORKING_DIR": str(startup / "wd")})
        script = setup_script(pool.setup)
        try:
            code, ran_out = self._run_process(
                script, self.shared_dir, env, startup, self._time_left()
            )
        except OSError as exc:
            raise SetupError(f"setup failed on node {NODE_ID}: cannot start it: {exc}") from None
        if ran_out:
            raise SetupError(f"setup failed on node {NODE_ID}: {self._budget_ran_out}")
        if code != 0:
            stderr = _tail(startup / "stderr.txt", 20)
            detail = f":\n{stderr}" if stderr else ""
            raise SetupError(f"setup failed on node {NODE_ID} ({exit_status(code)}){detail}")

    def _work(self) -> None:
        while (task := self._pending.get()) is not None:
            if not self._stopping.is_set():
                self._run_task(task)

    def _run_task(self, task: TaskSpec) -> None:
        """Run the attempts of ``task`` and report it once. An attempt starts only while the
        run's budget lasts: a task it left no time for fails as not run."""
        attempt, started = 0, None
        exit_code: int | None = None
        error: str | None = f"not run: {self._budget_ran_out}"
        while attempt <= task.max_retries and self._time_left() > 0:
            attempt += 1
            started = time.time()
            self._updates.put(
                TaskUpdate(task.id, TaskState.RUNNING, attempts=attempt, node=NODE_ID)
            )
            exit_code, error = self._run_attempt(task, attempt)
            if self._stopping.is_set():
                return  # cancelled: the scheduler records the task as not finished
            if error is None:
                break
        state = TaskState.SUCCEEDED if error is None else TaskState.FAILED
        self._updates.put(
            TaskUpdate(
                task.id,
                state,
                attempts=attempt,
                exit_code=exit_code,
                node=NODE_ID if attempt else None,
                error=error,
                started=started,
                finished=time.time(),
            )
        )
        if state is TaskState.SUCCEEDED:
            self._last_attempt.pop(task.id, None)  # logs are asked for failed tasks only
        if state is TaskState.SUCCEEDED and not self._keep:
            # Its outputs are in storage: remove its directory now, off the slot's path,
            # rather than all of them in a long teardown.
            self._janitor.submit(shutil.rmtree, self._job_dir / task.id, ignore_errors=True)

    def _run_attempt(self, task: TaskSpec, attempt: int) -> tuple[int | None, str | None]:
        """Run one attempt in a fresh working directory: (exit code, error or None).

        Whatever goes wrong is this attempt's failure, reported like any other: a download
        that fails, a full disk, a command line the system refuses to start. A slot never
        dies, leaving its task unreported.
        """
        task_dir = self._job_dir / task.id
        attempt_dir = task_dir / f"attempt-{attempt}"
        work_dir = attempt_dir / "wd"
        self._last_attempt[task.id] = attempt_dir
        try:
            task_dir.mkdir(exist_ok=True)
            attempt_dir.mkdir()
            work_dir.mkdir()
            _fetch_all(task.resource_files, work_dir)
        except TransferError as exc:
            return None, str(exc)
        except Exception as exc:  # anything: see above
            return None, f"cannot prepare its working directory: {exc}"

        left = self._time_left()
        if left <= 0:
            return None, self._budget_ran_out
        limit = left if task.timeout_s is None else min(task.timeout_s, left)
        env = self._environment(
            {
                **task.env,
                "FANOUT_TASK_ID": task.id,
                "FANOUT_ATTEMPT": str(attempt),
                "AZ_BATCH_TASK_ID": task.id,
                "AZ_BATCH_TASK_DIR": str(attempt_dir),
                "AZ_BATCH_TASK_WORKING_DIR": str(work_dir),
            }
        )
        try:
            code, ran_out = self._run_process(task.command, work_dir, env, attempt_dir, limit, task)
        except Exception as exc:
            return None, f"cannot start its command: {exc}"
        if ran_out:
            if task.timeout_s is not None and task.timeout_s <= left:
                return code, f"timed out after {_seconds(task.timeout_s)}"
            return code, self._budget_ran_out
        if code != 0:
            return code, exit_status(code)

        try:
            for output in task.output_files:
                for relative in matching_files(work_dir, output.pattern):
                    deliver(work_dir / relative, join_url(output.destination, relative))
        except TransferError as exc:
            return code, str(exc)
        except Exception as exc:
            return code, f"cannot deliver its outputs: {exc}"
        return code, None

    def _run_process(
        self,
        command: str,
        cwd: Path,
        env: dict[str, str],
        logs: Path,
        limit: float,
        task: TaskSpec | None = None,
    ) -> tuple[int, bool]:
        """Run ``command`` in ``/bin/sh -c``, in a session of its own watched by the watchdog,
        with ``stdout.txt`` and ``stderr.txt`` in ``logs``; its whole group ends with it, or
        after ``limit`` seconds. (exit status, whether ``limit`` ran out)."""
        with (logs / "stdout.txt").open("wb") as out, (logs / "stderr.txt").open("wb") as err:
            process = subprocess.Popen(
                ["/bin/sh", "-c", command],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        assert self._watchdog is not None
        self._watchdog.watch(process.pid)
        if task is not None:
            with self._lock:
                self._running[task.id] = process
            if self._stopping.is_set():  # cancel came as it started, and may not have seen it
                limit = 0
        try:
            ran_out = not _exits_within(process, limit)
        finally:
            end_groups([process.pid])
            self._watchdog.forget(process.pid)
            if task is not None:
                with self._lock:
                    self._running.pop(task.id, None)
        return process.wait(), ran_out

    def _environment(self, extra: dict[str, str]) -> dict[str, str]:
        """This machine's environment, less its credentials, plus the node environment every
        backend provides."""
        shared = str(self.shared_dir)
        return {
            **self._machine_env,
            **self._pool_env,
            "FANOUT_JOB_ID": self.context.job_id,
            "FANOUT_NODE_ID": NODE_ID,
            "FANOUT_APP_DIR": shared,
            "AZ_BATCH_JOB_ID": self.context.job_id,
            "AZ_BATCH_NODE_ID": NODE_ID,
            "AZ_BATCH_POOL_ID": POOL_ID,
            "AZ_BATCH_NODE_ROOT_DIR": str(self.node_dir),
            "AZ_BATCH_NODE_SHARED_DIR": shared,
            "AZ_BATCH_NODE_STARTUP_DIR": str(self.node_dir / "startup"),
            **extra,
        }


def _exits_within(process: subprocess.Popen[bytes], seconds: float) -> bool:
    """Wait up to ``seconds`` for ``process`` to exit; whether it did (then it is reaped).

    On a pidfd where Linux has them: ``Popen.wait`` with a timeout polls, sleeping up to
    50 ms between two looks, which a short task would pay in full.
    """
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # not Linux 5.3 or later
        try:
            process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return False
        return True
    deadline = time.monotonic() + seconds
    try:
        waiting = select.poll()
        waiting.register(pidfd, select.POLLIN)
        while True:
            left = max(deadline - time.monotonic(), 0.0)
            exited = bool(waiting.poll(min(left, LONGEST_POLL_S) * 1000))
            if exited or left <= LONGEST_POLL_S:
                break
    finally:
        os.close(pidfd)
    if exited:
        process.wait()
    return exited


def _fetch_all(resources: Sequence[ResourceFile], directory: Path) -> None:
    for resource in resources:
        fetch(resource.url, directory / resource.path)


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def _seconds(value: float | None) -> str:
    return f"{value:g}s"


@hookimpl
def fanout_register_backends(register):  # type: ignore[no-untyped-def]
    register(LocalBackend)
