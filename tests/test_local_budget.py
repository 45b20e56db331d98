"""The local backend keeps to the run's budget: nothing it starts outlives ``[job] budget``."""

from __future__ import annotations

from pathlib import Path

from conftest import load_record, process_alive, run_fanout, write_inputs, write_job


def test_when_the_budget_runs_out_tasks_stop_and_the_rest_do_not_run(job_dir: Path) -> None:
    write_inputs(job_dir, {f"t{n}.txt": str(n) for n in range(1, 4)})
    pids = job_dir / "pids"
    pids.mkdir()
    write_job(
        job_dir,
        {
            "job": {
                "name": "budget",
                "inputs": ["*.txt"],
                # t1 runs past the budget, with a child; the others would finish at once.
                "command": (
                    "case {task_id} in t1) sleep 300 & echo $! > $PIDS/child;"
                    " echo $$ > $PIDS/shell; wait;; esac; cp {input} {input_stem}.out"
                ),
                "outputs": ["*.out"],
                "retries": 2,
                "timeout": "1h",  # capped by the time the budget leaves
                "budget": "5s",
                "env": {"PIDS": str(pids)},
            },
            "backends.local": {"slots": 1},
        },
    )
    result = run_fanout("run", "job.toml", "--out", "out", cwd=job_dir)
    assert result.returncode == 1, result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    record = load_record(job_dir / "out")
    assert record["status"] == "finished"
    tasks = {task["id"]: task for task in record["tasks"]}
    assert tasks["t1"]["state"] == "failed"
    assert tasks["t1"]["error"] == "the run's budget of 5s ran out"
    assert tasks["t1"]["attempts"] == 1  # no retry once the budget has run out
    for task in ("t2", "t3"):
        assert tasks[task]["state"] == "failed"
        assert tasks[task]["error"] == "not run: the run's budget of 5s ran out"
        assert not (job_dir / "out" / task).exists()
        assert result.stdout.count(f"task {task} failed") == 1  # reported once
    for name in ("shell", "child"):
        assert not process_alive(int((pids / name).read_text()))


def test_the_budget_also_bounds_the_setup(job_dir: Path) -> None:
    write_inputs(job_dir, {"a.txt": "a"})
    pid_file = job_dir / "setup.pid"
    write_job(
        job_dir,
        {
            "job": {
                "name": "slowsetup",
                "inputs": ["*.txt"],
                "setup": [f"echo $$ > {pid_file}", "sleep 300"],
                "command": "true",
                "budget": "2s",
            }
        },
    )
    result = run_fanout("run", "job.toml", "--out", "out", cwd=job_dir)
    assert result.returncode == 1, result.stderr + result.stdout
    (task,) = load_record(job_dir / "out")["tasks"]
    assert task["state"] == "failed"
    assert task["error"] == (
        "not run: setup failed on node local-0: the run's budget of 2s ran out"
    )
    assert not process_alive(int(pid_file.read_text()))


def test_a_budget_of_weeks_is_waited_out_like_any_other(job_dir: Path) -> None:
    write_inputs(job_dir, {"a.txt": "a"})
    write_job(
        job_dir,
        {
            "job": {
                "name": "weeks",
                "inputs": ["*.txt"],
                "command": "sleep 0.2; cp {input} a.out",
                "outputs": ["*.out"],
                "budget": "60d",  # longer than one poll() may wait
            }
        },
    )
    result = run_fanout("run", "job.toml", "--out", "out", cwd=job_dir)
    assert result.returncode == 0, result.stderr + result.stdout
    assert (job_dir / "out" / "a" / "a.out").read_text() == "a"
