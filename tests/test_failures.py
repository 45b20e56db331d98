"""The failures real runs meet, on the local backend: nothing lost, nothing done twice.

Each test does what a user would (``kill -9``, a changed input, two runs at once, a full
``--out``) and checks what the user sees: exit status, the one line, the files in ``--out``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import load_record, run_fanout, wait_until, write_inputs, write_job

WAITING = (
    'echo {task_id} >> "$COUNTER";'
    ' case {task_id} in w*) i=0; while [ ! -e "$RELEASE" ] && [ $i -lt 3000 ];'
    " do sleep 0.1; i=$((i+1)); done;; esac; cp {input} {input_stem}.out"
)
"""Notes each start in $COUNTER; tasks whose id starts with ``w`` wait for $RELEASE."""


def counting_job(job_dir: Path, name: str, inputs: dict[str, str], **job: object) -> Path:
    write_inputs(job_dir, inputs)
    env = {"COUNTER": str(job_dir / "started"), "RELEASE": str(job_dir / "release")}
    fields = {"name": name, "inputs": ["*.txt"], "command": WAITING, "outputs": ["*.out"]}
    return write_job(
        job_dir, {"job": {**fields, "env": env, **job}, "backends.local": {"slots": 2}}
    )


def starts(job_dir: Path) -> list[str]:
    counter = job_dir / "started"
    return counter.read_text().split() if counter.exists() else []


def start(job_dir: Path, *options: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fanout", "run", "job.toml", "--out", "out", *options],
        cwd=job_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def assert_record_matches_files(out: Path) -> None:
    for task in load_record(out)["tasks"]:
        for output in task["outputs"]:
            assert md5(out / output["path"]) == output["md5"], output


def journal_lines(job_dir: Path) -> list[dict[str, object]]:
    lines = []
    for journal in (job_dir / ".fanout").rglob("journal-*.jsonl"):
        lines += [json.loads(line) for line in journal.read_text().splitlines() if line]
    return lines


@pytest.fixture
def released(job_dir: Path) -> Iterator[None]:
    """Let every waiting task (and any left behind by a killed client) end with the test."""
    yield
    (job_dir / "release").touch()


def test_a_second_run_into_a_held_out_dir_is_refused(job_dir: Path, released: None) -> None:
    counting_job(job_dir, "held", {"w1.txt": "one", "a.txt": "two"})
    first = start(job_dir)
    wait_until(lambda: "w1" in starts(job_dir))
    lock = json.loads((job_dir / "out" / ".fanout-lock").read_text())

    second = run_fanout("run", "job.toml", "--out", "out", cwd=job_dir)
    assert second.returncode == 2
    [line] = second.stderr.splitlines()
    assert line == (
        f"fanout: error: output directory {job_dir / 'out'} is in use by run {lock['run_id']}"
        f" (pid {first.pid} on {lock['host']}); wait for it to end or choose another --out"
    )
    resume = run_fanout("run", "job.toml", "--out", "out", "--resume", cwd=job_dir)
    assert resume.returncode == 2
    assert "is in use by run" in resume.stderr

    (job_dir / "release").touch()
    stdout, stderr = first.communicate(timeout=60)
    assert first.returncode == 0, stderr + stdout
    assert sorted(starts(job_dir)) == ["a", "w1"]
    assert_record_matches_files(job_dir / "out")


def test_a_killed_runs_out_dir_is_reused_and_finished(job_dir: Path, released: None) -> None:
    counting_job(job_dir, "killed", {"a.txt": "one", "w1.txt": "two", "w2.txt": "three"})
    run = start(job_dir)
    # Collected and recorded: a's line in the journal while the w tasks still wait.
    wait_until(lambda: any(line["id"] == "a" for line in journal_lines(job_dir)), timeout=30)
    assert run.poll() is None
    run.kill()
    run.wait()
    assert not (job_dir / "out" / "fanout-run.json").exists()  # no record: killed at once

    (job_dir / "release").touch()
    resumed = run_fanout("run", "job.toml", "--out", "out", "--resume", cwd=job_dir)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert starts(job_dir).count("a") == 1  # its collection was recorded: not run again
    assert load_record(job_dir / "out")["status"] == "finished"
    assert (job_dir / "out" / "w2" / "w2.out").read_text() == "three"
    assert_record_matches_files(job_dir / "out")

    again = run_fanout("run", "job.toml", "--out", "out", cwd=job_dir)  # a new run, same dir
    assert again.returncode == 0, again.stderr


def test_a_changed_input_runs_again_with_its_new_content(job_dir: Path) -> None:
    write_job(
        job_dir,
        {
            "job": {
                "name": "changing",
                "inputs": ["*.txt"],
                "command": 'echo {task_id} >> "$COUNTER"; ! grep -q bad {input}'
                " && cp {input} {input_stem}.out",
                "outputs": ["*.out"],
                "env": {"COUNTER": str(job_dir / "started")},
            }
        },
    )
    write_inputs(job_dir, {"a.txt": "old", "b.txt": "bad", "c.txt": "same"})
    first = run_fanout("run", "job.toml", "--out", "out", cwd=job_dir)
    assert first.returncode == 1
    assert "--resume" in first.stdout  # how to finish a run that ended with failures

    (job_dir / "a.txt").write_text("new")  # same size: its md5 tells
    (job_dir / "b.txt").write_text("good")
    os.utime(job_dir / "c.txt", (1, 1))  # touched, not changed
    resumed = run_fanout("run", "job.toml", "--out", "out", "--resume", cwd=job_dir)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert "input" in resumed.stderr and "a.txt changed since run" in resumed.stderr
    assert (job_dir / "out" / "a" / "a.out").read_text() == "new"
    assert (job_dir / "out" / "b" / "b.out").read_text() == "good"
    assert sorted(starts(job_dir)) == ["a", "a", "b", "b", "c"]
    assert_record_matches_files(job_dir / "out")

    finished = run_fanout("run", "job.toml", "--out", "out", "--resume", cwd=job_dir)
    assert finished.returncode == 2
    assert "no unfinished run" in finished.stderr


def test_a_resume_refuses_changed_app_files_or_setup(job_dir: Path) -> None:
    write_inputs(job_dir, {"a.txt": "a", "tool.sh": "echo one"})
    tables: dict[str, dict[str, object]] = {
        "job": {"name": "app", "inputs": ["a.txt"], "app": ["tool.sh"], "command": "exit 1"}
    }
    write_job(job_dir, tables)
    assert run_fanout("run", "job.toml", "--out", "out", cwd=job_dir).returncode == 1

    (job_dir / "tool.sh").write_text("echo two")
    refused = run_fanout("run", "job.toml", "--resume", cwd=job_dir)
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        f"fanout: error: app file {job_dir / 'tool.sh'} changed since run"
        f" {load_record(job_dir / 'out')['run_id']} started; start a new run instead of resuming"
    ]

    (job_dir / "tool.sh").write_text("echo one")
    tables["job"]["setup"] = ["true"]
    write_job(job_dir, tables)
    refused = run_fanout("run", "job.toml", "--resume", cwd=job_dir)
    assert refused.returncode == 2
    assert "setup or env changed" in refused.stderr


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: an output directory that fills up."""
    mount = shutil.which("mount")
    if os.geteuid() != 0 or mount is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    path = tmp_path / "small"
    path.mkdir()
    done = subprocess.run([mount, "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(path)])
    if done.returncode != 0:
        pytest.skip("this machine does not let root mount a tmpfs")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_out_dir_is_one_line_and_resume_collects(job_dir: Path, small_disk: Path) -> None:
    inputs = {f"t{n}.txt": "x" * 100_000 for n in range(4)}  # 400 kB of outputs
    counting_job(job_dir, "full", inputs)
    out = small_disk / "out"
    result = run_fanout("run", "job.toml", "--out", out, cwd=job_dir)
    assert result.returncode == 1, result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("fanout: error:")]
    assert all("No space left on device" in line for line in errors)
    assert "No space left on device" in result.stdout  # the failed tasks say why
    assert not [p for p in out.rglob("*") if p.name.endswith(".part")]

    subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True)
    resumed = run_fanout("run", "job.toml", "--out", out, "--resume", cwd=job_dir)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert sorted(starts(job_dir)) == ["t0", "t1", "t2", "t3"]  # collected, not run again
    for n in range(4):
        assert (out / f"t{n}" / f"t{n}.out").stat().st_size == 100_000
    assert_record_matches_files(out)


def test_a_part_file_left_by_a_killed_collection_is_removed(job_dir: Path) -> None:
    counting_job(job_dir, "parts", {"a.txt": "a"})
    stray = job_dir / "out" / "a" / ".a.out.x1y2.part"
    stray.parent.mkdir(parents=True)
    stray.write_text("half")
    (job_dir / "out" / ".fanout-lock").touch()  # the mark a killed run leaves
    result = run_fanout("run", "job.toml", "--out", "out", cwd=job_dir)
    assert result.returncode == 0, result.stderr
    assert not stray.exists()
    assert (job_dir / "out" / "a" / "a.out").read_text() == "a"


def test_storage_that_vanishes_mid_run_is_one_line_and_exit_1(job_dir: Path) -> None:
    """Exit status 2 only when nothing ran: here storage vanishes under a running task."""
    storage = job_dir / "store"
    write_inputs(job_dir, {"a.txt": "a"})
    write_job(
        job_dir,
        {
            "job": {
                "name": "vanishing",
                "inputs": ["*.txt"],
                "command": f"rm -rf {storage}; touch {storage}; cp {{input}} a.out",
                "outputs": ["*.out"],
            },
            "storage": {"url": str(storage)},
        },
    )
    result = run_fanout("run", "job.toml", "--out", "out", cwd=job_dir)
    assert result.returncode == 1, result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    assert os.path.exists(job_dir / "out" / "fanout-run.json")


def test_a_run_whose_storage_filled_up_is_finished_by_resume(
    job_dir: Path, small_disk: Path, released: None
) -> None:
    counting_job(job_dir, "cramped", {"a.txt": "one", "w1.txt": "two"})
    storage = small_disk / "store"
    run = start(job_dir, "--storage", str(storage))
    wait_until(lambda: (job_dir / "out" / "a" / "a.out").exists() and "w1" in starts(job_dir))
    filler = small_disk / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k"], capture_output=True)
    (job_dir / "release").touch()  # w1 cannot deliver its output, nor the run save its ledger
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 1, stderr + stdout
    assert "Traceback" not in stderr + stdout
    assert "No space left on device" in stderr
    assert "run what did not succeed with" in stdout

    filler.unlink()
    resumed = run_fanout("run", "job.toml", "--out", "out", "--storage", storage, "--resume",
                         cwd=job_dir)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert sorted(starts(job_dir)) == ["a", "w1", "w1"]  # only what did not succeed ran again
    assert (job_dir / "out" / "w1" / "w1.out").read_text() == "two"
    assert_record_matches_files(job_dir / "out")
