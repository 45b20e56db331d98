"""Start a real Azurite blob service for the tests: in Docker when one answers, else from npm.

With a Docker engine and pytest-docker installed, the ``azurite`` service of the project's
``docker-compose.yml`` runs for the session. Otherwise ``node_modules/.bin/azurite-blob``, which
``make test`` installs from the pinned ``package-lock.json``, runs as a child process. Either way
it listens on a free port of 127.0.0.1 and serves the published development account.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from azure.storage.blob import BlobServiceClient

REPO = Path(__file__).resolve().parents[1]
AZURITE_BLOB = REPO / "node_modules" / ".bin" / "azurite-blob"
COMPOSE_FILE = REPO / "docker-compose.yml"

# Azurite's published development account; the key is public and only opens the emulator.
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

START_TIMEOUT = 20.0  # seconds; Azurite from npm answers after about 1 s here
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL


@dataclass(frozen=True)
class Azurite:
    """Where a blob service for the development account answers (or, for tests, does not)."""

    endpoint: str  # http://127.0.0.1:PORT/devstoreaccount1
    account: str = DEV_ACCOUNT
    key: str = DEV_KEY

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account};"
            f"AccountKey={self.key};BlobEndpoint={self.endpoint};"
        )

    def blob_service(self) -> BlobServiceClient:
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string)


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def nowhere() -> Azurite:
    """An Azurite whose endpoint refuses connections: a free port nobody listens on."""
    return Azurite(endpoint=f"http://127.0.0.1:{free_port()}/{DEV_ACCOUNT}")


# Straight to 127.0.0.1, whatever http_proxy says.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(
    url: str, method: str = "GET", data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """Plain HTTP, no SDK: the status and body, also for 4xx and 5xx answers."""
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with _DIRECT.open(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def answers(azurite: Azurite) -> bool:
    """Whether the blob service answers HTTP at all (any status, even 403, counts).

    Not a bare TCP connect: Docker's port proxy accepts connections before the service is up.
    """
    try:
        with _DIRECT.open(f"{azurite.endpoint}?comp=list", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, HTTPException):
        return False


def docker_answers() -> bool:
    """Whether a Docker engine answers (``docker info`` succeeds within a few seconds)."""
    if shutil.which("docker") is None:
        return False
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, timeout=5, check=False)
    except subprocess.TimeoutExpired:
        return False
    return info.returncode == 0


def pytest_docker_installed() -> bool:
    try:
        import pytest_docker  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def start_azurite(tmp_dir: Path) -> Iterator[Azurite]:
    """Run Azurite's blob service until the block ends (``tmp_dir``: its data and log, npm only)."""
    if docker_answers() and pytest_docker_installed():
        with _azurite_in_docker() as azurite:
            yield azurite
    else:
        with _azurite_from_npm(tmp_dir) as azurite:
            yield azurite


@contextmanager
def _azurite_in_docker() -> Iterator[Azurite]:
    """``docker compose up --wait azurite`` under a project of our own, ``down -v`` after.

    pytest-docker runs the commands through a shell, hence the AZURITE_PORT assignment in front:
    docker-compose.yml publishes the service on that port (10000 when unset).
    """
    from pytest_docker.plugin import get_docker_services

    port = free_port()
    with get_docker_services(
        docker_compose_command=f"AZURITE_PORT={port} docker compose",
        docker_compose_file=str(COMPOSE_FILE),
        docker_compose_project_name=f"fanout-tests-{os.getpid()}",
        docker_setup=["up --wait azurite"],
        docker_cleanup=["down -v"],
    ) as services:
        azurite = Azurite(endpoint=f"http://127.0.0.1:{port}/{DEV_ACCOUNT}")
        services.wait_until_responsive(lambda: answers(azurite), timeout=START_TIMEOUT, pause=0.1)
        yield azurite


@contextmanager
def _azurite_from_npm(tmp_dir: Path) -> Iterator[Azurite]:
    """Run ``node_modules/.bin/azurite-blob`` as a child in a process group of its own."""
    if not AZURITE_BLOB.exists():
        raise RuntimeError(
            f"{AZURITE_BLOB.relative_to(REPO)} is missing and no Docker engine answers:"
            " run `make test` (it installs Azurite with npm)"
        )
    location = tmp_dir / "azurite"
    location.mkdir(parents=True, exist_ok=True)
    log_path = tmp_dir / "azurite.log"
    # The port is free when chosen, not reserved: another process could take it before Azurite
    # binds it. Then Azurite exits at once, and the error below says so with its log.
    port = free_port()
    azurite = Azurite(endpoint=f"http://127.0.0.1:{port}/{DEV_ACCOUNT}")
    command = [
        str(AZURITE_BLOB),
        *("--blobHost", "127.0.0.1", "--blobPort", str(port)),
        *("--location", str(location)),
        "--skipApiVersionCheck",
        "--disableTelemetry",
        "--silent",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=tmp_dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent(),
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not answers(azurite):
            if process.poll() is not None:
                raise RuntimeError(
                    f"Azurite exited with status {process.returncode} before answering:\n"
                    + log_path.read_text(errors="replace")
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"Azurite did not answer on port {port} within {START_TIMEOUT:.0f} s:\n"
                    + log_path.read_text(errors="replace")
                )
            time.sleep(0.05)
        yield azurite
    finally:
        _stop(process)


def _die_with_parent() -> Callable[[], None] | None:
    """On Linux, what makes the child get SIGTERM when pytest dies, however it dies.

    Azurite runs in a session of its own, so neither Ctrl-C in the terminal nor killing pytest
    reaches it; without this a killed pytest would leave it running.
    """
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1

    def in_child() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return in_child


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, SIGKILL what is left of it after a grace period."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_GRACE)
    # The leader if it ignored SIGTERM, or any child it left behind; usually nobody.
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
