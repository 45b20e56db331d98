"""What the node agent of an Azure Batch compute node does with one attempt, with real processes.

The emulator's state machine calls :func:`run_start_task` and :func:`run_task` from worker
threads, one call per attempt, and gets an :class:`AttemptResult` in the service's own terms (the
``executionInfo`` / ``startTaskInfo`` fields). The contract is the 2025-06-01 REST description
(``BatchService.json``: ``BatchTaskCreateOptions``, ``BatchStartTask``, ``ResourceFile``,
``OutputFile*``, ``BatchTaskConstraints``, ``BatchTaskExecutionInfo``, ``BatchTaskFailureInfo``)
and Microsoft's documentation of the node:

* Directories as on a Linux node (``AZ_BATCH_NODE_ROOT_DIR`` is ``/mnt/batch/tasks`` there)::

      <root>/shared/
      <root>/startup/            stdout.txt, stderr.txt of the start task
      <root>/startup/wd/         its working directory and resource files
      <root>/workitems/<job>/job-1/<task>/       stdout.txt, stderr.txt, fileupload*.txt
      <root>/workitems/<job>/job-1/<task>/wd/    the task's working directory

* Resource files are downloaded into the working directory before the command runs; a failed
  download fails the attempt and the command does not run.
* "The command line does not run under a shell": it is split with :func:`shlex.split` and
  executed directly, in a process group of its own, with a node's environment (not the
  emulator's: a node never sees its client's secrets).
* ``maxWallClockTime`` and the ``cancel`` event end the whole process group (SIGTERM, then
  SIGKILL after :data:`KILL_GRACE_S`); so does the end of the command, so nothing it started in
  the background outlives it.
* Output files are uploaded after the process exits, per ``uploadCondition``, with plain HTTP
  ``PUT`` requests to the container's SAS URL; a failed upload fails the attempt.

Where the documentation is silent, the choices are: every attempt starts with an empty working
directory (resource files are fetched again); ``stdout.txt``, ``stderr.txt`` and the file upload
logs are those of the latest attempt; a process ended by a signal reports minus the signal's
number as its exit code, as live Linux nodes do (github.com/Azure/Batch issue 101: ``-9`` for a
task's program ended by SIGKILL; a shell's child ended so makes the shell exit ``128 + N``, as
anywhere); every process runs as the emulator's own user, whatever ``userIdentity`` says
(``AZ_BATCH_TASK_USER*`` still tell the task what it would run as).

No SAS query string ever reaches a message or a log: URLs are shown without their query.
"""

from __future__ import annotations

import contextlib
import glob
import http.client
import os
import posixpath
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final
from urllib.parse import parse_qs, quote, urlencode, urlsplit, urlunsplit

ENV_NAMES: Final = (
    "AZ_BATCH_ACCOUNT_NAME",
    "AZ_BATCH_ACCOUNT_URL",
    "AZ_BATCH_CERTIFICATES_DIR",
    "AZ_BATCH_JOB_ID",
    "AZ_BATCH_NODE_ID",
    "AZ_BATCH_NODE_IS_DEDICATED",
    "AZ_BATCH_NODE_ROOT_DIR",
    "AZ_BATCH_NODE_SHARED_DIR",
    "AZ_BATCH_NODE_STARTUP_DIR",
    "AZ_BATCH_POOL_ID",
    "AZ_BATCH_TASK_DIR",
    "AZ_BATCH_TASK_ID",
    "AZ_BATCH_TASK_USER",
    "AZ_BATCH_TASK_USER_IDENTITY",
    "AZ_BATCH_TASK_WORKING_DIR",
)
"""The ``AZ_BATCH_*`` variables a task gets here: exactly those a Linux node printed in
Microsoft's quickstart (``printenv | grep AZ_BATCH``), which are the "All tasks" rows of "Azure
Batch runtime environment variables". ``AZ_BATCH_JOB_ID`` and ``AZ_BATCH_TASK_ID`` are "all tasks
except start task". Left out: multi-instance variables (``AZ_BATCH_NODE_LIST``,
``AZ_BATCH_HOST_LIST``, ``AZ_BATCH_MASTER_NODE``, ``AZ_BATCH_TASK_SHARED_DIR``, ...), job
preparation ones (``AZ_BATCH_JOB_PREP_*``), ``AZ_BATCH_APP_PACKAGE_*`` (no application
packages here), ``AZ_BATCH_AUTHENTICATION_TOKEN`` (retired), ``AZ_BATCH_NODE_MOUNTS_DIR`` (no
mounts) and ``AZ_BATCH_TASK_RESERVED_EPHEMERAL_DISK_SPACE_BYTES`` (no disk accounting)."""

KILL_GRACE_S = 2.0
"""How long a process group has between SIGTERM and SIGKILL."""
HTTP_TIMEOUT_S = 60.0
POLL_S = 0.05
FIRST_POLL_S = 0.001
"""How often a waiting attempt looks at its process, its deadline and its cancel event."""
CHUNK = 1 << 20
DEFAULT_FILE_MODE = 0o770
"""``ResourceFile.fileMode``: "If this property is not specified for a Linux Compute Node, then a
default value of 0770 is applied to the file"."""
NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""``PATH`` on a node: an Ubuntu image's default, not the emulator's own."""
TASK_USER = "_azbatch"
"""The auto user's account name on Linux nodes (``AZ_BATCH_TASK_USER`` in the quickstart)."""

USER_ERROR: Final = "usererror"
SERVER_ERROR: Final = "servererror"

# failureInfo codes. The REST description leaves them open ("Codes are invariant and are intended
# to be consumed programmatically"), so each comes from Microsoft's material:
# - FailureExitCode (UserError, "The task exited with an exit code representing a failure"): the
#   task fail event reference, learn.microsoft.com/azure/batch/batch-task-fail-event.
# - The task scheduling error table of "Batch Status and Error Codes"
#   (learn.microsoft.com/rest/api/batchservice/batch-status-and-error-codes), also the SDKs'
#   TaskSchedulingErrorCodes classes: BlobNotFound and BlobAccessDenied (UserError),
#   BlobDownloadTimedOut and BlobDownloadMiscError (ServerError), ResourceDirectoryCreateFailed,
#   ResourceFileCreateFailed and ResourceFileWriteFailed (ServerError), CommandProgramNotFound
#   and CommandLaunchFailed (UserError), TaskEnded (UserError, "Task was ended by user request").
#   The Azure SDK for Python's live tests expect CommandProgramNotFound / usererror for the
#   command line "bad command".
# - TaskEnded for maxWallClockTime is ServerError: "Error handling and detection in Azure Batch"
#   (learn.microsoft.com/azure/batch/error-handling), "Constraint errors": the exit code is set
#   to 0xC000013A (on Windows) and the error is { category: "ServerError", code: "TaskEnded" }.
# - FileUploadContainerNotFound (UserError): "Persist task data to Azure Storage with the Batch
#   service API", section "Diagnose file upload errors". FileUploadMiscError: what live tasks
#   report for other upload failures (github.com/Azure/Batch issues 68, 128 and 171).
FAILURE_EXIT_CODE: Final = "FailureExitCode"
BLOB_NOT_FOUND: Final = "BlobNotFound"
BLOB_ACCESS_DENIED: Final = "BlobAccessDenied"
BLOB_DOWNLOAD_TIMED_OUT: Final = "BlobDownloadTimedOut"
BLOB_DOWNLOAD_MISC_ERROR: Final = "BlobDownloadMiscError"
RESOURCE_DIRECTORY_CREATE_FAILED: Final = "ResourceDirectoryCreateFailed"
RESOURCE_FILE_CREATE_FAILED: Final = "ResourceFileCreateFailed"
RESOURCE_FILE_WRITE_FAILED: Final = "ResourceFileWriteFailed"
COMMAND_PROGRAM_NOT_FOUND: Final = "CommandProgramNotFound"
COMMAND_LAUNCH_FAILED: Final = "CommandLaunchFailed"
TASK_ENDED: Final = "TaskEnded"
FILE_UPLOAD_CONTAINER_NOT_FOUND: Final = "FileUploadContainerNotFound"
FILE_UPLOAD_MISC_ERROR: Final = "FileUploadMiscError"
UNKNOWN: Final = "Unknown"
"""The table's catch-all (ServerError), for the node's own failures (its disk, its files)."""
INVALID_PROPERTY_VALUE: Final = "InvalidPropertyValue"
"""Only for a task the REST layer should have refused (a malformed duration or file mode)."""

# Straight from the environment's proxy settings, as a node's agent would: no custom handlers.
_OPENER = urllib.request.build_opener()
_DURATION = re.compile(
    r"P(?:(?P<weeks>\d+(?:\.\d+)?)W)?(?:(?P<days>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<hours>\d+(?:\.\d+)?)H)?(?:(?P<minutes>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?",
    re.IGNORECASE,
)
_SECONDS_PER = {"weeks": 604800.0, "days": 86400.0, "hours": 3600.0, "minutes": 60.0}
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


@dataclass(frozen=True)
class NodePaths:
    """A node's directory tree, as on Batch; each method creates its directory when asked."""

    root: Path

    def create(self) -> None:
        """The directories a node has from its start (``applications``, ``fsmounts`` and
        ``volatile`` too on Batch, which the emulator has no use for)."""
        for name in ("shared", "startup", "workitems"):
            _made(self.root / name)

    def shared(self) -> Path:
        """``AZ_BATCH_NODE_SHARED_DIR``: read and write for every task of the node."""
        return _made(self.root / "shared")

    def startup(self) -> Path:
        """``AZ_BATCH_NODE_STARTUP_DIR``: the start task's directory (its ``wd`` inside)."""
        return _made(self.root / "startup")

    def job_dir(self, job_id: str) -> Path:
        """Where a (non-scheduled) job's task directories go: ``workitems/<job>/job-1``."""
        return _made(self.root / "workitems" / _component(job_id) / "job-1")

    def task_dir(self, job_id: str, task_id: str) -> Path:
        """``AZ_BATCH_TASK_DIR``: stdout.txt, stderr.txt and the working directory ``wd``."""
        return _made(self.job_dir(job_id) / _component(task_id))


@dataclass(frozen=True)
class NodeIdentity:
    """What a node knows about where it is: its account, pool and own id."""

    account: str
    account_url: str
    pool_id: str
    node_id: str
    is_dedicated: bool


@dataclass(frozen=True)
class AttemptResult:
    """One attempt in the service's terms (``BatchTaskExecutionInfo`` / ``BatchStartTaskInfo``)."""

    exit_code: int | None
    """None when no process ran (a failed download, a program not found)."""
    result: str
    """``success`` or ``failure`` (``BatchTaskExecutionResult``)."""
    failure_info: dict[str, Any] | None
    """``BatchTaskFailureInfo``: category, code, message, details (name/value pairs)."""
    start_time: str
    """When the attempt began, downloads included, as the service writes times."""
    end_time: str


class _Failure(Exception):
    """Why an attempt failed, raised where it happens and reported as ``failureInfo``."""

    def __init__(self, category: str, code: str, message: str, **details: str) -> None:
        super().__init__(message)
        self.info: dict[str, Any] = {
            "category": category,
            "code": code,
            "message": message,
            "details": [{"name": name, "value": value} for name, value in details.items()],
        }


@dataclass(frozen=True)
class _Plan:
    """One attempt, whichever kind of task: where it runs, what it runs, what it uploads."""

    task_dir: Path
    spec: Mapping[str, Any]
    env: dict[str, str]
    outputs: Sequence[Mapping[str, Any]]


def run_start_task(
    identity: NodeIdentity, paths: NodePaths, start_task: Mapping[str, Any], cancel: threading.Event
) -> AttemptResult:
    """Run one attempt of a pool's start task (``BatchStartTask``) in ``startup/wd``."""
    task_dir = paths.startup()
    env = _environment(identity, paths, task_dir, start_task, job_env=())
    return _run(_Plan(task_dir, start_task, env, outputs=()), cancel)


def run_task(
    identity: NodeIdentity,
    paths: NodePaths,
    job_id: str,
    task: Mapping[str, Any],
    job_env: Sequence[Mapping[str, Any]],
    cancel: threading.Event,
) -> AttemptResult:
    """Run one attempt of a task (``BatchTaskCreateOptions``, its constraints resolved) of job
    ``job_id``, with the job's ``commonEnvironmentSettings`` as ``job_env``.

    When ``cancel`` is set (task or job terminated, node removed) the processes are ended and
    the result comes back at once, failed with ``TaskEnded``; the caller decides what it means.
    """
    task_dir = paths.task_dir(job_id, task["id"])
    ids = {"AZ_BATCH_JOB_ID": job_id, "AZ_BATCH_TASK_ID": task["id"]}
    env = _environment(identity, paths, task_dir, task, job_env, ids)
    return _run(_Plan(task_dir, task, env, task.get("outputFiles") or ()), cancel)


def should_retry(result: AttemptResult) -> bool:
    """Whether the service retries after ``result``, retries left: only for a nonzero exit.

    ``BatchTaskExecutionInfo.retryCount``: "Task application failures (non-zero exit code) are
    retried, pre-processing errors (the Task could not be run) and file upload errors are not
    retried." A task ended by its ``maxWallClockTime`` is terminated, not retried.
    """
    return result.failure_info is not None and result.failure_info["code"] == FAILURE_EXIT_CODE


def parse_duration(text: str) -> float:
    """Seconds in an ISO 8601 duration as the service uses them: ``PT10S``, ``PT1H30M``,
    ``P1D``, ``P10675199DT2H48M5.4775807S`` (its "unlimited"), ``P`` (what the SDK sends for
    ``timedelta(0)``). Years and months have no fixed length and are refused."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or text.strip().upper().endswith("T"):
        raise ValueError(f"not an ISO 8601 duration of days, hours, minutes, seconds: {text!r}")
    total = 0.0
    for unit, value in match.groupdict().items():
        if value is not None:
            total += float(value) * _SECONDS_PER.get(unit, 1.0)
    return total


def format_time(moment: datetime) -> str:
    """``moment`` as the service writes times: UTC, up to 7 fractional digits without trailing
    zeros, ``Z`` (``2023-09-07T06:26:59.41364Z`` in the recordings)."""
    moment = moment.astimezone(UTC)
    fraction = f"{moment.microsecond:06d}0".rstrip("0")
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


# ------------------------------------------------------------------------------------ attempt


def _run(plan: _Plan, cancel: threading.Event) -> AttemptResult:
    started = datetime.now(UTC)
    exit_code: int | None = None
    try:
        exit_code, failure = _attempt(plan, cancel)
    except _Failure as exc:
        failure = exc.info
    except OSError as exc:  # the node's own trouble (a full disk...): a result, not a lost thread
        failure = _Failure(SERVER_ERROR, UNKNOWN, f"The node could not run the task: {exc}").info
    return AttemptResult(
        exit_code=exit_code,
        result="success" if failure is None else "failure",
        failure_info=failure,
        start_time=format_time(started),
        end_time=format_time(datetime.now(UTC)),
    )


def _attempt(plan: _Plan, cancel: threading.Event) -> tuple[int | None, dict[str, Any] | None]:
    """Download, run, upload: (exit code, failureInfo or None). Raises :class:`_Failure` for
    what ends the attempt before its process exits."""
    deadline = _deadline(plan.spec, time.monotonic())
    work_dir = _fresh_attempt_dirs(plan.task_dir)
    _download_all(plan.spec.get("resourceFiles") or (), work_dir, cancel)
    argv = _command(plan.spec.get("commandLine") or "")
    if cancel.is_set():
        raise _ended_by_request()
    if deadline is not None and time.monotonic() >= deadline:
        raise _wall_clock_failure(plan.spec)
    exit_code, ending = _execute(argv, plan, work_dir, deadline, cancel)
    if ending == "cancel":
        return exit_code, _ended_by_request().info
    failure = _wall_clock_failure(plan.spec).info if ending == "timeout" else None
    if failure is None and exit_code != 0:
        failure = _nonzero_exit().info
    upload_failure = _upload_outputs(plan, work_dir, exit_code, cancel)
    if upload_failure is not None and (failure is None or failure["code"] == FAILURE_EXIT_CODE):
        failure = upload_failure  # "file upload error" wins over the exit code (ExitConditions)
    return exit_code, failure


def _deadline(spec: Mapping[str, Any], started: float) -> float | None:
    """When ``maxWallClockTime``, "measured from the time the Task starts", runs out."""
    text = (spec.get("constraints") or {}).get("maxWallClockTime")
    if not text:
        return None
    try:
        return started + parse_duration(text)
    except ValueError as exc:
        raise _Failure(USER_ERROR, INVALID_PROPERTY_VALUE, str(exc)) from None


def _fresh_attempt_dirs(task_dir: Path) -> Path:
    """An empty ``wd`` and no logs of an earlier attempt in ``task_dir``."""
    work_dir = task_dir / "wd"
    shutil.rmtree(work_dir, ignore_errors=True)
    for name in ("stdout.txt", "stderr.txt", "fileuploadout.txt", "fileuploaderr.txt"):
        with contextlib.suppress(FileNotFoundError):
            (task_dir / name).unlink()
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _Failure(
            SERVER_ERROR,
            RESOURCE_DIRECTORY_CREATE_FAILED,
            f"Failure encountered creating the task's working directory: {exc.strerror}",
        ) from None
    return work_dir


def _command(command_line: str) -> list[str]:
    """The program and its arguments: no shell, so no variables, pipes or globs expanded."""
    try:
        argv = shlex.split(command_line)
    except ValueError as exc:
        raise _Failure(
            USER_ERROR, COMMAND_LAUNCH_FAILED, f"Failed to launch the specified command line: {exc}"
        ) from None
    if not argv:
        raise _Failure(USER_ERROR, COMMAND_LAUNCH_FAILED, "The command line is empty")
    return argv


def _nonzero_exit() -> _Failure:
    message = "The task exited with an exit code representing a failure"
    return _Failure(USER_ERROR, FAILURE_EXIT_CODE, message)


def _ended_by_request() -> _Failure:
    return _Failure(USER_ERROR, TASK_ENDED, "Task Was Ended by User Request")


def _wall_clock_failure(spec: Mapping[str, Any]) -> _Failure:
    limit = str((spec.get("constraints") or {}).get("maxWallClockTime"))
    return _Failure(
        SERVER_ERROR,
        TASK_ENDED,
        f"The task was ended because it exceeded its maxWallClockTime of {limit}",
        MaxWallClockTime=limit,
    )


# ---------------------------------------------------------------------------------- environment


def _environment(
    identity: NodeIdentity,
    paths: NodePaths,
    task_dir: Path,
    spec: Mapping[str, Any],
    job_env: Sequence[Mapping[str, Any]],
    ids: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """A node's environment for a task: a minimal base, the ``AZ_BATCH_*`` variables, the
    job's common settings, the task's own settings (the task's win)."""
    env = {"PATH": NODE_PATH, "LANG": "C.UTF-8", "HOME": str(_home(paths))}
    env |= _batch_variables(identity, paths, task_dir, spec)
    env |= ids or {}
    for setting in (*job_env, *(spec.get("environmentSettings") or ())):
        env[str(setting["name"])] = str(setting.get("value") or "")
    return env


def _batch_variables(
    identity: NodeIdentity, paths: NodePaths, task_dir: Path, spec: Mapping[str, Any]
) -> dict[str, str]:
    user, user_identity = _task_user(spec)
    task_dir = task_dir.absolute()
    url = identity.account_url
    return {
        "AZ_BATCH_ACCOUNT_NAME": identity.account,
        # A Linux node's printenv shows the account URL with a trailing slash.
        "AZ_BATCH_ACCOUNT_URL": url if url.endswith("/") else url + "/",
        "AZ_BATCH_CERTIFICATES_DIR": str(task_dir / "certs"),
        "AZ_BATCH_NODE_ID": identity.node_id,
        "AZ_BATCH_NODE_IS_DEDICATED": "true" if identity.is_dedicated else "false",
        "AZ_BATCH_NODE_ROOT_DIR": str(paths.root.absolute()),
        "AZ_BATCH_NODE_SHARED_DIR": str(paths.shared().absolute()),
        "AZ_BATCH_NODE_STARTUP_DIR": str(paths.startup().absolute()),
        "AZ_BATCH_POOL_ID": identity.pool_id,
        "AZ_BATCH_TASK_DIR": str(task_dir),
        "AZ_BATCH_TASK_USER": user,
        "AZ_BATCH_TASK_USER_IDENTITY": user_identity,
        "AZ_BATCH_TASK_WORKING_DIR": str(task_dir / "wd"),
    }


def _task_user(spec: Mapping[str, Any]) -> tuple[str, str]:
    """(user name, identity) for ``userIdentity``: a named user, or the auto user whose identity
    a node reports as ``PoolNonAdmin``, ``PoolAdmin``, ``TaskNonAdmin`` or ``TaskAdmin``."""
    user_identity = spec.get("userIdentity") or {}
    if user_identity.get("username"):
        name = str(user_identity["username"])
        return name, name
    auto = user_identity.get("autoUser") or {}
    scope = "Task" if str(auto.get("scope", "pool")).lower() == "task" else "Pool"
    admin = str(auto.get("elevationLevel", "nonadmin")).lower() == "admin"
    return TASK_USER, scope + ("Admin" if admin else "NonAdmin")


def _home(paths: NodePaths) -> Path:
    """A ``HOME`` on the node, not the emulator user's (and its credentials)."""
    return _made(paths.root.absolute() / "volatile" / "home")


# ------------------------------------------------------------------------------------- process


def _execute(
    argv: list[str], plan: _Plan, work_dir: Path, deadline: float | None, cancel: threading.Event
) -> tuple[int, str | None]:
    """Run the command to its end: (exit code, None or why it was ended: timeout, cancel)."""
    with (
        (plan.task_dir / "stdout.txt").open("wb") as out,
        (plan.task_dir / "stderr.txt").open("wb") as err,
    ):
        process = _launch(argv, work_dir, plan.env, out, err)
    try:
        ending = _wait(process, deadline, cancel)
    finally:
        _kill_group(process)
    return process.wait(), ending


def _launch(
    argv: list[str], work_dir: Path, env: dict[str, str], out: IO[bytes], err: IO[bytes]
) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(
            argv,
            cwd=work_dir,
            env=env,  # the program is looked up in this PATH, as a node would
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise _Failure(
            USER_ERROR,
            COMMAND_PROGRAM_NOT_FOUND,
            f"The specified command program is not found: {argv[0]}",
        ) from None
    except OSError as exc:
        raise _Failure(
            USER_ERROR,
            COMMAND_LAUNCH_FAILED,
            f"Failed to launch the specified command line: {argv[0]}: {exc.strerror}",
        ) from None


def _wait(
    process: subprocess.Popen[bytes], deadline: float | None, cancel: threading.Event
) -> str | None:
    backoff = FIRST_POLL_S  # short commands are noticed at once, long ones cost little
    while not _exited(process):
        if cancel.is_set():
            return "cancel"
        pause = backoff = min(POLL_S, backoff * 2)
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout"
            pause = min(pause, left)
        cancel.wait(pause)
    return None


def _exited(process: subprocess.Popen[bytes]) -> bool:
    """Whether the command has exited, leaving it unreaped: while it is a zombie its pid, which
    is its group's id too, cannot pass to another process, so ending the group stays safe."""
    if not hasattr(os, "waitid"):
        return process.poll() is not None
    try:
        return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """End every process of ``process``'s group: SIGTERM, then SIGKILL after a grace period."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    # Reap the leader if it has exited: a group left with no member is then gone at once (the
    # common case), without the scan of every process below. Members left keep the group's id
    # reserved, so signalling it stays safe.
    process.poll()
    if not _signalable(process.pid):
        return
    deadline = time.monotonic() + KILL_GRACE_S
    while time.monotonic() < deadline:
        if not _group_alive(process):
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    # SIGKILL lands asynchronously: return once the group is gone, so that nothing the caller
    # reports as ended is still in the process table.
    deadline = time.monotonic() + KILL_GRACE_S
    while _group_alive(process) and time.monotonic() < deadline:
        time.sleep(0.01)


def _group_alive(process: subprocess.Popen[bytes]) -> bool:
    """Whether a process of ``process``'s group still runs. Zombies do not count: the leader is
    reaped last, and an orphan by init, which in a container may take a second or more (1.4 s
    measured here)."""
    try:
        entries = os.listdir("/proc")
    except OSError:  # no procfs: reap the leader, then any member left counts
        process.poll()
        return _signalable(process.pid)
    if not _signalable(process.pid):
        return False
    return any(_running_in_group(entry, process.pid) for entry in entries if entry.isdigit())


def _signalable(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _running_in_group(pid: str, pgid: int) -> bool:
    try:
        stat = Path("/proc", pid, "stat").read_text()
    except OSError:
        return False
    state, _parent, group = stat.rsplit(")", 1)[1].split()[:3]  # the name may hold spaces
    return int(group) == pgid and state not in ("Z", "X")


# ------------------------------------------------------------------------------ resource files


def _download_all(
    resources: Sequence[Mapping[str, Any]], work_dir: Path, cancel: threading.Event
) -> None:
    for resource in resources:
        if cancel.is_set():
            raise _ended_by_request()
        _download(resource, work_dir, cancel)


def _download(resource: Mapping[str, Any], work_dir: Path, cancel: threading.Event) -> None:
    """One ``ResourceFile``: a URL to ``filePath``, or a container's blobs (those starting with
    ``blobPrefix``) under the directory ``filePath``, keeping their names."""
    mode = _file_mode(resource)
    if resource.get("httpUrl"):
        url = str(resource["httpUrl"])
        relative = str(resource.get("filePath") or posixpath.basename(urlsplit(url).path))
        _fetch(url, _inside(work_dir, relative), relative, mode, cancel)
    elif resource.get("storageContainerUrl"):
        container = str(resource["storageContainerUrl"])
        directory = str(resource.get("filePath") or "")
        for name in _list_blobs(container, str(resource.get("blobPrefix") or ""), directory):
            relative = posixpath.join(directory, name)
            _fetch(_blob_url(container, name), _inside(work_dir, relative), relative, mode, cancel)
    elif resource.get("autoStorageContainerName"):
        raise _Failure(
            USER_ERROR,
            BLOB_DOWNLOAD_MISC_ERROR,
            "autoStorageContainerName needs the account's auto-storage account, which the"
            " emulator does not have; use storageContainerUrl with a SAS instead",
            FilePath=str(resource.get("filePath") or ""),
        )
    else:
        raise _Failure(
            USER_ERROR,
            BLOB_DOWNLOAD_MISC_ERROR,
            "A resource file names none of httpUrl, storageContainerUrl, autoStorageContainerName",
        )


def _file_mode(resource: Mapping[str, Any]) -> int:
    text = resource.get("fileMode")
    if not text:
        return DEFAULT_FILE_MODE
    try:
        return int(str(text), 8)
    except ValueError:
        raise _Failure(
            USER_ERROR, INVALID_PROPERTY_VALUE, f"fileMode {text!r} is not an octal file mode"
        ) from None


def _inside(work_dir: Path, relative: str) -> Path:
    """``work_dir / relative``, refused if it "breaks out of the Task's working directory"."""
    normal = posixpath.normpath(relative)
    if not relative or posixpath.isabs(relative) or normal == "." or normal.startswith("../"):
        raise _Failure(
            USER_ERROR,
            RESOURCE_FILE_CREATE_FAILED,
            f"The file path {relative!r} is not inside the task's working directory",
            FilePath=relative,
        )
    return work_dir / normal


def _list_blobs(container_url: str, prefix: str, directory: str) -> Iterator[str]:
    """Names of the container's blobs that start with ``prefix``: List Blobs over plain HTTP
    (``restype=container&comp=list``), following ``NextMarker``."""
    marker = ""
    while True:
        query = {"restype": "container", "comp": "list", "prefix": prefix, "marker": marker}
        url = _with_query(container_url, {name: value for name, value in query.items() if value})
        try:
            with _OPENER.open(url, timeout=HTTP_TIMEOUT_S) as response:
                body = response.read()
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise _download_failure(exc, container_url, directory) from None
        try:
            listing = ElementTree.fromstring(body)
        except ElementTree.ParseError:
            raise _Failure(
                SERVER_ERROR,
                BLOB_DOWNLOAD_MISC_ERROR,
                f"The blob list of {_shown(container_url)} is not XML",
                FilePath=directory,
            ) from None
        for blob in listing.iter("Blob"):
            name = blob.findtext("Name") or ""
            if name and not name.endswith("/"):  # a folder marker is no file
                yield name
        marker = listing.findtext("NextMarker") or ""
        if not marker:
            return


def _fetch(url: str, destination: Path, relative: str, mode: int, cancel: threading.Event) -> None:
    """GET ``url`` into ``destination`` with permissions ``mode``; checks the stated length."""
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _Failure(
            SERVER_ERROR,
            RESOURCE_DIRECTORY_CREATE_FAILED,
            f"Failure encountered creating resource directory: {exc.strerror}",
            FilePath=relative,
        ) from None
    try:
        response = _OPENER.open(url, timeout=HTTP_TIMEOUT_S)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise _download_failure(exc, url, relative) from None
    with response:
        stated = response.headers.get("Content-Length")
        size = _save(response, destination, relative, url, cancel)
    if stated is not None and size != int(stated):
        raise _Failure(
            SERVER_ERROR,
            BLOB_DOWNLOAD_MISC_ERROR,
            f"Incomplete download of {_shown(url)}: {size} of {stated} bytes",
            FilePath=relative,
        )
    os.chmod(destination, mode)


def _save(
    source: IO[bytes], destination: Path, relative: str, url: str, cancel: threading.Event
) -> int:
    """Copy ``source`` to the file ``destination``; a read error is the download's, a write
    error the node's."""
    try:
        out = destination.open("wb")
    except OSError as exc:
        raise _Failure(
            SERVER_ERROR,
            RESOURCE_FILE_CREATE_FAILED,
            f"Failure encountered creating resource file: {exc.strerror}",
            FilePath=relative,
        ) from None
    size = 0
    with out:
        while True:
            if cancel.is_set():
                raise _ended_by_request()
            try:
                chunk = source.read(CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                raise _download_failure(exc, url, relative) from None
            if not chunk:
                return size
            try:
                out.write(chunk)
            except OSError as exc:
                raise _Failure(
                    SERVER_ERROR,
                    RESOURCE_FILE_WRITE_FAILED,
                    f"Failure encountered writing resource file: {exc.strerror}",
                    FilePath=relative,
                ) from None
            size += len(chunk)


def _download_failure(error: Exception, url: str, relative: str) -> _Failure:
    """A failed GET as the node reports it, by the storage service's answer."""
    shown = _shown(url)
    if isinstance(error, urllib.error.HTTPError):
        reason = _http_reason(error, url)
        if error.code == 404:
            message = f"One of the specified Azure Blob(s) is not found: {shown}: {reason}"
            return _Failure(USER_ERROR, BLOB_NOT_FOUND, message, FilePath=relative)
        if error.code == 403:
            message = f"Access for one of the specified Azure Blob(s) is denied: {shown}: {reason}"
            return _Failure(USER_ERROR, BLOB_ACCESS_DENIED, message, FilePath=relative)
        message = f"Error downloading {shown}: {reason}"
        return _Failure(SERVER_ERROR, BLOB_DOWNLOAD_MISC_ERROR, message, FilePath=relative)
    cause = error.reason if isinstance(error, urllib.error.URLError) else error
    if isinstance(cause, TimeoutError):
        message = f"Timeout encountered while downloading {shown}"
        return _Failure(SERVER_ERROR, BLOB_DOWNLOAD_TIMED_OUT, message, FilePath=relative)
    message = f"Error downloading {shown}: {cause}"
    return _Failure(SERVER_ERROR, BLOB_DOWNLOAD_MISC_ERROR, message, FilePath=relative)


# -------------------------------------------------------------------------------- output files


@dataclass(frozen=True)
class _Upload:
    source: Path
    url: str
    headers: dict[str, str]
    label: str
    """The file as its pattern named it (relative to the working directory)."""


def _upload_outputs(
    plan: _Plan, work_dir: Path, exit_code: int, cancel: threading.Event
) -> dict[str, Any] | None:
    """Upload what each ``outputFiles`` entry matches when its ``uploadCondition`` holds, with
    the logs a node writes (``fileuploadout.txt``, ``fileuploaderr.txt``): the first failure,
    or None. Every upload is tried, even after one fails."""
    outputs = [output for output in plan.outputs if _condition_holds(output, exit_code)]
    if not outputs:
        return None
    uploads = [upload for output in outputs for upload in _uploads(output, work_dir, plan.env)]
    first: dict[str, Any] | None = None
    with (
        (plan.task_dir / "fileuploadout.txt").open("w", encoding="utf-8") as log,
        (plan.task_dir / "fileuploaderr.txt").open("w", encoding="utf-8") as errors,
    ):
        for upload in uploads:
            if cancel.is_set():
                return _ended_by_request().info
            try:
                _put(upload)
            except _Failure as failure:
                errors.write(f"{failure}\n")
                first = first or failure.info
            else:
                log.write(f"Uploaded {upload.label} to {_shown(upload.url)}\n")
    return first


def _condition_holds(output: Mapping[str, Any], exit_code: int) -> bool:
    """``uploadCondition``: tasksuccess (exit code 0), taskfailure (nonzero), taskcompletion
    (the default: any). The live service also took ``TaskCompletion`` spelled so."""
    options = output.get("uploadOptions") or {}
    condition = str(options.get("uploadCondition") or "taskcompletion").lower()
    if condition == "tasksuccess":
        return exit_code == 0
    if condition == "taskfailure":
        return exit_code != 0
    return True


def _uploads(output: Mapping[str, Any], work_dir: Path, env: Mapping[str, str]) -> list[_Upload]:
    """The uploads one ``OutputFile`` asks for, matched now (before any upload log exists)."""
    pattern = _expand(str(output.get("filePattern") or ""), env)
    destination = (output.get("destination") or {}).get("container") or {}
    container = str(destination.get("containerUrl") or "")
    path = str(destination.get("path") or "")
    headers = {
        str(header["name"]): str(header.get("value") or "")
        for header in destination.get("uploadHeaders") or ()
    }
    wildcard = glob.has_magic(pattern)
    uploads = []
    for source, name in _matches(work_dir, pattern, wildcard):
        blob = _blob_name(path, name, wildcard)
        label = os.path.relpath(source, work_dir)
        uploads.append(_Upload(source, _blob_url(container, blob), headers, label))
    return uploads


def _expand(text: str, env: Mapping[str, str]) -> str:
    """``$var`` and ``${var}`` from the task's environment: "Environment variables ... are
    expanded prior to the pattern being applied"; unknown ones stay as written."""
    return _VARIABLE.sub(lambda match: env.get(match[1] or match[2], match[0]), text)


def _matches(work_dir: Path, pattern: str, wildcard: bool) -> list[tuple[Path, str]]:
    """(file, name) for the files ``pattern`` matches, relative to the working directory or
    absolute. Without wildcards the name is the file's; with them, the path below the
    pattern's fixed leading directories (``../std*.txt`` gives ``stdout.txt``). ``*`` and ``?``
    stay within a directory, ``**`` spans any, names starting with ``.`` need an explicit
    ``.``, ``[abc]``/``[!abc]`` match one character: the rules of :mod:`glob`, recursive."""
    if not wildcard:
        source = work_dir / pattern
        return [(source, source.name)] if source.is_file() else []
    base = work_dir / _fixed_prefix(pattern)
    found = []
    for match in sorted(glob.glob(pattern, root_dir=work_dir, recursive=True)):
        source = work_dir / match
        if source.is_file():
            found.append((source, Path(os.path.relpath(source, base)).as_posix()))
    return found


def _fixed_prefix(pattern: str) -> str:
    """The leading directories of ``pattern`` without a wildcard (``../std*.txt``: ``..``)."""
    parts = pattern.split("/")
    fixed = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return "/".join(fixed) if fixed != [""] else "/"


def _blob_name(path: str, name: str, wildcard: bool) -> str:
    """``OutputFileBlobContainerDestination.path``: the blob's name for a pattern without
    wildcards, a virtual directory "prepended to each blob name" for one with; when omitted,
    the file's name (with its path below the pattern's base)."""
    if not wildcard:
        return path or name
    return f"{path.rstrip('/')}/{name}" if path else name


def _put(upload: _Upload) -> None:
    """Put Blob in one request, as a block blob, over plain HTTP with the container's SAS."""
    try:
        size = upload.source.stat().st_size
        with upload.source.open("rb") as body:
            headers = {
                **upload.headers,
                "Content-Length": str(size),
                "x-ms-blob-type": "BlockBlob",
            }
            request = urllib.request.Request(upload.url, data=body, headers=headers, method="PUT")
            with _OPENER.open(request, timeout=HTTP_TIMEOUT_S):
                pass
    except urllib.error.HTTPError as exc:
        raise _upload_failure(upload, exc.code, _http_reason(exc, upload.url)) from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise _upload_failure(upload, None, str(reason)) from None


def _upload_failure(upload: _Upload, status: int | None, reason: str) -> _Failure:
    where = f"{upload.label} to {_shown(upload.url)}"
    if status == 404:
        return _Failure(
            USER_ERROR,
            FILE_UPLOAD_CONTAINER_NOT_FOUND,
            "One of the specified Azure container(s) was not found while attempting to upload"
            f" an output file: {where}: {reason}",
            FilePath=upload.label,
        )
    return _Failure(
        USER_ERROR,
        FILE_UPLOAD_MISC_ERROR,
        f"Error uploading {where}: {reason}",
        FilePath=upload.label,
    )


# ----------------------------------------------------------------------------------------- URLs


def _shown(url: str) -> str:
    """``url`` without its query string, which holds the SAS signature."""
    return url.split("?", 1)[0]


def _blob_url(container_url: str, name: str) -> str:
    """The URL of blob ``name`` in the container, the container's SAS kept."""
    parts = urlsplit(container_url)
    path = parts.path.rstrip("/") + "/" + quote(name, safe="/")
    return urlunsplit(parts._replace(path=path))


def _with_query(url: str, params: Mapping[str, str]) -> str:
    parts = urlsplit(url)
    query = "&".join(part for part in (parts.query, urlencode(params)) if part)
    return urlunsplit(parts._replace(query=query))


def _http_reason(error: urllib.error.HTTPError, url: str) -> str:
    """The storage service's answer in words; an expired SAS is named as such (Azure Storage
    answers 403 AuthorizationFailure to it, as to a bad signature)."""
    code = error.headers.get("x-ms-error-code") if error.headers else None
    reason = f"HTTP {error.code} {error.reason}" + (f" ({code})" if code else "")
    expiry = parse_qs(urlsplit(url).query).get("se")
    if error.code == 403 and expiry:
        with contextlib.suppress(ValueError):
            if datetime.fromisoformat(expiry[0].replace("Z", "+00:00")) <= datetime.now(UTC):
                reason += f"; the SAS expired at {expiry[0]}"
    return reason


# ---------------------------------------------------------------------------------------- paths


def _made(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _component(name: str) -> str:
    """``name`` as one directory name; ids with separators never reach a node."""
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"not a valid id for a directory name: {name!r}")
    return name
