"""A task ended by a signal says which, where that is known: when the process the backend
started is the one the signal ended. A shell reports a child ended by signal N as exit code
128 + N, which a program may also exit with: that stays an exit code."""

from __future__ import annotations

from pathlib import Path

import pytest
from batch_emulator import Running
from batch_runs import on_batch
from conftest import load_record, run_fanout, write_inputs, write_job

COMMAND = (
    "case {task_id} in"
    " shell) kill -KILL $$;;"  # the shell fanout started
    " child) sh -c 'kill -TERM $$';;"  # a child of it: the shell exits 143
    " exits) exit 137;;"
    " esac"
)
INPUTS = {"shell.txt": "", "child.txt": "", "exits.txt": ""}


def test_local_names_the_signal(job_dir: Path) -> None:
    write_inputs(job_dir, INPUTS)
    write_job(job_dir, {"job": {"name": "signals", "inputs": ["*.txt"], "command": COMMAND}})
    result = run_fanout("run", "job.toml", "--out", "out", cwd=job_dir)
    assert result.returncode == 1, result.stderr + result.stdout
    tasks = {task["id"]: task for task in load_record(job_dir / "out")["tasks"]}
    assert (tasks["shell"]["exit_code"], tasks["shell"]["error"]) == (-9, "killed by SIGKILL")
    assert (tasks["child"]["exit_code"], tasks["child"]["error"]) == (143, "exit code 143")
    assert (tasks["exits"]["exit_code"], tasks["exits"]["error"]) == (137, "exit code 137")
    assert "killed by SIGKILL" in result.stdout  # in the summary


@pytest.mark.azurite
def test_azure_batch_names_the_signal(
    batch: Running, batch_env: dict[str, str], azure_container: str, job_dir: Path
) -> None:
    write_inputs(job_dir, INPUTS)
    job = write_job(job_dir, {"job": {"name": "signals", "inputs": ["*.txt"], "command": COMMAND}})
    result = on_batch(job, azure_container, batch_env, "--out", job_dir / "out")
    assert result.returncode == 1, result.stderr + result.stdout
    tasks = {task["id"]: task for task in load_record(job_dir / "out")["tasks"]}
    failure = "usererror error FailureExitCode: "
    assert tasks["shell"]["exit_code"] == -9
    assert tasks["shell"]["error"].startswith("killed by SIGKILL; " + failure)
    for task, code in (("child", 143), ("exits", 137)):
        assert tasks[task]["exit_code"] == code
        assert tasks[task]["error"].startswith(failure)
