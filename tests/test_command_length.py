"""A command line longer than the backend can run is refused before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from batch_emulator import Running
from batch_runs import Received, nothing_left, on_batch
from conftest import load_record, run_fanout, write_inputs, write_job
from fanout_azure.batch_tasks import MAX_COMMAND_LINE, command_line_length

LOCAL_LIMIT = 128 * 1024 - 1  # one argument of /bin/sh -c: Linux's MAX_ARG_STRLEN, less its NUL


def long_command(length: int) -> str:
    """A command of ``length`` bytes that succeeds: ``:`` with one long word, the task's id
    rendered into it."""
    head = ": {task_id}"
    return head + "x" * (length - len(": a"))


@pytest.mark.parametrize(("length", "dry_run"), [(LOCAL_LIMIT + 1, False), (200_000, True)])
def test_a_command_too_long_for_local_is_refused_with_nothing_created(
    job_dir: Path, length: int, dry_run: bool
) -> None:
    write_inputs(job_dir, {"a.txt": "a", "b.txt": "b"})
    command = long_command(length)
    write_job(job_dir, {"job": {"name": "long", "inputs": ["*.txt"], "command": command}})
    options = ["--dry-run"] if dry_run else []
    result = run_fanout("run", "job.toml", "--out", "out", *options, cwd=job_dir)
    assert result.returncode == 2, result.stderr + result.stdout
    assert result.stderr.splitlines() == [
        f"fanout: error: {job_dir / 'job.toml'}: [job] command: the command line of task a"
        f" takes {length:,} bytes, more than the {LOCAL_LIMIT:,} backend 'local' can run"
    ]
    assert sorted(path.name for path in job_dir.iterdir()) == ["a.txt", "b.txt", "job.toml"]


def test_a_command_at_the_local_limit_runs(job_dir: Path) -> None:
    write_inputs(job_dir, {"a.txt": "a"})
    suffix = "; echo ran > ran.out"
    command = long_command(LOCAL_LIMIT - len(suffix)) + suffix
    write_job(
        job_dir,
        {"job": {"name": "longest", "inputs": ["*.txt"], "command": command, "outputs": ["*.out"]}},
    )
    result = run_fanout("run", "job.toml", "--out", "out", cwd=job_dir)
    assert result.returncode == 0, result.stderr + result.stdout[-2000:]
    (task,) = load_record(job_dir / "out")["tasks"]
    assert len(task["command"].encode()) == LOCAL_LIMIT
    assert (job_dir / "out" / "a" / "ran.out").read_text() == "ran\n"


def test_azure_batch_counts_its_wrapping_and_the_quotes(job_dir: Path) -> None:
    """A single quote takes five characters in the ``/bin/sh -c '…'`` the service receives."""
    write_inputs(job_dir, {"a.txt": "a"})
    quotes = "echo " + "\\'" * 1700  # 3,405 bytes as written, over 8,500 once quoted
    write_job(job_dir, {"job": {"name": "quotes", "inputs": ["*.txt"], "command": quotes}})
    result = run_fanout("run", "job.toml", "--backend", "azure-batch", "--dry-run", cwd=job_dir)
    assert result.returncode == 2, result.stderr + result.stdout
    length = command_line_length("a", quotes)
    assert length > MAX_COMMAND_LINE
    assert result.stderr.splitlines() == [
        f"fanout: error: {job_dir / 'job.toml'}: [job] command: the command line of task a"
        f" takes {length:,} bytes, more than the {MAX_COMMAND_LINE:,} backend 'azure-batch'"
        " can run"
    ]


@pytest.mark.azurite
def test_a_command_at_the_azure_batch_limit_runs_and_fits(
    batch: Running,
    received: Received,
    batch_env: dict[str, str],
    azure_container: str,
    job_dir: Path,
) -> None:
    write_inputs(job_dir, {"a.txt": "a"})
    suffix = "; cp {input} {input_stem}.out"
    padding = MAX_COMMAND_LINE - command_line_length("a", long_command(3) + suffix)
    command = long_command(3 + padding) + suffix
    assert command_line_length("a", command) == MAX_COMMAND_LINE
    job = write_job(
        job_dir,
        {"job": {"name": "longest", "inputs": ["*.txt"], "command": command, "outputs": ["*.out"]}},
    )
    result = on_batch(job, azure_container, batch_env, "--out", job_dir / "out")
    assert result.returncode == 0, result.stderr + result.stdout
    (sent,) = [
        task for body in received.bodies("Tasks_CreateTaskCollection") for task in body["value"]
    ]
    assert len(sent["commandLine"].encode()) <= MAX_COMMAND_LINE
    assert (job_dir / "out" / "a" / "a.out").read_text() == "a"
    assert nothing_left(batch)
