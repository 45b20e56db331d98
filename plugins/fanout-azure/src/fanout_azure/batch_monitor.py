"""Following a job's tasks at a cost that does not grow with the number of tasks.

Each poll asks for the job's task counts (one request), until every task it follows has
completed and been reported. Only when the number of completed tasks moved does it list tasks,
and then only those that completed since the newest completion already seen (``$filter`` on
``stateTransitionTime``, ``$select`` of the few fields needed): over a whole run, the listings
return each task a few times at most. Running tasks are listed the same way when the counts
move, a listing bounded by the pool's slots, not by the job's size.

A job can end before all its tasks ran: at its maxWallClockTime (the run's budget), or when
someone terminates or deletes it. Its queued tasks then stay queued for ever, and the counts
stop moving; so a poll where nothing moved also asks for the job's state, and once the job has
ended, the tasks that never completed are reported failed with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from fanout.backend import TaskState, TaskUpdate
from fanout_azure.batch_tasks import task_update, wire_value

if TYPE_CHECKING:
    from azure.batch import BatchClient

FIELDS = ["id", "state", "stateTransitionTime", "executionInfo", "nodeInfo"]
OVERLAP = timedelta(seconds=2)
"""How far before the newest completion seen the next listing starts: completions stamped
out of order by the service's front ends are still seen; the duplicates are skipped."""


class TaskMonitor:
    """The updates of the tasks a run follows in one job, poll by poll."""

    def __init__(self, client: BatchClient, job_id: str) -> None:
        self.client = client
        self.job_id = job_id
        self._counts: tuple[int, int] | None = None
        self._expected: set[str] = set()
        """The tasks to report; others of the job (an earlier attempt's failures, which run
        again in another job) are seen but not reported."""
        self._reported: set[str] = set()
        self._completed: set[str] = set()
        self._running: set[str] = set()
        self._newest: datetime | None = None
        """The latest stateTransitionTime of a completed task seen; None: list them all."""

    def expect(self, task_ids: Iterable[str]) -> None:
        """These tasks of the job (added, or adopted) are to be reported."""
        self._expected.update(task_ids)

    @property
    def done(self) -> bool:
        """Every task expected has completed and been reported: nothing more to ask. (Task
        counts lag behind additions, so they cannot tell this alone.)"""
        return self._expected <= self._reported

    def poll(self) -> list[TaskUpdate]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            counts = self.client.get_job_task_counts(self.job_id).task_counts
        except ResourceNotFoundError:
            return self._never_ran("was deleted", listable=False)
        running, completed = counts.running, counts.completed
        previous = self._counts
        if previous is not None and (running, completed) == previous:
            return self._after_job_end()
        # Both listings before any change of state, so that a poll that fails half-way
        # leaves the monitor as it was and the next poll asks again.
        now_running = self._list("state eq 'running'")  # completions free slots too
        completions = None
        if previous is None or completed != previous[1]:
            completions = self._list(self._completed_query())
        updates = self._newly_running(now_running)
        if completions is not None:
            updates += self._newly_completed(completions)
            if len(self._completed) < completed:
                self._newest = None  # something was missed: list every completion next time
                completed = -1
        self._counts = (running, completed)
        return updates

    def _after_job_end(self) -> list[TaskUpdate]:
        """Nothing moved: if the job has ended, what it left unrun will never run."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            job = self.client.get_job(self.job_id, select=["state", "executionInfo"])
        except ResourceNotFoundError:
            return self._never_ran("was deleted", listable=False)
        if wire_value(job.state) != "completed":
            return []
        info = job.execution_info
        reason = (info.termination_reason if info is not None else None) or "terminated"
        return self._never_ran(f"ended ({reason})")

    def _never_ran(self, what_happened: str, listable: bool = True) -> list[TaskUpdate]:
        """The job's last completions (if it still exists to list them), then every expected
        task still unreported, failed."""
        self._newest = None
        updates = self._newly_completed(self._list(self._completed_query())) if listable else []
        for task_id in sorted(self._expected - self._reported):
            self._reported.add(task_id)
            error = f"not run: job {self.job_id} {what_happened}"
            updates.append(TaskUpdate(task_id, TaskState.FAILED, error=error))
        return updates

    def _newly_running(self, listed: list[Any]) -> list[TaskUpdate]:
        self._running &= {task.id for task in listed}
        updates = []
        for task in listed:
            if task.id in self._running or task.id in self._completed:
                continue
            self._running.add(task.id)
            if task.id in self._expected:
                updates.append(task_update(task))
        return updates

    def _completed_query(self) -> str:
        query = "state eq 'completed'"
        if self._newest is not None:
            since = (self._newest - OVERLAP).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            query += f" and stateTransitionTime ge datetime'{since}'"
        return query

    def _newly_completed(self, listed: list[Any]) -> list[TaskUpdate]:
        updates = []
        for task in listed:
            moment = task.state_transition_time
            if moment is not None and (self._newest is None or moment > self._newest):
                self._newest = moment
            if task.id in self._completed:
                continue
            self._completed.add(task.id)
            self._running.discard(task.id)
            if task.id in self._expected and task.id not in self._reported:
                self._reported.add(task.id)
                updates.append(task_update(task))
        return updates

    def _list(self, query: str) -> list[Any]:
        return list(self.client.list_tasks(self.job_id, filter=query, select=FIELDS))
