"""The first pieces of the azure-batch backend against the real Batch emulator: settings, the
client from the environment, choosing an image from the supported-images list, and the
preflight check (clear one-line errors, nothing created).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from azurite import free_port
from batch_emulator import Running, make_pool
from conftest import wait_until
from fanout_azure.batch_images import resolve_image
from fanout_azure.batch_preflight import preflight
from fanout_azure.batch_settings import AzureBatchSettings, batch_client
from fanout_azure.emulator.command import DEFAULT_ACCOUNT, DEFAULT_KEY
from pydantic import ValidationError

from fanout.errors import BackendError
from fanout.redact import redact

WRONG_KEY = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ=="


def env_for(batch: Running, key: str = DEFAULT_KEY) -> dict[str, str]:
    return {
        "AZURE_BATCH_ENDPOINT": batch.endpoint,
        "AZURE_BATCH_ACCOUNT": DEFAULT_ACCOUNT,
        "AZURE_BATCH_ACCESS_KEY": key,
    }


def resolved(environ: dict[str, str], **fields: Any) -> AzureBatchSettings:
    return AzureBatchSettings(**fields).with_environment(environ)


def check(environ: dict[str, str], **fields: Any) -> None:
    """Preflight as the backend will run it: settings resolved, client from the environment."""
    settings = resolved(environ, **fields)
    preflight(batch_client(settings, environ), settings)


def writes_once_logged(batch: Running, last: str) -> list[str]:
    """The POST, PUT and DELETE requests of the log, once it shows ``last`` (the emulator logs a
    request after answering it, so the log may lag the client by a moment)."""
    wait_until(lambda: last in batch.requests(), timeout=5)
    return [line for line in batch.requests() if line.split()[0] in ("POST", "PUT", "DELETE")]


# Settings


def test_settings_defaults() -> None:
    settings = AzureBatchSettings()
    assert settings.vm_size == "standard_d2s_v3"
    assert (settings.nodes, settings.spot_nodes, settings.slots) == (1, 0, 1)
    assert settings.image == "canonical/0001-com-ubuntu-server-jammy/22_04"
    assert settings.pool_id is None
    assert settings.keep_pool is False
    assert settings.poll_interval == 5.0
    assert settings.allocation_timeout == 900.0
    assert AzureBatchSettings(allocation_timeout="3s").allocation_timeout == 3.0
    assert all(field.description for field in AzureBatchSettings.model_fields.values())


@pytest.mark.parametrize(
    ("fields", "location"),
    [
        ({"nodes": -1}, "nodes"),
        ({"spot_nodes": -1}, "spot_nodes"),
        ({"slots": 0}, "slots"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"allocation_timeout": "soon"}, "allocation_timeout"),
        ({"image": "canonical/jammy"}, "image"),
        ({"access_key": "secret"}, "access_key"),
    ],
)
def test_settings_refuse_bad_values(fields: dict[str, Any], location: str) -> None:
    with pytest.raises(ValidationError) as caught:
        AzureBatchSettings(**fields)
    assert [error["loc"] for error in caught.value.errors()] == [(location,)]


def test_settings_override_the_environment() -> None:
    environ = {"AZURE_BATCH_ENDPOINT": "a.westeurope.batch.azure.com", "AZURE_BATCH_ACCOUNT": "a"}
    assert resolved(environ).endpoint == "https://a.westeurope.batch.azure.com"
    assert resolved(environ).account == "a"
    mine = resolved(environ, endpoint="http://127.0.0.1:1", account="b")
    assert (mine.endpoint, mine.account) == ("http://127.0.0.1:1", "b")


# The client


def test_missing_endpoint_is_named() -> None:
    with pytest.raises(BackendError) as caught:
        batch_client(AzureBatchSettings(), {"AZURE_BATCH_ACCESS_KEY": DEFAULT_KEY})
    assert str(caught.value) == (
        "azure-batch needs the Batch account's endpoint: set AZURE_BATCH_ENDPOINT"
        " or [backends.azure-batch] endpoint"
    )


def test_key_without_account_is_named(batch: Running) -> None:
    environ = {"AZURE_BATCH_ENDPOINT": batch.endpoint, "AZURE_BATCH_ACCESS_KEY": DEFAULT_KEY}
    with pytest.raises(BackendError) as caught:
        batch_client(AzureBatchSettings(), environ)
    assert str(caught.value) == (
        "AZURE_BATCH_ACCESS_KEY needs the Batch account's name: set AZURE_BATCH_ACCOUNT"
        " or [backends.azure-batch] account"
    )


def test_a_key_that_is_not_base64_is_named_not_shown(batch: Running) -> None:
    environ = env_for(batch, key="not a key: pasted with its quotes'")
    with pytest.raises(BackendError) as caught:
        batch_client(AzureBatchSettings(), environ)
    assert str(caught.value) == "AZURE_BATCH_ACCESS_KEY is not an account key: it is not base64"


def test_a_refused_task_is_described_by_its_code_message_and_details() -> None:
    from azure.batch import models as m
    from fanout_azure.batch_calls import describe_refusal

    error = m.BatchError(
        code="InvalidPropertyValue",
        message=m.BatchErrorMessage(lang="en-US", value="The value provided is invalid."),
        error_values=[m.BatchErrorDetail(key="PropertyName", value="commandLine")],
    )
    assert describe_refusal(error) == (
        "InvalidPropertyValue: The value provided is invalid.; PropertyName: commandLine"
    )
    assert describe_refusal(m.BatchError(code="TaskExists")) == "TaskExists"
    assert describe_refusal(None) == "refused"


def test_entra_id_needs_https(batch: Running) -> None:
    environ = {"AZURE_BATCH_ENDPOINT": batch.endpoint}
    with pytest.raises(BackendError) as caught:
        batch_client(AzureBatchSettings(), environ)
    assert str(caught.value) == (
        f"AZURE_BATCH_ACCESS_KEY is needed for {batch.endpoint}: Entra ID sign-in"
        " (DefaultAzureCredential) works over HTTPS only"
    )


def test_importing_the_modules_loads_no_sdk() -> None:
    code = (
        "import sys, fanout_azure.batch_settings, fanout_azure.batch_images,"
        " fanout_azure.batch_preflight;"
        " print(sorted(name for name in sys.modules if name.startswith('azure')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_client_from_environment_talks_to_the_emulator(batch: Running) -> None:
    client = batch_client(AzureBatchSettings(), env_for(batch))
    assert list(client.list_pools()) == []
    assert DEFAULT_KEY not in redact(f"key {DEFAULT_KEY}")


def test_settings_endpoint_wins_over_the_environment(batch: Running) -> None:
    environ = {**env_for(batch), "AZURE_BATCH_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    client = batch_client(AzureBatchSettings(endpoint=batch.endpoint), environ)
    assert list(client.list_pools()) == []


# Images


def test_default_image_is_ubuntu_22_04(batch: Running) -> None:
    reference, agent = resolve_image(batch.client(), AzureBatchSettings().image)
    assert (reference.offer, reference.sku) == ("0001-com-ubuntu-server-jammy", "22_04-lts")
    assert agent == "batch.node.ubuntu 22.04"


def test_verified_24_04_server_is_chosen(batch: Running) -> None:
    reference, agent = resolve_image(batch.client(), "canonical/ubuntu-24_04-lts/server")
    assert reference.sku == "server"  # not the unverified server-gen1
    assert agent == "batch.node.ubuntu 24.04"


def test_image_past_end_of_life_is_refused(batch: Running) -> None:
    with pytest.raises(BackendError) as caught:
        resolve_image(batch.client(), "canonical/0001-com-ubuntu-server-focal/20_04")
    assert str(caught.value) == (
        "no usable Batch image for 'canonical/0001-com-ubuntu-server-focal/20_04':"
        " canonical/0001-com-ubuntu-server-focal/20_04-lts is past its end of life (2025-04-30)"
    )


def test_unknown_image_names_the_closest(batch: Running) -> None:
    with pytest.raises(BackendError) as caught:
        resolve_image(batch.client(), "canonical/ubuntu-26_04-lts/server")
    assert str(caught.value) == (
        "no Batch image for 'canonical/ubuntu-26_04-lts/server'; closest:"
        " canonical/0001-com-ubuntu-server-jammy/22_04-lts, canonical/ubuntu-24_04-lts/server"
    )
    with pytest.raises(BackendError, match="none of publisher 'debian'"):
        resolve_image(batch.client(), "debian/debian-12/12")


# Preflight


def test_preflight_passes_and_creates_nothing(batch: Running) -> None:
    check(env_for(batch))
    assert writes_once_logged(batch, "GET /pools 200") == []


def test_preflight_wrong_key(batch: Running) -> None:
    with pytest.raises(BackendError) as caught:
        check(env_for(batch, key=WRONG_KEY))
    assert str(caught.value) == f"authentication failed for Batch account {DEFAULT_ACCOUNT}"
    assert writes_once_logged(batch, "GET /pools 403") == []


def test_preflight_dead_endpoint_answers_in_seconds() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    environ = {
        "AZURE_BATCH_ENDPOINT": endpoint,
        "AZURE_BATCH_ACCOUNT": DEFAULT_ACCOUNT,
        "AZURE_BATCH_ACCESS_KEY": DEFAULT_KEY,
    }
    started = time.monotonic()
    with pytest.raises(BackendError) as caught:
        check(environ)
    assert str(caught.value) == f"cannot reach {endpoint}"
    assert time.monotonic() - started < 5


def test_preflight_endpoint_that_hangs_up_is_one_line() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"

        def hang_up() -> None:
            for _ in range(2):  # the request and its one retry
                connection, _ = server.accept()
                connection.recv(65536)
                connection.close()

        threading.Thread(target=hang_up, daemon=True).start()
        environ = {
            "AZURE_BATCH_ENDPOINT": endpoint,
            "AZURE_BATCH_ACCOUNT": DEFAULT_ACCOUNT,
            "AZURE_BATCH_ACCESS_KEY": DEFAULT_KEY,
        }
        with pytest.raises(BackendError) as caught:
            check(environ)
    assert str(caught.value) == f"no answer from {endpoint}"


def test_preflight_without_any_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No key and no sign-in: DefaultAzureCredential finds nothing, and the message says how."""
    for name in list(os.environ):
        if name.startswith(("AZURE_", "IDENTITY_", "MSI_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PATH", str(tmp_path))  # no az, azd or pwsh to ask
    monkeypatch.setenv("HOME", str(tmp_path))  # no token cache
    endpoint = f"https://127.0.0.1:{free_port()}"
    with pytest.raises(BackendError) as caught:
        check({"AZURE_BATCH_ENDPOINT": endpoint})
    assert str(caught.value) == (
        f"authentication failed for Batch account {endpoint}: no Azure credential"
        " (set AZURE_BATCH_ACCESS_KEY, or sign in with az login)"
    )


def test_preflight_missing_pool(batch: Running) -> None:
    with pytest.raises(BackendError) as caught:
        check(env_for(batch), pool_id="nope")
    assert str(caught.value) == f"pool 'nope' does not exist in Batch account {DEFAULT_ACCOUNT}"
    assert writes_once_logged(batch, "GET /pools/nope 404") == []


def test_preflight_existing_pool(batch: Running) -> None:
    make_pool(batch.client(), "shared", nodes=1)
    check(env_for(batch), pool_id="shared")
    # make_pool's, and nothing else
    assert writes_once_logged(batch, "GET /pools/shared 200") == ["POST /pools 201"]


def test_preflight_refuses_an_empty_pool(batch: Running) -> None:
    make_pool(batch.client(), "empty", nodes=0)
    with pytest.raises(BackendError) as caught:
        check(env_for(batch), pool_id="empty")
    assert str(caught.value) == "pool 'empty' has no nodes and a target of 0 nodes"
