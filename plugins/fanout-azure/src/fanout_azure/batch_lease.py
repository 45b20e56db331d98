"""A job's lease: its deadline, pushed back by the client for as long as the client lives.

A job is created before its tasks are in (so that its auto-pool comes up while the inputs are
staged) and without onAllTasksComplete=terminatejob (a job whose tasks have all completed would
end between two chunks). What keeps a dead client's job from billing until the budget is its
``maxWallClockTime``: a short lease, which a thread of the client renews every third of a lease
until every task is in. If the client dies — killed, asleep, cut off — the renewals stop and
the service ends the job, and its auto-pool, within a lease.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from fanout_azure.batch_calls import ALREADY_ENDING, describe, error_code

if TYPE_CHECKING:
    from azure.batch import BatchClient

log = logging.getLogger(__name__)


def deadline(seconds: float) -> Any:
    """Job constraints with only a wall clock limit, ``seconds`` from the job's creation."""
    from azure.batch import models as m

    return m.BatchJobConstraints(max_wall_clock_time=timedelta(seconds=seconds))


class JobLease:
    """Renews the lease of job ``job_id``, created at ``created`` (monotonic seconds, taken
    before its creation was asked for), from ``start`` to ``stop``; never past ``budget_s``."""

    def __init__(
        self, client: BatchClient, job_id: str, lease_s: float, budget_s: float, created: float
    ) -> None:
        self.client = client
        self.job_id = job_id
        self.lease_s = lease_s
        self.budget_s = budget_s
        self.created = created
        self.ended = False
        """The job ended while its lease was held (it ran out, or someone ended the job)."""
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="job-lease", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Renew no more; return once no renewal is under way (a later update of the job's
        constraints cannot be overwritten by one)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def _renew(self) -> None:
        from azure.batch import models as m
        from azure.core.exceptions import AzureError

        while not self._stopping.wait(self.lease_s / 3):
            limit = min(time.monotonic() - self.created + self.lease_s, self.budget_s)
            try:
                self.client.update_job(
                    self.job_id, m.BatchJobUpdateOptions(constraints=deadline(limit))
                )
            except AzureError as exc:
                if error_code(exc) in ALREADY_ENDING:
                    self.ended = True
                    return
                # The next renewal may get through: the lease has two thirds left.
                log.warning("%s; trying again", describe(exc, "renewing the job's lease"))
