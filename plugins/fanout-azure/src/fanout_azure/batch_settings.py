"""The ``[backends.azure-batch]`` settings, and a Batch client built from them and the environment.

The account's endpoint and name come from the environment, under the Azure CLI's names
(``AZURE_BATCH_ENDPOINT``, ``AZURE_BATCH_ACCOUNT``); the ``endpoint`` and ``account`` settings
override them. The access key comes only from ``AZURE_BATCH_ACCESS_KEY``, never from a setting,
so that job files hold no secret; without it the client authenticates through azure-identity's
``DefaultAzureCredential``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from fanout.errors import BackendError
from fanout.redact import register_secret
from fanout.spec import Duration

if TYPE_CHECKING:
    from azure.batch import BatchClient

ENDPOINT_VARIABLE = "AZURE_BATCH_ENDPOINT"
ACCOUNT_VARIABLE = "AZURE_BATCH_ACCOUNT"
KEY_VARIABLE = "AZURE_BATCH_ACCESS_KEY"


class AzureBatchSettings(BaseModel):
    """The ``[backends.azure-batch]`` table."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str | None = Field(
        default=None,
        description="The Batch account's URL (default: $AZURE_BATCH_ENDPOINT).",
    )
    account: str | None = Field(
        default=None,
        description="The Batch account's name (default: $AZURE_BATCH_ACCOUNT).",
    )
    vm_size: str = Field(default="standard_d2s_v3", description="The VM size of every node.")
    nodes: int = Field(default=1, ge=0, description="Dedicated nodes in the pool.")
    spot_nodes: int = Field(default=0, ge=0, description="Spot (low-priority) nodes in the pool.")
    slots: int = Field(
        default=1,
        ge=1,
        validation_alias=AliasChoices("slots", "task_slots_per_node"),
        description="Task slots per node (also task_slots_per_node, Batch's name).",
    )
    image: str = Field(
        default="canonical/0001-com-ubuntu-server-jammy/22_04",
        description=(
            "publisher/offer/sku-prefix of a Marketplace image; the newest verified image"
            " Batch supports that matches is used."
        ),
    )
    pool_id: str | None = Field(
        default=None,
        description=(
            "Run on this existing pool instead of an auto-pool; with keep_pool, the name of"
            " the pool to create if it does not exist."
        ),
    )
    keep_pool: bool = Field(
        default=False,
        description="Create the pool pool_id if needed and keep it for later runs.",
    )
    autoscale_formula: str | None = Field(
        default=None,
        description="An autoscale formula for the pool, instead of fixed node counts.",
    )
    poll_interval: float = Field(
        default=5.0, gt=0, description="Seconds between two polls of the Batch service."
    )
    submit_lease: Duration = Field(
        default=600.0,
        description=(
            "While tasks are being added, how long the job outlives a client that stopped"
            " renewing it (killed, asleep, cut off): the service then ends the job and its"
            " auto-pool. Once every task is in, the job ends when its tasks have."
        ),
    )
    allocation_timeout: Duration = Field(
        default=900.0,
        description=(
            "How long the run waits for a node to be ready (from when the job's pool is"
            " first seen with none ready, and again whenever none is) before it stops."
        ),
    )

    @model_validator(mode="after")
    def _kept_pool_has_a_name(self) -> AzureBatchSettings:
        if self.keep_pool and not self.pool_id:
            raise ValueError("keep_pool needs pool_id: the name of the pool to keep")
        return self

    @field_validator("image")
    @classmethod
    def _three_parts(cls, value: str) -> str:
        parts = value.split("/")
        if len(parts) != 3 or not all(parts):
            raise ValueError("must be publisher/offer/sku-prefix")
        return value

    def with_environment(self, environ: Mapping[str, str]) -> AzureBatchSettings:
        """These settings, with ``endpoint`` and ``account`` taken from ``environ`` where unset."""
        endpoint = self.endpoint or environ.get(ENDPOINT_VARIABLE) or None
        return self.model_copy(
            update={
                "endpoint": _with_scheme(endpoint) if endpoint else None,
                "account": self.account or environ.get(ACCOUNT_VARIABLE) or None,
            }
        )

    def account_label(self) -> str:
        """The account for messages: its name, else its endpoint."""
        return self.account or self.endpoint or "(no endpoint)"


def _with_scheme(endpoint: str) -> str:
    """``az batch account show`` prints the endpoint without a scheme; Batch speaks HTTPS."""
    return endpoint if "://" in endpoint else f"https://{endpoint}"


def batch_client(settings: AzureBatchSettings, environ: Mapping[str, str]) -> BatchClient:
    """A client for the account that ``settings`` and ``environ`` name; the key is registered
    for redaction before anything can print it."""
    resolved = settings.with_environment(environ)
    if not resolved.endpoint:
        raise BackendError(
            f"azure-batch needs the Batch account's endpoint: set {ENDPOINT_VARIABLE}"
            " or [backends.azure-batch] endpoint"
        )
    from azure.batch import BatchClient  # slow to import; only when a client is needed

    return BatchClient(resolved.endpoint, _credential(resolved, environ))


def _credential(settings: AzureBatchSettings, environ: Mapping[str, str]) -> Any:
    key = environ.get(KEY_VARIABLE)
    if not key:
        if not (settings.endpoint or "").startswith("https://"):
            # azure-core refuses bearer tokens over plain HTTP with an error that reads like a
            # connection failure; say what is missing instead.
            raise BackendError(
                f"{KEY_VARIABLE} is needed for {settings.endpoint}: Entra ID sign-in"
                " (DefaultAzureCredential) works over HTTPS only"
            )
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential()
    register_secret(key)
    try:
        base64.b64decode(key, validate=True)
    except binascii.Error:
        raise BackendError(f"{KEY_VARIABLE} is not an account key: it is not base64") from None
    if not settings.account:
        raise BackendError(
            f"{KEY_VARIABLE} needs the Batch account's name: set {ACCOUNT_VARIABLE}"
            " or [backends.azure-batch] account"
        )
    from azure.core.credentials import AzureNamedKeyCredential

    return AzureNamedKeyCredential(settings.account, key)
