"""Faults the emulator injects on request: the failures of a real account, off by default.

``Faults`` holds every knob, set by ``fanout batch-emulator``'s options or at run time through
the admin endpoint (``admin``); the account asks it what to do.

- Resize errors (``resize_errors``): a pool that is to grow (every pool, or one by id) gets no
  new node, and its ``resizeErrors`` says why, in the service's words: ``AccountCoreQuotaReached``,
  ``AllocationFailed`` or ``AllocationTimedout`` (reported when the resize is asked, not after
  its ``resizeTimeout``); ``AccountLowPriorityCoreQuotaReached`` fails only the growth of spot
  nodes, as that quota bounds only them. The errors of a resize go when a later resize
  succeeds, unless ``stale_resize_errors`` keeps them, as the service has been seen to do.
- ``stuck_resizes``: a resize that would add nodes adds none and never ends, without an error:
  the pool stays ``resizing`` with nothing coming, as when the service is slow to find capacity.
- ``node_start_s``: nodes take this long to come up (``starting``, then their start task).
- ``preempt_spot_after_s``: a spot (low-priority) node is preempted this long after it came
  up: state ``preempted``, its running tasks requeued (``requeueCount`` + 1, retries intact).
  ``unusable_after_s``: a node turns ``unusable`` this long after it came up, its running
  tasks requeued. Either can also be done to one node or a pool's nodes at once (the admin
  endpoint). Neither kind of node comes back.

``LostAnswers.lose(operation, n)`` carries out the next ``n`` requests of an operation, then
closes their connections without answering: the client cannot tell whether the service acted,
as when a network path fails after the service did.

``Busy(n)`` refuses every ``n``-th request the server receives (counted over all requests,
whatever their operation, from every thread), and ``Busy.refuse_for(seconds)`` every request
for a while, an outage: the server answers 503 ``ServerBusy`` with ``Retry-After: 1`` and does
not execute the request, as the service does when it sheds load. The SDK's retry policy
honours ``Retry-After`` on 503 for every method, POST included, so a client with default
settings gets through an every-n-th refusal with a pause of a second, and gives up on an
outage that outlasts its retries.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Final

RETRY_AFTER_S: Final = 1
"""The ``Retry-After`` of a refused request, in seconds."""


class Busy:
    """Which requests to refuse as busy: every ``every``-th one (none when ``every`` is 0),
    and every one during an outage."""

    def __init__(self, every: int = 0) -> None:
        if every < 0:
            raise ValueError(f"busy_every must be 0 (off) or positive, not {every}")
        self.every = every
        self.received = 0
        """Requests counted so far (only while ``every`` is positive)."""
        self._outage_ends = 0.0
        self._lock = threading.Lock()

    def refuse_for(self, seconds: float) -> None:
        """Refuse every request from now on for ``seconds``."""
        self._outage_ends = time.monotonic() + seconds

    def outage_left(self) -> float:
        """Seconds the outage under way has left (0 or less: none)."""
        return self._outage_ends - time.monotonic()

    def refuse(self) -> bool:
        """Count one more request; whether it is to be refused."""
        if time.monotonic() < self._outage_ends:
            return True
        if self.every == 0:
            return False
        with self._lock:
            self.received += 1
            return self.received % self.every == 0


class LostAnswers:
    """Which requests are carried out but never answered."""

    def __init__(self) -> None:
        self._left: dict[str, int] = {}
        self._lock = threading.Lock()

    def lose(self, operation_id: str, count: int = 1) -> None:
        """Lose the answers to the next ``count`` requests of ``operation_id``."""
        with self._lock:
            self._left[operation_id] = self._left.get(operation_id, 0) + count

    def pending(self) -> dict[str, int]:
        """How many answers are still to be lost, by operation."""
        with self._lock:
            return {name: left for name, left in self._left.items() if left}

    def take(self, operation_id: str) -> bool:
        """Whether the answer to this request of ``operation_id`` is to be lost."""
        with self._lock:
            left = self._left.get(operation_id, 0)
            if left:
                self._left[operation_id] = left - 1
            return left > 0


RESIZE_ERRORS: Final = {
    "AccountCoreQuotaReached": "The specified account has reached core quota",
    "AccountLowPriorityCoreQuotaReached": (
        "The specified account has reached its low priority core quota"
    ),
    "AllocationFailed": "Desired number of nodes could not be allocated due to a lack of capacity",
    "AllocationTimedout": (
        "Desired number of dedicated nodes could not be allocated as the resize timeout was reached"
    ),
}
"""Resize error codes and their messages: the quota and time-out texts are the service's, as
users quoted them (Azure/doAzureParallel#234, Azure/batch-shipyard#191); the capacity and
low-priority quota ones are the emulator's own."""
SPOT_ONLY_ERRORS: Final = frozenset({"AccountLowPriorityCoreQuotaReached"})
"""Resize errors that fail only the growth of spot (low-priority) nodes."""
ALL_POOLS: Final = "*"


@dataclass
class Faults:
    """Every fault knob of one emulator; all off by default."""

    busy: Busy = field(default_factory=Busy)
    lost: LostAnswers = field(default_factory=LostAnswers)
    resize_errors: dict[str, str] = field(default_factory=dict)
    """Resize error code by case-folded pool id, or for every pool under ``ALL_POOLS``."""
    stale_resize_errors: bool = False
    stuck_resizes: bool = False
    node_start_s: float = 0.0
    preempt_spot_after_s: float | None = None
    unusable_after_s: float | None = None

    def resize_error(self, pool_id: str, dedicated: bool) -> dict[str, Any] | None:
        """The ``resizeErrors`` item a growth of ``pool_id``'s dedicated (or spot) nodes fails
        with, if it is to fail."""
        code = self.resize_errors.get(pool_id.casefold(), self.resize_errors.get(ALL_POOLS))
        if code is None or (dedicated and code in SPOT_ONLY_ERRORS):
            return None
        return {"code": code, "message": RESIZE_ERRORS[code]}

    def set_resize_error(self, code: str | None, pool_id: str = ALL_POOLS) -> None:
        """Fail the resizes of ``pool_id`` (default: every pool) with ``code``; ``None``: stop."""
        key = pool_id if pool_id == ALL_POOLS else pool_id.casefold()
        if code is None:
            self.resize_errors.pop(key, None)
        elif code not in RESIZE_ERRORS:
            raise ValueError(f"resize error {code!r} is not one of {', '.join(RESIZE_ERRORS)}")
        else:
            self.resize_errors[key] = code

    def knobs(self) -> dict[str, Any]:
        """The knobs as the admin endpoint shows them."""
        return {
            "busyEvery": self.busy.every,
            "outageSeconds": round(max(0.0, self.busy.outage_left()), 3),
            "loseAnswers": self.lost.pending(),
            "resizeErrors": dict(self.resize_errors),
            "staleResizeErrors": self.stale_resize_errors,
            "stuckResizes": self.stuck_resizes,
            "nodeStartSeconds": self.node_start_s,
            "preemptSpotAfterSeconds": self.preempt_spot_after_s,
            "unusableAfterSeconds": self.unusable_after_s,
        }
