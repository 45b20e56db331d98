"""The emulator's admin endpoint: its fault knobs, read and set from outside while it runs.

``GET /_emulator/faults`` answers the knobs as JSON; ``POST /_emulator/faults`` with a JSON
object sets those it names (the others keep their values) and answers the knobs after it, plus
what its actions did. No Batch path starts with ``/_``, so no Batch request can be mistaken for
it, and it is neither signed nor counted by ``busyEvery``, an outage or lost answers. It answers
only clients on the loopback interface (403 otherwise): whoever can reach it can break the
emulator's answers, so an emulator listening on another interface keeps it to this machine.

Keys (all optional; a document with one wrong key or value changes nothing, 400):

- ``busyEvery``: N ≥ 0, every Nth request refused 503 ``ServerBusy`` (0: none);
- ``outageSeconds``: refuse every request 503 for that long from now;
- ``loseAnswers``: ``{"Tasks_CreateTaskCollection": 1}``, answers to lose by operationId;
- ``resizeErrors``: ``{"*": "AccountCoreQuotaReached", "pool-1": null}``, by pool id or ``*``
  for every pool, a code of ``faults.RESIZE_ERRORS`` or ``null`` to stop;
- ``staleResizeErrors``: ``true`` keeps a pool's resize errors after a later resize succeeds;
- ``stuckResizes``: ``true`` leaves every resize that would add nodes ``resizing``, adding none;
- ``nodeStartSeconds``: how long a new node takes to come up;
- ``preemptSpotAfterSeconds``, ``unusableAfterSeconds``: seconds after a node comes up, or
  ``null`` for never (nodes that came up before are not affected);
- ``preempt``, ``unusable``: ``{"pool": "p", "node": "tvmps_..."}`` acts at once on that node,
  or without ``node`` on every node of the pool it can (spot ones only, for ``preempt``).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from typing import Any, Final

from fanout_azure.emulator.account import Account
from fanout_azure.emulator.errors import BatchError
from fanout_azure.emulator.faults import RESIZE_ERRORS, Faults

PREFIX: Final = "/_emulator/"
FAULTS_PATH: Final = "/_emulator/faults"


def answer(
    account: Account, faults: Faults, method: str, path: str, raw: bytes, client: str
) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of one admin request from the address ``client``."""
    if not ipaddress.ip_address(client).is_loopback:
        return 403, {"error": "the admin endpoint answers only clients on this machine"}
    if path != FAULTS_PATH:
        return 404, {"error": f"no such admin resource; the one there is is {FAULTS_PATH}"}
    if method == "GET":
        return 200, faults.knobs()
    if method != "POST":
        return 405, {"error": "GET or POST"}
    try:
        document = json.loads(raw or b"{}")
        if not isinstance(document, dict):
            raise ValueError("the body must be a JSON object")
        changes = [_change(key, value) for key, value in document.items()]
        done: dict[str, Any] = {}
        for change in changes:
            done.update(change(account, faults) or {})
    except (ValueError, TypeError, BatchError) as error:
        message = error.message if isinstance(error, BatchError) else str(error)
        return 400, {"error": message}
    return 200, {**faults.knobs(), **done}


_Change = Callable[[Account, Faults], dict[str, Any] | None]


def _change(key: str, value: Any) -> _Change:
    """What setting ``key`` to ``value`` does; ``ValueError`` before anything is done."""
    if key in _ACTIONS:
        target = _object(key, value)
        pool, node = target.get("pool"), target.get("node")
        if not isinstance(pool, str) or not (node is None or isinstance(node, str)):
            raise ValueError(f'{key} needs {{"pool": ID}} and may name a "node"')
        state, shown = _ACTIONS[key]
        return lambda account, _: {shown: account.lose_nodes(pool, state, node)}
    setting = _setting(key, value)

    def apply(_: Account, faults: Faults) -> None:
        setting(faults)

    return apply


def _setting(key: str, value: Any) -> Callable[[Faults], None]:
    if key == "busyEvery":
        every = _count(key, value)

        def busy(faults: Faults) -> None:
            faults.busy.every = every

        return busy
    if key == "outageSeconds":
        seconds = _seconds(key, value)
        return lambda faults: faults.busy.refuse_for(seconds)
    if key == "loseAnswers":
        lost = {str(name): _count(f"{key}.{name}", n) for name, n in _object(key, value).items()}

        def lose(faults: Faults) -> None:
            for name, count in lost.items():
                faults.lost.lose(name, count)

        return lose
    if key == "resizeErrors":
        errors = _object(key, value)
        for pool, code in errors.items():
            if code is not None and code not in RESIZE_ERRORS:
                raise ValueError(f"resizeErrors.{pool}: not one of {', '.join(RESIZE_ERRORS)}")

        def fail(faults: Faults) -> None:
            for pool, code in errors.items():
                faults.set_resize_error(code, pool)

        return fail
    if key in _SWITCHES:
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false")
        return lambda faults: setattr(faults, _SWITCHES[key], value)
    if key in _AFTER:
        after = None if value is None and key != "nodeStartSeconds" else _seconds(key, value)
        return lambda faults: setattr(faults, _AFTER[key], after)
    raise ValueError(f"unknown key {key!r}")


_SWITCHES: Final = {"staleResizeErrors": "stale_resize_errors", "stuckResizes": "stuck_resizes"}
_AFTER: Final = {
    "nodeStartSeconds": "node_start_s",
    "preemptSpotAfterSeconds": "preempt_spot_after_s",
    "unusableAfterSeconds": "unusable_after_s",
}
_ACTIONS: Final = {"preempt": ("preempted", "preempted"), "unusable": ("unusable", "madeUnusable")}


def _object(key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{key} must be a JSON object")
    return value


def _count(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key} must be a whole number, 0 or more")
    return value


def _seconds(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{key} must be a number of seconds, 0 or more")
    return float(value)
