"""The plan of a run: which files go where and which task runs which command.

Planning touches nothing: it reads the job file's globs against the local disk and renders each
task's command line, so ``fanout run --dry-run`` and a real run see exactly the same plan.
"""

from __future__ import annotations

import os
import shlex
import string
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from wcmatch import glob

from fanout.errors import JobFileError
from fanout.spec import Job
from fanout.taskids import derive_task_ids

GLOB_FLAGS = glob.GLOBSTAR | glob.GLOBTILDE
"""``**`` for any depth, ``~`` for the home directory; ``*`` skips hidden files, as in a shell."""


@dataclass(frozen=True, slots=True)
class PlannedTask:
    """One task: its input files (one, unless ``[job] inputs_per_task`` says more) and the
    command that processes them."""

    id: str
    inputs: tuple[Path, ...]
    command: str

    @property
    def input(self) -> Path:
        """The task's first (or only) input."""
        return self.inputs[0]


@dataclass(frozen=True)
class Plan:
    """What a run will do, before anything is created."""

    job: Job
    tasks: tuple[PlannedTask, ...]
    app_files: tuple[Path, ...]


def make_plan(job: Job) -> Plan:
    """Resolve the job's globs and render one command line per input."""
    section = job.spec.job
    inputs = resolve_files(job, section.inputs, "inputs")
    app_files = resolve_files(job, section.app, "app")
    _refuse_duplicate_names(job, app_files, "app")

    per_task = section.inputs_per_task
    groups = [tuple(inputs[start : start + per_task]) for start in range(0, len(inputs), per_task)]
    for group in groups:
        _refuse_duplicate_names(job, list(group), "inputs")
    ids = derive_task_ids((_group_name(group), _group_key(job, group)) for group in groups)
    tasks = tuple(
        PlannedTask(
            id=task_id, inputs=group, command=render_command(section.command, task_id, group)
        )
        for task_id, group in zip(ids, groups, strict=True)
    )
    return Plan(job=job, tasks=tasks, app_files=tuple(app_files))


def render_command(template: str, task_id: str, inputs: tuple[Path, ...]) -> str:
    """``template`` with each placeholder replaced by its shell-quoted value: ``{inputs}``
    by every input's name, each quoted, separated by spaces."""
    first = inputs[0]
    values = {
        "input": shlex.quote(first.name),
        "input_name": shlex.quote(first.name),
        "input_stem": shlex.quote(first.stem),
        "inputs": " ".join(shlex.quote(path.name) for path in inputs),
        "task_id": shlex.quote(task_id),
    }
    pieces: list[str] = []
    for literal, field, _, _ in string.Formatter().parse(template):
        pieces.append(literal)
        if field is not None:
            pieces.append(values[field])
    return "".join(pieces)


def _group_name(group: tuple[Path, ...]) -> str:
    """What a task's id says of its inputs: the stem of its only input, else the stems of its
    first and last ones, in sorted order like every input (``ash_to_birch``)."""
    stems = [path.stem or path.name for path in group]
    return stems[0] if len(stems) == 1 else f"{stems[0]}_to_{stems[-1]}"


def _group_key(job: Job, group: tuple[Path, ...]) -> str:
    return "\n".join(_stable_key(job, path) for path in group)


def resolve_files(job: Job, patterns: list[str], field: str) -> list[Path]:
    """Every file the globs in ``[job] field`` match, sorted, each once.

    Patterns are relative to the job file's directory unless absolute; ``**`` matches any depth
    but does not descend into symbolic links to directories, as ``find`` does not: a link to an
    ancestor would otherwise repeat the tree beneath it until paths grow too long. A link named
    in the pattern itself, or matched by ``*``, is followed. A pattern that matches no file is
    an error (it is almost always a typo), and so is a file name with a control character.
    """
    found: set[Path] = set()
    for pattern in patterns:
        matches = [
            path
            for match in glob.glob(pattern, flags=GLOB_FLAGS, root_dir=job.directory)
            if (path := job.directory / match).is_file()
        ]
        if not matches:
            raise JobFileError(f"{job.path}: [job] {field}: '{pattern}' matches no file")
        # Absolute but not resolved: a symbolic link keeps its own name.
        found.update(Path(os.path.abspath(path)) for path in matches)
    files = sorted(found)
    for path in files:
        _refuse_control_characters(job, path, field)
    return files


def _stable_key(job: Job, path: Path) -> str:
    """What identifies an input across runs: its path relative to the job file, if it is
    beneath it, so that moving the whole job folder keeps its task ids."""
    return str(path.relative_to(job.directory)) if path.is_relative_to(job.directory) else str(path)


def _refuse_control_characters(job: Job, path: Path, field: str) -> None:
    """A file's name travels to storage (as a blob name) and to nodes (as a file name there);
    Azure Blob Storage refuses control characters in blob names, and a line break in a name
    would split every line that shows it. Refused on every backend, so that a job file that
    runs on one runs on all."""
    for char in path.name:
        if unicodedata.category(char) == "Cc":
            raise JobFileError(
                f"{job.path}: [job] {field}: {str(path)!r}: a file name may not hold a control"
                f" character (here U+{ord(char):04X}), which Azure Blob Storage refuses;"
                " rename the file"
            )


def _refuse_duplicate_names(job: Job, files: list[Path], field: str) -> None:
    seen: dict[str, Path] = {}
    for path in files:
        if path.name in seen:
            raise JobFileError(
                f"{job.path}: [job] {field}: {seen[path.name]} and {path} would both land as"
                f" '{path.name}'"
            )
        seen[path.name] = path
