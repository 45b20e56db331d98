"""Faults the emulator injects on request, for clients' retry tests.

``BusyEvery(n)`` refuses every ``n``-th request the server receives (counted over all requests,
whatever their operation, from every thread): the server answers it 503 ``ServerBusy`` with
``Retry-After: 1`` and does not execute it, as the service does when it sheds load. The SDK's
retry policy honours ``Retry-After`` on 503 for every method, POST included, so a client with
default settings gets through with a pause of a second per refusal.
"""

from __future__ import annotations

import threading
from typing import Final

RETRY_AFTER_S: Final = 1
"""The ``Retry-After`` of a refused request, in seconds."""


class BusyEvery:
    """Which requests to refuse as busy: every ``every``-th one; none when ``every`` is 0."""

    def __init__(self, every: int = 0) -> None:
        if every < 0:
            raise ValueError(f"busy_every must be 0 (off) or positive, not {every}")
        self.every = every
        self.received = 0
        """Requests counted so far (only while ``every`` is positive)."""
        self._lock = threading.Lock()

    def refuse(self) -> bool:
        """Count one more request; whether it is to be refused."""
        if self.every == 0:
            return False
        with self._lock:
            self.received += 1
            return self.received % self.every == 0
