"""The job file: its schema, its validation, and the errors a user sees for it.

A job file is TOML with a ``[job]`` table, an optional ``[storage]`` table and one optional
``[backends.NAME]`` table per backend. Every error names the file and the field at fault.
"""

from __future__ import annotations

import math
import os
import re
import string
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from fanout.errors import JobFileError

PLACEHOLDERS = ("input", "input_name", "input_stem", "inputs", "task_id")
"""What ``{...}`` may name in ``[job] command``."""
ONE_INPUT_PLACEHOLDERS = ("input", "input_name", "input_stem")
"""Placeholders that name a task's one input: not for tasks of several (``inputs_per_task``)."""

RESERVED_ENV_PREFIXES = ("FANOUT_", "AZ_BATCH_")
"""Variables every backend sets itself; a job may not set them."""

DEFAULT_BUDGET_S = 24 * 3600.0
"""How long a whole run may take unless ``[job] budget`` says otherwise."""
DEFAULT_EXPIRY_MARGIN_S = 3600.0
"""How long signed URLs outlive the run's budget unless ``[storage] expiry_margin`` says."""

_JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_SECONDS_PER_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object) -> float | None:
    """Seconds in a duration such as ``"90s"``, ``"10m"``, ``"1h30m"`` or a plain number."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("must be a duration such as '90s', '10m' or '1h30m'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(number + unit for number, unit in parts) != text:
            raise ValueError(f"'{value}' is not a duration such as '90s', '10m' or '1h30m'")
        seconds = sum(float(number) * _SECONDS_PER_UNIT[unit] for number, unit in parts)
    else:
        raise ValueError("must be a duration such as '90s', '10m' or '1h30m'")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("must be a finite duration longer than zero")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
OptionalDuration = Annotated[float | None, BeforeValidator(parse_duration)]


def command_fields(template: str) -> list[str]:
    """The placeholders ``template`` uses; raises ValueError for one that is not allowed."""
    fields: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{exc} (write {{{{ and }}}} for literal braces)") from None
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if field not in PLACEHOLDERS:
            shown = "{" + field + "}"
            raise ValueError(
                f"unknown placeholder {shown}; known: "
                + ", ".join("{" + name + "}" for name in PLACEHOLDERS)
                + " (write {{ and }} for literal braces, $NAME for environment variables)"
            )
        if spec or conversion:
            raise ValueError(f"placeholder {{{field}}} takes no conversion or format")
        fields.append(field)
    return fields


class JobSection(BaseModel):
    """The ``[job]`` table."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    name: str
    inputs: list[str] = Field(min_length=1)
    inputs_per_task: int = Field(default=1, ge=1, le=10_000)
    app: list[str] = []
    setup: list[str] = []
    command: str = Field(min_length=1)
    outputs: list[str] = []
    retries: int = Field(default=0, ge=0, le=100)
    timeout: OptionalDuration = None
    budget: Duration = DEFAULT_BUDGET_S
    env: dict[str, str] = {}

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if not _JOB_NAME.fullmatch(name):
            raise ValueError(
                f"'{name}' must start with a letter or digit and hold only letters, digits,"
                " '-' and '_' (at most 40 characters)"
            )
        return name

    @field_validator("command")
    @classmethod
    def _check_command(cls, command: str, info: ValidationInfo) -> str:
        per_task = info.data.get("inputs_per_task", 1)
        for field in command_fields(command):
            if per_task > 1 and field in ONE_INPUT_PLACEHOLDERS:
                raise ValueError(
                    f"{{{field}}} names a task's one input; with inputs_per_task ="
                    f" {per_task}, use {{inputs}}"
                )
        return command

    @field_validator("inputs", "app", "outputs")
    @classmethod
    def _check_patterns(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            if not pattern.strip():
                raise ValueError("holds an empty pattern")
        return patterns

    @field_validator("env")
    @classmethod
    def _check_env(cls, env: dict[str, str]) -> dict[str, str]:
        for name in env:
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"'{name}' is not a valid environment variable name")
            if name.startswith(RESERVED_ENV_PREFIXES):
                raise ValueError(f"'{name}' is set by fanout itself and cannot be overridden")
        return env


class StorageSection(BaseModel):
    """The ``[storage]`` table."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    url: str | None = None
    expiry_margin: Duration = DEFAULT_EXPIRY_MARGIN_S


class JobFile(BaseModel):
    """A whole job file."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    job: JobSection
    storage: StorageSection = StorageSection()
    backends: dict[str, dict[str, Any]] = {}


@dataclass(frozen=True)
class Job:
    """A validated job file and where it lives (paths in it are relative to ``directory``)."""

    path: Path
    spec: JobFile

    @property
    def directory(self) -> Path:
        return self.path.parent

    @property
    def name(self) -> str:
        return self.spec.job.name


def load_job(path: Path) -> Job:
    """Read and validate the job file at ``path``."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise JobFileError(f"{path}: no such job file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise JobFileError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise JobFileError(f"{path}: {_toml_message(exc)}") from None
    # Absolute, not resolved: a job file reached through a link keeps the link's folder.
    return Job(path=Path(os.path.abspath(path)), spec=validate_job(raw, source=str(path)))


def validate_job(raw: dict[str, Any], source: str) -> JobFile:
    """Validate a parsed job file; errors name ``source`` and the field at fault."""
    try:
        return JobFile.model_validate(raw)
    except ValidationError as exc:
        raise JobFileError(format_validation_error(exc, source)) from None


def format_validation_error(exc: ValidationError, source: str, within: tuple[str, ...] = ()) -> str:
    """One line for the first error in ``exc``, e.g. ``job.toml: [job] retries: must be >= 0``.

    The first error alone is shown: fixing it often fixes the rest, and a one-line error is
    what a terminal user reads. ``within`` locates the validated model inside the job file,
    such as ``("backends", "local")``.
    """
    error = exc.errors()[0]
    where = describe_location((*within, *error["loc"]))
    more = len(exc.errors()) - 1
    suffix = f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
    return f"{source}: {where}: {_error_message(error)}{suffix}"


def describe_location(loc: tuple[int | str, ...]) -> str:
    """``("job", "env", "X")`` as ``[job] env.X``; ``("backends", "local", "slots")`` as
    ``[backends.local] slots``."""
    parts = [str(part) for part in loc]
    if not parts:
        return "job file"
    if parts[0] == "backends" and len(parts) >= 2:
        table, rest = f"backends.{parts[1]}", parts[2:]
    else:
        table, rest = parts[0], parts[1:]
    if not rest:
        return f"[{table}]"
    field = rest[0] + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in rest[1:])
    return f"[{table}] {field}"


def _error_message(error: Any) -> str:
    kind = error["type"]
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known setting"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


def _toml_message(exc: tomllib.TOMLDecodeError) -> str:
    """TOML errors end with ``(at line L, column C)``; lead with the line instead."""
    text = str(exc)
    match = re.search(r"\(at line (\d+), column (\d+)\)$", text)
    if not match:
        return f"invalid TOML: {text}"
    reason = text[: match.start()].rstrip()
    return f"line {match.group(1)}, column {match.group(2)}: invalid TOML: {reason}"
