"""The ``azurite`` fixtures give a real blob service that enforces SAS, and a dead one refuses."""

from __future__ import annotations

import urllib.error
from datetime import UTC, datetime, timedelta

import pytest
from azurite import Azurite, http, nowhere

pytest.importorskip("azure.storage.blob", reason="azure-storage-blob is not installed")

from azure.storage.blob import BlobSasPermissions, generate_blob_sas

pytestmark = pytest.mark.azurite


def sas_url(azurite: Azurite, container: str, blob: str, permission: BlobSasPermissions) -> str:
    token = generate_blob_sas(
        azurite.account,
        container,
        blob,
        account_key=azurite.key,
        permission=permission,
        expiry=datetime.now(UTC) + timedelta(minutes=5),
    )
    return f"{azurite.endpoint}/{container}/{blob}?{token}"


def test_upload_and_download_with_the_sdk(azurite: Azurite, azure_container: str) -> None:
    with azurite.blob_service() as service:
        blob = service.get_blob_client(azure_container, "dir/hello.txt")
        blob.upload_blob(b"hello, azurite")
        assert blob.download_blob().readall() == b"hello, azurite"
        names = [b.name for b in service.get_container_client(azure_container).list_blobs()]
    assert names == ["dir/hello.txt"]


def test_a_read_sas_reads_over_plain_http_and_may_not_write(
    azurite: Azurite, azure_container: str
) -> None:
    with azurite.blob_service() as service:
        service.get_blob_client(azure_container, "in.txt").upload_blob(b"input")
    url = sas_url(azurite, azure_container, "in.txt", BlobSasPermissions(read=True))

    assert http(url) == (200, b"input")

    status, body = http(url, "PUT", b"overwritten", {"x-ms-blob-type": "BlockBlob"})
    assert status == 403
    assert b"AuthorizationPermissionMismatch" in body
    assert http(url) == (200, b"input")


def test_nowhere_refuses_connections() -> None:
    with pytest.raises(urllib.error.URLError) as refused:
        http(f"{nowhere().endpoint}?comp=list")
    assert isinstance(refused.value.reason, ConnectionRefusedError)
