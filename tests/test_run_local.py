"""The local backend end to end, through the real ``fanout`` command and real processes."""

from __future__ import annotations

import re
import string
from collections import Counter
from pathlib import Path

from conftest import REPO, load_record, process_alive, run_fanout, write_inputs, write_job

EXAMPLE = REPO / "examples" / "topwords"


def expected_top_words(text: str, top: int) -> list[tuple[str, int]]:
    """The top words as the task must find them, counted independently of topwords.py."""
    words = [token.strip(string.punctuation).lower() for token in text.split()]
    counts = Counter(word for word in words if word)
    first_seen = {word: index for index, word in reversed(list(enumerate(words)))}
    return sorted(counts.items(), key=lambda item: (-item[1], first_seen[item[0]]))[:top]


def counted_words(output: str) -> list[tuple[str, int]]:
    return [(word, int(count)) for word, count in re.findall(r"^(.+):\t(\d+)$", output, re.M)]


def test_example_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_fanout(
        "run",
        EXAMPLE / "job.toml",
        "--storage",
        tmp_path / "storage",
        "--out",
        out,
        cwd=tmp_path,
        env={"FANOUT_LOCAL_ROOT": str(tmp_path / "nodes")},
    )
    assert result.returncode == 0, result.stderr + result.stdout
    texts = sorted((EXAMPLE / "texts").glob("*.txt"))
    record = load_record(out)
    assert [task["id"] for task in record["tasks"]] == [path.stem for path in texts]
    for text in texts:
        output = (out / text.stem / f"{text.stem}_OUTPUT.txt").read_text()
        assert counted_words(output) == expected_top_words(text.read_text(), 3)
        assert f"Task:\t{text.stem}" in output
    assert all(task["state"] == "succeeded" for task in record["tasks"])
    assert str(out) in result.stdout
    assert not (tmp_path / "nodes").exists() or not any((tmp_path / "nodes").iterdir())


def test_node_environment_and_setup_once_per_node(job_dir: Path) -> None:
    write_inputs(job_dir, {f"in/{n}.txt": n for n in "abcd"})
    (job_dir / "tool.sh").write_text("echo tool")
    write_job(
        job_dir,
        {
            "job": {
                "name": "envcheck",
                "inputs": ["in/*.txt"],
                "app": ["tool.sh"],
                "setup": ['echo "$(pwd)" >> "$MARKS/setup"'],
                "command": "env > env.txt; pwd > pwd.txt; sh $FANOUT_APP_DIR/tool.sh > tool.txt",
                "outputs": ["*.txt"],
                "env": {"MARKS": str(job_dir), "GREETING": "hello world"},
            },
            "backends.local": {"slots": 2},
        },
    )
    result = run_fanout("run", "job.toml", "--out", "out", cwd=job_dir)
    assert result.returncode == 0, result.stderr + result.stdout

    setup_runs = (job_dir / "setup").read_text().splitlines()
    assert len(setup_runs) == 1
    env = dict(
        line.split("=", 1)
        for line in (job_dir / "out/a/env.txt").read_text().splitlines()
        if "=" in line
    )
    assert env["FANOUT_TASK_ID"] == env["AZ_BATCH_TASK_ID"] == "a"
    assert env["FANOUT_JOB_ID"] == env["AZ_BATCH_JOB_ID"]
    assert env["FANOUT_NODE_ID"] == env["AZ_BATCH_NODE_ID"]
    assert env["FANOUT_ATTEMPT"] == "1"
    assert env["FANOUT_APP_DIR"] == env["AZ_BATCH_NODE_SHARED_DIR"] == setup_runs[0]
    assert env["AZ_BATCH_POOL_ID"]
    assert env["GREETING"] == "hello world"
    workdir = (job_dir / "out/a/pwd.txt").read_text().strip()
    assert env["AZ_BATCH_TASK_WORKING_DIR"] == workdir
    assert (job_dir / "out/a/tool.txt").read_text() == "tool\n"


def test_failing_task_is_retried_in_a_fresh_directory(job_dir: Path) -> None:
    write_inputs(job_dir, {"flaky.txt": "x", "broken.txt": "y"})
    marks = job_dir / "marks"
    marks.mkdir()
    # Each attempt appends a line; a leftover file from an earlier attempt would be an error.
    command = (
        'test ! -e leftover || exit 9; touch leftover; echo try >> "$MARKS/{task_id}";'
        ' case {task_id} in broken) echo "broken input" >&2; exit 3;; esac;'
        ' [ "$(wc -l < "$MARKS/{task_id}")" -ge 2 ] || exit 4; cp {input} result.out'
    )
    write_job(
        job_dir,
        {
            "job": {
                "name": "retries",
                "inputs": ["*.txt"],
                "command": command,
                "outputs": ["*.out"],
                "retries": 2,
                "env": {"MARKS": str(marks)},
            }
        },
    )
    result = run_fanout("run", "job.toml", "--out", "out", cwd=job_dir)
    assert result.returncode == 1, result.stderr + result.stdout
    tasks = {task["id"]: task for task in load_record(job_dir / "out")["tasks"]}
    assert tasks["flaky"]["state"] == "succeeded"
    assert tasks["flaky"]["attempts"] == 2
    assert (marks / "flaky").read_text().count("try") == 2
    assert tasks["broken"]["state"] == "failed"
    assert tasks["broken"]["attempts"] == 3
    assert tasks["broken"]["exit_code"] == 3
    assert "broken input" in tasks["broken"]["stderr_tail"]
    assert "broken input" in result.stdout  # the summary shows the stderr tail
    assert (job_dir / "out/flaky/result.out").read_text() == "x"


def test_retries_option_overrides_job_file(job_dir: Path) -> None:
    write_inputs(job_dir, {"a.txt": "a"})
    write_job(job_dir, {"job": {"name": "r", "inputs": ["a.txt"], "command": "exit 1"}})
    result = run_fanout("run", "job.toml", "--out", "out", "--retries", "1", cwd=job_dir)
    assert result.returncode == 1
    assert load_record(job_dir / "out")["tasks"][0]["attempts"] == 2


def test_timeout_kills_the_whole_process_group(job_dir: Path) -> None:
    write_inputs(job_dir, {"slow.txt": "z"})
    pid_file = job_dir / "child.pid"
    write_job(
        job_dir,
        {
            "job": {
                "name": "timeout",
                "inputs": ["*.txt"],
                "command": f"sleep 300 & echo $! > {pid_file}; wait",
                "timeout": "1s",
            }
        },
    )
    result = run_fanout("run", "job.toml", "--out", "out", cwd=job_dir)
    assert result.returncode == 1, result.stderr + result.stdout
    task = load_record(job_dir / "out")["tasks"][0]
    assert task["state"] == "failed"
    assert "timed out after 1s" in task["error"]
    assert not process_alive(int(pid_file.read_text()))


def test_success_without_declared_output_fails(job_dir: Path) -> None:
    write_inputs(job_dir, {"a.txt": "a"})
    write_job(
        job_dir,
        {
            "job": {
                "name": "missing",
                "inputs": ["*.txt"],
                "command": "touch other.log",
                "outputs": ["*.out", "*.log"],
            }
        },
    )
    result = run_fanout("run", "job.toml", "--out", "out", cwd=job_dir)
    assert result.returncode == 1
    task = load_record(job_dir / "out")["tasks"][0]
    assert task["state"] == "failed"
    assert task["exit_code"] == 0
    assert "missing output" in task["error"]
    assert "*.out" in task["error"]


def test_setup_failure_fails_every_task_with_its_stderr(job_dir: Path) -> None:
    write_inputs(job_dir, {"a.txt": "a", "b.txt": "b"})
    write_job(
        job_dir,
        {
            "job": {
                "name": "badsetup",
                "inputs": ["*.txt"],
                "setup": ["echo 'no such package' >&2; exit 5"],
                "command": "true",
            }
        },
    )
    result = run_fanout("run", "job.toml", "--out", "out", cwd=job_dir)
    assert result.returncode == 1
    for task in load_record(job_dir / "out")["tasks"]:
        assert task["state"] == "failed"
        assert "exit code 5" in task["error"]
        assert "no such package" in task["error"]
    assert "Traceback" not in result.stderr + result.stdout


def test_dry_run_creates_nothing(job_dir: Path, tmp_path: Path) -> None:
    write_inputs(job_dir, {"a.txt": "a", "b c.txt": "b"})
    job = write_job(
        job_dir,
        {"job": {"name": "dry", "inputs": ["*.txt"], "app": ["a.txt"], "command": "cat {input}"}},
    )
    before = sorted(job_dir.rglob("*"))
    result = run_fanout("run", job, "--dry-run", "--out", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "b-c" in result.stdout
    assert "cat 'b c.txt'" in result.stdout
    assert sorted(job_dir.rglob("*")) == before
    assert not (tmp_path / "out").exists()


def test_out_dir_with_foreign_files_is_refused(job_dir: Path) -> None:
    write_inputs(job_dir, {"a.txt": "a"})
    (job_dir / "out").mkdir()
    (job_dir / "out" / "mine.txt").write_text("precious")
    write_job(job_dir, {"job": {"name": "o", "inputs": ["a.txt"], "command": "true"}})
    result = run_fanout("run", "job.toml", "--out", "out", cwd=job_dir)
    assert result.returncode == 2
    assert "did not write" in result.stderr
    assert not (job_dir / ".fanout").exists()
    assert (job_dir / "out" / "mine.txt").read_text() == "precious"


def test_names_with_spaces_and_hashes_travel_intact(tmp_path: Path) -> None:
    job_dir = tmp_path / "a job #1"
    write_inputs(job_dir, {"in/a #1.txt": "hash"})
    write_job(
        job_dir,
        {
            "job": {
                "name": "odd",
                "inputs": ["in/*.txt"],
                "command": "cp {input} copy-of-{input_stem}.out",
                "outputs": ["*.out"],
            }
        },
    )
    result = run_fanout("run", "job.toml", "--out", "out dir", cwd=job_dir)
    assert result.returncode == 0, result.stderr + result.stdout
    assert (job_dir / "out dir" / "a-1" / "copy-of-a #1.out").read_text() == "hash"


def test_any_fsspec_storage_works(job_dir: Path) -> None:
    """The in-memory filesystem stands for a remote one: no local paths behind its URLs."""
    write_inputs(job_dir, {"in/a.txt": "alpha", "in/b.txt": "beta"})
    write_job(
        job_dir,
        {
            "job": {
                "name": "memory",
                "inputs": ["in/*.txt"],
                "command": "cp {input} {input_stem}.out",
                "outputs": ["*.out"],
            }
        },
    )
    result = run_fanout(
        "run", "job.toml", "--storage", "memory://bucket/x", "--out", "out", cwd=job_dir
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert (job_dir / "out" / "a" / "a.out").read_text() == "alpha"
    assert load_record(job_dir / "out")["storage"] == "memory://bucket/x"
    assert not (job_dir / ".fanout" / "jobs").exists()
