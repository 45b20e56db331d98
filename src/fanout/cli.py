"""The ``fanout`` command line: parses arguments, calls the API, maps errors to exit codes."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from fanout.errors import ExitCode, FanoutError
from fanout.plugins import PLUGINS_VARIABLE, backends, get_backend, get_plugin_manager
from fanout.prepare import DEFAULT_BACKEND, RunOptions, backend_settings, prepare
from fanout.progress import make_reporter, print_plan
from fanout.redact import redact
from fanout.scheduler import Interrupted, interruptible, run
from fanout.spec import load_job, parse_duration


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fanout")
def cli() -> None:
    """Fan a batch of tasks out over many machines and gather the results."""


@cli.command(name="run")
@click.argument("job_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--backend", default=DEFAULT_BACKEND, show_default=True, help="Where tasks run.")
@click.option("--storage", help="Storage URL (fsspec), overriding [storage] url.")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where outputs and the run record go.  [default: ./fanout-out]",
)
@click.option("--slots", type=click.IntRange(min=1), help="Tasks run at once per node.")
@click.option(
    "--retries", type=click.IntRange(min=0, max=100), help="Extra attempts after a failure."
)
@click.option("--timeout", callback=_duration, help="Per-task wall clock, e.g. 90s or 10m.")
@click.option("--dry-run", is_flag=True, help="Print the plan; create and run nothing.")
@click.option(
    "-v", "--verbose", count=True, help="Log to stderr: -v what fanout does, -vv every request."
)
@click.option(
    "--resume",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[RUN_ID]",
    help="Finish an interrupted run (default: the latest one of this job).",
)
def run_command(
    job_file: Path,
    backend: str,
    storage: str | None,
    out: Path | None,
    slots: int | None,
    retries: int | None,
    timeout: float | None,
    dry_run: bool,
    verbose: int,
    resume: str | None,
) -> None:
    """Run JOB_FILE: one task per input, on the chosen backend."""
    configure_logging(verbose)
    console = Console(stderr=False, highlight=False)
    options = RunOptions(
        backend=backend,
        storage=storage,
        out=out,
        slots=slots,
        retries=retries,
        timeout=timeout,
        resume=resume,
    )
    with _user_errors(), interruptible():
        prepared = prepare(load_job(job_file), options, get_plugin_manager())
        for warning in prepared.warnings:
            click.echo(f"fanout: warning: {one_line(warning)}", err=True)
        if dry_run:
            print_plan(console, prepared)
            return
        reporter = make_reporter(console)
        try:
            outcome = run(prepared, reporter)
        finally:
            reporter.close()
        for error in outcome.errors:
            click.echo(f"fanout: error: {one_line(error)}", err=True)
        sys.exit(outcome.exit_code)


@cli.command(name="backends")
def backends_command() -> None:
    """List the available backends and the distributions that provide them."""
    with _user_errors():
        table = Table("backend", "distribution", "version", "description", box=None)
        manager = get_plugin_manager()
        for name, entry in backends(manager).items():
            description = (entry.cls.__doc__ or "").strip().splitlines()
            table.add_row(
                name, entry.distribution, entry.version, description[0] if description else ""
            )
        for broken in manager.broken:
            table.add_row("-", broken.distribution, broken.version, f"broken: {broken.error}")
        Console().print(table)


@cli.command(name="clean")
@click.argument("job_file", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--backend", required=True, help="The backend to clean up after.")
@click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
@click.option(
    "--all",
    "everything",
    is_flag=True,
    help="Also what may still be in use (runs in progress elsewhere stop) or was kept.",
)
def clean_command(job_file: Path | None, backend: str, dry_run: bool, everything: bool) -> None:
    """Delete what interrupted or killed runs left on a backend, and nothing else.

    Only resources carrying fanout's marks are touched. JOB_FILE supplies the backend's
    settings ([backends.NAME]); without it they come from the environment.
    """
    stopped = (
        "interrupted; what is listed above was dealt with, run fanout clean again for the rest"
    )
    with _user_errors(stopped), interruptible():
        job = load_job(job_file) if job_file is not None else None
        backend_cls = get_backend(backend, get_plugin_manager())
        settings = backend_settings(backend_cls, job, RunOptions(backend=backend))
        job_dir = job.directory if job is not None else Path.cwd()
        found = backend_cls.clean(settings, job_dir, dry_run=dry_run, everything=everything)
        verb = "would delete" if dry_run else "deleted"
        count, left = 0, 0
        for item in found:
            count += 1
            if item.problem is None:
                click.echo(f"{verb} {one_line(item.description)}")
            else:
                left += 1
                click.echo(
                    f"could not delete {one_line(item.description)}: {one_line(item.problem)}"
                )
        if not count:
            click.echo(f"nothing to clean on backend {backend}")
        if left:
            click.echo(
                f"fanout: error: {left} of {count} could not be deleted; run fanout clean again"
                " later to retry",
                err=True,
            )
            sys.exit(ExitCode.NOT_ALL_DELETED)


@contextmanager
def _user_errors(
    interrupted: str = "interrupted before the run started; nothing was created",
) -> Iterator[None]:
    """Report a ``FanoutError`` as one line on stderr and exit with its status; a Ctrl-C
    (``Interrupted``) as ``interrupted`` says."""
    try:
        yield
    except FanoutError as exc:
        click.echo(f"fanout: error: {one_line(str(exc))}", err=True)
        sys.exit(exc.exit_code)
    except Interrupted as stop:
        click.echo(f"fanout: {interrupted}", err=True)
        sys.exit(stop.exit_code)


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure_logging(verbosity: int) -> None:
    """Log to stderr: warnings only by default, fanout's own steps at -v, everything (SDK
    requests too) at -vv; secrets are removed from every line."""
    handler = logging.StreamHandler()
    root = logging.getLogger()
    root.addHandler(handler)
    if not verbosity:
        handler.setFormatter(_RedactingFormatter("fanout: %(message)s"))
        root.setLevel(logging.WARNING)
        return
    handler.setFormatter(_RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if verbosity == 1:
        root.setLevel(logging.WARNING)
        logging.getLogger("fanout").setLevel(logging.INFO)
    else:
        root.setLevel(logging.DEBUG)


def one_line(message: str) -> str:
    """``message`` on one line (a value quoted in it may hold a newline), without secrets."""
    return redact(message).replace("\r", "\\r").replace("\n", "\\n")


def main() -> None:
    """The console script: the commands plugins add, then the command line. A plugin that
    cannot be loaded, or fails to add its commands, is named in a warning; the rest work."""
    manager = get_plugin_manager()
    for broken in manager.broken:
        click.echo(
            f"fanout: warning: plugin {broken.distribution} {broken.version} could not be"
            f" loaded ({one_line(broken.error)}); {PLUGINS_VARIABLE} selects which plugins load",
            err=True,
        )
    for impl in manager.hook.fanout_register_commands.get_hookimpls():
        try:
            impl.function(cli=cli)
        except Exception as exc:  # a broken plugin must not show as a traceback
            distribution, _ = manager.distributions.get(impl.plugin_name, (impl.plugin_name, ""))
            click.echo(
                f"fanout: warning: plugin {distribution} failed to add its commands:"
                f" {one_line(str(exc))}",
                err=True,
            )
    cli()
