"""Task ids from input names: readable, valid on Azure Batch, unique ignoring case, stable."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from conftest import write_inputs, write_job
from hypothesis import given, settings
from hypothesis import strategies as st

from fanout.plan import make_plan
from fanout.spec import load_job
from fanout.taskids import derive_task_ids, is_valid_task_id, readable_id

HASHED_ID = re.compile(r"task-[0-9a-f]{8}")
AZURE_BATCH_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def ids_for(names: Sequence[str]) -> list[str]:
    """Ids for ``names`` as inputs ``/in/NAME.txt`` would get them."""
    return derive_task_ids((name, f"/in/{name}.txt") for name in names)


def assert_valid_and_unique(ids: Sequence[str]) -> None:
    """Valid by Azure Batch's rules (checked here independently of ``is_valid_task_id``)."""
    assert all(AZURE_BATCH_ID.fullmatch(task_id) for task_id in ids), ids
    assert all(is_valid_task_id(task_id) for task_id in ids), ids
    assert len({task_id.casefold() for task_id in ids}) == len(ids), ids


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("taskfile_1", "taskfile_1", id="plain"),
        pytest.param("Mixed-Case_2", "Mixed-Case_2", id="case-kept"),
        pytest.param("my report.v2", "my-report-v2", id="space-and-dot"),
        pytest.param("  padded  name  ", "padded-name", id="runs-of-spaces"),
        pytest.param("a...b", "a-b", id="run-of-dots"),
        pytest.param("café", "cafe", id="accent"),
        pytest.param("Ünïcode", "Unicode", id="accents"),
        pytest.param("ﬁle", "file", id="ligature"),
        pytest.param("東京", "", id="cjk-only"),
        pytest.param("東京 report", "report", id="cjk-then-ascii"),
    ],
)
def test_readable_id(name: str, expected: str) -> None:
    assert readable_id(name) == expected


def test_readable_id_turns_a_non_ascii_run_into_one_hyphen() -> None:
    assert readable_id("a東京b") == "a-b"


@pytest.mark.parametrize(
    "name",
    ["taskfile_1", "a", "A-b_C", "x" * 64],
)
def test_valid_unique_names_are_kept(name: str) -> None:
    assert ids_for([name]) == [name]


def test_spaces_dots_and_accents_give_readable_ids() -> None:
    assert ids_for(["my report.v2", "café", "taskfile_1"]) == ["my-report-v2", "cafe", "taskfile_1"]


@pytest.mark.parametrize("name", ["東京", "データ", "...", "", "---"])
def test_names_without_readable_part_get_a_hashed_id(name: str) -> None:
    [task_id] = ids_for([name])
    assert HASHED_ID.fullmatch(task_id), task_id


@pytest.mark.parametrize("length", [65, 300])
def test_long_names_are_shortened(length: int) -> None:
    name = "r" * length
    [task_id] = ids_for([name])
    assert_valid_and_unique([task_id])
    assert task_id.startswith("r" * 40)


def test_long_names_sharing_a_prefix_stay_unique() -> None:
    names = ["p" * 100 + suffix for suffix in ("a", "b", "c")]
    assert_valid_and_unique(ids_for(names))


def test_names_differing_only_in_case_get_ids_unique_ignoring_case() -> None:
    ids = ids_for(["A", "a"])
    assert_valid_and_unique(ids)
    assert ids[0].startswith("A-") and ids[1].startswith("a-")


def test_names_that_reduce_to_the_same_id_are_told_apart() -> None:
    ids = ids_for(["a b", "a.b", "a-b"])
    assert_valid_and_unique(ids)
    assert all(task_id.startswith("a-b-") for task_id in ids)


def test_a_name_that_looks_like_a_hashed_id_does_not_clash() -> None:
    digest = hashlib.sha1(b"/in/1").hexdigest()[:8]
    pairs = [("x", "/in/1"), ("x", "/in/2"), (f"x-{digest}", "/in/3")]
    assert_valid_and_unique(derive_task_ids(pairs))


def test_the_same_input_twice_gets_two_ids() -> None:
    assert_valid_and_unique(derive_task_ids([("x", "/in/x"), ("x", "/in/x")]))


def test_ids_are_deterministic_across_processes() -> None:
    names = ["A", "a", "a b", "a.b", "東京", "r" * 300, "plain"]
    assert ids_for(names) == ids_for(names)
    script = (
        "import json, sys; from fanout.taskids import derive_task_ids;"
        " print(json.dumps(derive_task_ids((n, f'/in/{n}.txt') for n in json.load(sys.stdin))))"
    )
    for seed in ("1", "2"):
        other = subprocess.run(
            [sys.executable, "-c", script],
            input=json.dumps(names),
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(other.stdout) == ids_for(names)


def test_hash_depends_on_the_key_not_the_position() -> None:
    first = derive_task_ids([("x", "/in/1"), ("x", "/in/2")])
    swapped = derive_task_ids([("x", "/in/2"), ("x", "/in/1")])
    assert first == swapped[::-1]


@pytest.mark.parametrize(
    ("candidate", "valid"),
    [
        pytest.param("a", True, id="one-char"),
        pytest.param("A-b_9", True, id="all-kinds"),
        pytest.param("x" * 64, True, id="64-chars"),
        pytest.param("x" * 65, False, id="65-chars"),
        pytest.param("", False, id="empty"),
        pytest.param("a b", False, id="space"),
        pytest.param("a.b", False, id="dot"),
        pytest.param("café", False, id="non-ascii"),
        pytest.param("abc\n", False, id="trailing-newline"),
    ],
)
def test_is_valid_task_id(candidate: str, valid: bool) -> None:
    assert is_valid_task_id(candidate) is valid


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=80), st.text(max_size=40)), max_size=25))
def test_any_names_give_valid_unique_ids(pairs: list[tuple[str, str]]) -> None:
    ids = derive_task_ids(pairs)
    assert len(ids) == len(pairs)
    assert_valid_and_unique(ids)
    assert derive_task_ids(pairs) == ids


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_readable_id_is_always_id_material(name: str) -> None:
    readable = readable_id(name)
    assert re.fullmatch(r"[A-Za-z0-9_-]*", readable)
    assert not readable.startswith("-") and not readable.endswith("-")


def test_plan_ids_for_awkward_file_names(job_dir: Path) -> None:
    names = ["a b.txt", "a.b.txt", "Ünïcode.txt", "data/x.txt", "other/x.txt", "東京.txt"]
    write_inputs(job_dir, {name: name for name in names})
    path = write_job(
        job_dir,
        {"job": {"name": "ids", "inputs": ["*.txt", "*/*.txt"], "command": "cat {input}"}},
    )
    plan = make_plan(load_job(path))
    ids = {task.input.relative_to(job_dir.resolve()).as_posix(): task.id for task in plan.tasks}
    assert sorted(ids) == sorted(names)
    assert_valid_and_unique(list(ids.values()))
    assert ids["Ünïcode.txt"] == "Unicode"
    assert ids["a b.txt"].startswith("a-b-") and ids["a.b.txt"].startswith("a-b-")
    assert ids["data/x.txt"].startswith("x-") and ids["other/x.txt"].startswith("x-")
    assert HASHED_ID.fullmatch(ids["東京.txt"])
    assert make_plan(load_job(path)).tasks == plan.tasks


def test_plan_ids_for_undecodable_file_name(job_dir: Path) -> None:
    (job_dir / "in").mkdir()
    try:
        (job_dir / "in" / os.fsdecode(b"\xff\xfe.txt")).write_text("x")
    except (OSError, ValueError):
        pytest.skip("the file system refuses names that are not UTF-8")
    path = write_job(job_dir, {"job": {"name": "ids", "inputs": ["in/*"], "command": "cat"}})
    [task] = make_plan(load_job(path)).tasks
    assert HASHED_ID.fullmatch(task.id)
