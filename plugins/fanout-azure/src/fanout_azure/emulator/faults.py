"""Faults the emulator injects on request, for clients' retry tests.

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
from typing import Final

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

    def take(self, operation_id: str) -> bool:
        """Whether the answer to this request of ``operation_id`` is to be lost."""
        with self._lock:
            left = self._left.get(operation_id, 0)
            if left:
                self._left[operation_id] = left - 1
            return left > 0
