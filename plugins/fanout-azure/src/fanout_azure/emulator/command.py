"""``fanout batch-emulator``: serve the emulator until SIGINT or SIGTERM.

``--busy-every N`` injects faults for clients' retry tests: every N-th request (counted over all
requests) is answered 503 ``ServerBusy`` with ``Retry-After: 1`` and not executed; the request
log shows each such refusal with status 503.
"""

from __future__ import annotations

import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

import click

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
def batch_emulator(
    host: str,
    port: int,
    account: str,
    key: str,
    root: Path | None,
    request_log: Any,
    busy_every: int,
) -> None:
    """Serve an Azure Batch emulator (REST API 2025-06-01) until SIGINT or SIGTERM.

    With --busy-every N, every Nth request is refused 503 ServerBusy (Retry-After: 1) unexecuted,
    so that a client's retries can be tested.
    """
    from fanout_azure.emulator.server import BatchEmulator  # the spec loads: only when serving

    with tempfile.TemporaryDirectory(prefix="fanout-batch-emulator-") as scratch:
        emulator = BatchEmulator(
            host,
            port,
            account,
            key,
            root or Path(scratch),
            request_log,
            busy_every=busy_every,
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
