"""What a pool's allocation tells a run: its resize errors in words that say what to do, those
an earlier resize left behind told apart, and when to stop waiting for a pool that gets no
node.

A resize error stays on a pool until a later resize succeeds, and the service has been seen to
keep it even then. A pool that has reached its targets has every node it asked for, so its
errors are left over from an earlier resize and are ignored.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fanout.errors import BackendError
from fanout_azure.batch_settings import AzureBatchSettings
from fanout_azure.batch_tasks import wire_value

log = logging.getLogger(__name__)

DEDICATED_QUOTA = frozenset({"AccountCoreQuotaReached", "AccountVMSeriesCoreQuotaReached"})
SPOT_QUOTA = frozenset({"AccountLowPriorityCoreQuotaReached"})
QUOTAS_PAGE = "Azure portal, Batch account, Quotas"


def explain(code: str, message: str, vm_size: str) -> str:
    """A resize error as one line that says what to do about it."""
    if code in DEDICATED_QUOTA:
        return (
            f"{code}: the account's quota of dedicated cores for the VM family of {vm_size} is"
            f" used up; raise it ({QUOTAS_PAGE}), or ask for a smaller vm_size or fewer nodes"
        )
    if code in SPOT_QUOTA:
        return (
            f"{code}: the account's quota of spot (low-priority) cores for the VM family of"
            f" {vm_size} is used up; raise it ({QUOTAS_PAGE}), or ask for a smaller vm_size or"
            " fewer spot_nodes"
        )
    if code == "AllocationFailed":
        what = f"Azure has no capacity for {vm_size} in this region now"
    elif code == "AllocationTimedout":
        what = f"Azure found no {vm_size} capacity in this region within the resize timeout"
    else:
        return f"{code}: {message}"
    return f"{code}: {what}; try another vm_size, a Batch account in another region, or later"


def duration_text(seconds: float) -> str:
    """``seconds`` as the settings write durations: ``3s``, ``15m``, ``1h30m``."""
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    parts = [f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (rest, "s")) if n]
    return "".join(parts) or "0s"


def reached_targets(pool: Any) -> bool:
    """The pool is steady with every node it asked for."""
    return (
        wire_value(pool.allocation_state) == "steady"
        and (pool.current_dedicated_nodes or 0) >= (pool.target_dedicated_nodes or 0)
        and (pool.current_low_priority_nodes or 0) >= (pool.target_low_priority_nodes or 0)
    )


class Allocation:
    """Follows one pool's allocation, poll by poll (``check``)."""

    def __init__(self, settings: AzureBatchSettings) -> None:
        self.timeout_s = settings.allocation_timeout
        self._reported: set[str] = set()
        self._unready_since: float | None = None

    def check(self, pool: Any, nodes: list[Any], ready: int) -> None:
        """Report each new resize error once; stop the run when the pool has no node and none
        is coming, or has had no node ready for ``allocation_timeout``."""
        vm_size = pool.vm_size or "its VM size"
        errors = [] if reached_targets(pool) else list(pool.resize_errors or [])
        lines = [explain(e.code or "", e.message or "", vm_size) for e in errors]
        steady = wire_value(pool.allocation_state) == "steady"
        if lines and not nodes and steady:
            raise BackendError(f"pool '{pool.id}' got no nodes: {lines[0]}")
        for line in lines:
            if line not in self._reported:
                log.warning("pool %s could not get all its nodes: %s", pool.id, line)
        self._reported |= set(lines)
        self._check_time(pool, nodes, ready, lines)

    def _check_time(self, pool: Any, nodes: list[Any], ready: int, lines: list[str]) -> None:
        now = time.monotonic()
        if ready:
            self._unready_since = None
            return
        if self._unready_since is None:
            self._unready_since = now
        if now - self._unready_since < self.timeout_s:
            return
        waited = duration_text(self.timeout_s)
        target = (pool.target_dedicated_nodes or 0) + (pool.target_low_priority_nodes or 0)
        reason = (
            lines[0]
            if lines
            else (
                f"{len(nodes)} of {target} nodes allocated, none ready; Azure may be short of"
                f" {pool.vm_size or 'its VM size'} in this region: try another vm_size or region,"
                " later, or a longer allocation_timeout"
            )
        )
        raise BackendError(f"pool '{pool.id}' had no node ready in {waited}: {reason}")
