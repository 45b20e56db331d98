"""The azure-batch backend: one Batch job per attempt at a run, on an auto-pool that lives and
dies with the job, on a named pool kept for later runs (``keep_pool``), or on an existing pool
(``pool_id``).

What outlives this process is bounded by the Batch service itself, whenever the process dies.
The job is created as the nodes are provisioned, before the inputs are staged, so that an
auto-pool comes up meanwhile; it lives on a short lease (``batch_lease``) that a thread renews
until every task is in; then it gets onAllTasksComplete=terminatejob and the run's budget as its
deadline. An auto-pool goes when its job ends. So a client killed before its tasks are all in
leaves a job that ends within the lease, and one killed later a job that ends with its last
task: nothing but a pool kept on purpose bills for longer.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Iterator, Sequence, Set
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from fanout.backend import (
    Backend,
    Capability,
    CleanedItem,
    PoolSpec,
    ResourceFile,
    RunContext,
    TaskSpec,
    TaskState,
    TaskUpdate,
)
from fanout.errors import BackendError
from fanout.signing import Signer
from fanout_azure.batch_calls import (
    ALREADY_ENDING,
    batch_errors,
    carry_out,
    describe,
    describe_refusal,
    error_code,
    resent,
    transient,
)
from fanout_azure.batch_lease import JobLease, deadline
from fanout_azure.batch_monitor import TaskMonitor
from fanout_azure.batch_pools import (
    NodeWatcher,
    create_named_pool,
    metadata,
    pool_specification,
    reuse_pool,
)
from fanout_azure.batch_settings import AzureBatchSettings, batch_client
from fanout_azure.batch_tasks import (
    MAX_COMMAND_LINE,
    batch_task,
    command_line_length,
    task_update,
    wire_value,
)
from fanout_azure.blob_signer import AzureBlobSigner

if TYPE_CHECKING:
    from azure.batch import BatchClient

log = logging.getLogger(__name__)

SUBMIT_CONCURRENCY = 4
"""Task-collection requests in flight at once."""
SUBMIT_SLICE = 1000
"""Tasks built and handed to the SDK at once; the job's lease is renewed between slices."""
SUBMIT_ATTEMPTS = 3
"""Submissions of the tasks that a failed request may not have added, before the run stops."""
DELETE_TIMEOUT_S = 120
"""How long teardown waits for the service to delete the job before recording it as left."""
OUTAGE_TOLERATED_S = 300
"""How long polls may go without an answer (each after the SDK's own retries) before the run
stops: a long run rides out a short outage of the service or the network."""


class AzureBatchBackend(Backend):
    """Runs tasks on Azure Batch: a job per run, on an auto-pool or a named pool."""

    name = "azure-batch"
    settings_model = AzureBatchSettings
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.SETUP, Capability.RETRIES, Capability.TIMEOUT}
    )
    max_command_length: ClassVar[int | None] = MAX_COMMAND_LINE

    @classmethod
    def command_length(cls, task_id: str, command: str) -> int:
        return command_line_length(task_id, command)

    def __init__(self, settings: BaseModel, context: RunContext) -> None:
        super().__init__(settings, context)
        assert isinstance(settings, AzureBatchSettings)
        self._settings = settings.with_environment(os.environ)
        self._client: BatchClient | None = None
        self._image: tuple[Any, str] | None = None
        self.job_id = context.job_id
        self._job_exists = False
        self._job_ended = False
        """The job ended while tasks were being added: add no more."""
        self._lease: JobLease | None = None
        self._kept_pool_created: str | None = None
        self._stale_jobs: list[str] = []
        self._task_app_files: tuple[ResourceFile, ...] = ()
        self._pool_env: dict[str, str] = {}
        self._pool_id: str | None = None
        self._monitors: list[TaskMonitor] = []
        self._nodes: NodeWatcher | None = None
        self._status: str | None = None
        self._next_poll = 0.0
        self._last_answer: float | None = None
        self._leftovers: list[str] = []

    @classmethod
    def unusable_storage(cls, url: str, signer: type[Signer]) -> str | None:
        """Nodes download inputs through resource files and upload outputs as output files to
        a blob container: both need Azure Blob SAS URLs, which only ``AzureBlobSigner`` (az://,
        abfs://) hands out."""
        if issubclass(signer, AzureBlobSigner):
            return None
        return (
            "Batch nodes reach storage only through Azure Blob SAS URLs;"
            " use --storage az://CONTAINER/prefix"
        )

    @property
    def client(self) -> BatchClient:
        if self._client is None:
            self._client = batch_client(self._settings, os.environ)
        return self._client

    @batch_errors("the preflight")
    def preflight(self) -> None:
        from fanout_azure.batch_images import resolve_image
        from fanout_azure.batch_preflight import preflight

        preflight(self.client, self._settings)
        if self._settings.pool_id is None or self._settings.keep_pool:
            self._image = resolve_image(self.client, self._settings.image)

    @batch_errors("reattaching to the earlier jobs")
    def reattach(self, pending: Set[str]) -> set[str]:
        """Adopt the pending tasks that an earlier attempt's job ran or may still run: all
        but the failed ones while the job is active, only those that succeeded once it has
        ended. Each earlier job then goes on by itself (it ends when its tasks have
        completed) and is followed beside the new one, which runs the rest; nothing runs
        twice. A task is taken from the newest job that has it; one an active earlier job
        still runs or queues and that is not adopted (its input changed, or a newer job has
        it) is terminated there.
        """
        adopted: set[str] = set()
        seen: set[str] = set()
        for earlier in reversed(self.context.earlier_job_ids):
            seen_here = self._reattach_job(earlier, pending - seen, adopted)
            seen |= seen_here
        log.info("reattached to %d tasks of earlier jobs", len(adopted))
        return adopted

    def _reattach_job(self, job_id: str, candidates: Set[str], adopted: set[str]) -> set[str]:
        """Adopt from ``job_id`` (into ``adopted``) those of ``candidates`` it can finish;
        the ids of the tasks it has."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            job = self.client.get_job(
                job_id, select=["id", "state", "executionInfo", "poolInfo", "creationTime"]
            )
        except ResourceNotFoundError:
            return set()
        self._stale_jobs.append(job_id)  # it exists: this run deletes it at the end
        active = wire_value(job.state) == "active"
        fields = ["id", "state", "executionInfo", "nodeInfo"]
        updates = [task_update(task) for task in self.client.list_tasks(job_id, select=fields)]
        keep = {TaskState.SUCCEEDED} | ({TaskState.RUNNING} if active else set())
        mine = {u.task_id for u in updates if u.state in keep and u.task_id in candidates}
        if active:
            unwanted = [u.task_id for u in updates if u.state is TaskState.RUNNING]
            for task_id in sorted(set(unwanted) - mine):
                log.info("job %s: stopping task %s, which this run does not adopt", job_id, task_id)
                stop = functools.partial(self.client.terminate_task, job_id, task_id)
                resent(stop, done_if=_TASK_ENDED)
        if mine:
            adopted |= mine
            monitor = TaskMonitor(self.client, job_id)
            monitor.expect(mine)
            self._monitors.append(monitor)
            if active:
                self._let_end_with_its_tasks(job)
            if active and self._nodes is None:
                info, auto = job.execution_info, job.pool_info.auto_pool_specification
                pool_id = info.pool_id if info is not None else None
                self._nodes = NodeWatcher(
                    self.client, job_id, pool_id, self._settings, auto_pool=auto is not None
                )
        log.info("job %s (%s): %d tasks adopted", job_id, wire_value(job.state), len(mine))
        return {u.task_id for u in updates}

    def _let_end_with_its_tasks(self, job: Any) -> None:
        """An earlier job whose client died while it added tasks still waits for more, until
        its lease runs out: let it end with its tasks instead, within this run's budget."""
        from datetime import UTC, datetime

        from azure.batch import models as m

        age = (datetime.now(UTC) - job.creation_time).total_seconds()
        update = m.BatchJobUpdateOptions(
            all_tasks_complete_mode="terminatejob",
            constraints=deadline(age + self.context.budget_s),
        )
        resent(lambda: self.client.update_job(job.id, update), done_if=ALREADY_ENDING)

    @batch_errors("preparing the pool")
    def provision(self, pool: PoolSpec) -> None:
        """Make the pool ready and create the job, under its lease: an auto-pool comes up
        while the scheduler stages the inputs."""
        from azure.batch import models as m

        self._pool_env = dict(pool.env)
        pool_info, self._pool_id = self._pool_for(pool)
        lease = min(self._settings.submit_lease, self.context.budget_s)
        job = m.BatchJobCreateOptions(
            id=self.job_id,
            pool_info=pool_info,
            constraints=deadline(lease),
            metadata=metadata(self.context.run_id),
        )
        self._job_exists = True  # before: a create whose answer is lost is still deleted
        created = time.monotonic()  # before: the job's clock starts later
        # JobExists: a create whose answer was lost, sent again; the id is this attempt's.
        resent(lambda: self.client.create_job(job), done_if=frozenset({"JobExists"}))
        self._lease = JobLease(self.client, self.job_id, lease, self.context.budget_s, created)
        self._lease.start()
        self._monitors.append(TaskMonitor(self.client, self.job_id))
        self._nodes = NodeWatcher(
            self.client, self.job_id, self._pool_id, self._settings, auto_pool=self._pool_id is None
        )
        where = self._pool_id or f"an auto-pool of {self._settings.vm_size}"
        log.info("job %s on %s", self.job_id, where)

    def _pool_for(self, pool: PoolSpec) -> tuple[Any, str | None]:
        """The job's pool information, and the pool's id when it is not an auto-pool."""
        from azure.batch import models as m
        from azure.core.exceptions import ResourceNotFoundError

        settings = self._settings
        if settings.pool_id is None:
            spec = pool_specification(settings, self._resolved_image(), pool, self.context.run_id)
            auto = m.BatchAutoPoolSpecification(
                auto_pool_id_prefix=self.context.run_id[:20],
                pool_lifetime_option="job",
                keep_alive=False,
                pool=spec,
            )
            return m.BatchPoolInfo(auto_pool_specification=auto), None
        pool_id = settings.pool_id
        try:
            in_shared_dir = reuse_pool(self.client, settings, pool_id, pool)
        except ResourceNotFoundError:
            if not settings.keep_pool:
                raise BackendError(f"pool '{pool_id}' no longer exists") from None
            spec = pool_specification(
                settings, self._resolved_image(), pool, self.context.run_id, kept=True
            )
            self._kept_pool_created = pool_id  # before: a create whose answer is lost counts
            create_named_pool(self.client, pool_id, spec)
            in_shared_dir = True
        if not in_shared_dir:
            self._task_app_files = pool.app_files
        return m.BatchPoolInfo(pool_id=pool_id), pool_id

    def _resolved_image(self) -> tuple[Any, str]:
        if self._image is None:
            from fanout_azure.batch_images import resolve_image

            self._image = resolve_image(self.client, self._settings.image)
        return self._image

    @batch_errors("adding the tasks")
    def submit(self, tasks: Sequence[TaskSpec]) -> None:
        """Add the tasks slice by slice. If the job ends before they are all in (its lease
        ran out while this client was stalled, or someone ended it), those not added are
        reported not run, and ``--resume`` runs them."""
        if not tasks:
            return
        self._monitors[-1].expect(task.id for task in tasks)
        for start in range(0, len(tasks), SUBMIT_SLICE):
            if self._job_ended or (self._lease is not None and self._lease.ended):
                self._job_ended = True
                return
            try:
                self._add([*tasks[start : start + SUBMIT_SLICE]])
            except _JobEnded as ended:
                log.warning("%s; the tasks not added are reported not run", ended)
                self._job_ended = True

    @batch_errors("letting the job end with its tasks")
    def all_submitted(self) -> None:
        """Every task is in: the job ends when they have completed, or at the run's budget."""
        self._stop_lease()
        if self._job_exists and not self._job_ended:
            self._end_with_tasks()

    def _stop_lease(self) -> None:
        if self._lease is not None:
            self._lease.stop()
            self._job_ended = self._job_ended or self._lease.ended

    def _add(self, tasks: list[TaskSpec]) -> None:
        from azure.batch.models import CreateTasksError

        batch_tasks = [
            batch_task(task, self.job_id, self._pool_env, self._task_app_files) for task in tasks
        ]
        for attempt in range(1, SUBMIT_ATTEMPTS + 1):
            try:
                self.client.create_tasks(
                    self.job_id, batch_tasks, max_concurrency=SUBMIT_CONCURRENCY
                )
                return
            except CreateTasksError as exc:
                codes = {error_code(error) for error in exc.errors}
                if codes & NO_MORE_TASKS:
                    raise _JobEnded(
                        f"job {self.job_id} ended before all its tasks were in"
                    ) from None
                # Tasks whose request got no answer may be in: adding them again is safe,
                # since the SDK counts TaskExists as added.
                retry = not exc.failure_tasks and all(transient(e) for e in exc.errors)
                if not retry or attempt == SUBMIT_ATTEMPTS:
                    raise BackendError(_submission_failure(exc)) from None
                log.warning(
                    "%d tasks may not have been added (%s); adding them again",
                    len(exc.pending_tasks),
                    _submission_failure(exc),
                )
                batch_tasks = list(exc.pending_tasks)

    def _end_with_tasks(self) -> None:
        from azure.batch import models as m

        update = m.BatchJobUpdateOptions(
            all_tasks_complete_mode="terminatejob", constraints=deadline(self.context.budget_s)
        )
        # JobCompleted: every task had completed, and the job ended at once as the first
        # PATCH went through (its answer was lost).
        resent(lambda: self.client.update_job(self.job_id, update), done_if=ALREADY_ENDING)

    def poll(self, timeout: float) -> list[TaskUpdate]:
        """Ask the service at most once per ``poll_interval``, however often this is called.
        A poll that gets no answer is tried again at the next interval, for a while."""
        from azure.core.exceptions import AzureError

        wait = self._next_poll - time.monotonic()
        following = [monitor for monitor in self._monitors if not monitor.done]
        if wait > timeout or not following:
            time.sleep(max(timeout, 0))
            return []
        time.sleep(max(wait, 0))
        self._next_poll = time.monotonic() + self._settings.poll_interval
        last_answer = self._last_answer or time.monotonic()
        try:
            updates = self._ask(following)
        except AzureError as exc:
            if not transient(exc) or time.monotonic() - last_answer > OUTAGE_TOLERATED_S:
                raise BackendError(describe(exc, "following the tasks")) from None
            log.warning("%s; asking again", describe(exc, "following the tasks"))
            self._last_answer = last_answer
            return []
        self._last_answer = time.monotonic()
        return updates

    def _ask(self, following: list[TaskMonitor]) -> list[TaskUpdate]:
        if self._nodes is not None:
            watch = self._nodes.poll()
            for failure in watch.failed_setup:
                log.warning("%s", failure)
            self._status = watch.status
        return [update for monitor in following for update in monitor.poll()]

    def status(self) -> str | None:
        return self._status

    def cancel(self) -> None:
        """Terminate this attempt's job: its running tasks stop, queued ones never start."""
        self._stop_lease()
        if not self._job_exists:
            return
        from azure.batch.models._models import BatchJobTerminateOptions

        problem = carry_out(
            f"stopping job {self.job_id}",
            self.client.begin_terminate_job,
            self.job_id,
            DELETE_TIMEOUT_S,
            options=BatchJobTerminateOptions(termination_reason="fanout cancelled"),
        )
        if problem is not None:
            log.warning("%s", problem)

    def teardown(self, keep: bool = False) -> None:
        """Delete the jobs of this run (an auto-pool goes with its job); a pool created with
        ``keep_pool`` stays, and is recorded. ``keep`` is ignored: nodes kept for inspection
        bill by the hour, and each task's logs are in the run's storage."""
        self._stop_lease()
        for job_id in [*self._stale_jobs, *([self.job_id] if self._job_exists else [])]:
            doing = f"deleting job {job_id}"
            problem = carry_out(doing, self.client.begin_delete_job, job_id, DELETE_TIMEOUT_S)
            if problem is not None:
                log.warning("%s", problem)
                self._leftovers.append(f"job {job_id} (not deleted; fanout clean removes it)")
        self._job_exists = False
        if self._kept_pool_created is not None:
            self._leftovers.append(f"pool {self._kept_pool_created} (kept: keep_pool)")

    @classmethod
    def clean(
        cls, settings: BaseModel, job_dir: Path, *, dry_run: bool, everything: bool
    ) -> Iterator[CleanedItem]:
        from fanout_azure.batch_clean import clean

        assert isinstance(settings, AzureBatchSettings)
        return clean(settings, dry_run=dry_run, everything=everything)

    def leftovers(self) -> list[str]:
        return list(self._leftovers)


_TASK_ENDED = frozenset({"TaskCompleted", *ALREADY_ENDING})
"""Refusals to terminate a task that has ended already, or whose job is ending."""
NO_MORE_TASKS = frozenset({"JobNotActive", *ALREADY_ENDING})
"""Refusals to add tasks to a job that is ending or has ended (``JobNotActive`` while it is
being terminated)."""


class _JobEnded(Exception):
    """The job ended while tasks were still being added."""


def _submission_failure(exc: Any) -> str:
    """One line for a submission the SDK could not finish."""
    for failure in exc.failure_tasks:
        return f"Batch refused task {failure.task_id}: {describe_refusal(failure.error)}"
    for error in exc.errors:
        return describe(error, "adding the tasks")
    return "could not add the tasks"
