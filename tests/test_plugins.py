"""Plugins: a third-party backend registered in-process drives the real scheduler (as
simonw/llm's tests do), and the registry, ``fanout backends`` and the hooks keep their contract.

Each in-process plugin lives on a fresh plugin manager built like ``get_plugin_manager``'s but
without entry points, so the process-wide manager never sees it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import io
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import click
import pluggy
import pytest
from click.testing import CliRunner
from conftest import REPO, load_record, run_fanout, write_inputs, write_job
from pydantic import BaseModel, ConfigDict
from rich.console import Console

import fanout.backends.local
from fanout import hookspecs
from fanout.backend import (
    Backend,
    Capability,
    PoolSpec,
    RunContext,
    TaskSpec,
    TaskState,
    TaskUpdate,
)
from fanout.cli import cli
from fanout.errors import ExitCode, FanoutError, PluginError
from fanout.hookspecs import hookimpl
from fanout.plugins import (
    ENTRY_POINT_GROUP,
    PLUGINS_VARIABLE,
    backends,
    get_backend,
    get_plugin_manager,
)
from fanout.prepare import RunOptions, prepare
from fanout.progress import Reporter
from fanout.scheduler import Outcome, run
from fanout.spec import load_job
from fanout.transfer import TransferError, deliver, fetch, join_url, matching_files

NODE_ID = "inprocess-0"


class InProcessSettings(BaseModel):
    """The ``[backends.inprocess]`` table."""

    model_config = ConfigDict(extra="forbid")

    root: Path = Path(".inprocess")


class InProcessBackend(Backend):
    """Runs one queued task per poll, on this machine (a third-party backend)."""

    name = "inprocess"
    settings_model = InProcessSettings
    runs: ClassVar[list[InProcessBackend]] = []
    """Every instance made, so that a test sees the calls the scheduler made."""

    def __init__(self, settings: BaseModel, context: RunContext) -> None:
        super().__init__(settings, context)
        assert isinstance(settings, InProcessSettings)
        self.run_dir = (context.job_dir / settings.root / context.run_id).resolve()
        self.calls: list[str] = []
        self.node_env: dict[str, str] = {}
        self.queued: list[TaskSpec] = []
        self.stderr: dict[str, str] = {}
        InProcessBackend.runs.append(self)

    def preflight(self) -> None:
        self.calls.append("preflight")

    def provision(self, pool: PoolSpec) -> None:
        self.calls.append("provision")
        shared = self.run_dir / "shared"
        shared.mkdir(parents=True)
        for resource in pool.app_files:
            fetch(resource.url, shared / resource.path)
        self.node_env = {
            **pool.env,
            "FANOUT_JOB_ID": self.context.job_id,
            "FANOUT_NODE_ID": NODE_ID,
            "FANOUT_APP_DIR": str(shared),
        }

    def submit(self, tasks: Sequence[TaskSpec]) -> None:
        self.calls.append("submit")
        self.queued.extend(tasks)

    def poll(self, timeout: float) -> list[TaskUpdate]:
        self.calls.append("poll")
        if not self.queued:
            time.sleep(timeout)
            return []
        task = self.queued.pop(0)
        started = time.time()
        exit_code, error = self._run(task)
        return [
            TaskUpdate(task.id, TaskState.RUNNING, attempts=1, node=NODE_ID),
            TaskUpdate(
                task.id,
                TaskState.SUCCEEDED if error is None else TaskState.FAILED,
                attempts=1,
                exit_code=exit_code,
                node=NODE_ID,
                error=error,
                started=started,
                finished=time.time(),
            ),
        ]

    def task_logs(self, task_id: str, tail: int = 20) -> str:
        return "\n".join(self.stderr.get(task_id, "").splitlines()[-tail:])

    def cancel(self) -> None:
        self.calls.append("cancel")
        self.queued.clear()

    def teardown(self, keep: bool = False) -> None:
        self.calls.append("teardown")
        if not keep:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _run(self, task: TaskSpec) -> tuple[int | None, str | None]:
        """Fetch, run and deliver one task: (exit code, error or None)."""
        work_dir = self.run_dir / task.id
        work_dir.mkdir()
        try:
            for resource in task.resource_files:
                fetch(resource.url, work_dir / resource.path)
        except TransferError as exc:
            return None, str(exc)
        process = subprocess.run(
            ["/bin/sh", "-c", task.command],
            cwd=work_dir,
            env={**os.environ, **self.node_env, **task.env, "FANOUT_TASK_ID": task.id},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        self.stderr[task.id] = process.stderr
        if process.returncode != 0:
            return process.returncode, f"exit code {process.returncode}"
        try:
            for output in task.output_files:
                for relative in matching_files(work_dir, output.pattern):
                    deliver(work_dir / relative, join_url(output.destination, relative))
        except TransferError as exc:
            return process.returncode, str(exc)
        return process.returncode, None


class ImpostorBackend(InProcessBackend):
    """Another plugin's backend that claims the name ``inprocess``."""


class BackendPlugin:
    """A third-party plugin as an object: its one hook registers ``backend_classes``."""

    def __init__(self, *backend_classes: Any) -> None:
        self.backend_classes = backend_classes

    @hookimpl
    def fanout_register_backends(self, register: Callable[[type[Backend]], None]) -> None:
        for cls in self.backend_classes:
            register(cls)


def fresh_manager(**plugins: object) -> pluggy.PluginManager:
    """A manager like ``get_plugin_manager``'s, holding only ``plugins`` (by name)."""
    manager = pluggy.PluginManager("fanout")
    manager.add_hookspecs(hookspecs)
    for name, plugin in plugins.items():
        manager.register(plugin, name=name)
    manager.check_pending()
    return manager


@pytest.fixture
def inprocess_manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[pluggy.PluginManager]:
    """A plugin manager with the ``inprocess`` backend registered, as its plugin would be."""
    monkeypatch.setattr(InProcessBackend, "runs", [])
    yield fresh_manager(**{"fanout-inprocess": BackendPlugin(InProcessBackend)})


def run_inprocess(job_file: Path, out: Path, manager: pluggy.PluginManager) -> Outcome:
    """Prepare and run ``job_file`` on the ``inprocess`` backend, as ``fanout run`` does."""
    options = RunOptions(backend="inprocess", out=out, environ={})
    prepared = prepare(load_job(job_file), options, manager)
    assert prepared.warnings == ()
    return run(prepared, Reporter(Console(file=io.StringIO())))


def output_record(task_id: str, path: str, content: bytes) -> dict[str, Any]:
    return {
        "path": f"{task_id}/{path}",
        "bytes": len(content),
        "md5": hashlib.md5(content).hexdigest(),
    }


def test_third_party_backend_drives_the_scheduler(
    job_dir: Path, tmp_path: Path, inprocess_manager: pluggy.PluginManager
) -> None:
    texts = {"a": "alpha\n", "b": "beta beta\n", "c": "gamma\n"}
    write_inputs(job_dir, {f"in/{stem}.txt": text for stem, text in texts.items()})
    write_job(
        job_dir,
        {
            "job": {
                "name": "upper",
                "inputs": ["in/*.txt"],
                "command": "mkdir out && tr a-z A-Z < {input} > out/upper.txt"
                ' && echo "$GREETING $FANOUT_TASK_ID" > out/id.txt',
                "outputs": ["out/*.txt"],
                "env": {"GREETING": "hi"},
            },
            "backends.inprocess": {"root": "nodes"},
        },
    )
    out = tmp_path / "results"

    outcome = run_inprocess(job_dir / "job.toml", out, inprocess_manager)

    assert outcome.exit_code is ExitCode.OK
    record = load_record(out)
    assert (record["backend"], record["status"]) == ("inprocess", "finished")
    assert [task["id"] for task in record["tasks"]] == list(texts)
    for task in record["tasks"]:
        expected = {
            "out/id.txt": f"hi {task['id']}\n".encode(),
            "out/upper.txt": texts[task["id"]].upper().encode(),
        }
        assert task["state"] == "succeeded", task
        assert (task["exit_code"], task["attempts"], task["node"]) == (0, 1, NODE_ID)
        assert sorted(task["outputs"], key=lambda output: output["path"]) == [
            output_record(task["id"], path, content) for path, content in expected.items()
        ]
        for path, content in expected.items():
            assert (out / task["id"] / path).read_bytes() == content

    [backend] = InProcessBackend.runs
    assert backend.run_dir.parent == (job_dir / "nodes").resolve()  # its setting was read
    assert backend.calls[:3] == ["preflight", "provision", "submit"]
    assert backend.calls[-1] == "teardown"
    assert set(backend.calls[3:-1]) == {"poll"}
    assert backend.calls.count("poll") >= len(texts)
    assert not backend.run_dir.exists()  # every task succeeded: nothing kept


def test_third_party_backend_reports_a_failed_task(
    job_dir: Path, tmp_path: Path, inprocess_manager: pluggy.PluginManager
) -> None:
    write_inputs(job_dir, {"good.txt": "fine\n", "bad.txt": "broken\n"})
    write_job(
        job_dir,
        {
            "job": {
                "name": "mixed",
                "inputs": ["*.txt"],
                "command": "if [ {input_stem} = bad ]; then echo cannot read {input} >&2; exit 3;"
                " fi; cp {input} copy.out",
                "outputs": ["*.out"],
            }
        },
    )
    out = tmp_path / "results"

    outcome = run_inprocess(job_dir / "job.toml", out, inprocess_manager)

    assert outcome.exit_code is ExitCode.TASKS_FAILED
    tasks = {task["id"]: task for task in load_record(out)["tasks"]}
    bad, good = tasks["bad"], tasks["good"]
    assert (bad["state"], bad["exit_code"], bad["error"]) == ("failed", 3, "exit code 3")
    assert (bad["stderr_tail"], bad["outputs"]) == ("cannot read bad.txt", [])
    assert good["state"] == "succeeded"
    assert good["outputs"] == [output_record("good", "copy.out", b"fine\n")]
    [backend] = InProcessBackend.runs
    assert backend.calls[-1] == "teardown"
    assert "cancel" not in backend.calls
    assert backend.run_dir.is_dir()  # a task failed: teardown was asked to keep its directory


@pytest.mark.parametrize(
    ("job_fields", "overrides", "what"),
    [
        ({"retries": 2}, {}, "retries"),
        ({}, {"retries": 2}, "retries"),
        ({"timeout": "1m"}, {}, "timeouts"),
        ({}, {"timeout": 60.0}, "timeouts"),
        ({"setup": ["true"]}, {}, "setup"),
    ],
)
def test_backend_refuses_a_job_it_lacks_the_capability_for(
    job_dir: Path,
    inprocess_manager: pluggy.PluginManager,
    job_fields: dict[str, Any],
    overrides: dict[str, Any],
    what: str,
) -> None:
    assert InProcessBackend.capabilities == frozenset()
    write_inputs(job_dir, {"a.txt": "a"})
    write_job(
        job_dir, {"job": {"name": "needy", "inputs": ["*.txt"], "command": "true", **job_fields}}
    )
    options = RunOptions(backend="inprocess", out=job_dir / "out", environ={}, **overrides)

    with pytest.raises(FanoutError, match=rf"backend 'inprocess' cannot run {what}\b"):
        prepare(load_job(job_dir / "job.toml"), options, inprocess_manager)

    assert InProcessBackend.runs == []
    assert sorted(path.name for path in job_dir.iterdir()) == ["a.txt", "job.toml"]


def test_local_backend_has_every_capability() -> None:
    assert get_backend("local").capabilities == frozenset(Capability)


def test_two_plugins_registering_one_backend_name() -> None:
    manager = fresh_manager(
        **{
            "fanout-inprocess": BackendPlugin(InProcessBackend),
            "fanout-impostor": BackendPlugin(ImpostorBackend),
        }
    )
    with pytest.raises(PluginError, match="backend 'inprocess' is registered by both") as raised:
        backends(manager)
    assert "fanout-inprocess" in str(raised.value)
    assert "fanout-impostor" in str(raised.value)


@pytest.mark.parametrize("registered", [dict, "inprocess", InProcessSettings])
def test_registering_something_that_is_not_a_backend(registered: object) -> None:
    manager = fresh_manager(**{"fanout-confused": BackendPlugin(registered)})
    with pytest.raises(PluginError, match=r"plugin fanout-confused .* registered .*not a Backend"):
        backends(manager)


class BackendWithoutName(Backend):
    """A backend whose author forgot ``name``."""

    def provision(self, pool: PoolSpec) -> None: ...

    def submit(self, tasks: Sequence[TaskSpec]) -> None: ...

    def poll(self, timeout: float) -> list[TaskUpdate]:
        return []

    def cancel(self) -> None: ...

    def teardown(self, keep: bool = False) -> None: ...


class BackendWithoutPoll(Backend):
    """A backend whose author has not written ``poll``, ``cancel`` and ``teardown`` yet."""

    name = "unfinished"

    def provision(self, pool: PoolSpec) -> None: ...

    def submit(self, tasks: Sequence[TaskSpec]) -> None: ...


def test_backend_without_a_name_is_refused() -> None:
    manager = fresh_manager(**{"fanout-nameless": BackendPlugin(BackendWithoutName)})
    with pytest.raises(PluginError, match="fanout-nameless"):
        backends(manager)


def test_abstract_backend_is_refused() -> None:
    manager = fresh_manager(**{"fanout-unfinished": BackendPlugin(BackendWithoutPoll)})
    with pytest.raises(PluginError, match="fanout-unfinished"):
        backends(manager)


class BrokenPlugin:
    """A plugin whose hook fails, e.g. on an import it defers to registration time."""

    @hookimpl
    def fanout_register_backends(self, register: Callable[[type[Backend]], None]) -> None:
        raise RuntimeError("no module named 'fanout_broken.client'")


def test_plugin_hook_that_fails_is_a_plugin_error() -> None:
    manager = fresh_manager(**{"fanout-broken": BrokenPlugin()})
    with pytest.raises(PluginError, match="fanout-broken"):
        backends(manager)


def test_no_backend_without_plugins() -> None:
    """Backends come only from plugins: a manager without any has none."""
    manager = fresh_manager()
    assert backends(manager) == {}
    with pytest.raises(PluginError, match="available: none"):
        get_backend("local", manager)


def test_local_backend_comes_through_the_entry_point_group() -> None:
    [entry_point] = [
        entry_point
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        if entry_point.name == "local"
    ]
    assert entry_point.value == "fanout.backends.local"
    assert entry_point.dist is not None and entry_point.dist.name == "fanout"
    manager = get_plugin_manager()
    assert manager.get_plugin("local") is fanout.backends.local
    entry = backends(manager)["local"]
    assert entry.cls is fanout.backends.local.LocalBackend
    assert (entry.distribution, entry.version) == ("fanout", importlib.metadata.version("fanout"))


def test_fanout_backends_lists_distribution_and_version(tmp_path: Path) -> None:
    result = run_fanout("backends", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    version = re.escape(importlib.metadata.version("fanout"))
    assert re.search(rf"^\s*local\s+fanout\s+{version}\s+Runs tasks", result.stdout, re.M), (
        result.stdout
    )


def test_unknown_backend_names_the_available_ones(job_dir: Path) -> None:
    write_inputs(job_dir, {"a.txt": "a"})
    write_job(job_dir, {"job": {"name": "lost", "inputs": ["*.txt"], "command": "true"}})
    result = run_fanout("run", "job.toml", "--backend", "nosuch", cwd=job_dir)
    assert result.returncode == ExitCode.USAGE_ERROR
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("fanout: error: ")
    assert "'nosuch'" in line
    assert re.search(r"available: .*\blocal\b", line), line
    assert sorted(path.name for path in job_dir.iterdir()) == ["a.txt", "job.toml"]


class CommandPlugin:
    """A plugin that adds ``fanout greet WHO``."""

    @hookimpl
    def fanout_register_commands(self, cli: click.Group) -> None:
        @cli.command(name="greet")
        @click.argument("who")
        def greet(who: str) -> None:
            """Say hello."""
            click.echo(f"hello {who}")


@pytest.fixture
def greet_command() -> Iterator[str]:
    """``greet`` added to ``fanout.cli.cli`` as ``main`` adds plugin commands; removed after."""
    assert "greet" not in cli.commands
    fresh_manager(commands=CommandPlugin()).hook.fanout_register_commands(cli=cli)
    yield "greet"
    del cli.commands["greet"]


def test_plugin_adds_a_command(greet_command: str) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, [greet_command, "world"])
    assert (result.exit_code, result.output) == (0, "hello world\n")
    listing = runner.invoke(cli, ["--help"])
    assert re.search(rf"^\s+{greet_command}\s+Say hello\.$", listing.output, re.M), listing.output


HOOKS = sorted(
    name
    for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
    if hasattr(function, "fanout_spec")
)


def test_hookspecs_are_found() -> None:
    assert "fanout_register_backends" in HOOKS
    assert "fanout_register_commands" in HOOKS


@pytest.mark.parametrize("hook", HOOKS)
def test_hookspec_is_documented(hook: str) -> None:
    function = getattr(hookspecs, hook)
    docstring = inspect.getdoc(function)
    assert docstring, f"{hook} has no docstring"
    for parameter in inspect.signature(function).parameters:
        assert f":param {parameter}:" in docstring, f"{hook} does not describe {parameter}"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_named_in_readme(hook: str) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert f"`{hook}(" in readme


def test_installed_plugins_implement_only_specified_hooks() -> None:
    manager = get_plugin_manager()
    manager.check_pending()
    for name, caller in vars(manager.hook).items():
        assert caller.spec is not None, f"{name} has no hook specification"
        assert caller.spec.namespace is hookspecs, f"{name} is specified outside fanout.hookspecs"


@pytest.fixture
def broken_distribution(tmp_path: Path) -> dict[str, str]:
    """An installed distribution ``fanout-broken`` whose plugin module fails to import; the
    environment that puts it on the path."""
    site = tmp_path / "site"
    info = site / "fanout_broken-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fanout-broken\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[fanout]\nbroken = fanout_broken_plugin\n")
    (site / "fanout_broken_plugin.py").write_text("import a_module_that_is_not_there\n")
    environ = {k: v for k, v in os.environ.items() if k != PLUGINS_VARIABLE}
    return {**environ, "PYTHONPATH": str(site)}


def fanout_in(environ: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fanout", *args], env=environ, capture_output=True, text=True
    )


def test_a_plugin_that_fails_to_load_is_named_and_the_rest_work(
    broken_distribution: dict[str, str],
) -> None:
    helped = fanout_in(broken_distribution, "--help")
    assert helped.returncode == 0, helped.stderr
    assert helped.stderr.splitlines() == [
        "fanout: warning: plugin fanout-broken 1.0 could not be loaded (No module named"
        " 'a_module_that_is_not_there'); FANOUT_PLUGINS selects which plugins load"
    ]
    assert "batch-emulator" in helped.stdout  # the other plugins' commands are there
    listed = fanout_in(broken_distribution, "backends")
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^\s*local\s+fanout\s", listed.stdout, re.M)
    assert re.search(r"^\s*azure-batch\s+fanout-azure\s", listed.stdout, re.M)
    assert re.search(r"^\s*-\s+fanout-broken\s+1\.0\s+broken: No module named", listed.stdout, re.M)


def test_fanout_plugins_selects_the_plugins_that_load(
    broken_distribution: dict[str, str],
) -> None:
    none = fanout_in({**broken_distribution, PLUGINS_VARIABLE: ""}, "backends")
    assert none.returncode == 0 and none.stderr == ""
    assert re.search(r"^\s*local\s+fanout\s", none.stdout, re.M)
    assert "azure-batch" not in none.stdout and "fanout-broken" not in none.stdout
    azure = fanout_in({**broken_distribution, PLUGINS_VARIABLE: "Fanout_Azure"}, "backends")
    assert azure.returncode == 0 and azure.stderr == ""
    assert re.search(r"^\s*azure-batch\s+fanout-azure\s", azure.stdout, re.M)
    assert "fanout-broken" not in azure.stdout
