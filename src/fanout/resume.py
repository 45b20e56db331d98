"""Resuming a run: the ledger it left, checked against the job as it is now.

A resume never answers with stale results. The job's commands, setup, environment and app
files must be as the run started with them, or the resume is refused; an input whose content
changed has its task run again with the new content. Tasks that succeeded are kept only while
their outputs are still in the output directory, as recorded.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fanout.collect import outputs_intact
from fanout.errors import FanoutError
from fanout.ledger import FileRecord, Ledger, TaskRecord, read_record
from fanout.plan import Plan
from fanout.prepare import Prepared
from fanout.storage import Storage, file_digest

log = logging.getLogger(__name__)


def resumed_ledger(prepared: Prepared, storage: Storage) -> Ledger:
    """The ledger of the run to resume (``--resume RUN_ID``, or the latest one of the job
    that is unfinished or has tasks that did not succeed), checked against the job."""
    options, job = prepared.options, prepared.job
    run_id = options.resume or Ledger.latest_resumable(storage, job.name)
    if run_id is None:
        raise FanoutError(
            f"no unfinished run of job '{job.name}' in {storage.url} to resume"
            " (every run finished with all its tasks succeeded)"
        )
    ledger = Ledger.load(storage, job.name, run_id)
    if ledger.status == "finished" and not ledger.unsucceeded():
        raise FanoutError(
            f"run {run_id} of job '{job.name}' has already finished: every task succeeded"
        )
    check_same_job(ledger, prepared)
    if options.out is not None:
        ledger.out = str(options.out.resolve())
    ledger.status, ledger.finished = "running", None
    return ledger


def check_same_job(ledger: Ledger, prepared: Prepared) -> None:
    """Refuse to resume a run whose job changed in a way that would make its finished tasks
    stale: other inputs or commands, another setup or environment, changed app files."""
    plan, section = prepared.plan, prepared.job.spec.job
    hint = "; start a new run instead of resuming"
    planned = {task.id: task.command for task in plan.tasks}
    recorded = {task_id: record.command for task_id, record in ledger.tasks.items()}
    if planned != recorded:
        raise FanoutError(
            f"the job's inputs or command changed since run {ledger.run_id} started{hint}"
        )
    if ledger.files and (ledger.setup, ledger.env) != (list(section.setup), dict(section.env)):
        raise FanoutError(f"the job's setup or env changed since run {ledger.run_id} started{hint}")
    for path in plan.app_files:
        digest = ledger.files.get(str(path))
        if ledger.files and (digest is None or file_changed(path, digest)):
            raise FanoutError(f"app file {path} changed since run {ledger.run_id} started{hint}")


def reconcile(ledger: Ledger, plan: Plan) -> list[TaskRecord]:
    """Decide, in place, what the resumed run still has to do: a task runs again unless it
    succeeded with its outputs still in the output directory (or it succeeded and waits to
    be collected); it runs again anyway if its input changed. The tasks whose input changed.

    A run whose ledger could not be saved at its end (storage out of reach) left its run
    record in the output directory: what it says succeeded counts too."""
    out = Path(ledger.out)
    record = read_record(out)
    if record is not None and record.get("run_id") == ledger.run_id:
        for data in record.get("tasks", []):
            task_id = data.get("id")
            if data.get("state") == "succeeded" and task_id in ledger.tasks:
                ledger.tasks[task_id] = TaskRecord.from_json(data)
    changed = []
    for task in plan.tasks:
        record_ = ledger.tasks[task.id]
        edited = [path for path in task.inputs if _changed_since(ledger, path)]
        if edited:
            for path in edited:
                log.warning(
                    "input %s changed since run %s started: its task runs again",
                    path,
                    ledger.run_id,
                )
            changed.append(record_)
            record_.reset()
        elif record_.uncollected:
            continue
        elif record_.state != "succeeded" or not outputs_intact(out, record_.outputs):
            record_.reset()
    return changed


def _changed_since(ledger: Ledger, path: Path) -> bool:
    """Whether the input ``path`` changed since the run staged it (if it did)."""
    digest = ledger.files.get(str(path))
    return digest is not None and file_changed(path, digest)


def file_changed(path: Path, recorded: FileRecord) -> bool:
    """Whether ``path`` no longer holds what ``recorded`` describes. Same size and
    modification time: unchanged; otherwise its md5 decides (a file touched but not changed
    is still the same)."""
    try:
        stat = path.stat()
    except OSError:
        return True
    if stat.st_size != recorded.bytes:
        return True
    if stat.st_mtime_ns == recorded.mtime_ns:
        return False
    return file_digest(path).md5 != recorded.md5
