"""Which storage account to use and how to authenticate, from the environment.

In this order, as the Azure CLI names them:

1. ``AZURE_STORAGE_CONNECTION_STRING`` (Azurite's development connection string, for one);
2. ``AZURE_STORAGE_ACCOUNT`` with ``AZURE_STORAGE_KEY``;
3. ``AZURE_STORAGE_ACCOUNT`` alone: Entra ID through azure-identity's
   ``DefaultAzureCredential``, and SAS URLs signed with a user delegation key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fanout.errors import StorageError
from fanout.redact import register_secret

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.storage.blob import BlobServiceClient


@dataclass(frozen=True)
class BlobAccount:
    """A storage account, its blob endpoint, and a credential for it."""

    name: str
    endpoint: str
    """The blob service's URL, such as ``https://NAME.blob.core.windows.net``."""
    key: str | None = field(default=None, repr=False)
    token_credential: TokenCredential | None = field(default=None, repr=False)

    def credential(self) -> Any:
        """What the SDK takes as ``credential``."""
        if self.key is not None:
            return {"account_name": self.name, "account_key": self.key}
        return self.token_credential

    def service(self, **options: Any) -> BlobServiceClient:
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient(self.endpoint, credential=self.credential(), **options)

    def fsspec_options(self) -> dict[str, Any]:
        """Keyword arguments for adlfs' ``AzureBlobFileSystem``."""
        options: dict[str, Any] = {"account_name": self.name, "account_host": self._host()}
        if self.key is not None:
            options["account_key"] = self.key
        else:
            options["credential"] = self.token_credential
        if self.endpoint.startswith("http://"):
            # adlfs builds its URL from the account name; a local emulator is reached by its
            # connection string, which names the endpoint.
            options = {"connection_string": self._connection_string()}
        return options

    def _host(self) -> str:
        return self.endpoint.split("://", 1)[1].split("/", 1)[0]

    def _connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.name};AccountKey={self.key};"
            f"BlobEndpoint={self.endpoint};"
        )


def account_from_environment(environ: Mapping[str, str]) -> BlobAccount:
    """The account the environment names, with its credential; secrets are registered for
    redaction before anything can print them."""
    from azure.storage.blob import BlobServiceClient

    connection_string = environ.get("AZURE_STORAGE_CONNECTION_STRING")
    if connection_string:
        register_secret(connection_string)
        try:
            service = BlobServiceClient.from_connection_string(connection_string)
        except ValueError:
            raise StorageError(
                "AZURE_STORAGE_CONNECTION_STRING is not a valid connection string"
            ) from None
        key = getattr(service.credential, "account_key", None)
        if key is None:
            raise StorageError("AZURE_STORAGE_CONNECTION_STRING holds no AccountKey")
        register_secret(key)
        return BlobAccount(str(service.account_name), service.url.rstrip("/"), key=key)

    name = environ.get("AZURE_STORAGE_ACCOUNT")
    if not name:
        raise StorageError(
            "az:// storage needs AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT"
            " (with AZURE_STORAGE_KEY, or signed in for DefaultAzureCredential)"
        )
    endpoint = f"https://{name}.blob.core.windows.net"
    key = environ.get("AZURE_STORAGE_KEY")
    if key:
        register_secret(key)
        return BlobAccount(name, endpoint, key=key)
    from azure.identity import DefaultAzureCredential  # slow to import; only when needed

    return BlobAccount(name, endpoint, token_credential=DefaultAzureCredential())
