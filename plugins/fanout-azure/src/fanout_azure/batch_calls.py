"""The Batch SDK's errors as fanout's one-line messages, requests whose answer may be lost,
and its long-running operations (terminate, delete) carried to their end.

The SDK has already retried throttling answered with Retry-After, and transient errors, when
one of its errors reaches this module. It does not send a POST or a PATCH again when the
connection drops before the answer: the service may have carried it out, and only the caller
knows whether sending it again is safe, and what the service then answers (``JobExists`` for
a job created already, ``JobCompleted`` for one that ended since).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from fanout.errors import BackendError

P = ParamSpec("P")
R = TypeVar("R")
ALREADY_ENDING = frozenset({"JobCompleted", "JobBeingTerminated", "JobBeingDeleted"})
"""Batch's refusals to stop or delete a job that is on its way out already."""
REQUEST_ATTEMPTS = 3
"""Sendings of a request that got no answer (or a transient error), before giving up."""


def error_code(exc: Exception) -> str | None:
    """The Batch error code of an SDK error, if the service answered with one."""
    from azure.core.exceptions import HttpResponseError

    if isinstance(exc, HttpResponseError) and exc.error is not None:
        return exc.error.code
    return None


def resent(call: Callable[[], R], *, done_if: frozenset[str] = frozenset()) -> R | None:
    """``call()``, sent again while it fails with no answer or a transient error, up to
    ``REQUEST_ATTEMPTS`` times. An error whose code is in ``done_if`` (what the service
    answers to a repeat of a request it carried out) counts as done: None. ``call`` must be
    safe to repeat."""
    from azure.core.exceptions import AzureError

    attempt = 1
    while True:
        try:
            return call()
        except AzureError as exc:
            if error_code(exc) in done_if:
                return None
            if not transient(exc) or attempt == REQUEST_ATTEMPTS:
                raise
        attempt += 1


def batch_errors(doing: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Turn an error of the Batch service or the network that stops the run into one
    ``BackendError`` line naming what fanout was ``doing``."""

    def decorate(method: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(method)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            from azure.core.exceptions import AzureError

            try:
                return method(*args, **kwargs)
            except AzureError as exc:
                raise BackendError(describe(exc, doing)) from None

        return wrapper

    return decorate


def describe(exc: Exception, doing: str) -> str:
    """One line for an error of the SDK while fanout was ``doing`` something."""
    from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

    if isinstance(exc, HttpResponseError) and exc.response is not None:
        code = exc.error.code if exc.error is not None else exc.status_code
        reason = (exc.message or "").strip().splitlines()
        return f"Batch refused {doing}: {code}" + (f": {reason[0]}" if reason else "")
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return f"Batch could not be reached while {doing}: {exc}"
    return f"Batch failed while {doing}: {exc}"


def describe_refusal(error: Any) -> str:
    """A ``BatchError``: its code, message and the details that name what is wrong."""
    if error is None:
        return "refused"
    message = getattr(error.message, "value", None) or ""
    details = [f"{item.key}: {item.value}" for item in error.error_values or []]
    return "; ".join([f"{error.code}: {message}".rstrip(": "), *details])


def transient(exc: Exception) -> bool:
    """An error worth another try later: no answer, throttling, or the service's own fault."""
    from azure.core.exceptions import HttpResponseError

    if not isinstance(exc, HttpResponseError) or exc.response is None:
        return True
    return exc.status_code in (408, 429) or (exc.status_code or 0) >= 500


def carry_out(
    doing: str, begin: Any, resource_id: str, timeout_s: float | None, **options: Any
) -> str | None:
    """Start a long-running operation (``begin(resource_id, ...)``) and, unless ``timeout_s``
    is None, wait for it. None once it is done or on its way; else why it is not, in one
    line. A resource already gone, or a job already ending, needs nothing more."""
    from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError

    try:
        poller = begin(resource_id, polling_interval=1, **options)
        if timeout_s is not None:
            poller.result(timeout=timeout_s)
    except ResourceNotFoundError:
        return None
    except HttpResponseError as exc:
        if error_code(exc) in ALREADY_ENDING:
            return None
        return describe(exc, doing)
    except AzureError as exc:
        return describe(exc, doing)
    if timeout_s is not None and (not poller.done() or poller.status() != "Succeeded"):
        return f"{doing}: not done after {timeout_s:g} s"
    return None
