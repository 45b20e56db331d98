"""The azure-batch backend: one Batch job per attempt at a run, on an auto-pool that lives and
dies with the job, on a named pool kept for later runs (``keep_pool``), or on an existing pool
(``pool_id``).

What outlives this process is bounded by the Batch service itself: the job's maxWallClockTime
is the run's budget and, once its tasks are added, onAllTasksComplete=terminatejob; an
auto-pool goes when its job ends. So a client killed at any point leaves nothing billing for
longer than the budget.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, ParamSpec, TypeVar

from pydantic import BaseModel

from fanout.backend import (
    Backend,
    Capability,
    PoolSpec,
    ResourceFile,
    RunContext,
    TaskSpec,
    TaskState,
    TaskUpdate,
)
from fanout.errors import BackendError
from fanout_azure.batch_monitor import TaskMonitor
from fanout_azure.batch_pools import (
    NodeWatcher,
    create_named_pool,
    metadata,
    pool_specification,
    reuse_pool,
)
from fanout_azure.batch_settings import AzureBatchSettings, batch_client
from fanout_azure.batch_tasks import batch_task, task_update, wire_value

if TYPE_CHECKING:
    from azure.batch import BatchClient

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
SUBMIT_CONCURRENCY = 4
"""Task-collection requests in flight at once."""
DELETE_TIMEOUT_S = 120
"""How long teardown waits for the service to delete the job before recording it as left."""


def batch_errors(doing: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Turn an answer of the Batch service that stops the run into one ``BackendError`` line
    naming what fanout was ``doing`` (throttling and transient errors were already retried
    by the SDK)."""

    def decorate(method: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(method)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            from azure.core.exceptions import HttpResponseError, ServiceRequestError

            try:
                return method(*args, **kwargs)
            except HttpResponseError as exc:
                code = exc.error.code if exc.error is not None else exc.status_code
                reason = (exc.message or "").splitlines()[0] if exc.message else ""
                raise BackendError(f"Batch refused {doing}: {code}: {reason}") from None
            except ServiceRequestError as exc:
                raise BackendError(f"Batch could not be reached while {doing}: {exc}") from None

        return wrapper

    return decorate


class AzureBatchBackend(Backend):
    """Runs tasks on Azure Batch: a job per run, on an auto-pool or a named pool."""

    name = "azure-batch"
    settings_model = AzureBatchSettings
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.SETUP, Capability.RETRIES, Capability.TIMEOUT}
    )

    def __init__(self, settings: BaseModel, context: RunContext) -> None:
        super().__init__(settings, context)
        assert isinstance(settings, AzureBatchSettings)
        self._settings = settings.with_environment(os.environ)
        self._client: BatchClient | None = None
        self._image: tuple[Any, str] | None = None
        self.job_id = context.job_id
        self._job_exists = False
        self._created_pool: str | None = None
        self._stale_jobs: list[str] = []
        self._task_app_files: tuple[ResourceFile, ...] = ()
        self._pool_env: dict[str, str] = {}
        self._new_job: Any = None
        self._pool_id: str | None = None
        self._monitors: list[TaskMonitor] = []
        self._nodes: NodeWatcher | None = None
        self._status: str | None = None
        self._next_poll = 0.0
        self._leftovers: list[str] = []

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

    @batch_errors("reattaching to the earlier job")
    def reattach(self) -> set[str]:
        """Adopt the earlier attempt's tasks that succeeded or may still: all but the failed
        ones while its job is active, only those that succeeded once it has ended. Its job
        then goes on by itself (it ends when its tasks have completed) and is followed beside
        the new one, which runs the rest; nothing is deleted from it, nothing runs twice."""
        from azure.core.exceptions import ResourceNotFoundError

        earlier = self.context.earlier_job_ids[-1]
        try:
            job = self.client.get_job(earlier, select=["id", "state", "executionInfo"])
        except ResourceNotFoundError:
            return set()
        state = wire_value(job.state)
        if state not in ("active", "terminating", "completed"):
            return set()
        fields = ["id", "state", "executionInfo", "nodeInfo"]
        updates = [task_update(task) for task in self.client.list_tasks(earlier, select=fields)]
        keep = {TaskState.SUCCEEDED} | ({TaskState.RUNNING} if state == "active" else set())
        adopted = {update.task_id for update in updates if update.state in keep}
        self._stale_jobs.append(earlier)
        monitor = TaskMonitor(self.client, earlier, ignore={u.task_id for u in updates} - adopted)
        monitor.expect(len(adopted))
        self._monitors.append(monitor)
        pool_id = job.execution_info.pool_id if job.execution_info is not None else None
        self._nodes = NodeWatcher(self.client, earlier, pool_id)
        log.info("reattached to job %s (%s): %d tasks adopted", earlier, state, len(adopted))
        return adopted

    @batch_errors("preparing the pool")
    def provision(self, pool: PoolSpec) -> None:
        """Make the pool ready (or describe the auto-pool); the job itself is created with
        the first tasks, so that a resumed run with nothing left to run creates none."""
        from azure.batch import models as m

        self._pool_env = dict(pool.env)
        pool_info, self._pool_id = self._pool_for(pool)
        self._new_job = m.BatchJobCreateOptions(
            id=self.job_id,
            pool_info=pool_info,
            constraints=m.BatchJobConstraints(
                max_wall_clock_time=timedelta(seconds=self.context.budget_s)
            ),
            metadata=metadata(self.context.run_id),
        )

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
            create_named_pool(self.client, pool_id, spec)
            self._created_pool, in_shared_dir = pool_id, True
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
        """Add the tasks (creating the job first), then let the job end when they have all
        completed: set once they are in, since a job without tasks may end at once."""
        from azure.batch import models as m
        from azure.batch.models import CreateTasksError

        if not tasks:
            return
        if not self._job_exists:
            self.client.create_job(self._new_job)
            self._job_exists = True
            self._monitors.append(TaskMonitor(self.client, self.job_id))
            self._nodes = NodeWatcher(self.client, self.job_id, self._pool_id)
            where = self._pool_id or f"an auto-pool of {self._settings.vm_size}"
            log.info("job %s on %s", self.job_id, where)
        batch_tasks = [
            batch_task(task, self.job_id, self._pool_env, self._task_app_files) for task in tasks
        ]
        self._monitors[-1].expect(len(batch_tasks))
        try:
            self.client.create_tasks(self.job_id, batch_tasks, max_concurrency=SUBMIT_CONCURRENCY)
        except CreateTasksError as exc:
            raise BackendError(_submission_failure(exc)) from None
        self.client.update_job(
            self.job_id, m.BatchJobUpdateOptions(all_tasks_complete_mode="terminatejob")
        )

    @batch_errors("following the tasks")
    def poll(self, timeout: float) -> list[TaskUpdate]:
        """Ask the service at most once per ``poll_interval``, however often this is called."""
        wait = self._next_poll - time.monotonic()
        if wait > timeout or all(monitor.done for monitor in self._monitors):
            time.sleep(max(timeout, 0))
            return []
        time.sleep(max(wait, 0))
        self._next_poll = time.monotonic() + self._settings.poll_interval
        if self._nodes is not None:
            watch = self._nodes.poll()
            for failure in watch.failed_setup:
                log.warning("%s", failure)
            self._status = watch.status
        return [update for monitor in self._monitors for update in monitor.poll()]

    def status(self) -> str | None:
        return self._status

    def cancel(self) -> None:
        if not self._job_exists:
            return
        from azure.batch.models._models import BatchJobTerminateOptions
        from azure.core.exceptions import HttpResponseError

        try:
            self.client.begin_terminate_job(
                self.job_id,
                options=BatchJobTerminateOptions(termination_reason="fanout cancelled"),
                polling_interval=1,
            ).result(timeout=DELETE_TIMEOUT_S)
        except HttpResponseError as exc:
            log.warning("could not terminate job %s: %s", self.job_id, exc.message)

    def teardown(self, keep: bool = False) -> None:
        """Delete the jobs of this run (an auto-pool goes with its job) and a pool fanout
        created, unless ``keep_pool``. ``keep`` is ignored: nodes kept for inspection bill by
        the hour, and each task's logs are in the run's storage."""
        for job_id in [*self._stale_jobs, *([self.job_id] if self._job_exists else [])]:
            self._delete(f"job {job_id}", self.client.begin_delete_job, job_id)
        self._job_exists = False
        if self._created_pool is not None:
            if self._settings.keep_pool:
                self._leftovers.append(f"pool {self._created_pool} (kept: keep_pool)")
            else:
                self._delete(
                    f"pool {self._created_pool}", self.client.begin_delete_pool, self._created_pool
                )

    def _delete(self, what: str, begin: Any, resource_id: str) -> None:
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        try:
            begin(resource_id, polling_interval=1).result(timeout=DELETE_TIMEOUT_S)
        except ResourceNotFoundError:
            pass
        except HttpResponseError as exc:
            log.warning("could not delete %s: %s", what, exc.message)
            self._leftovers.append(f"{what} (delete failed; fanout clean removes it)")
        except TimeoutError:
            self._leftovers.append(f"{what} (still being deleted)")

    @classmethod
    def clean(
        cls, settings: BaseModel, job_dir: Path, *, dry_run: bool, everything: bool
    ) -> list[str]:
        from fanout_azure.batch_clean import clean

        assert isinstance(settings, AzureBatchSettings)
        return clean(settings, dry_run=dry_run, everything=everything)

    def leftovers(self) -> list[str]:
        return list(self._leftovers)


def _submission_failure(exc: Any) -> str:
    """One line for a submission the SDK could not finish."""
    for failure in exc.failure_tasks:
        error = failure.error
        detail = f"{error.code}: {error.message}" if error is not None else "refused"
        return f"Batch refused task {failure.task_id}: {detail}"
    for error in exc.errors:
        return f"could not add the tasks: {error}"
    return "could not add the tasks"
