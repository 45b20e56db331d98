"""``az://CONTAINER/prefix`` storage: adlfs for the client, SAS URLs for the nodes.

Least privilege, as Azure Batch nodes need it: each app or input blob gets its own read-only
blob SAS; a task's outputs get one container SAS that can create and write blobs but not read,
list or delete them (flat-namespace accounts cannot scope a SAS to a prefix, so the container is
the narrowest scope). Every SAS starts a few minutes in the past, for clock skew, and expires
with the run's budget plus a margin. SAS URLs travel over HTTPS only; plain HTTP is allowed to a
loopback host, where Azurite listens.

The Azure SDKs are imported where they are used: they take a third of a second to import, which
every fanout command would pay, since plugins load at start-up.
"""

from __future__ import annotations

import ipaddress
import os
import threading
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast
from urllib.parse import quote, urlsplit

from fanout.errors import StorageError
from fanout.signing import Signer
from fanout.storage import STAGING_CONCURRENCY, Digest
from fanout_azure.credentials import BlobAccount, account_from_environment

if TYPE_CHECKING:
    import requests
    from azure.storage.blob import ContainerClient, UserDelegationKey

CLOCK_SKEW = timedelta(minutes=5)
UPLOAD_CONCURRENCY = 8
"""Blocks of one large file uploaded at once."""
UPLOAD_CONNECTIONS = STAGING_CONCURRENCY * UPLOAD_CONCURRENCY
"""The most requests the staging client has in flight at once: every staging thread uploading
a large file in blocks."""
CHECK_TIMEOUT_S = 10


class AzureBlobSigner(Signer):
    """Azure Blob Storage through adlfs, with least-privilege SAS URLs for nodes."""

    protocols = ("az", "abfs")

    def __init__(self, url: str, expires: datetime) -> None:
        super().__init__(url, expires)
        self.account: BlobAccount = account_from_environment(os.environ)
        location = url.split("://", 1)[1].strip("/")
        self.container = location.split("/", 1)[0]
        self._delegation_key: UserDelegationKey | None = None
        self._client: ContainerClient | None = None
        self._lock = threading.Lock()

    def filesystem(self) -> tuple[Any, str]:
        from adlfs import AzureBlobFileSystem

        fs = AzureBlobFileSystem(**self.account.fsspec_options())
        return fs, self.url.split("://", 1)[1].strip("/")

    def check(self, fs: Any, root: str) -> None:
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ResourceExistsError,
            ServiceRequestError,
        )

        self._refuse_plain_http()
        service = self.account.service(
            retry_total=1, connection_timeout=CHECK_TIMEOUT_S, read_timeout=CHECK_TIMEOUT_S
        )
        container = service.get_container_client(self.container)
        try:
            container.create_container()
        except ResourceExistsError:
            pass
        except ClientAuthenticationError:
            raise StorageError(
                f"authentication failed for storage account {self.account.name}"
            ) from None
        except ServiceRequestError:
            raise StorageError(f"cannot reach {self.account.endpoint}") from None
        except HttpResponseError as exc:
            if exc.status_code == 403:
                raise StorageError(
                    f"authentication failed for storage account {self.account.name}"
                ) from None
            raise StorageError(
                f"storage account {self.account.name} refused container '{self.container}':"
                f" {getattr(exc, 'error_code', None) or exc.status_code}"
            ) from None

    def read_url(self, fs: Any, path: str) -> str:
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        blob = self._blob_name(path)
        sas = generate_blob_sas(
            self.account.name,
            self.container,
            blob,
            permission=BlobSasPermissions(read=True),
            **self._signing(),
        )
        return f"{self.account.endpoint}/{self.container}/{quote(blob)}?{sas}"

    def write_url(self, fs: Any, prefix: str) -> str:
        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        sas = generate_container_sas(
            self.account.name,
            self.container,
            permission=ContainerSasPermissions(create=True, write=True),
            **self._signing(),
        )
        blob_prefix = quote(self._blob_name(prefix))
        return f"{self.account.endpoint}/{self.container}/{blob_prefix}?{sas}"

    def upload(self, fs: Any, source: Path, target: str, digest: Digest) -> None:
        """Through the SDK's own client: blocks in parallel for a big file, the md5 recorded
        as the blob's Content-MD5 so that every download can be checked against it."""
        from azure.storage.blob import ContentSettings

        blob = self._container_client().get_blob_client(self._blob_name(target))
        md5 = ContentSettings(content_md5=bytearray.fromhex(digest.md5))
        with source.open("rb") as data:
            blob.upload_blob(
                data,
                length=digest.size,
                overwrite=True,
                content_settings=md5,
                max_concurrency=UPLOAD_CONCURRENCY,
            )

    def list_files(self, fs: Any, prefix: str) -> dict[str, dict[str, Any]]:
        """One List Blobs request per page of 5,000 (adlfs' ``find`` first asks whether the
        prefix is a blob itself), each blob's details as adlfs gives them."""
        blobs = self._container_client().list_blobs(name_starts_with=self._blob_name(prefix) + "/")
        return {
            f"{self.container}/{blob.name}": {
                "name": f"{self.container}/{blob.name}",
                "size": blob.size,
                "type": "file",
                "content_settings": {"content_md5": blob.content_settings.content_md5},
            }
            for blob in blobs
        }

    def open_read(
        self, fs: Any, path: str, info: dict[str, Any]
    ) -> AbstractContextManager[BinaryIO]:
        """One GET (ranged GETs beyond 32 MiB), without the HEAD adlfs' ``open`` sends for
        the size the listing already gave."""
        blob = self._container_client().get_blob_client(self._blob_name(path))
        return nullcontext(cast(BinaryIO, blob.download_blob(max_concurrency=1)))

    def stored_md5(self, info: dict[str, Any]) -> str | None:
        settings = info.get("content_settings") or {}
        md5 = settings.get("content_md5")
        return bytes(md5).hex() if md5 else None

    def _container_client(self) -> ContainerClient:
        """One client for the run, shared by the staging threads (the SDK allows it), with a
        connection pool as large as they need."""
        with self._lock:
            if self._client is None:
                service = self.account.service(session=_pooled_session(UPLOAD_CONNECTIONS))
                self._client = service.get_container_client(self.container)
            return self._client

    def _blob_name(self, path: str) -> str:
        """A storage path (``container/a/b``) as a blob name within the container (``a/b``)."""
        return path.strip("/").split("/", 1)[1]

    def _signing(self) -> dict[str, Any]:
        """The key and validity every SAS of this run shares."""
        start = datetime.now(UTC) - CLOCK_SKEW
        common: dict[str, Any] = {"start": start, "expiry": self.expires}
        if urlsplit(self.account.endpoint).scheme == "https":
            common["protocol"] = "https"
        if self.account.key is not None:
            return {**common, "account_key": self.account.key}
        return {**common, "user_delegation_key": self._user_delegation_key(start)}

    def _user_delegation_key(self, start: datetime) -> UserDelegationKey:
        with self._lock:
            if self._delegation_key is None:
                service = self.account.service()
                self._delegation_key = service.get_user_delegation_key(start, self.expires)
            return self._delegation_key

    def _refuse_plain_http(self) -> None:
        parts = urlsplit(self.account.endpoint)
        if parts.scheme == "http" and not _is_loopback(parts.hostname or ""):
            raise StorageError(
                f"refusing to hand out SAS URLs over plain http to {parts.hostname}: use https"
                " (plain http is only for an emulator on this machine)"
            )


def _pooled_session(connections: int) -> requests.Session:
    """A session for the SDK's transport that keeps up to ``connections`` connections to a
    host. requests keeps 10 by default, and urllib3 warns ("Connection pool is full,
    discarding connection") each time a thread beyond those returns one."""
    import requests
    from urllib3.util.retry import Retry

    session = requests.Session()
    # No retries below the SDK's pipeline, which retries itself: as its own transport sets it.
    no_retries = Retry(total=False, redirect=False, raise_on_status=False)
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=connections, max_retries=no_retries)
    for prefix in ("http://", "https://"):
        session.mount(prefix, adapter)
    return session


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
