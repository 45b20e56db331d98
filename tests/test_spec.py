"""The job file and the command-line options: what is accepted, and how bad input is refused.

Bad input must give exit status 2, one line on stderr naming the file and the field, no
traceback, and create nothing. Those checks go through the real ``fanout`` command; what the
command line adds nothing to (durations, quoting, overrides, globs) is checked in-process.
"""

from __future__ import annotations

import math
import shlex
import subprocess
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from conftest import run_fanout, write_inputs, write_job

from fanout.errors import JobFileError
from fanout.plan import make_plan, render_command
from fanout.prepare import RunOptions, prepare
from fanout.scheduler import attempt_job_id
from fanout.spec import load_job, parse_duration, validate_job

VALID_JOB: dict[str, Any] = {"name": "spec-test", "inputs": ["in/*.txt"], "command": "cat {input}"}
WIDE_TERMINAL = {"COLUMNS": "400"}
"""So that rich does not wrap the dry-run's long lines."""
KNOWN_PLACEHOLDERS = ("{input}", "{input_name}", "{input_stem}", "{task_id}")


def job_tables(
    drop: tuple[str, ...] = (),
    extra: dict[str, dict[str, Any]] | None = None,
    **changes: Any,
) -> dict[str, dict[str, Any]]:
    """A valid job (tables for ``write_job``) with ``changes`` applied and ``drop`` removed."""
    job = {key: value for key, value in {**VALID_JOB, **changes}.items() if key not in drop}
    return {"job": job, **(extra or {})}


def tree(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit status 2, no traceback, and one non-empty line on stderr holding every needle."""
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert result.returncode == 2, result.stderr + result.stdout
    lines = result.stderr.rstrip("\n").split("\n")
    assert len(lines) == 1 and lines[0].strip(), result.stderr
    for needle in needles:
        assert needle in result.stderr, f"{needle!r} not in {result.stderr!r}"


@pytest.fixture
def job_files(job_dir: Path) -> Path:
    """``job_dir`` holding two inputs and two app files of the same name in different folders."""
    write_inputs(
        job_dir,
        {"in/a.txt": "alpha\n", "in/b.txt": "beta\n", "a/tool.sh": "", "b/tool.sh": ""},
    )
    return job_dir


class ErrorCase(NamedTuple):
    """A bad job: the job file (tables, or raw TOML text), options, environment, and what the
    error must mention besides the job file's name."""

    content: dict[str, dict[str, Any]] | str
    needles: tuple[str, ...]
    args: tuple[str, ...] = ()
    env: dict[str, str] | None = None


ERROR_CASES: dict[str, ErrorCase] = {
    "toml-syntax-error": ErrorCase(
        '[job]\nname = "x"\ninputs = ["in/*.txt"]\nretries = = 3\ncommand = "cat {input}"\n',
        ("line 4", "invalid TOML"),
    ),
    "missing-job-table": ErrorCase({"storage": {"url": "st"}}, ("[job]", "is required")),
    "missing-command": ErrorCase(job_tables(drop=("command",)), ("[job] command", "is required")),
    "empty-command": ErrorCase(job_tables(command=""), ("[job] command",)),
    "unknown-key-in-job": ErrorCase(
        job_tables(inptus=["x"]), ("[job] inptus", "not a known setting")
    ),
    "unknown-table": ErrorCase(job_tables(extra={"jobs": {"x": 1}}), ("[jobs]",)),
    "name-not-a-string": ErrorCase(job_tables(name=5), ("[job] name",)),
    "inputs-a-string": ErrorCase(job_tables(inputs="in/*.txt"), ("[job] inputs",)),
    "inputs-empty": ErrorCase(job_tables(inputs=[]), ("[job] inputs",)),
    "command-a-list": ErrorCase(job_tables(command=["cat"]), ("[job] command",)),
    "retries-a-word": ErrorCase(job_tables(retries="many"), ("[job] retries",)),
    "env-value-a-number": ErrorCase(job_tables(env={"X": 1}), ("[job] env.X",)),
    "negative-retries": ErrorCase(
        job_tables(retries=-1), ("[job] retries", "greater than or equal to 0")
    ),
    "bad-timeout": ErrorCase(job_tables(timeout="10 minutes"), ("[job] timeout", "10 minutes")),
    "zero-timeout": ErrorCase(job_tables(timeout="0s"), ("[job] timeout", "zero")),
    "zero-timeout-number": ErrorCase(job_tables(timeout=0), ("[job] timeout", "zero")),
    "unknown-placeholder": ErrorCase(
        job_tables(command="cat {inptu}"), ("[job] command", "{inptu}", *KNOWN_PLACEHOLDERS)
    ),
    "shell-style-braces": ErrorCase(
        job_tables(command="cat ${HOME}/{input}"), ("[job] command", "{HOME}", "$NAME")
    ),
    "placeholder-format-spec": ErrorCase(
        job_tables(command="cat {input:>10}"), ("[job] command", "{input}", "format")
    ),
    "placeholder-conversion": ErrorCase(
        job_tables(command="cat {input!r}"), ("[job] command", "{input}")
    ),
    "lone-brace": ErrorCase(job_tables(command="echo } {input}"), ("[job] command", "{{")),
    "bad-job-name": ErrorCase(job_tables(name="my job!"), ("[job] name", "my job!")),
    "reserved-env-fanout": ErrorCase(job_tables(env={"FANOUT_X": "1"}), ("[job] env", "FANOUT_X")),
    "reserved-env-batch": ErrorCase(
        job_tables(env={"AZ_BATCH_Y": "1"}), ("[job] env", "AZ_BATCH_Y")
    ),
    "invalid-env-name": ErrorCase(job_tables(env={"1BAD": "1"}), ("[job] env", "1BAD")),
    "inputs-match-nothing": ErrorCase(
        job_tables(inputs=["in/*.txt", "nothing/*.csv"]), ("[job] inputs", "nothing/*.csv")
    ),
    "app-same-name-twice": ErrorCase(
        job_tables(app=["a/tool.sh", "b/tool.sh"]), ("[job] app", "tool.sh")
    ),
    "local-slots-zero": ErrorCase(
        job_tables(extra={"backends.local": {"slots": 0}}), ("[backends.local] slots",)
    ),
    "local-unknown-key": ErrorCase(
        job_tables(extra={"backends.local": {"slot": 2}}),
        ("[backends.local] slot", "not a known setting"),
    ),
}
RUN_WITHOUT_DRY_RUN = (
    "toml-syntax-error",
    "unknown-placeholder",
    "inputs-match-nothing",
    "local-slots-zero",
)


def run_case(job_dir: Path, case: ErrorCase, *extra: str) -> subprocess.CompletedProcess[str]:
    if isinstance(case.content, str):
        (job_dir / "job.toml").write_text(case.content, encoding="utf-8")
    else:
        write_job(job_dir, case.content)
    cwd = job_dir.parent
    return run_fanout(
        "run", Path(job_dir.name, "job.toml"), *case.args, *extra, cwd=cwd, env=case.env
    )


@pytest.mark.parametrize("case_id", ERROR_CASES)
def test_bad_job_is_one_line_error(job_files: Path, case_id: str) -> None:
    case = ERROR_CASES[case_id]
    before = tree(job_files.parent)
    result = run_case(job_files, case, "--dry-run")
    assert_one_line_error(result, "job.toml", *case.needles)
    assert tree(job_files.parent) == before | {job_files / "job.toml"}


@pytest.mark.parametrize("case_id", RUN_WITHOUT_DRY_RUN)
def test_bad_job_creates_nothing_on_a_real_run(job_files: Path, case_id: str) -> None:
    case = ERROR_CASES[case_id]
    write_job(job_files, job_tables())  # so that the snapshot below includes job.toml
    before = tree(job_files.parent)
    result = run_case(job_files, case)
    assert_one_line_error(result, "job.toml", *case.needles)
    assert tree(job_files.parent) == before
    assert not (job_files / ".fanout").exists()
    assert not (job_files.parent / "fanout-out").exists()


def test_missing_job_file_is_one_line_error(tmp_path: Path) -> None:
    result = run_fanout("run", "missing.toml", "--dry-run", cwd=tmp_path)
    assert_one_line_error(result, "missing.toml", "no such job file")
    assert tree(tmp_path) == set()


def test_unknown_backend_names_the_available_ones(job_files: Path) -> None:
    write_job(job_files, job_tables())
    before = tree(job_files.parent)
    result = run_fanout("run", job_files / "job.toml", "--backend", "nope", cwd=job_files.parent)
    assert_one_line_error(result, "'nope'", "available: ")
    available = result.stderr.split("available: ", 1)[1].strip().split(", ")
    assert "local" in available  # and any backend an installed plugin brings
    assert tree(job_files.parent) == before


@pytest.mark.parametrize(
    ("args", "option"),
    [
        pytest.param(("--slots", "0"), "--slots", id="slots-zero"),
        pytest.param(("--timeout", "nonsense"), "--timeout", id="timeout-nonsense"),
        pytest.param(("--timeout", "0s"), "--timeout", id="timeout-zero"),
        pytest.param(("--retries", "-1"), "--retries", id="retries-negative"),
    ],
)
def test_bad_option_is_a_usage_error(job_files: Path, args: tuple[str, ...], option: str) -> None:
    write_job(job_files, job_tables())
    before = tree(job_files.parent)
    result = run_fanout("run", job_files / "job.toml", "--dry-run", *args, cwd=job_files.parent)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert option in result.stderr
    assert tree(job_files.parent) == before


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(job_tables(name="bad\nname"), id="name"),
        pytest.param(job_tables(timeout="10\nm"), id="timeout"),
        pytest.param(
            '[job]\nname = "x"\ninputs = ["in/*.txt"]\ncommand = "c"\n"in\\nputs" = 1\n',
            id="unknown-key",
        ),
    ],
)
def test_values_with_newlines_still_give_one_line(
    job_files: Path, content: dict[str, dict[str, Any]] | str
) -> None:
    result = run_case(job_files, ErrorCase(content, ()), "--dry-run")
    assert_one_line_error(result, "job.toml")


def test_bad_environment_setting_names_the_variable(job_files: Path) -> None:
    write_job(job_files, job_tables())
    result = run_fanout(
        "run",
        job_files / "job.toml",
        "--dry-run",
        cwd=job_files.parent,
        env={"FANOUT_LOCAL_SLOTS": "abc"},
    )
    assert_one_line_error(result, "FANOUT_LOCAL_SLOTS")


@pytest.mark.parametrize(
    "command",
    [
        pytest.param("grep -c [a-z] {input}", id="swallowed"),
        pytest.param("sed s/[/]/_/g {input}", id="crash"),
    ],
)
def test_dry_run_shows_command_verbatim(job_files: Path, command: str) -> None:
    write_job(job_files, job_tables(command=command))
    result = run_fanout(
        "run", job_files / "job.toml", "--dry-run", cwd=job_files.parent, env=WIDE_TERMINAL
    )
    assert "Traceback" not in result.stderr
    assert result.returncode == 0, result.stderr
    assert command.replace("{input}", "a.txt") in result.stdout


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param("90s", 90.0, id="seconds"),
        pytest.param("10m", 600.0, id="minutes"),
        pytest.param("1h30m", 5400.0, id="hours-and-minutes"),
        pytest.param("1h 30m", 5400.0, id="with-space"),
        pytest.param("2d", 172800.0, id="days"),
        pytest.param("250ms", 0.25, id="milliseconds"),
        pytest.param("1.5s", 1.5, id="fraction"),
        pytest.param(45, 45.0, id="int"),
        pytest.param(2.5, 2.5, id="float"),
        pytest.param(None, None, id="none"),
    ],
)
def test_parse_duration(value: object, seconds: float | None) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("90", id="no-unit"),
        pytest.param("10x", id="unknown-unit"),
        pytest.param("-5s", id="negative-string"),
        pytest.param("1h30", id="trailing-number"),
        pytest.param("0s", id="zero"),
        pytest.param(0, id="zero-number"),
        pytest.param(-1, id="negative-number"),
        pytest.param(True, id="bool"),
        pytest.param([10], id="list"),
    ],
)
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_nan_timeout_is_refused() -> None:
    with pytest.raises(JobFileError, match=r"\[job\] timeout"):
        validate_job({"job": {**VALID_JOB, "timeout": math.nan}}, source="job.toml")


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"name": "abc\n"}, id="job-name"),
        pytest.param({"env": {"ABC\n": "1"}}, id="env-name"),
    ],
)
def test_trailing_newline_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(JobFileError):
        validate_job({"job": {**VALID_JOB, **changes}}, source="job.toml")


def test_render_command_quotes_each_value_as_one_shell_word() -> None:
    command = render_command(
        "wc -l {input} {input_name} {input_stem}.out {task_id}",
        "its-a-file",
        (Path("/data/it's a file.txt"),),
    )
    assert shlex.split(command) == [
        "wc",
        "-l",
        "it's a file.txt",
        "it's a file.txt",
        "it's a file.out",
        "its-a-file",
    ]


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("it's a file.txt", id="quote-and-space"),
        pytest.param("$(touch pwned) `touch pwned`.txt", id="substitution"),
        pytest.param("a;b&c|d>e.txt", id="operators"),
        pytest.param("-n.txt", id="leading-dash"),
    ],
)
def test_rendered_command_passes_the_name_through_a_shell(tmp_path: Path, name: str) -> None:
    command = render_command("printf '%s' {input}", "task", (Path("/data") / name,))
    result = subprocess.run(
        ["/bin/sh", "-c", command], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert result.stdout == name
    assert not (tmp_path / "pwned").exists()


def test_render_command_keeps_literal_braces() -> None:
    assert render_command("echo {{}} {input}", "t", (Path("/d/a.txt"),)) == "echo {} a.txt"


def test_inputs_renders_every_input_as_its_own_shell_word() -> None:
    inputs = (Path("/d/a b.txt"), Path("/d/it's.txt"))
    command = render_command("cat {inputs} > {task_id}.all", "a_to_it-s", inputs)
    assert shlex.split(command) == ["cat", "a b.txt", "it's.txt", ">", "a_to_it-s.all"]


def test_cli_overrides_show_in_dry_run(job_files: Path) -> None:
    write_job(job_files, job_tables(extra={"backends.local": {"slots": 1}}))
    before = tree(job_files.parent)
    result = run_fanout(
        "run",
        job_files / "job.toml",
        "--dry-run",
        "--retries",
        "3",
        "--timeout",
        "5m",
        "--slots",
        "3",
        cwd=job_files.parent,
    )
    assert result.returncode == 0, result.stderr
    assert "'slots': 3" in result.stdout
    assert "2 tasks" in result.stdout
    assert tree(job_files.parent) == before


def test_cli_overrides_replace_job_file_values(job_files: Path) -> None:
    path = write_job(
        job_files, job_tables(retries=1, timeout="1m", extra={"backends.local": {"slots": 1}})
    )
    prepared = prepare(load_job(path), RunOptions(retries=3, timeout=300.0, slots=3, environ={}))
    assert prepared.job.spec.job.retries == 3
    assert prepared.job.spec.job.timeout == 300.0
    assert prepared.settings.model_dump()["slots"] == 3


def test_job_file_values_apply_without_overrides(job_files: Path) -> None:
    path = write_job(
        job_files,
        job_tables(retries=2, timeout="1h30m", extra={"backends.local": {"slots": 2}}),
    )
    prepared = prepare(load_job(path), RunOptions(environ={}))
    assert prepared.job.spec.job.retries == 2
    assert prepared.job.spec.job.timeout == 5400.0
    assert prepared.settings.model_dump()["slots"] == 2


@pytest.mark.parametrize(
    ("environ", "slots", "expected"),
    [
        pytest.param({"FANOUT_LOCAL_SLOTS": "4"}, None, 4, id="environment-over-file"),
        pytest.param({"FANOUT_LOCAL_SLOTS": "4"}, 3, 3, id="option-over-environment"),
    ],
)
def test_slots_precedence(
    job_files: Path, environ: dict[str, str], slots: int | None, expected: int
) -> None:
    path = write_job(job_files, job_tables(extra={"backends.local": {"slots": 1}}))
    prepared = prepare(load_job(path), RunOptions(slots=slots, environ=environ))
    assert prepared.settings.model_dump()["slots"] == expected


def test_storage_and_out_overrides(
    job_files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = write_job(job_files, job_tables(extra={"storage": {"url": "in-file"}}))
    job = load_job(path)
    assert prepare(job, RunOptions(environ={})).storage_url == (job_files / "in-file").as_uri()
    overridden = prepare(job, RunOptions(storage="given", out=Path("out"), environ={}))
    assert overridden.storage_url == (tmp_path / "given").as_uri()
    assert overridden.options.out == Path("out")


def test_storage_defaults_beside_the_job_file(job_files: Path) -> None:
    prepared = prepare(load_job(write_job(job_files, job_tables())), RunOptions(environ={}))
    assert prepared.storage_url == (job_files / ".fanout").as_uri()


def test_inputs_sorted_one_task_per_file(job_dir: Path) -> None:
    write_inputs(job_dir, {name: name for name in ("in/c.txt", "in/a.txt", "in/b.txt")})
    path = write_job(job_dir, job_tables(inputs=["in/c.txt", "in/*.txt"]))
    plan = make_plan(load_job(path))
    inputs = [task.input for task in plan.tasks]
    assert inputs == sorted(inputs)
    assert [task.input.name for task in plan.tasks] == ["a.txt", "b.txt", "c.txt"]
    assert [task.command for task in plan.tasks] == ["cat a.txt", "cat b.txt", "cat c.txt"]


def test_absolute_input_paths_are_accepted(job_dir: Path, tmp_path: Path) -> None:
    write_inputs(tmp_path / "elsewhere", {"x.txt": "x", "y.txt": "y"})
    path = write_job(job_dir, job_tables(inputs=[str(tmp_path / "elsewhere" / "*.txt")]))
    plan = make_plan(load_job(path))
    assert [task.input for task in plan.tasks] == [
        (tmp_path / "elsewhere" / name).resolve() for name in ("x.txt", "y.txt")
    ]


def test_double_star_globs_recurse(job_dir: Path) -> None:
    names = ("in/top.txt", "in/d1/mid.txt", "in/d1/d2/deep.txt", "in/d1/skip.csv")
    write_inputs(job_dir, {name: name for name in names})
    plan = make_plan(load_job(write_job(job_dir, job_tables(inputs=["in/**/*.txt"]))))
    assert sorted(task.input.name for task in plan.tasks) == ["deep.txt", "mid.txt", "top.txt"]


@pytest.mark.timeout(20)  # following both loops below would take 2**40 steps
def test_double_star_does_not_descend_into_links_to_directories(job_dir: Path) -> None:
    write_inputs(job_dir, {name: name for name in ("in/top.txt", "in/d1/mid.txt", "far/x.txt")})
    (job_dir / "in" / "d1" / "up").symlink_to("..")  # in/d1/up/d1/up/d1/... : a loop
    (job_dir / "in" / "d1" / "again").symlink_to("..")  # a second loop beside it
    (job_dir / "in" / "far").symlink_to(job_dir / "far")
    (job_dir / "in" / "alias.txt").symlink_to("top.txt")

    def inputs(*patterns: str) -> list[str]:
        plan = make_plan(load_job(write_job(job_dir, job_tables(inputs=list(patterns)))))
        return [str(task.input.relative_to(job_dir)) for task in plan.tasks]

    assert inputs("in/**/*.txt") == ["in/alias.txt", "in/d1/mid.txt", "in/top.txt"]
    assert inputs("**/*.txt") == ["far/x.txt", "in/alias.txt", "in/d1/mid.txt", "in/top.txt"]
    # A link that the pattern names, or that a single * matches, is followed.
    assert inputs("in/far/**/*.txt", "in/d1/up/top.txt") == ["in/d1/up/top.txt", "in/far/x.txt"]
    assert inputs("in/*/*.txt") == ["in/d1/mid.txt", "in/far/x.txt"]


@pytest.mark.parametrize(
    ("field", "name"),
    [("inputs", "two\nlines.txt"), ("inputs", "tab\there.txt"), ("app", "bell\x07.sh")],
    ids=["line-feed", "tab", "app-bell"],
)
def test_a_file_name_with_a_control_character_is_refused_on_a_real_run(
    job_files: Path, field: str, name: str
) -> None:
    write_inputs(job_files, {f"bin/{name}": "x", "bin/tool.sh": "", "bin/ok.txt": ""})
    write_job(job_files, job_tables(app=["bin/*.sh"], inputs=["in/*.txt", "bin/*.txt"]))
    before = tree(job_files.parent)
    result = run_fanout("run", "job.toml", cwd=job_files)
    shown = repr(str(job_files / "bin" / name))
    (control,) = (char for char in name if not char.isprintable())
    assert_one_line_error(result, "job.toml", f"[job] {field}: {shown}", f"U+{ord(control):04X}")
    assert tree(job_files.parent) == before


def test_job_directory_with_glob_characters(tmp_path: Path) -> None:
    job_dir = tmp_path / "jobs[1]"
    write_inputs(job_dir, {"in/a.txt": "a"})
    plan = make_plan(load_job(write_job(job_dir, job_tables())))
    assert [task.input.name for task in plan.tasks] == ["a.txt"]


@pytest.mark.parametrize("value", ["3", True, 1.5], ids=["string", "boolean", "float"])
def test_job_values_of_the_wrong_type_are_refused(tmp_path: Path, value: object) -> None:
    raw = {"job": {**VALID_JOB, "retries": value}}
    with pytest.raises(JobFileError, match=r"\[job\] retries"):
        validate_job(raw, source="job.toml")


def test_a_table_for_no_installed_backend_is_warned_about(job_files: Path) -> None:
    write_job(job_files, job_tables(extra={"backends.loacl": {"slots": 2}}))
    result = run_fanout("run", "job.toml", "--dry-run", cwd=job_files)
    assert result.returncode == 0, result.stderr
    assert "warning" in result.stderr
    assert "[backends.loacl] names no installed backend" in result.stderr


def test_attempt_job_ids_stay_valid_batch_ids() -> None:
    run_id = "20261125-101500-abcd"
    assert attempt_job_id("topwords", run_id, 0) == f"topwords-{run_id}"
    assert attempt_job_id("topwords", run_id, 12) == f"topwords-{run_id}-12"
    longest = attempt_job_id("j" * 40, run_id, 99)
    assert len(longest) == 64 and longest.endswith(f"-{run_id}-99")
