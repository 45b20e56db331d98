"""``fanout batch-emulator``: serve the emulator until SIGINT or SIGTERM.

The fault options set the knobs of ``faults.Faults`` from the start (all off by default); the
admin endpoint (``admin``, ``/_emulator/faults`` on the same port) sets them while it runs.
``--busy-every N``: every N-th request (counted over all requests) is answered 503
``ServerBusy`` with ``Retry-After: 1`` and not executed; the request log shows each such refusal
with status 503.
"""

from __future__ import annotations

import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

import click

from fanout_azure.emulator.faults import ALL_POOLS, RESIZE_ERRORS, Busy, Faults

DEFAULT_ACCOUNT = "devbatchaccount1"
DEFAULT_KEY = (
    "ZmFub3V0LWJhdGNoLWVtdWxhdG9yLWRldmVsb3BtZW50LWtleS1vcGVucy1ub3RoaW5nLWJ1dC10aGUtZW11bGF0b3I="
)
"""The emulator's published development key, as Azurite publishes devstoreaccount1's: it opens
nothing but an emulator on your own machine."""
DEFAULT_PORT = 10100


@click.command("batch-emulator")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, help="Port (0: any free one).")
@click.option("--account", default=DEFAULT_ACCOUNT, show_default=True, help="Account name.")
@click.option("--key", default=DEFAULT_KEY, help="Account key, base64 (default: the dev key).")
@click.option(
    "--root",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where node directories go (default: a temporary directory, removed at exit).",
)
@click.option(
    "--request-log",
    type=click.File("a"),
    help="Append one line per request: METHOD PATH STATUS.",
)
@click.option(
    "--busy-every",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    metavar="N",
    help="Fault injection for retry tests: answer every Nth request (counted over all requests)"
    " 503 ServerBusy with Retry-After: 1, without executing it; such refusals appear in the"
    " request log with status 503. 0: never.",
)
@click.option(
    "--outage",
    type=click.FloatRange(min=0),
    default=0,
    metavar="SECONDS",
    help="Refuse every request 503 ServerBusy for this long from the start.",
)
@click.option(
    "--lose-answers",
    multiple=True,
    metavar="OPERATION[:N]",
    help="Carry out the next N (default 1) requests of this operationId, never answer them.",
)
@click.option(
    "--resize-error",
    multiple=True,
    metavar="[POOL=]CODE",
    help=f"Resizes of POOL (default: every pool) get no node and this resize error, one of"
    f" {', '.join(RESIZE_ERRORS)}.",
)
@click.option(
    "--stale-resize-errors",
    is_flag=True,
    help="Keep a pool's resize errors after a later resize succeeds.",
)
@click.option(
    "--stuck-resizes",
    is_flag=True,
    help="Leave every resize that would add nodes under way, adding none and reporting no error.",
)
@click.option(
    "--node-start-seconds",
    type=click.FloatRange(min=0),
    default=0,
    metavar="SECONDS",
    help="How long a new node takes to come up (it is 'starting' meanwhile).",
)
@click.option(
    "--preempt-spot-after",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Preempt each spot node this long after it comes up; its running tasks are requeued.",
)
@click.option(
    "--unusable-after",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Each node turns 'unusable' this long after it comes up; its tasks are requeued.",
)
def batch_emulator(
    host: str,
    port: int,
    account: str,
    key: str,
    root: Path | None,
    request_log: Any,
    busy_every: int,
    outage: float,
    lose_answers: tuple[str, ...],
    resize_error: tuple[str, ...],
    stale_resize_errors: bool,
    stuck_resizes: bool,
    node_start_seconds: float,
    preempt_spot_after: float | None,
    unusable_after: float | None,
) -> None:
    """Serve an Azure Batch emulator (REST API 2025-06-01, and the older versions whose
    description is shipped) until SIGINT or SIGTERM.

    The fault options are off by default; GET or POST /_emulator/faults on the same port (from
    this machine only) reads and changes them while it runs.
    """
    from fanout_azure.emulator.server import BatchEmulator  # the spec loads: only when serving

    faults = Faults(Busy(busy_every))
    faults.busy.refuse_for(outage)
    faults.node_start_s = node_start_seconds
    faults.preempt_spot_after_s = preempt_spot_after
    faults.unusable_after_s = unusable_after
    faults.stale_resize_errors = stale_resize_errors
    faults.stuck_resizes = stuck_resizes
    for item in lose_answers:
        operation, _, count = item.partition(":")
        if count and not count.isdecimal():
            raise click.BadParameter(
                f"{item!r}: N must be a whole number", param_hint="--lose-answers"
            )
        faults.lost.lose(operation, int(count or 1))
    for item in resize_error:
        pool, _, code = item.rpartition("=")
        try:
            faults.set_resize_error(code, pool or ALL_POOLS)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--resize-error") from None

    with tempfile.TemporaryDirectory(prefix="fanout-batch-emulator-") as scratch:
        emulator = BatchEmulator(
            host,
            port,
            account,
            key,
            root or Path(scratch),
            request_log,
            faults=faults,
        )
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        emulator.start()
        shown_key = key if key == DEFAULT_KEY else "(the one given with --key)"
        click.echo(f"Batch emulator listening on {emulator.endpoint}")
        click.echo(f"account: {account}")
        click.echo(f"key: {shown_key}", nl=True)
        click.echo(f"export AZURE_BATCH_ENDPOINT={emulator.endpoint} AZURE_BATCH_ACCOUNT={account}")
        stop.wait()
        click.echo("stopping: ending every task and node process")
        emulator.stop()
