"""Whatever goes wrong with an attempt is that task's failure: a slot never dies with a task
unreported, and the next task runs."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

from conftest import load_record, run_fanout, write_inputs, write_job


def test_a_command_the_system_refuses_to_start_fails_its_task(job_dir: Path) -> None:
    # With a 1 MiB stack limit, Linux takes at most 256 KiB of arguments and environment
    # (a quarter of it): 300 KB of environment is too much, yet every string fits.
    write_inputs(job_dir, {"a.txt": "a", "b.txt": "b"})
    big = {f"BIG{n}": "x" * 100_000 for n in range(3)}
    write_job(
        job_dir, {"job": {"name": "e2big", "inputs": ["*.txt"], "command": "true", "env": big}}
    )

    def small_stack() -> None:
        hard = resource.getrlimit(resource.RLIMIT_STACK)[1]
        soft = 1 << 20 if hard == resource.RLIM_INFINITY else min(1 << 20, hard)
        resource.setrlimit(resource.RLIMIT_STACK, (soft, hard))

    result = subprocess.run(
        [sys.executable, "-m", "fanout", "run", "job.toml", "--out", "out"],
        cwd=job_dir,
        env=dict(os.environ),
        preexec_fn=small_stack,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    tasks = load_record(job_dir / "out")["tasks"]
    assert [task["state"] for task in tasks] == ["failed", "failed"]  # one slot, both reported
    for task in tasks:
        assert task["error"].startswith(
            "cannot start its command: [Errno 7] Argument list too long"
        )


def test_a_working_directory_that_cannot_be_made_fails_its_task_only(job_dir: Path) -> None:
    write_inputs(job_dir, {"a.txt": "a", "b.txt": "b", "c.txt": "c"})
    # Task a puts a file where task b's directory goes; b cannot start, c runs.
    jobs_dir = "$AZ_BATCH_NODE_ROOT_DIR/workitems/$AZ_BATCH_JOB_ID/job-1"
    spoil = f'case {{task_id}} in a) touch "{jobs_dir}/b";; esac'
    write_job(
        job_dir,
        {
            "job": {
                "name": "spoilt",
                "inputs": ["*.txt"],
                "command": spoil + "; cp {input} {input_stem}.out",
                "outputs": ["*.out"],
            },
            "backends.local": {"slots": 1},
        },
    )
    result = run_fanout("run", "job.toml", "--out", "out", cwd=job_dir)
    assert result.returncode == 1, result.stderr + result.stdout
    tasks = {task["id"]: task for task in load_record(job_dir / "out")["tasks"]}
    assert tasks["a"]["state"] == tasks["c"]["state"] == "succeeded"
    assert tasks["b"]["state"] == "failed"
    assert tasks["b"]["error"].startswith("cannot prepare its working directory: [Errno 17]")
    assert (job_dir / "out" / "c" / "c.out").read_text() == "c"
