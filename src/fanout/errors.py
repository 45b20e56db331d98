"""Errors a user can act on, and the exit status each one maps to."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Every exit status of the ``fanout`` command."""

    OK = 0
    """Every task succeeded."""
    TASKS_FAILED = 1
    """The run finished, but at least one task failed."""
    NOT_ALL_DELETED = 1
    """``fanout clean`` could not delete something it found."""
    USAGE_ERROR = 2
    """Bad arguments, a bad job file, or a backend or storage that cannot be used."""
    INTERRUPTED = 130
    """Stopped by Ctrl-C (SIGINT); the run can be resumed."""
    TERMINATED = 143
    """Stopped by SIGTERM; the run can be resumed."""


class FanoutError(Exception):
    """An error reported to the user as one line, without a traceback."""

    exit_code: ExitCode = ExitCode.USAGE_ERROR


class JobFileError(FanoutError):
    """The job file cannot be read or does not describe a valid job."""


class PluginError(FanoutError):
    """A plugin is missing, broken, or registers something twice."""


class StorageError(FanoutError):
    """The storage cannot be reached or refuses an operation."""


class BackendError(FanoutError):
    """A backend cannot be used, or failed in a way that stops the whole run."""


class SetupError(BackendError):
    """``[job] setup`` failed on a node, so no task could run there."""

    exit_code = ExitCode.TASKS_FAILED
