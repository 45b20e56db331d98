"""Several inputs per task (``[job] inputs_per_task``), on the local backend and azure-batch."""

from __future__ import annotations

from pathlib import Path

import pytest
from batch_emulator import Running
from batch_runs import on_batch
from conftest import load_record, run_fanout, write_inputs, write_job

COPY_EACH = 'echo {task_id} >> "$COUNTER"; for f in {inputs}; do cp "$f" "${{f%.txt}}.out"; done'
INPUTS = {f"{name}.txt": name.upper() for name in ("ash", "birch", "cedar", "elm", "fir")}
GROUPS = {"ash_to_birch": ["ash", "birch"], "cedar_to_elm": ["cedar", "elm"], "fir": ["fir"]}


def grouped_job(job_dir: Path, **job: object) -> Path:
    write_inputs(job_dir, INPUTS)
    fields = {
        "name": "grouped",
        "inputs": ["*.txt"],
        "inputs_per_task": 2,
        "command": COPY_EACH,
        "outputs": ["*.out"],
        "env": {"COUNTER": str(job_dir / "started")},
    }
    return write_job(job_dir, {"job": {**fields, **job}})


def check_outputs(out: Path) -> None:
    record = load_record(out)
    assert {task["id"]: task["state"] for task in record["tasks"]} == dict.fromkeys(
        GROUPS, "succeeded"
    )
    for task in record["tasks"]:
        names = GROUPS[task["id"]]
        if len(names) > 1:
            assert [Path(p).stem for p in task["inputs"]] == names
        assert sorted(o["path"] for o in task["outputs"]) == [
            f"{task['id']}/{n}.out" for n in names
        ]
        for name in names:  # each input's output, named after it, in its task's folder
            assert (out / task["id"] / f"{name}.out").read_text() == name.upper()


def test_inputs_per_task_on_the_local_backend(job_dir: Path) -> None:
    grouped_job(job_dir)
    result = run_fanout("run", "job.toml", "--out", "out", cwd=job_dir)
    assert result.returncode == 0, result.stderr + result.stdout
    check_outputs(job_dir / "out")

    dry = run_fanout("run", "job.toml", "--dry-run", cwd=job_dir, env={"COLUMNS": "400"})
    assert "3 tasks" in dry.stdout
    assert "for f in ash.txt birch.txt; do" in dry.stdout


@pytest.mark.azurite
def test_inputs_per_task_on_azure_batch(
    batch: Running, batch_env: dict[str, str], azure_container: str, job_dir: Path
) -> None:
    grouped_job(job_dir)
    result = on_batch(job_dir / "job.toml", azure_container, batch_env, "--out", job_dir / "out")
    assert result.returncode == 0, result.stderr + result.stdout
    check_outputs(job_dir / "out")


def test_a_changed_input_runs_its_whole_task_again(job_dir: Path) -> None:
    grouped_job(job_dir, command=COPY_EACH + '; [ "$(cat fir.txt 2>/dev/null)" != bad ]')
    (job_dir / "fir.txt").write_text("bad")
    assert run_fanout("run", "job.toml", "--out", "out", cwd=job_dir).returncode == 1
    (job_dir / "fir.txt").write_text("FIR")
    (job_dir / "elm.txt").write_text("ELM")  # rewritten, same content: not changed
    (job_dir / "ash.txt").write_text("OAK")  # changed: ash_to_birch runs again
    result = run_fanout("run", "job.toml", "--out", "out", "--resume", cwd=job_dir)
    assert result.returncode == 0, result.stderr + result.stdout
    runs = (job_dir / "started").read_text().split()
    assert sorted(runs) == ["ash_to_birch", "ash_to_birch", "cedar_to_elm", "fir", "fir"]
    assert (job_dir / "out" / "ash_to_birch" / "ash.out").read_text() == "OAK"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"command": "cat {input}"}, "[job] command: {input} names a task's one input"),
        ({"inputs_per_task": 0}, "[job] inputs_per_task: Input should be greater than or equal"),
    ],
)
def test_bad_inputs_per_task_is_one_line(
    job_dir: Path, fields: dict[str, object], message: str
) -> None:
    grouped_job(job_dir, **fields)
    result = run_fanout("run", "job.toml", "--dry-run", cwd=job_dir)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr


def test_two_inputs_of_one_task_with_one_name_are_refused(job_dir: Path) -> None:
    write_inputs(job_dir, {"a/same.txt": "1", "b/same.txt": "2"})
    write_job(
        job_dir,
        {"job": {"name": "clash", "inputs": ["*/*.txt"], "inputs_per_task": 2, "command": "true"}},
    )
    result = run_fanout("run", "job.toml", "--dry-run", cwd=job_dir)
    assert result.returncode == 2
    assert "would both land as 'same.txt'" in result.stderr
