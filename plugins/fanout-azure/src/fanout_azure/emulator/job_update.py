"""What ``Jobs_UpdateJob`` (PATCH) and ``Jobs_ReplaceJob`` (PUT) make of a job's document.

PATCH changes only the properties the request names; PUT sets every updatable property, those
it leaves out to their defaults. Either way, as the service documents it:

- a job going to ``onAllTasksComplete: terminatejob`` cannot go back to ``noaction`` (400
  ``InvalidPropertyValue``; a PUT without the property asks for ``noaction``);
- ``poolInfo`` may change only while the job is disabled; naming the job's current pool again
  is no change, as the recorded PUT of the live service shows;
- ``priority`` is within -1000..1000 (400 ``OutOfRangePriority``), ``maxParallelTasks`` is -1
  or more than 0, ``constraints`` is replaced as a whole.
"""

from __future__ import annotations

from typing import Any

from fanout_azure.emulator.errors import BatchError
from fanout_azure.emulator.runtime import parse_duration

UPDATABLE = (
    "priority",
    "allowTaskPreemption",
    "maxParallelTasks",
    "constraints",
    "onAllTasksComplete",
    "metadata",
)
"""What both a PATCH and a PUT set (``poolInfo`` and ``networkConfiguration`` have rules of
their own)."""
PRIORITY_RANGE = range(-1000, 1001)


def updated_spec(
    spec: dict[str, Any], changes: dict[str, Any], *, replace: bool, disabled: bool
) -> dict[str, Any]:
    """The job document ``spec`` with ``changes`` applied; the request's 400 or 409 if the
    service refuses them. ``replace`` for a PUT; ``disabled`` if the job is."""
    if replace:
        changes = {key: changes.get(key) for key in (*UPDATABLE, "poolInfo")}
        changes["onAllTasksComplete"] = changes["onAllTasksComplete"] or "noaction"
    given = {key: value for key, value in changes.items() if value is not None}
    check_job_options(given)
    if (
        spec.get("onAllTasksComplete") == "terminatejob"
        and given.get("onAllTasksComplete", "terminatejob") != "terminatejob"
    ):
        raise _invalid(
            "onAllTasksComplete",
            given["onAllTasksComplete"],
            "Cannot change the completion behavior of a job from terminatejob to noaction",
        )
    updated = {key: value for key, value in spec.items() if not (replace and key in UPDATABLE)}
    updated.update({key: given[key] for key in UPDATABLE if key in given})
    pool_info = given.get("poolInfo")
    if pool_info is not None and pool_info != spec.get("poolInfo"):
        if not disabled:
            raise BatchError(
                409,
                "OperationInvalidForCurrentState",
                "The specified operation is not valid for the current state of the resource.",
                {"Reason": "The pool of a job can be changed only while the job is disabled"},
            )
        updated["poolInfo"] = pool_info
    network = given.get("networkConfiguration")
    if network is not None:
        updated["networkConfiguration"] = {**spec.get("networkConfiguration", {}), **network}
    return updated


def check_job_options(spec: dict[str, Any]) -> None:
    """400 for a priority, ``maxParallelTasks`` or wall clock limit the service does not take
    (on creation as on update)."""
    priority = spec.get("priority")
    if priority is not None and priority not in PRIORITY_RANGE:
        raise BatchError(
            400,
            "OutOfRangePriority",
            "A job priority was specified which was outside the permitted range of -1000 to 1000.",
            {"PropertyName": "priority", "PropertyValue": str(priority)},
        )
    parallel = spec.get("maxParallelTasks")
    if parallel is not None and parallel != -1 and parallel < 1:
        raise _invalid("maxParallelTasks", parallel, "The value must be -1 or greater than 0")
    limit = (spec.get("constraints") or {}).get("maxWallClockTime")
    if limit is not None:
        wall_clock_seconds(limit)


def wall_clock_seconds(duration: str) -> float:
    """``constraints.maxWallClockTime`` in seconds; 400 if the emulator cannot measure it."""
    try:
        return parse_duration(duration)
    except ValueError:
        raise _invalid("maxWallClockTime", duration, "Unsupported duration") from None


def _invalid(name: str, value: object, reason: str) -> BatchError:
    return BatchError(
        400,
        "InvalidPropertyValue",
        "The value provided for one of the properties in the request body is invalid.",
        {"PropertyName": name, "PropertyValue": str(value), "Reason": reason},
    )
