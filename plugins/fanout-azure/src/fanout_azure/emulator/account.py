"""The emulated Batch account: what each operation does, and the scheduler that runs tasks.

One lock guards the account's state; attempts run on threads of their own (real processes, see
``runtime``), and a dispatcher thread places active tasks on free slots, ends jobs whose time
is up, and completes jobs whose tasks are all done when they ask for it. Every state change the
service documents is kept: a deleted pool or job stays ``deleting`` until its tasks are
stopped, which is what the SDK's delete pollers wait for.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from fanout_azure.emulator.autoscale import evaluate, invalid_formula
from fanout_azure.emulator.errors import BatchError, exists, not_found
from fanout_azure.emulator.faults import Faults
from fanout_azure.emulator.job_update import check_job_options, updated_spec, wall_clock_seconds
from fanout_azure.emulator.model import Job, Node, Pool, Task, node_id, now
from fanout_azure.emulator.runtime import (
    AttemptResult,
    NodePaths,
    run_start_task,
    run_task,
    should_retry,
)
from fanout_azure.emulator.spec import get_spec

_Found = TypeVar("_Found")
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
DISPATCH_INTERVAL_S = 0.2
TERMINATED_BY_USER = {
    "category": "usererror",
    "code": "TaskEnded",
    "message": "Task Was Ended by User Request",
}
TERMINATED_WITH_JOB = {
    "category": "usererror",
    "code": "TaskEnded",
    "message": "Task Was Ended because its Job was terminated",
}
TERMINATED_WITH_NODE = {
    "category": "usererror",
    "code": "TaskEnded",
    "message": "Task Was Ended because its Compute Node was removed from the Pool",
}
TERMINATED_WITH_DISABLE = {
    "category": "usererror",
    "code": "TaskEnded",
    "message": "Task Was Ended because its Job was disabled",
}
ENDING_DEALLOCATIONS = ("requeue", "terminate")
"""``nodeDeallocationOption``s that end a leaving node's tasks at once (the others let them end)."""
UPDATABLE_JOB_STATES = ("active", "disabled")
LIVE_JOB_STATES = ("active", "disabling", "disabled", "enabling")
"""Job states in which a task whose node went away is requeued, and a failed one retried."""
GONE_NODE_STATES = ("leavingpool", "preempted", "unusable")
DEFAULT_EVALUATION_INTERVAL = "PT15M"
_JOB_CONFLICTS = {
    "completed": ("JobCompleted", "The specified job is already in a completed state."),
    "terminating": ("JobBeingTerminated", "The specified job is being terminated."),
    "deleting": (
        "JobBeingDeleted",
        "The specified job has been marked for deletion and is being garbage collected.",
    ),
}
"""409 codes for an operation a job's state does not allow (Batch's status and error codes)."""


def check_id(kind: str, value: object) -> str:
    """An id as the service accepts it: up to 64 letters, digits, hyphens and underscores."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise BatchError(
            400,
            "InvalidPropertyValue",
            "The value provided for one of the properties in the request body is invalid.",
            {"PropertyName": "id", "PropertyValue": str(value), "Reason": f"Invalid {kind} id"},
        )
    return value


POOL_UPDATABLE_ANY_TIME = frozenset(
    {"displayName", "startTask", "metadata", "applicationPackageReferences"}
)
"""What Pools_UpdatePool changes on a pool that has nodes; the rest needs an empty pool."""


class Account:
    """A Batch account on this machine: pools of directory-tree nodes running real processes."""

    def __init__(self, name: str, base_url: str, root: Path, faults: Faults | None = None) -> None:
        self.name = name
        self.faults = faults or Faults()
        self.base_url = base_url
        self.root = root
        self.pools: dict[str, Pool] = {}
        self.jobs: dict[str, Job] = {}
        self._pending: dict[str, deque[Task]] = {}
        """Active tasks waiting for a slot, by case-folded job id, in order."""
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._threads: set[threading.Thread] = set()
        self._dispatcher = threading.Thread(
            target=self._dispatch_loop, name="dispatch", daemon=True
        )
        self._dispatcher.start()

    # ---------------------------------------------------------------- pools

    def create_pool(self, spec: dict[str, Any], auto_pool_of: str | None = None) -> Pool:
        pool_id = check_id("pool", spec.get("id"))
        with self._lock:
            if pool_id.casefold() in self.pools:
                raise exists("pool", pool_id)
            pool = Pool(
                id=pool_id,
                spec=spec,
                root=self.root / "pools" / uuid.uuid4().hex[:12],
                target_dedicated=int(spec.get("targetDedicatedNodes", 0)),
                target_spot=int(spec.get("targetLowPriorityNodes", 0)),
                auto_pool_of=auto_pool_of,
            )
            if spec.get("enableAutoScale"):
                if not spec.get("autoScaleFormula"):
                    raise invalid_formula("a pool that scales itself needs an autoScaleFormula")
                self._scale(pool, resize=False)
            self.pools[pool_id.casefold()] = pool
        self._spawn(self._allocate, pool)
        return pool

    def pool(self, pool_id: str) -> Pool:
        with self._lock:
            return _find(self.pools, "pool", pool_id)

    def resize_pool(self, pool_id: str, spec: dict[str, Any]) -> None:
        with self._lock:
            pool = self.pool(pool_id)
            if pool.state == "deleting":
                raise _pool_being_deleted()
            if pool.allocation_state != "steady":
                raise BatchError(
                    409, "PoolNotSteady", "The specified pool is not in a steady state."
                )
            pool.target_dedicated = int(spec.get("targetDedicatedNodes", pool.target_dedicated))
            pool.target_spot = int(spec.get("targetLowPriorityNodes", pool.target_spot))
            pool.allocation_state, pool.allocation_changed = "resizing", now()
            pool.touch()
        self._spawn(self._allocate, pool, spec.get("nodeDeallocationOption", "requeue"))

    def update_pool(self, pool_id: str, changes: dict[str, Any]) -> Pool:
        """PATCH: replace the properties ``changes`` names and keep the others. A new start
        task is what nodes joining the pool from now on run; nodes already there keep the
        one they ran. Properties fixed at allocation change only while the pool is empty."""
        with self._lock:
            pool = self.pool(pool_id)
            if pool.state == "deleting":
                raise _pool_being_deleted()
            fixed = sorted(key for key in changes if key not in POOL_UPDATABLE_ANY_TIME)
            if fixed and pool.nodes:
                raise BatchError(
                    409,
                    "OperationInvalidForCurrentState",
                    f"The property {fixed[0]} can be updated only when the pool has no nodes.",
                )
            pool.spec = {**pool.spec, **changes}
            pool.touch()
            return pool

    def delete_pool(self, pool_id: str) -> None:
        with self._lock:
            pool = self.pool(pool_id)
            if pool.state == "deleting":
                raise _pool_being_deleted()
            pool.state, pool.state_changed = "deleting", now()
            pool.touch()
        self._spawn(self._remove_pool, pool)

    def node(self, pool_id: str, node: str) -> Node:
        with self._lock:
            for candidate in self.pool(pool_id).nodes:
                if candidate.id == node:
                    return candidate
            raise not_found("node", node)

    def _allocate(self, pool: Pool, deallocation: str = "requeue") -> None:
        """Bring the pool to its target size; new nodes run the start task, then take tasks.
        Nodes beyond the target leave as ``deallocation`` (``nodeDeallocationOption``) says,
        idle ones first; the pool is steady again once they are gone."""
        new_nodes: list[Node] = []
        leaving: list[Node] = []
        with self._lock:
            error = None
            stuck = False
            for dedicated, target in ((True, pool.target_dedicated), (False, pool.target_spot)):
                current = [node for node in pool.nodes if node.dedicated == dedicated]
                if target > len(current):
                    failure = self.faults.resize_error(pool.id, dedicated)
                    error = error or failure
                    stuck = stuck or self.faults.stuck_resizes
                    if failure is None and not self.faults.stuck_resizes:
                        new_nodes += [
                            self._add_node(pool, dedicated) for _ in range(target - len(current))
                        ]
                leaving += self._leave(current, len(current) - target, deallocation)
            if error is not None:
                pool.resize_errors = [error]
            elif not self.faults.stale_resize_errors:
                pool.resize_errors = []
        for node in new_nodes:
            self._spawn(self._boot, node)
        if not stuck:  # a stuck resize stays under way until the pool goes
            self._finish_resize(pool, leaving)

    def _finish_resize(self, pool: Pool, leaving: list[Node]) -> None:
        """Once the ``leaving`` nodes run nothing, take them out: the pool is steady again."""
        self._wait_until_idle(leaving)
        gone = {id(node) for node in leaving}
        with self._lock:
            pool.nodes[:] = [node for node in pool.nodes if id(node) not in gone]
            pool.allocation_state, pool.allocation_changed = "steady", now()
            pool.touch()

    def _add_node(self, pool: Pool, dedicated: bool) -> Node:
        """A new node of ``pool``, starting. Lock held."""
        number = pool.created_nodes
        pool.created_nodes += 1
        node = Node(
            id=node_id(pool.id, number, dedicated),
            pool_id=pool.id,
            dedicated=dedicated,
            paths=NodePaths(pool.root / f"node-{number}"),
            vm_size=pool.spec.get("vmSize", "standard_d1_v2"),
            image=pool.spec.get("virtualMachineConfiguration", {}).get("imageReference", {}),
            slots=pool.slots_per_node,
            number=number,
            start_task=pool.spec.get("startTask"),
        )
        pool.nodes.append(node)
        return node

    def _leave(self, nodes: list[Node], excess: int, deallocation: str) -> list[Node]:
        """Take ``excess`` of ``nodes`` out of scheduling, idle ones first. Lock held."""
        leaving = sorted(nodes, key=lambda node: node.running_slots > 0)[: max(0, excess)]
        return self._depart(leaving, deallocation)

    def _depart(self, leaving: list[Node], deallocation: str) -> list[Node]:
        """Take ``leaving`` out of scheduling; end their tasks as ``deallocation`` says. Lock
        held."""
        for node in leaving:
            node.set_state("leavingpool")
            node.cancel.set()
        if deallocation in ENDING_DEALLOCATIONS:
            failure = TERMINATED_WITH_NODE if deallocation == "terminate" else None
            self._end_tasks_on(leaving, failure)
        return leaving

    def _boot(self, node: Node) -> None:
        """Run the start task, if any. A node that is leaving the pool keeps its state."""
        if node.cancel.wait(self.faults.node_start_s):
            return
        self._schedule_faults(node)
        start_task = node.start_task
        wait = start_task is not None and start_task.get("waitForSuccess", True)
        node.paths.create()
        with self._lock:
            if node.state == "starting":
                node.set_state("waitingforstarttask" if wait else "idle")
            if start_task is not None:
                node.start_task_info = {"state": "running", "startTime": now(), "retryCount": 0}
        self._wake.set()
        if start_task is None:
            return
        retries_left = int(start_task.get("maxTaskRetryCount", 0))
        retries = 0
        while True:
            result = run_start_task(self._identity(node), node.paths, start_task, node.cancel)
            done = result.result == "success" or not should_retry(result)
            if done or node.cancel.is_set() or retries_left == 0:
                break
            retries_left -= 1
            retries += 1
        with self._lock:
            node.start_task_info = {
                "state": "completed",
                **_execution(result),
                "retryCount": retries,
            }
            if node.state == "waitingforstarttask":
                node.set_state("idle" if result.result == "success" else "starttaskfailed")
        self._wake.set()

    def _schedule_faults(self, node: Node) -> None:
        """Preempt a spot node, or make a node unusable, when the faults say it is time."""
        if not node.dedicated and self.faults.preempt_spot_after_s is not None:
            self._spawn(self._later, node, self.faults.preempt_spot_after_s, "preempted")
        if self.faults.unusable_after_s is not None:
            self._spawn(self._later, node, self.faults.unusable_after_s, "unusable")

    def _later(self, node: Node, seconds: float, state: str) -> None:
        if not node.cancel.wait(seconds):
            with self._lock:
                self._lose_node(node, state)

    def lose_nodes(self, pool_id: str, state: str, node: str | None = None) -> list[str]:
        """Preempt (``state`` ``preempted``: spot nodes only) or make ``unusable`` one node of
        the pool, or all its nodes that can be; the ids of the nodes it happened to."""
        with self._lock:
            nodes = [self.node(pool_id, node)] if node else list(self.pool(pool_id).nodes)
            if state == "preempted":
                if node and nodes[0].dedicated:
                    raise ValueError(f"node {node} is dedicated: only spot nodes are preempted")
                nodes = [candidate for candidate in nodes if not candidate.dedicated]
            return [candidate.id for candidate in nodes if self._lose_node(candidate, state)]

    def _lose_node(self, node: Node, state: str) -> bool:
        """The node is lost to scheduling (preempted, unusable); its running tasks are requeued,
        as the service requeues them. Lock held."""
        if node.state in GONE_NODE_STATES:
            return False
        node.set_state(state)
        self._end_tasks_on([node], None)
        return True

    def _remove_pool(self, pool: Pool) -> None:
        """Requeue the pool's running tasks, as a resize to zero with ``requeue`` would."""
        with self._lock:
            for node in pool.nodes:
                node.cancel.set()
            self._end_tasks_on(pool.nodes, None)
        self._wait_until_idle(pool.nodes)
        shutil.rmtree(pool.root, ignore_errors=True)
        with self._lock:
            self.pools.pop(pool.id.casefold(), None)

    def _end_tasks_on(self, nodes: list[Node], failure: dict[str, str] | None) -> None:
        """End the tasks running on ``nodes``: requeued, or completed with ``failure``. Lock
        held."""
        ending = {id(node) for node in nodes}
        for job in self.jobs.values():
            for task in job.tasks.values():
                if task.node is not None and id(task.node) in ending:
                    if failure is not None:
                        task.execution["failureInfo"] = failure
                    task.cancel.set()

    def _wait_until_idle(self, nodes: list[Node]) -> None:
        """Until no task runs on ``nodes`` (a live list may change meanwhile)."""
        while True:
            with self._lock:
                if all(node.running_slots == 0 for node in nodes):
                    return
            time.sleep(0.05)

    # ----------------------------------------------------------------- jobs

    def create_job(self, spec: dict[str, Any]) -> Job:
        job_id = check_id("job", spec.get("id"))
        check_job_options(spec)
        pool_info = spec.get("poolInfo", {})
        with self._lock:
            if job_id.casefold() in self.jobs:
                raise exists("job", job_id)
            job = Job(id=job_id, spec=spec)
            _set_deadline(job)
            auto = pool_info.get("autoPoolSpecification")
            if auto is not None:
                prefix = auto.get("autoPoolIdPrefix", "")
                pool_spec = {**auto.get("pool", {}), "id": f"{prefix}{uuid.uuid4()}"[:64]}
                owner = None if auto.get("keepAlive", False) else job_id
                pool = self.create_pool(pool_spec, auto_pool_of=owner)
                job.pool_id = pool.id
            else:
                job.pool_id = pool_info.get("poolId", "")
            self.jobs[job_id.casefold()] = job
            self._pending[job_id.casefold()] = deque()
        return job

    def job(self, job_id: str) -> Job:
        with self._lock:
            return _find(self.jobs, "job", job_id)

    def terminate_job(self, job_id: str, reason: str = "UserTerminate") -> None:
        with self._lock:
            job = self.job(job_id)
            if job.state in _JOB_CONFLICTS:
                raise _job_conflict(job)
            self._terminate(job, reason)

    def update_job(
        self,
        job_id: str,
        changes: dict[str, Any],
        *,
        replace: bool = False,
        condition: Callable[[Job], BatchError | None] | None = None,
    ) -> Job:
        """``Jobs_UpdateJob``, or ``Jobs_ReplaceJob`` with ``replace``, of an active or disabled
        job whose ``condition`` (If-Match...) holds. A job whose tasks are all done and that
        now asks to end with them completes at once."""
        with self._lock:
            job = self.job(job_id)
            failure = condition(job) if condition is not None else None
            if failure is not None:
                raise failure
            if job.state not in UPDATABLE_JOB_STATES:
                raise _job_conflict(job)
            disabled = job.state == "disabled"
            job.spec = updated_spec(job.spec, changes, replace=replace, disabled=disabled)
            _set_deadline(job)
            job.touch()
            if self._all_tasks_done(job):
                self._terminate(job, "AllTasksComplete")
        self._wake.set()
        return job

    def delete_job(self, job_id: str) -> None:
        with self._lock:
            job = self.job(job_id)
            if job.state == "deleting":
                raise BatchError(
                    409,
                    "JobBeingDeleted",
                    "The specified job has been marked for deletion and is being"
                    " garbage collected.",
                )
            job.set_state("deleting")
            for task in job.tasks.values():
                task.cancel.set()
        self._spawn(self._remove_job, job)

    def _terminate(self, job: Job, reason: str) -> None:
        """Stop the job's running tasks; it completes once they are gone. Lock held."""
        job.set_state("terminating")
        job.execution["terminateReason"] = reason
        self._pending[job.id.casefold()].clear()
        for task in job.tasks.values():
            if task.state == "running":
                task.cancel.set()
        self._spawn(self._finish_termination, job)

    def _finish_termination(self, job: Job) -> None:
        while True:
            with self._lock:
                if job.state != "terminating":  # deleted meanwhile: _remove_job ends it
                    return
                if not any(task.state == "running" for task in job.tasks.values()):
                    job.set_state("completed")
                    job.execution["endTime"] = now()
                    self._release_auto_pool(job)
                    return
            time.sleep(0.05)

    def _remove_job(self, job: Job) -> None:
        while True:
            with self._lock:
                if not any(task.state == "running" for task in job.tasks.values()):
                    self.jobs.pop(job.id.casefold(), None)
                    self._pending.pop(job.id.casefold(), None)
                    self._release_auto_pool(job)
                    return
            time.sleep(0.05)

    def _release_auto_pool(self, job: Job) -> None:
        """An auto-pool that lives as long as its job goes with it. Lock held."""
        pool = self.pools.get(job.pool_id.casefold())
        if pool is not None and pool.auto_pool_of == job.id and pool.state != "deleting":
            pool.state, pool.state_changed = "deleting", now()
            self._spawn(self._remove_pool, pool)

    # ---------------------------------------------------------------- tasks

    def add_tasks(self, job_id: str, specs: Iterable[dict[str, Any]]) -> list[Task | BatchError]:
        """Add tasks; each gets its own answer, as ``addtaskcollection`` reports them."""
        results: list[Task | BatchError] = []
        with self._lock:
            job = self.job(job_id)
            if job.state not in LIVE_JOB_STATES:  # a disabled job takes tasks, runs none
                raise BatchError(
                    409,
                    "JobCompleted" if job.state == "completed" else "JobNotActive",
                    "The specified job is not active.",
                )
            pending = self._pending[job.id.casefold()]
            for spec in specs:
                try:
                    task_id = check_id("task", spec.get("id"))
                    if task_id.casefold() in job.tasks:
                        raise exists("task", task_id)
                except BatchError as error:
                    results.append(error)
                    continue
                task = Task(id=task_id, job_id=job.id, spec=spec)
                job.tasks[task_id.casefold()] = task
                job.incomplete += 1
                pending.append(task)
                results.append(task)
            job.touch()
        self._wake.set()
        return results

    def task(self, job_id: str, task_id: str) -> Task:
        with self._lock:
            return _find(self.job(job_id).tasks, "task", task_id)

    def terminate_task(self, job_id: str, task_id: str) -> None:
        with self._lock:
            job = self.job(job_id)
            task = self.task(job_id, task_id)
            if task.state == "completed":
                return
            if task.state == "active":
                with contextlib.suppress(ValueError):  # not queued once its job was terminated
                    self._pending[job.id.casefold()].remove(task)
                task.execution.update(
                    result="failure", failureInfo=TERMINATED_BY_USER, endTime=now()
                )
                self._complete(job, task)
            else:
                task.execution["failureInfo"] = TERMINATED_BY_USER
                task.cancel.set()

    def delete_task(
        self,
        job_id: str,
        task_id: str,
        condition: Callable[[Task], BatchError | None] | None = None,
    ) -> None:
        """``Tasks_DeleteTask`` of a task whose ``condition`` (If-Match...) holds, in a job that
        is not completed, terminating or deleting (409 then). The task leaves its job's listings
        and counts at once; a running one is ended as terminate ends it (its process group), and
        this returns once its process is gone and its directory on the node removed. A job that
        ends with its tasks then completes if every task left is completed."""
        with self._lock:
            job = self.job(job_id)
            if job.state in _JOB_CONFLICTS:
                raise _job_conflict(job)
            task = self.task(job_id, task_id)
            failure = condition(task) if condition is not None else None
            if failure is not None:
                raise failure
            del job.tasks[task.id.casefold()]
            with contextlib.suppress(ValueError):  # only an active task waits for a slot
                self._pending[job.id.casefold()].remove(task)
            if task.state != "completed":
                job.incomplete -= 1
            task.deleted = True
            if task.node is not None:
                task.cancel.set()
            job.touch()
        while True:
            with self._lock:
                if task.node is None:
                    break
            time.sleep(0.02)
        with self._lock:
            node = task.last_node
            # task_dir creates what is missing: not for a node removed meanwhile, nor for a task
            # of the same id added since
            gone = task.id.casefold() not in job.tasks
            if node is not None and gone and node.paths.root.is_dir():
                shutil.rmtree(node.paths.task_dir(task.job_id, task.id), ignore_errors=True)
            if self._all_tasks_done(job):
                self._terminate(job, "AllTasksComplete")
        self._wake.set()

    def task_counts(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            tasks = list(self.job(job_id).tasks.values())
        counts = {"active": 0, "running": 0, "completed": 0, "succeeded": 0, "failed": 0}
        slots = dict(counts)
        for task in tasks:
            kind = {"active": "active", "preparing": "running", "running": "running"}.get(
                task.state, "completed"
            )
            counts[kind] += 1
            slots[kind] += task.required_slots
            if kind == "completed":
                outcome = "succeeded" if task.execution.get("result") == "success" else "failed"
                counts[outcome] += 1
                slots[outcome] += task.required_slots
        return {"taskCounts": counts, "taskSlotCounts": slots}

    # ----------------------------------------------------------- scheduling

    def _dispatch_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(DISPATCH_INTERVAL_S)
            self._wake.clear()
            with self._lock:
                if self._stopping.is_set():  # shutdown ends tasks: start none after it
                    return
                self._end_overdue_jobs()
                self._settle_disabled_jobs()
                for pool in list(self.pools.values()):
                    due = (
                        pool.spec.get("enableAutoScale")
                        and time.monotonic() >= pool.next_evaluation
                    )
                    if due and pool.state == "active":
                        self._scale(pool)
                for job in list(self.jobs.values()):
                    if job.state == "active":
                        self._place(job)

    def _end_overdue_jobs(self) -> None:
        moment = time.monotonic()
        for job in self.jobs.values():
            if job.state == "active" and job.deadline is not None and moment >= job.deadline:
                self._terminate(job, "MaxWallClockTimeExpiry")

    def _place(self, job: Job) -> None:
        """Start the job's waiting tasks on free slots of its pool, first come first served,
        no more at once than its ``maxParallelTasks`` (-1: no limit)."""
        pool = self.pools.get(job.pool_id.casefold())
        pending = self._pending[job.id.casefold()]
        if pool is None or pool.state != "active" or not pending:
            return
        pack = pool.spec.get("taskSchedulingPolicy", {}).get("nodeFillType", "spread") == "pack"
        limit = int(job.spec.get("maxParallelTasks", -1))
        running = sum(task.node is not None for task in job.tasks.values()) if limit > 0 else 0
        while pending and (limit <= 0 or running < limit):
            task = pending[0]
            nodes = [node for node in pool.nodes if node.free_slots() >= task.required_slots]
            if not nodes:
                return
            node = nodes[0] if pack else max(nodes, key=Node.free_slots)
            pending.popleft()
            self._start(job, task, node)
            running += 1

    def _start(self, job: Job, task: Task, node: Node) -> None:
        task.node = task.last_node = node
        task.cancel = threading.Event()
        node.running_slots += task.required_slots
        node.running_tasks += 1
        node.set_state("running")
        task.execution.pop("failureInfo", None)
        task.execution.update(startTime=now())
        task.set_state("running")
        job_env = list(job.spec.get("commonEnvironmentSettings", []))
        spec = {**task.spec, "constraints": job.task_constraints(task)}
        self._spawn(self._attempt, job, task, node, spec, job_env)

    def _attempt(
        self, job: Job, task: Task, node: Node, spec: dict[str, Any], env: list[dict[str, Any]]
    ) -> None:
        result = run_task(self._identity(node), node.paths, job.id, spec, env, task.cancel)
        with self._lock:
            node.running_slots -= task.required_slots
            node.running_tasks -= 1
            node.total_tasks_run += 1
            if node.running_slots == 0 and node.state == "running":
                node.set_state("idle")
            task.node = None
            if task.deleted:  # gone from its job already: nothing to record
                self._wake.set()
                return
            if task.cancel.is_set() and "failureInfo" not in task.execution:
                if job.state in LIVE_JOB_STATES:  # its node went away: run it again elsewhere
                    task.requeues += 1
                    task.set_state("active")
                    self._pending[job.id.casefold()].appendleft(task)
                    self._wake.set()
                    return
                task.execution["failureInfo"] = TERMINATED_WITH_JOB
            if task.cancel.is_set():
                task.execution.update(result="failure", endTime=result.end_time)
            elif should_retry(result) and self._may_retry(job, task):
                task.retries += 1
                task.execution["lastRetryTime"] = now()
                task.set_state("active")
                self._pending[job.id.casefold()].appendleft(task)
                self._wake.set()
                return
            else:
                task.execution.update(_execution(result))
                if result.result == "success":
                    node.total_tasks_succeeded += 1
            self._complete(job, task)
        self._wake.set()

    def _may_retry(self, job: Job, task: Task) -> bool:
        limit = int(job.task_constraints(task)["maxTaskRetryCount"])
        return job.state in LIVE_JOB_STATES and (limit == -1 or task.retries < limit)

    def _complete(self, job: Job, task: Task) -> None:
        """``task`` is done. ``onAllTasksComplete=terminatejob``: so is the job once every task
        is. Lock held."""
        task.set_state("completed")
        job.incomplete -= 1
        if self._all_tasks_done(job):
            self._terminate(job, "AllTasksComplete")

    @staticmethod
    def _all_tasks_done(job: Job) -> bool:
        """Whether an active job that ends with its tasks has tasks, all completed."""
        return (
            job.state == "active"
            and job.spec.get("onAllTasksComplete", "noaction") == "terminatejob"
            and bool(job.tasks)
            and job.incomplete == 0
        )

    # ------------------------------------------------------ control of pools

    def remove_nodes(self, pool_id: str, spec: dict[str, Any]) -> Pool:
        """``Pools_RemoveNodes``: the named nodes leave a steady pool as
        ``nodeDeallocationOption`` says; its targets drop by as many."""
        with self._lock:
            pool = self._steady(pool_id)
            nodes = [self.node(pool_id, node_id) for node_id in spec["nodeList"]]
            for node in nodes:
                if node.dedicated:
                    pool.target_dedicated -= 1
                else:
                    pool.target_spot -= 1
            leaving = self._depart(nodes, spec.get("nodeDeallocationOption", "requeue"))
            pool.allocation_state, pool.allocation_changed = "resizing", now()
            pool.touch()
        self._spawn(self._finish_resize, pool, leaving)
        return pool

    def reboot_node(self, pool_id: str, node_id: str, option: str = "requeue") -> Node:
        """``Nodes_RebootNode``: its tasks end as ``option`` says (``taskcompletion``: they
        finish first), then it starts again and runs its start task."""
        with self._lock:
            node = self.node(pool_id, node_id)
            if node.state in (*GONE_NODE_STATES, "rebooting", "starting"):
                raise BatchError(
                    409,
                    "OperationNotValidOnNode",
                    "The specified operation is not valid on the node.",
                    {"Reason": f"The node is {node.state}"},
                )
            node.set_state("rebooting")
            node.cancel.set()  # a start task still running
            if option != "taskcompletion":
                self._end_tasks_on([node], TERMINATED_WITH_NODE if option == "terminate" else None)
        self._spawn(self._restart, node)
        return node

    def _restart(self, node: Node) -> None:
        self._wait_until_idle([node])
        with self._lock:
            node.cancel = threading.Event()
            node.allocated = now()
            node.set_state("starting")
        self._boot(node)

    def node_counts(self) -> list[dict[str, Any]]:
        """``Pools_ListPoolNodeCounts``: nodes by state, dedicated and spot, of every pool."""
        names = list(get_spec().definitions["BatchNodeCounts"]["properties"])
        by_state = {name.casefold(): name for name in names}
        counts = []
        with self._lock:
            for pool in self.pools.values():
                kinds = {True: dict.fromkeys(names, 0), False: dict.fromkeys(names, 0)}
                for node in pool.nodes:
                    kinds[node.dedicated][by_state[node.state]] += 1
                    kinds[node.dedicated]["total"] += 1
                counts.append(
                    {"poolId": pool.id, "dedicated": kinds[True], "lowPriority": kinds[False]}
                )
        return counts

    def _steady(self, pool_id: str) -> Pool:
        """The pool, if it is steady; 409 if it is being deleted or resized. Lock held."""
        pool = self.pool(pool_id)
        if pool.state == "deleting":
            raise _pool_being_deleted()
        if pool.allocation_state != "steady":
            raise BatchError(409, "PoolNotSteady", "The specified pool is not in a steady state.")
        return pool

    # --------------------------------------------------------------- autoscale

    def enable_autoscale(self, pool_id: str, spec: dict[str, Any]) -> Pool:
        """``Pools_EnablePoolAutoScale``: the formula is evaluated at once, then every
        ``autoScaleEvaluationInterval`` (default 15 minutes); 400 for a formula the evaluator
        does not read (``autoscale``)."""
        with self._lock:
            pool = self.pool(pool_id)
            formula = spec.get("autoScaleFormula") or pool.spec.get("autoScaleFormula")
            if not formula:
                raise invalid_formula("no autoScaleFormula given, and the pool has none")
            interval = spec.get("autoScaleEvaluationInterval") or pool.spec.get(
                "autoScaleEvaluationInterval", DEFAULT_EVALUATION_INTERVAL
            )
            wall_clock_seconds(interval)
            pool.spec = {
                **pool.spec,
                "enableAutoScale": True,
                "autoScaleFormula": formula,
                "autoScaleEvaluationInterval": interval,
            }
            self._scale(pool)
            pool.touch()
            return pool

    def evaluate_autoscale(self, pool_id: str, formula: str) -> dict[str, Any]:
        """``Pools_EvaluatePoolAutoScale``: what ``formula`` would ask of the pool now (an
        ``AutoScaleRun``); the pool does not change."""
        with self._lock:
            pool = self.pool(pool_id)
            if not pool.spec.get("enableAutoScale"):
                raise BatchError(
                    409,
                    "OperationInvalidForCurrentState",
                    "The specified operation is not valid for the current state of the resource.",
                    {"Reason": "Automatic scaling is not enabled on the pool"},
                )
            outcome = evaluate(formula, self._scale_state(pool), pool.samples)
            return {"timestamp": now(), "results": outcome.results}

    def disable_autoscale(self, pool_id: str) -> Pool:
        """``Pools_DisablePoolAutoScale``: the pool keeps the size it has."""
        with self._lock:
            pool = self.pool(pool_id)
            kept = ("autoScaleFormula", "autoScaleEvaluationInterval")
            pool.spec = {k: v for k, v in pool.spec.items() if k not in kept}
            pool.spec["enableAutoScale"] = False
            pool.auto_scale_run = None
            pool.touch()
            return pool

    def _scale(self, pool: Pool, *, resize: bool = True) -> None:
        """Evaluate the pool's formula on a fresh sample; resize it to what it asks (if steady).
        A formula that fails at run time leaves the size alone and says why in
        ``autoScaleRun.error``. Lock held."""
        interval = pool.spec.get("autoScaleEvaluationInterval", DEFAULT_EVALUATION_INTERVAL)
        pool.next_evaluation = time.monotonic() + wall_clock_seconds(interval)
        pool.samples.take(self._metrics(pool))
        try:
            outcome = evaluate(pool.spec["autoScaleFormula"], self._scale_state(pool), pool.samples)
        except BatchError as error:
            if not resize:
                raise
            pool.auto_scale_run = {
                "timestamp": now(),
                "error": {
                    "code": error.code,
                    "message": error.message,
                    "values": [
                        {"name": key, "value": value} for key, value in error.values.items()
                    ],
                },
            }
            return
        pool.auto_scale_run = {"timestamp": now(), "results": outcome.results}
        wanted = (outcome.dedicated, outcome.spot)
        if not resize:
            pool.target_dedicated, pool.target_spot = wanted
        elif (
            wanted != (pool.target_dedicated, pool.target_spot)
            and pool.allocation_state == "steady"
        ):
            pool.target_dedicated, pool.target_spot = wanted
            pool.allocation_state, pool.allocation_changed = "resizing", now()
            self._spawn(self._allocate, pool, outcome.deallocation)

    def _scale_state(self, pool: Pool) -> dict[str, float]:
        dedicated = sum(1 for node in pool.nodes if node.dedicated)
        return {
            "$TargetDedicatedNodes": float(pool.target_dedicated),
            "$TargetLowPriorityNodes": float(pool.target_spot),
            "$CurrentDedicatedNodes": float(dedicated),
            "$CurrentLowPriorityNodes": float(len(pool.nodes) - dedicated),
        }

    def _metrics(self, pool: Pool) -> dict[str, float]:
        """The task metrics of the jobs on the pool, as autoscale formulas see them."""
        counts = {"active": 0.0, "running": 0.0, "succeeded": 0.0, "failed": 0.0}
        for job in self.jobs.values():
            if job.pool_id.casefold() != pool.id.casefold():
                continue
            for task in job.tasks.values():
                if task.state == "completed":
                    kind = "succeeded" if task.execution.get("result") == "success" else "failed"
                else:
                    kind = "active" if task.state == "active" else "running"
                counts[kind] += 1
        return {
            "$ActiveTasks": counts["active"],
            "$RunningTasks": counts["running"],
            "$PendingTasks": counts["active"] + counts["running"],
            "$SucceededTasks": counts["succeeded"],
            "$FailedTasks": counts["failed"],
        }

    # ------------------------------------------------------- control of jobs

    def disable_job(self, job_id: str, disable_tasks: str) -> Job:
        """``Jobs_DisableJob``: no task starts; running ones are requeued (``requeue``), ended
        (``terminate``) or left to finish (``wait``); ``disabled`` once none runs."""
        with self._lock:
            job = self.job(job_id)
            if job.state != "active":
                raise _job_conflict(job)
            job.set_state("disabling")
            if disable_tasks != "wait":
                for task in job.tasks.values():
                    if task.state == "running":
                        if disable_tasks == "terminate":
                            task.execution["failureInfo"] = TERMINATED_WITH_DISABLE
                        task.cancel.set()
        self._wake.set()
        return job

    def enable_job(self, job_id: str) -> Job:
        """``Jobs_EnableJob``: ``enabling``, then ``active`` at the next scheduling round."""
        with self._lock:
            job = self.job(job_id)
            if job.state not in ("disabled", "disabling"):
                raise _job_conflict(job)
            job.set_state("enabling")
        self._wake.set()
        return job

    def _settle_disabled_jobs(self) -> None:
        """Disabling jobs that run nothing are disabled; enabling ones are active. Lock held."""
        for job in self.jobs.values():
            if job.state == "enabling":
                job.set_state("active")
            elif job.state == "disabling" and not any(t.node for t in job.tasks.values()):
                job.set_state("disabled")

    def reactivate_task(self, job_id: str, task_id: str) -> Task:
        """``Tasks_ReactivateTask``: a task that failed is active again, its retries reset."""
        with self._lock:
            job = self.job(job_id)
            if job.state in _JOB_CONFLICTS:
                raise _job_conflict(job)
            task = self.task(job_id, task_id)
            if task.state != "completed" or task.execution.get("result") != "failure":
                raise BatchError(
                    409,
                    "TaskNotFailed" if task.state == "completed" else "TaskNotCompleted",
                    "Only a task that completed with a failure can be reactivated.",
                )
            task.retries = 0
            task.execution = {}
            task.set_state("active")
            job.incomplete += 1
            self._pending[job.id.casefold()].append(task)
        self._wake.set()
        return task

    # -------------------------------------------------------------- helpers

    def _identity(self, node: Node) -> Any:
        return node.identity(self.name, self.base_url)

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=self._run_tracked, args=(target, *args), daemon=True)
        with self._lock:
            self._threads.add(thread)
        thread.start()

    def _run_tracked(self, target: Any, *args: Any) -> None:
        try:
            target(*args)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def shutdown(self) -> None:
        """Stop every process the emulator started and wait for its threads."""
        self._stopping.set()
        self._wake.set()
        with self._lock:
            for pool in self.pools.values():
                for node in pool.nodes:
                    node.cancel.set()
            for job in self.jobs.values():
                for task in job.tasks.values():
                    task.cancel.set()
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=10)
        self._dispatcher.join(timeout=5)


def _set_deadline(job: Job) -> None:
    """When the job's ``maxWallClockTime``, counted from its creation, ends it (if it has one)."""
    limit = job.spec.get("constraints", {}).get("maxWallClockTime")
    job.deadline = job.born + wall_clock_seconds(limit) if limit else None


def _job_conflict(job: Job) -> BatchError:
    """409 for an operation the job's state does not allow."""
    code, message = _JOB_CONFLICTS.get(
        job.state, ("JobNotActive", "The specified job is not in active state.")
    )
    return BatchError(409, code, message)


def _execution(result: AttemptResult) -> dict[str, Any]:
    """An attempt's outcome in the service's executionInfo / startTaskInfo shape."""
    info: dict[str, Any] = {
        "startTime": result.start_time,
        "endTime": result.end_time,
        "result": result.result,
    }
    if result.exit_code is not None:
        info["exitCode"] = result.exit_code
    if result.failure_info is not None:
        info["failureInfo"] = result.failure_info
    return info


def _find(table: dict[str, _Found], kind: str, object_id: str) -> _Found:
    """The object of ``table`` with this id, ignoring case as the service does; else 404."""
    found = table.get(object_id.casefold())
    if found is None:
        raise not_found(kind, object_id)
    return found


def _pool_being_deleted() -> BatchError:
    return BatchError(
        409,
        "PoolBeingDeleted",
        "The specified pool has been marked for deletion and is being reclaimed.",
    )
