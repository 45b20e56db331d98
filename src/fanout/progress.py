"""What a person sees: a live display on a terminal, plain log lines elsewhere, a summary.

The scheduler reports through the ``Reporter`` interface; ``make_reporter`` picks the live
display (rich) when the output is a terminal and plain lines otherwise (CI logs, pipes).
"""

from __future__ import annotations

import shlex
import threading
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from rich.console import Console
from rich.filesize import decimal
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from fanout.errors import ExitCode
from fanout.ledger import Ledger, TaskRecord
from fanout.prepare import DEFAULT_BACKEND, DEFAULT_OUT, Prepared
from fanout.storage import default_storage_url

STATES = ("pending", "running", "succeeded", "failed")


class Reporter:
    """Plain log lines: each failure as it happens, progress at most every few seconds."""

    progress_interval_s = 5.0

    def __init__(self, console: Console) -> None:
        self.console = console
        self._lock = threading.Lock()
        self._staged_bytes = 0
        self._staging_total = 0
        self._states: dict[str, str] = {}
        self._last_progress = 0.0
        self._backend_status: str | None = None

    def staging_started(self, files: int, total_bytes: int) -> None:
        self._staging_total = total_bytes
        self._line(f"staging {files} files ({decimal(total_bytes)})")

    def staged(self, nbytes: int) -> None:
        """Called from staging threads as each file is in place."""
        with self._lock:
            self._staged_bytes += nbytes

    def tasks_submitted(self, count: int, tasks: Iterable[TaskRecord]) -> None:
        self._states = {task.id: task.state for task in tasks}
        self._line(f"submitted {count} tasks")

    def task_changed(self, task: TaskRecord) -> None:
        self._states[task.id] = task.state
        if task.state == "failed":
            self._line(f"task {task.id} failed: {task.error}")
        now = time.monotonic()
        if now - self._last_progress >= self.progress_interval_s:
            self._last_progress = now
            self._line(self.status())

    def backend_status(self, text: str | None) -> None:
        """What the backend says about its nodes; a line whenever it changes."""
        if text is not None and text != self._backend_status:
            self._line(text)
        self._backend_status = text

    def counts(self) -> Counter[str]:
        return Counter(self._states.values())

    def status(self) -> str:
        """Tasks by state, e.g. ``tasks: 3 queued, 2 running, 5 succeeded, 0 failed of 10``."""
        counts = self.counts()
        return (
            f"tasks: {counts['pending']} queued, {counts['running']} running,"
            f" {counts['succeeded']} succeeded, {counts['failed']} failed of {len(self._states)}"
        )

    def finished(self, ledger: Ledger, record_path: Path | None, exit_code: ExitCode) -> None:
        print_summary(self.console, ledger, record_path, exit_code)

    def close(self) -> None:
        pass

    def _line(self, text: str) -> None:
        """One plain line, without rich's markup and wrapping (it is also cheaper)."""
        self.console.file.write(text + "\n")
        self.console.file.flush()


class LiveReporter(Reporter):
    """A live display of bytes staged and tasks by state, redrawn in place."""

    def __init__(self, console: Console) -> None:
        super().__init__(console)
        self._live = Live(console=console, refresh_per_second=8, get_renderable=self._render)
        self._live.start()

    def staging_started(self, files: int, total_bytes: int) -> None:
        self._staging_total = total_bytes

    def tasks_submitted(self, count: int, tasks: Iterable[TaskRecord]) -> None:
        self._states = {task.id: task.state for task in tasks}

    def task_changed(self, task: TaskRecord) -> None:
        self._states[task.id] = task.state
        if task.state == "failed":
            self._live.console.print(
                f"[red]task {escape(task.id)} failed:[/] {escape(str(task.error))}"
            )

    def backend_status(self, text: str | None) -> None:
        self._backend_status = text

    def finished(self, ledger: Ledger, record_path: Path | None, exit_code: ExitCode) -> None:
        self.close()
        super().finished(ledger, record_path, exit_code)

    def close(self) -> None:
        self._live.stop()

    def _render(self) -> Text:
        lines = [f"staged {decimal(self._staged_bytes)} of {decimal(self._staging_total)}"]
        if self._backend_status:
            lines.append(self._backend_status)
        if self._states:
            lines.append(self.status())
        return Text("\n".join(lines))


def make_reporter(console: Console) -> Reporter:
    """The live display on a terminal, plain lines otherwise."""
    return LiveReporter(console) if console.is_terminal else Reporter(console)


def print_summary(
    console: Console, ledger: Ledger, record_path: Path | None, exit_code: ExitCode
) -> None:
    """Tasks by state, each failed task with its error and stderr tail, where things are, and
    how to finish the run if it did not succeed."""
    counts = Counter(task.state for task in ledger.tasks.values())
    failed = [task for task in ledger.tasks.values() if task.state == "failed"]
    if failed:
        table = Table(title="failed tasks", title_justify="left")
        for column in ("task", "exit code", "attempts", "error", "last lines of stderr"):
            table.add_column(column)
        for task in failed:
            table.add_row(
                task.id,
                "-" if task.exit_code is None else str(task.exit_code),
                str(task.attempts),
                task.error or "",
                task.stderr_tail or "",
            )
        console.print(table)
    summary = ", ".join(f"{counts[state]} {state}" for state in STATES if counts[state])
    if ledger.status != "finished":
        ended = (
            "interrupted" if exit_code in (ExitCode.INTERRUPTED, ExitCode.TERMINATED) else "stopped"
        )
        line, verb = f"run {ledger.run_id} {ended} ({summary})", "resume it with"
    else:
        line, verb = f"run {ledger.run_id} finished: {summary}", "run what did not succeed with"
    if ledger.status != "finished" or ledger.unsucceeded():
        line += f"; {verb}: {escape(resume_command(ledger))}"
    # soft_wrap: a command to copy is never broken inside a path
    console.print(line, highlight=False, soft_wrap=True)
    record = "not written" if record_path is None else str(record_path)
    console.print(f"outputs in {ledger.out}, run record {record}", highlight=False)


def print_plan(console: Console, prepared: Prepared) -> None:
    """What a run would do: tasks and their command lines, files to stage, where things go."""
    plan, options, section = prepared.plan, prepared.options, prepared.job.spec.job

    def line(text: str) -> None:
        console.print(text, markup=False, highlight=False, soft_wrap=True)

    line(f"job {prepared.job.name} ({prepared.job.path})")
    line(f"backend {prepared.backend_cls.name}: {prepared.settings.model_dump(mode='json')}")
    line(f"storage {prepared.storage_url}")
    line(f"outputs {section.outputs} to {(options.out or DEFAULT_OUT).resolve()}")
    timeout = "none" if section.timeout is None else f"{section.timeout:g}s"
    line(f"retries {section.retries}, timeout {timeout}, env {section.env}")
    if plan.app_files:
        line("app files, to every node's $FANOUT_APP_DIR:")
        for path in plan.app_files:
            line(f"  {path} ({decimal(path.stat().st_size)})")
    for command in section.setup:
        line(f"setup: {command}")
    table = Table("task", "input", "command", title=f"{len(plan.tasks)} tasks")
    table.title_justify = "left"
    for task in plan.tasks:
        inputs = "\n".join(f"{path} ({decimal(path.stat().st_size)})" for path in task.inputs)
        table.add_row(Text(task.id), Text(inputs), Text(task.command))
    console.print(table)


def resume_command(ledger: Ledger) -> str:
    """The command line that resumes ``ledger``'s run: the backend and storage it ran on
    (unless they are the defaults), its run id."""
    words = ["fanout", "run", ledger.job_file]
    if ledger.backend != DEFAULT_BACKEND:
        words += ["--backend", ledger.backend]
    if ledger.storage.url != default_storage_url(Path(ledger.job_file).parent):
        words += ["--storage", ledger.storage.url]
    return shlex.join([*words, "--resume", ledger.run_id])
