"""fanout's tasks as Batch tasks, and Batch's answers as fanout's task updates.

A task's command runs in ``/bin/sh -c`` after a few ``export`` lines that give it the same
``FANOUT_*`` variables the local backend sets. Nothing secret goes into the command line or
the environment settings: SAS URLs travel only in resource files and output files, which the
node agent handles and the task never sees.
"""

from __future__ import annotations

import glob
import itertools
import shlex
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from fanout.backend import (
    OutputFile,
    ResourceFile,
    TaskSpec,
    TaskState,
    TaskUpdate,
    exit_status,
)
from fanout.errors import BackendError
from fanout.taskids import MAX_ID_LENGTH

PATH_STYLE_HOSTS = ("127.0.0.1", "localhost", "::1")
"""Hosts whose blob URLs carry the account in the path (Azurite's), not in the host name."""
SHARED_APP_DIR = "$AZ_BATCH_NODE_SHARED_DIR"
TASK_APP_DIR = "$AZ_BATCH_TASK_WORKING_DIR"
LOG_FILES = ("../stdout.txt", "../stderr.txt")
"""The task's logs, relative to its working directory as output file patterns see it."""
MAX_COMMAND_LINE = 8191
"""The longest ``commandLine`` fanout sends, in UTF-8 bytes (never fewer than its characters).
The Batch REST description (2025-06-01, ``BatchTaskCreateOptions.commandLine``) documents no
limit. On a Linux node the command is one argument of ``/bin/sh -c``, which Linux caps at
128 KiB; what the service and its node agent accept is not documented. 8191 characters is the
command-line limit Microsoft documents for cmd.exe ("Command prompt (Cmd.exe) command-line
string limitation"), the shell the description itself names for Windows nodes ("cmd /c
MyCommand"): the strictest documented, well within Linux's, so that a command line that passes
here meets no undocumented limit on the way."""


def split_container_url(url: str) -> tuple[str, str]:
    """A signed destination URL as (container URL with its query, blob path prefix).

    Azure's URLs are ``https://ACCOUNT.blob.core.windows.net/CONTAINER/prefix?sas``; Azurite's
    are path-style, ``http://127.0.0.1:PORT/ACCOUNT/CONTAINER/prefix?sas``.
    """
    parts = urlsplit(url)
    segments = [segment for segment in parts.path.split("/") if segment]
    host = parts.hostname or ""
    head = 2 if host in PATH_STYLE_HOSTS or host.replace(".", "").isdigit() else 1
    if parts.scheme not in ("http", "https") or len(segments) < head:
        raise BackendError(
            "azure-batch needs az:// storage: an output destination is not a blob URL"
        )
    container = urlunsplit(
        (parts.scheme, parts.netloc, "/" + "/".join(segments[:head]), parts.query, "")
    )
    return container, unquote("/".join(segments[head:]))


def resource_files(files: Sequence[ResourceFile]) -> list[Any] | None:
    from azure.batch import models as m

    return [m.ResourceFile(http_url=f.url, file_path=f.path) for f in files] or None


def environment(env: Mapping[str, str]) -> list[Any] | None:
    from azure.batch import models as m

    return [m.EnvironmentSetting(name=name, value=value) for name, value in env.items()] or None


def batch_task(
    task: TaskSpec,
    job_id: str,
    pool_env: Mapping[str, str],
    app_files: Sequence[ResourceFile] = (),
) -> Any:
    """The Batch task for ``task``. ``app_files`` go with the task, into its working
    directory, when the pool did not put them in the node's shared directory."""
    from azure.batch import models as m

    app_dir = TASK_APP_DIR if app_files else SHARED_APP_DIR
    outputs = [_output_file(output, "tasksuccess") for output in task.output_files]
    if task.logs_destination is not None:
        outputs += [
            _output_file(OutputFile(pattern, task.logs_destination), "taskcompletion")
            for pattern in LOG_FILES
        ]
    constraints = m.BatchTaskConstraints(max_task_retry_count=task.max_retries)
    if task.timeout_s is not None:
        constraints.max_wall_clock_time = timedelta(seconds=task.timeout_s)
    return m.BatchTaskCreateOptions(
        id=task.id,
        command_line=command_line(task.id, job_id, task.command, app_dir),
        resource_files=resource_files([*app_files, *task.resource_files]),
        output_files=outputs or None,
        environment_settings=environment({**pool_env, **task.env}),
        constraints=constraints,
    )


def command_line(task_id: str, job_id: str, command: str, app_dir: str) -> str:
    """The ``commandLine`` of a task: ``command`` in ``/bin/sh -c``, after the ``export``
    lines that give it the ``FANOUT_*`` variables."""
    exports = (
        f"export FANOUT_TASK_ID={shlex.quote(task_id)}",
        f"export FANOUT_JOB_ID={shlex.quote(job_id)}",
        'export FANOUT_NODE_ID="$AZ_BATCH_NODE_ID"',
        f'export FANOUT_APP_DIR="{app_dir}"',
    )
    script = "\n".join((*exports, command))
    return f"/bin/sh -c {shlex.quote(script)}"


def command_line_length(task_id: str, command: str) -> int:
    """The most ``command`` may take of ``MAX_COMMAND_LINE`` once wrapped: with the longest
    job id there is (the job's is not known before the run starts) and the longer app
    directory. The quotes count: each ``'`` in the command takes five characters."""
    longest = command_line(task_id, "j" * MAX_ID_LENGTH, command, TASK_APP_DIR)
    return len(longest.encode())


def _output_file(output: OutputFile, condition: str) -> Any:
    from azure.batch import models as m

    container, prefix = split_container_url(output.destination)
    path = "/".join(part for part in (prefix, _kept_path(output.pattern)) if part)
    return m.OutputFile(
        file_pattern=output.pattern,
        destination=m.OutputFileDestination(
            container=m.OutputFileBlobContainerDestination(
                container_url=container, path=path or None
            )
        ),
        upload_options=m.OutputFileUploadConfiguration(upload_condition=condition),
    )


def _kept_path(pattern: str) -> str:
    """What Batch leaves out of a blob's name and fanout keeps: a match keeps its path
    relative to the working directory. Batch names a file matched by a pattern without
    wildcards ``path`` exactly, and one matched by a wildcard ``path/<the part of its path
    that matched the wildcards>``; so ``path`` carries the rest. ``..`` parts (the logs,
    ``../stdout.txt``) are dropped."""
    parts = pattern.split("/")
    if not glob.has_magic(pattern):
        kept = parts
    else:
        kept = list(itertools.takewhile(lambda part: not glob.has_magic(part), parts[:-1]))
    return "/".join(part for part in kept if part not in ("", ".", ".."))


def task_update(task: Any) -> TaskUpdate:
    """A fanout update from a listed Batch task (``id``, ``state``, ``executionInfo``,
    ``nodeInfo``). Succeeded means completed with exit code 0 and result success: a task
    whose output upload failed completes with exit code 0 and result failure."""
    info = task.execution_info
    node = task.node_info.node_id if task.node_info is not None else None
    if wire_value(task.state) != "completed":
        return TaskUpdate(task.id, TaskState.RUNNING, node=node, started=_epoch(info, "start"))
    if info is None:
        return TaskUpdate(task.id, TaskState.FAILED, node=node, error="no execution information")
    succeeded = info.exit_code == 0 and wire_value(info.result) == "success"
    error = None if succeeded else _failure(info)
    return TaskUpdate(
        task.id,
        TaskState.SUCCEEDED if succeeded else TaskState.FAILED,
        attempts=(info.retry_count or 0) + 1,
        exit_code=info.exit_code,
        node=node,
        error=error,
        started=_epoch(info, "start"),
        finished=_epoch(info, "end"),
    )


def _failure(info: Any) -> str:
    """What went wrong, from the service's failure information and exit code. A Linux node
    reports a command ended by a signal with a negative exit code (-9 for SIGKILL), which
    then leads the message."""
    failure, exit_code = info.failure_info, info.exit_code
    if failure is None:
        return "no exit code" if exit_code is None else exit_status(exit_code)
    category, code = wire_value(failure.category), failure.code
    message = (failure.message or "").strip()
    reason = f"{category} error {code}: {message}" if message else f"{category} error {code}"
    if exit_code is not None and exit_code < 0:
        return f"{exit_status(exit_code)}; {reason}"
    return reason


def wire_value(value: Any) -> str:
    """An SDK enum or string as its wire value."""
    return str(getattr(value, "value", value) or "").lower()


def _epoch(info: Any, which: str) -> float | None:
    moment: datetime | None = getattr(info, f"{which}_time", None) if info is not None else None
    return moment.timestamp() if moment is not None else None
