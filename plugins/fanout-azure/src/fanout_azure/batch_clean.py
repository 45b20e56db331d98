"""``fanout clean --backend azure-batch``: what runs left in the Batch account, and only that.

A job or pool is fanout's when its metadata names the run that created it (``fanout-run``).
By default only what no run can still be using goes: jobs that have ended, and pools fanout
created that no active fanout job runs on, except those kept on purpose (``keep_pool``).
``--all`` also stops and deletes active jobs (a run still in progress elsewhere stops) and
kept pools.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fanout.backend import CleanedItem
from fanout.errors import BackendError
from fanout_azure.batch_calls import carry_out
from fanout_azure.batch_pools import KEEP_KEY, RUN_KEY
from fanout_azure.batch_preflight import preflight
from fanout_azure.batch_settings import AzureBatchSettings, batch_client
from fanout_azure.batch_tasks import wire_value

if TYPE_CHECKING:
    from azure.batch import BatchClient

DELETE_TIMEOUT_S = 300


def clean(
    settings: AzureBatchSettings, *, dry_run: bool, everything: bool
) -> Iterator[CleanedItem]:
    """Delete (unless ``dry_run``) fanout's leftovers, yielding each as it is done."""
    from azure.core.exceptions import AzureError

    resolved = settings.with_environment(os.environ)
    client = batch_client(resolved, os.environ)
    preflight(client, resolved.model_copy(update={"pool_id": None}))
    try:
        yield from _clean(client, dry_run=dry_run, everything=everything)
    except AzureError as exc:
        raise BackendError(f"Batch account {resolved.account_label()}: {exc}") from None


def _clean(client: BatchClient, *, dry_run: bool, everything: bool) -> Iterator[CleanedItem]:
    jobs = [job for job in client.list_jobs() if RUN_KEY in _marks(job)]
    pools_in_use: set[str] = set()
    runs_in_progress: set[str] = set()
    for job in jobs:
        state = wire_value(job.state)
        if state == "deleting":
            continue
        if state in ("active", "disabled") and not everything:
            if job.execution_info is not None and job.execution_info.pool_id:
                pools_in_use.add(job.execution_info.pool_id)
            runs_in_progress.add(_marks(job)[RUN_KEY])  # its auto-pool may have no id yet
            continue
        description = f"job {job.id} ({state}, run {_marks(job)[RUN_KEY]})"
        yield _item(description, client.begin_delete_job, job.id, DELETE_TIMEOUT_S, dry_run)
    for pool in client.list_pools():
        marks = _marks(pool)
        state = wire_value(pool.state)
        if RUN_KEY not in marks or state == "deleting" or pool.id in pools_in_use:
            continue
        if marks[RUN_KEY] in runs_in_progress or (KEEP_KEY in marks and not everything):
            continue
        kept = " kept with keep_pool" if KEEP_KEY in marks else ""
        description = f"pool {pool.id}{kept} (run {marks[RUN_KEY]})"
        # Not waited for: a pool takes minutes to go, and it is on its way.
        yield _item(description, client.begin_delete_pool, pool.id, None, dry_run)


def _item(
    description: str, begin: Any, resource_id: str, timeout_s: float | None, dry_run: bool
) -> CleanedItem:
    """The item for a resource, deleted first unless ``dry_run``."""
    if dry_run:
        return CleanedItem(description)
    problem = carry_out(f"deleting {resource_id}", begin, resource_id, timeout_s)
    return CleanedItem(description, problem)


def _marks(resource: Any) -> dict[str, str]:
    return {item.name: item.value for item in resource.metadata or []}
