"""Checking, before anything is created, that the Batch account answers and accepts us.

One read-only request: the pool to reuse when ``pool_id`` is set, else the first pool of the
account. It fails fast — one retry, short timeouts — so that a dead endpoint is reported in
seconds rather than after the SDK's default minute of retries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fanout.errors import BackendError
from fanout_azure.batch_settings import KEY_VARIABLE, AzureBatchSettings
from fanout_azure.batch_tasks import wire_value

if TYPE_CHECKING:
    from azure.batch import BatchClient
    from azure.batch.models import BatchPool

TIMEOUT_S = 10
"""Connection and read timeouts of the preflight request."""
QUICK: dict[str, Any] = {
    "retry_total": 1,
    "retry_backoff_factor": 0.2,
    "connection_timeout": TIMEOUT_S,
    "read_timeout": TIMEOUT_S,
}
"""Per-request options of the SDK's pipeline that keep the preflight short."""


def preflight(client: BatchClient, settings: AzureBatchSettings) -> None:
    """Raise ``BackendError`` unless the account answers, accepts the credential and, when
    ``settings.pool_id`` is set, has that pool ready to take tasks (or, with ``keep_pool``,
    lacks it). Creates nothing.

    ``settings`` should be resolved (``AzureBatchSettings.with_environment``) so that messages
    name the endpoint and account.
    """
    from azure.core.exceptions import (
        AzureError,
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )

    account = settings.account_label()
    try:
        if settings.pool_id is None:
            next(iter(client.list_pools(max_results=1, **QUICK)), None)
            return
        pool = client.get_pool(settings.pool_id, **QUICK)
    except ServiceRequestError:
        raise BackendError(f"cannot reach {settings.endpoint}") from None
    except ServiceResponseError:
        raise BackendError(f"no answer from {settings.endpoint}") from None
    except ClientAuthenticationError as exc:
        raise BackendError(_authentication_failed(account, exc)) from None
    except ResourceNotFoundError:
        if settings.keep_pool:
            return  # the run creates it
        raise BackendError(
            f"pool '{settings.pool_id}' does not exist in Batch account {account}"
        ) from None
    except HttpResponseError as exc:
        code = exc.error.code if exc.error else None
        if exc.status_code == 403 and code in (None, "AuthenticationFailed"):
            raise BackendError(f"authentication failed for Batch account {account}") from None
        raise BackendError(
            f"Batch account {account} refused the preflight request: {code or exc.status_code}"
        ) from None
    except AzureError as exc:
        raise BackendError(
            f"the preflight request to Batch account {account} failed: {exc}"
        ) from None
    _check_pool(pool)


def _authentication_failed(account: str, exc: Exception) -> str:
    """The one-line message; without an answer from Batch, no token could be had at all."""
    message = f"authentication failed for Batch account {account}"
    if getattr(exc, "response", None) is None:
        message += f": no Azure credential (set {KEY_VARIABLE}, or sign in with az login)"
    return message


def _check_pool(pool: BatchPool) -> None:
    """Refuse a pool that is being deleted, or has no node and will get none. A pool that is
    resizing (or scaling itself) is fine: its nodes are on their way."""
    name = f"pool '{pool.id}'"
    state = wire_value(pool.state)
    if state != "active":
        raise BackendError(f"{name} is {state}, not active")
    if wire_value(pool.allocation_state) == "stopping":
        raise BackendError(f"{name} is stopping a resize; wait until it is steady")
    nodes = (pool.current_dedicated_nodes or 0) + (pool.current_low_priority_nodes or 0)
    target = (pool.target_dedicated_nodes or 0) + (pool.target_low_priority_nodes or 0)
    if nodes == 0 and target == 0 and not pool.enable_auto_scale:
        raise BackendError(f"{name} has no nodes and a target of 0 nodes")
