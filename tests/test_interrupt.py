"""Ctrl-C stops a run cleanly, and ``--resume`` finishes it without redoing finished work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import load_record, process_alive, run_fanout, wait_until, write_inputs, write_job


def started_tasks(counter: Path) -> list[str]:
    return counter.read_text().split() if counter.exists() else []


def test_ctrl_c_then_resume(job_dir: Path) -> None:
    write_inputs(job_dir, {f"t{n}.txt": f"input {n}" for n in range(1, 6)})
    counter, release, pids = job_dir / "started", job_dir / "release", job_dir / "pids"
    pids.mkdir()
    # t1 and t2 finish at once; the others wait for the release file (or for 5 minutes).
    command = (
        'echo {task_id} >> "$COUNTER"; echo $$ > "$PIDS/{task_id}";'
        ' case {task_id} in t1|t2) ;; *) i=0; while [ ! -e "$RELEASE" ] && [ $i -lt 3000 ];'
        " do sleep 0.1; i=$((i+1)); done;; esac; cp {input} {input_stem}.out"
    )
    write_job(
        job_dir,
        {
            "job": {
                "name": "resumable",
                "inputs": ["*.txt"],
                "command": command,
                "outputs": ["*.out"],
                "env": {"COUNTER": str(counter), "RELEASE": str(release), "PIDS": str(pids)},
            },
            "backends.local": {"slots": 2},
        },
    )
    run = subprocess.Popen(
        [sys.executable, "-m", "fanout", "run", "job.toml", "--out", "out"],
        cwd=job_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(lambda: len(started_tasks(counter)) == 4)  # t1, t2 done; t3, t4 running
    run.send_signal(signal.SIGINT)
    stdout, stderr = run.communicate(timeout=30)
    assert run.returncode == 130, stderr + stdout
    assert "Traceback" not in stderr + stdout
    record = load_record(job_dir / "out")
    hint = f"resume it with: fanout run {job_dir / 'job.toml'} --resume {record['run_id']}"
    assert hint in stdout  # the defaults: no backend or storage to repeat
    assert record["status"] == "interrupted"
    states = {task["id"]: task["state"] for task in record["tasks"]}
    assert states == {
        "t1": "succeeded",
        "t2": "succeeded",
        "t3": "pending",
        "t4": "pending",
        "t5": "pending",
    }
    for task in ("t3", "t4"):  # the running tasks were stopped, not left behind
        assert not process_alive(int((pids / task).read_text()))

    # A succeeded task whose output was tampered with runs again; the other does not.
    (job_dir / "out" / "t2" / "t2.out").write_text("tampered")
    release.touch()
    resumed = run_fanout("run", "job.toml", "--resume", cwd=job_dir)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout

    runs = started_tasks(counter)
    assert runs.count("t1") == 1
    assert runs.count("t2") == 2
    assert sorted(set(runs)) == ["t1", "t2", "t3", "t4", "t5"]
    final = load_record(job_dir / "out")
    assert final["run_id"] == record["run_id"]
    first_job = f"resumable-{record['run_id']}"
    assert record["job_ids"] == [first_job]
    assert final["job_ids"] == [first_job, f"{first_job}-1"]  # each attempt, its own job
    assert final["status"] == "finished"
    assert all(task["state"] == "succeeded" for task in final["tasks"])
    for n in range(1, 6):
        assert (job_dir / "out" / f"t{n}" / f"t{n}.out").read_text() == f"input {n}"

    again = run_fanout("run", "job.toml", "--resume", cwd=job_dir)
    assert again.returncode == 2
    assert "no unfinished run" in again.stderr


def test_resume_refuses_a_changed_job(job_dir: Path) -> None:
    write_inputs(job_dir, {"a.txt": "a"})
    tables = {"job": {"name": "changed", "inputs": ["*.txt"], "command": "exit 1"}}
    write_job(job_dir, tables)
    assert run_fanout("run", "job.toml", "--out", "out", cwd=job_dir).returncode == 1
    ledger = next((job_dir / ".fanout").rglob("ledger.json"))
    ledger.write_text(json.dumps({**json.loads(ledger.read_text()), "status": "interrupted"}))
    tables["job"]["command"] = "true"
    write_job(job_dir, tables)
    result = run_fanout("run", "job.toml", "--resume", cwd=job_dir)
    assert result.returncode == 2
    assert "changed" in result.stderr
    assert os.path.exists(job_dir / "out" / "fanout-run.json")


def test_sigterm_stops_the_run_like_ctrl_c(job_dir: Path) -> None:
    write_inputs(job_dir, {"slow.txt": "s"})
    pid_file = job_dir / "task.pid"
    write_job(
        job_dir,
        {
            "job": {
                "name": "term",
                "inputs": ["*.txt"],
                "command": f"echo $$ > {pid_file}; sleep 300",
            }
        },
    )
    run = subprocess.Popen(
        [sys.executable, "-m", "fanout", "run", "job.toml", "--out", "out"],
        cwd=job_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(pid_file.exists)
    run.terminate()
    stdout, stderr = run.communicate(timeout=30)
    assert run.returncode == 143, stderr + stdout
    assert "Traceback" not in stderr + stdout
    assert load_record(job_dir / "out")["status"] == "interrupted"
    wait_until(lambda: pid_file.read_text().strip() != "")
    assert not process_alive(int(pid_file.read_text()))
