"""Everything decided before a run creates anything: plan, backend, settings, storage, ledger.

``prepare`` reads the job file, applies command-line overrides, picks the backend and checks
that it can do what the job asks. ``fanout run --dry-run`` stops after it; a real run goes on
with ``fanout.scheduler``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy
from pydantic import BaseModel, ValidationError

from fanout.backend import Backend, Capability
from fanout.errors import BackendError, FanoutError, JobFileError
from fanout.plan import Plan, make_plan
from fanout.plugins import backends, get_backend, signer_for
from fanout.signing import Signer
from fanout.spec import Job, JobSection, format_validation_error, validate_job
from fanout.storage import default_storage_url, normalize_url

DEFAULT_OUT = Path("fanout-out")


DEFAULT_BACKEND = "local"


@dataclass(frozen=True)
class RunOptions:
    """What the command line says about a run; ``None`` leaves the job file's choice."""

    backend: str = DEFAULT_BACKEND
    storage: str | None = None
    out: Path | None = None
    slots: int | None = None
    retries: int | None = None
    timeout: float | None = None
    resume: str | None = None
    """A run id to resume, or "" for the latest unfinished run of the job."""
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


@dataclass(frozen=True)
class Prepared:
    """A run that is ready to start."""

    job: Job
    plan: Plan
    backend_cls: type[Backend]
    settings: BaseModel
    storage_url: str
    signer_cls: type[Signer]
    options: RunOptions
    warnings: tuple[str, ...] = ()


def prepare(job: Job, options: RunOptions, manager: pluggy.PluginManager | None = None) -> Prepared:
    """Validate everything the run needs and plan it, touching nothing."""
    job = apply_overrides(job, options)
    available = backends(manager)
    backend_cls = get_backend(options.backend, available=available)
    settings = backend_settings(backend_cls, job, options)
    check_capabilities(backend_cls, job.spec.job)
    unknown = sorted(set(job.spec.backends) - set(available))
    url = storage_url(job, options)
    plan = make_plan(job)
    check_command_lengths(backend_cls, job, plan)
    signer_cls = signer_for(url, manager)
    check_storage(backend_cls, url, signer_cls)
    return Prepared(
        warnings=tuple(
            f"{job.path}: [backends.{name}] names no installed backend" for name in unknown
        ),
        job=job,
        plan=plan,
        backend_cls=backend_cls,
        settings=settings,
        storage_url=url,
        signer_cls=signer_cls,
        options=options,
    )


def apply_overrides(job: Job, options: RunOptions) -> Job:
    """The job with ``--retries`` and ``--timeout`` in place of its own values."""
    updates: dict[str, Any] = {}
    if options.retries is not None:
        updates["retries"] = options.retries
    if options.timeout is not None:
        updates["timeout"] = options.timeout
    if not updates:
        return job
    raw = job.spec.model_dump()
    raw["job"].update(updates)
    return Job(path=job.path, spec=validate_job(raw, source=str(job.path)))


def backend_settings(backend_cls: type[Backend], job: Job | None, options: RunOptions) -> BaseModel:
    """The backend's settings: the job file's table (if there is a job file), then the
    environment, then ``--slots``.

    A field ``slots`` of backend ``local`` is read from ``FANOUT_LOCAL_SLOTS``.
    """
    name = backend_cls.name
    model = backend_cls.settings_model
    values: dict[str, Any] = dict(job.spec.backends.get(name, {})) if job is not None else {}
    sources: dict[str, str] = {}  # where a value that is not from the job file came from
    prefix = "FANOUT_" + name.upper().replace("-", "_") + "_"
    for field_name in model.model_fields:
        variable = prefix + field_name.upper()
        if variable in options.environ:
            values[field_name] = options.environ[variable]
            sources[field_name] = f"environment variable {variable}"
    if options.slots is not None:
        if "slots" not in model.model_fields:
            raise FanoutError(f"backend '{name}' has no 'slots' setting; drop --slots")
        values["slots"] = options.slots
        sources["slots"] = "--slots"
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        field_name = str(exc.errors()[0]["loc"][0]) if exc.errors()[0]["loc"] else ""
        if field_name in sources:
            source = sources[field_name]
            raise FanoutError(f"{source}: {exc.errors()[0]['msg']}") from None
        source = str(job.path) if job is not None else "the environment"
        raise JobFileError(format_validation_error(exc, source, ("backends", name))) from None


def check_capabilities(backend_cls: type[Backend], section: JobSection) -> None:
    """Refuse, before anything starts, a job the backend cannot run as written."""
    needs = {
        Capability.SETUP: ("setup commands ([job] setup)", bool(section.setup)),
        Capability.RETRIES: ("retries ([job] retries)", section.retries > 0),
        Capability.TIMEOUT: ("timeouts ([job] timeout)", section.timeout is not None),
    }
    for capability, (what, needed) in needs.items():
        if needed and capability not in backend_cls.capabilities:
            raise FanoutError(f"backend '{backend_cls.name}' cannot run {what}")


def check_storage(backend_cls: type[Backend], url: str, signer_cls: type[Signer]) -> None:
    """Refuse, before anything is staged or created, a storage the backend's nodes cannot use."""
    problem = backend_cls.unusable_storage(url, signer_cls)
    if problem is not None:
        raise BackendError(f"backend '{backend_cls.name}' cannot use storage {url}: {problem}")


def check_command_lengths(backend_cls: type[Backend], job: Job, plan: Plan) -> None:
    """Refuse, before anything starts, a task whose command line is longer than the backend
    can run (``Backend.max_command_length``); the first such task names the problem."""
    limit = backend_cls.max_command_length
    if limit is None:
        return
    for task in plan.tasks:
        length = backend_cls.command_length(task.id, task.command)
        if length > limit:
            raise JobFileError(
                f"{job.path}: [job] command: the command line of task {task.id} takes"
                f" {length:,} bytes, more than the {limit:,} backend '{backend_cls.name}'"
                " can run"
            )


def storage_url(job: Job, options: RunOptions) -> str:
    """``--storage`` (relative to the current directory), the job file's ``[storage] url``
    (relative to the job file), or ``.fanout/`` beside the job file."""
    if options.storage:
        return normalize_url(options.storage, Path.cwd())
    if job.spec.storage.url:
        return normalize_url(job.spec.storage.url, job.directory)
    return default_storage_url(job.directory)
