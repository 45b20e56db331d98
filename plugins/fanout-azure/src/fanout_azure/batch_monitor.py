"""Following a job's tasks at a cost that does not grow with the number of tasks.

Each poll asks for the job's task counts (one request), until every task has completed and
been reported. Only when the number of completed tasks moved does it list tasks, and then only
those that completed since the newest completion already seen (``$filter`` on
``stateTransitionTime``, ``$select`` of the few fields needed): over a whole run, the listings
return each task a few times at most. Running tasks are listed the same way when the counts
move, a listing bounded by the pool's slots, not by the job's size. Throttling (429, 503 with
Retry-After) is the SDK's retry policy's business.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from fanout.backend import TaskState, TaskUpdate
from fanout_azure.batch_tasks import task_update

if TYPE_CHECKING:
    from azure.batch import BatchClient

FIELDS = ["id", "state", "stateTransitionTime", "executionInfo", "nodeInfo"]
OVERLAP = timedelta(seconds=2)
"""How far before the newest completion seen the next listing starts: completions stamped
out of order by the service's front ends are still seen; the duplicates are skipped."""


class TaskMonitor:
    """The task updates of one job, poll by poll."""

    def __init__(self, client: BatchClient, job_id: str, ignore: set[str] | None = None) -> None:
        """``ignore``: tasks of the job not to report (an earlier attempt's failures, which
        run again in another job)."""
        self.client = client
        self.job_id = job_id
        self._counts: tuple[int, int] | None = None
        self._finished: set[str] = set(ignore or ())
        self._running: set[str] = set()
        self._newest: datetime | None = None
        """The latest stateTransitionTime of a completed task seen; None: list them all."""
        self._expected = 0
        self._reported = 0

    def expect(self, count: int) -> None:
        """``count`` more tasks of the job are to be reported (added, or adopted)."""
        self._expected += count

    @property
    def done(self) -> bool:
        """Every task expected has completed and been reported: nothing more to ask. (Task
        counts lag behind additions, so they cannot tell this alone.)"""
        return self._reported >= self._expected

    def poll(self) -> list[TaskUpdate]:
        counts = self.client.get_job_task_counts(self.job_id).task_counts
        running, completed = counts.running, counts.completed
        previous = self._counts
        self._counts = (running, completed)
        updates: list[TaskUpdate] = []
        if previous is None or (running, completed) != previous:  # completions free slots too
            updates += self._newly_running()
        if previous is None or completed != previous[1]:
            updates += self._newly_completed()
            if len(self._finished) < completed:
                self._newest = None  # something was missed: list every completion next time
                self._counts = (running, -1)
        return updates

    def _newly_running(self) -> list[TaskUpdate]:
        listed = self._list("state eq 'running'")
        self._running &= {task.id for task in listed}
        updates = []
        for task in listed:
            if task.id not in self._running and task.id not in self._finished:
                self._running.add(task.id)
                updates.append(task_update(task))
        return updates

    def _newly_completed(self) -> list[TaskUpdate]:
        query = "state eq 'completed'"
        if self._newest is not None:
            since = (self._newest - OVERLAP).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            query += f" and stateTransitionTime ge datetime'{since}'"
        updates = []
        for task in self._list(query):
            moment = task.state_transition_time
            if moment is not None and (self._newest is None or moment > self._newest):
                self._newest = moment
            if task.id in self._finished:
                continue
            self._finished.add(task.id)
            self._running.discard(task.id)
            update = task_update(task)
            if update.state is not TaskState.RUNNING:
                updates.append(update)
                self._reported += 1
        return updates

    def _list(self, query: str) -> list[Any]:
        return list(self.client.list_tasks(self.job_id, filter=query, select=FIELDS))
