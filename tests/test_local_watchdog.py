"""No task outlives the fanout process that started it, even one killed with ``kill -9``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import load_record, process_alive, run_fanout, wait_until, write_inputs, write_job

TASKS = ("t1", "t2", "t3", "t4")


def watchdogs_in(directory: Path) -> list[int]:
    """The pids of local-backend watchdogs running with ``directory`` as their working
    directory (a watchdog starts in the directory of the fanout process that started it)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or not process_alive(int(entry)):
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if b"fanout.backends.watchdog" in cmdline and Path(cwd) == directory:
            found.append(int(entry))
    return found


def ignored_signals(pid: int) -> set[signal.Signals]:
    """The signals process ``pid`` ignores, from the ``SigIgn`` mask in its status."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    mask = int(next(line for line in status if line.startswith("SigIgn:")).split()[1], 16)
    return {signum for signum in signal.Signals if mask & (1 << (signum - 1))}


def test_kill_9_ends_the_tasks_and_resume_runs_each_once(job_dir: Path) -> None:
    write_inputs(job_dir, {f"{task}.txt": f"input {task}" for task in TASKS})
    counter, release, pids = job_dir / "started", job_dir / "release", job_dir / "pids"
    pids.mkdir()
    # Each task notes its start, then its shell's pid and a background child's, and waits for
    # the release file (or for 5 minutes).
    command = (
        'echo {task_id} >> "$COUNTER"; sleep 300 & echo $! > "$PIDS/{task_id}.child";'
        ' echo $$ > "$PIDS/{task_id}"; i=0; while [ ! -e "$RELEASE" ] && [ $i -lt 3000 ];'
        " do sleep 0.1; i=$((i+1)); done; kill $!; cp {input} {input_stem}.out"
    )
    write_job(
        job_dir,
        {
            "job": {
                "name": "survivor",
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
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def written() -> list[int]:
        return [int(text) for path in pids.iterdir() if (text := path.read_text().strip())]

    wait_until(lambda: len(written()) == 4)  # two tasks run, each with a child
    started = written()
    assert all(process_alive(pid) for pid in started)
    assert watchdogs_in(job_dir)

    run.kill()
    run.wait(timeout=30)
    wait_until(lambda: not any(process_alive(pid) for pid in started), timeout=15)
    wait_until(lambda: not watchdogs_in(job_dir), timeout=15)  # its work done, it is gone

    counter.write_text("")
    release.touch()
    resumed = run_fanout("run", "job.toml", "--resume", cwd=job_dir)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert sorted(counter.read_text().split()) == list(TASKS)  # each once, after the resume
    record = load_record(job_dir / "out")
    assert record["status"] == "finished"
    assert all(task["state"] == "succeeded" for task in record["tasks"])
    for task in TASKS:
        assert (job_dir / "out" / task / f"{task}.out").read_text() == f"input {task}"
    assert not watchdogs_in(job_dir)  # a run that ends stops its watchdog


def test_a_watchdog_ended_by_someone_is_reported_and_the_run_goes_on(job_dir: Path) -> None:
    write_inputs(job_dir, {"a.txt": "a"})
    release = job_dir / "release"
    write_job(
        job_dir,
        {
            "job": {
                "name": "unguarded",
                "inputs": ["*.txt"],
                "command": f"while [ ! -e {release} ]; do sleep 0.1; done; cp {{input}} a.out",
                "outputs": ["*.out"],
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
    wait_until(lambda: bool(watchdogs_in(job_dir)))
    (watchdog,) = watchdogs_in(job_dir)
    deaf = {signal.SIGINT, signal.SIGTERM}
    wait_until(lambda: deaf <= ignored_signals(watchdog))  # once it has started
    for signum in deaf:
        os.kill(watchdog, signum)
    time.sleep(0.5)
    assert watchdogs_in(job_dir) == [watchdog]
    os.kill(watchdog, signal.SIGKILL)
    release.touch()
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 0, stderr + stdout
    assert "the watchdog had stopped early (exit status -9)" in stderr
    assert (job_dir / "out" / "a" / "a.out").read_text() == "a"
