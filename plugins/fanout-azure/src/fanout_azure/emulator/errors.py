"""The Batch service's error answers, in the shape of the description's ``BatchError``.

The recordings of the live service show every error body as::

    {"odata.metadata": "https://ACCOUNT.REGION.batch.azure.com/$metadata#Microsoft.Azure.Batch
         .Protocol.Entities.Container.errors/@Element",
     "code": "InvalidPropertyValue",
     "message": {"lang": "en-US",
                 "value": "TEXT\\nRequestId:UUID\\nTime:2023-09-06T07:43:48.5560642Z"},
     "values": [{"key": "PropertyName", "value": "subnetId"}, ...]}

``BatchError.body`` sends the same, less ``odata.metadata``: the description's ``BatchError``
does not define that property, answers are checked strictly against the description, and the
SDK reads only ``code``, ``message`` and ``values`` (``BatchErrorFormat`` in
``azure/batch/_patch.py``). ``values`` is left out when there are none, as the service does for
its not-found answers.

The codes and their texts come from the recordings (``InvalidPropertyValue``,
``OperationNotValidOnNode``), the Batch "status and error codes" page and the .NET SDK's
``BatchErrorCodeStrings`` (``PoolNotFound``... ``RequestBodyTooLarge``, ``NotImplemented``,
``UnsupportedHttpVerb``, ``InvalidUri``), and for the generic ones, which Batch shares with the
other Azure services of its generation, Storage's wording of the same code.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, Final

from fanout_azure.emulator.auth import AuthProblem
from fanout_azure.emulator.spec import API_VERSIONS, LATEST_VERSION, RequestProblem, get_spec

JSON_CONTENT_TYPE: Final = "application/json; odata=minimalmetadata"
"""The ``Content-Type`` of every JSON answer in the recordings (with the space)."""
DATA_SERVICE_VERSION: Final = "3.0"
"""The OData version the recordings show on every answer, errors included."""

_KINDS: Final = {
    "pool": ("Pool", "pool"),
    "job": ("Job", "job"),
    "task": ("Task", "task"),
    "node": ("Node", "node"),
    "computenode": ("Node", "node"),
    "jobschedule": ("JobSchedule", "job schedule"),
    "application": ("Application", "application"),
    "file": ("File", "file"),
    "nodeuser": ("NodeUser", "node user"),
}
"""Kinds of resources, as named in the codes (``PoolNotFound``) and in the messages."""


class BatchError(Exception):
    """An error answer: the HTTP status, Batch's error code, its message and details.

    ``values`` become the body's ``values`` items in their order. ``headers`` are sent with
    the answer besides the standard ones (``Retry-After``, ``Allow``...). ``request_id`` is the
    id quoted in the message; pass the answer's own ``request-id`` to ``body`` to keep the two
    equal, as the service does.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        values: Mapping[str, str] | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.values: dict[str, str] = dict(values or {})
        self.headers: dict[str, str] = dict(headers or {})
        self.request_id = request_id or str(uuid.uuid4())

    def body(
        self, request_id: str | None = None, *, when: datetime | None = None
    ) -> dict[str, Any]:
        """The JSON body, as the description's ``BatchError``."""
        stamp = _message_time(when or datetime.now(UTC))
        text = f"{self.message}\nRequestId:{request_id or self.request_id}\nTime:{stamp}"
        body: dict[str, Any] = {"code": self.code, "message": {"lang": "en-US", "value": text}}
        if self.values:
            body["values"] = [{"key": key, "value": value} for key, value in self.values.items()]
        return body

    def response_headers(self, request_headers: Mapping[str, str] | None = None) -> dict[str, str]:
        """The headers of this answer: the standard ones with this error's request id."""
        headers = standard_headers(self.request_id, request_headers)
        headers.update(self.headers)
        return headers


def standard_headers(
    request_id: str,
    request_headers: Mapping[str, str] | None = None,
    *,
    json_body: bool = True,
    now: datetime | None = None,
) -> dict[str, str]:
    """The headers every answer carries, as in the recordings.

    ``request-id``, ``Date``, ``DataServiceVersion: 3.0``, ``X-Content-Type-Options: nosniff``,
    the OData ``Content-Type`` when the body is JSON, and ``client-request-id`` echoed only
    when the request asked with ``return-client-request-id: true`` (the description's wording;
    the recorded requests sent a ``client-request-id`` without asking and got none back).
    ``Server`` and ``Strict-Transport-Security`` are left out: the emulator is neither
    Microsoft's server nor served over TLS.
    """
    headers = {
        "request-id": request_id,
        "Date": format_datetime(now or datetime.now(UTC), usegmt=True),
        "DataServiceVersion": DATA_SERVICE_VERSION,
        "X-Content-Type-Options": "nosniff",
    }
    if json_body:
        headers["Content-Type"] = JSON_CONTENT_TYPE
    asked = {name.lower(): value for name, value in (request_headers or {}).items()}
    client_request_id = asked.get("client-request-id")
    if client_request_id and asked.get("return-client-request-id", "").lower() == "true":
        headers["client-request-id"] = client_request_id
    return headers


def _message_time(when: datetime) -> str:
    """``2023-09-06T07:43:48.5560642Z``: UTC, seven fractional digits, as .NET writes it."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


def _kind(kind: str) -> tuple[str, str]:
    key = re.sub(r"[^a-z]", "", kind.lower())
    if key not in _KINDS:
        raise ValueError(f"unknown kind of resource: {kind!r} (known: {', '.join(_KINDS)})")
    return _KINDS[key]


def not_found(kind: str, resource_id: str) -> BatchError:
    """404 ``PoolNotFound``, ``JobNotFound``, ``TaskNotFound``, ``NodeNotFound``...

    "The specified pool does not exist." is the service's text (Azure/doAzureParallel#211);
    the others follow it. ``resource_id`` is not part of the answer, as in the service's.
    """
    name, label = _kind(kind)
    return BatchError(404, f"{name}NotFound", f"The specified {label} does not exist.")


def exists(kind: str, resource_id: str) -> BatchError:
    """409 ``PoolExists``, ``JobExists``, ``TaskExists``... (the SDK's ``create_tasks`` counts a
    ``TaskExists`` result as success, so a retried chunk does not fail)."""
    name, label = _kind(kind)
    return BatchError(409, f"{name}Exists", f"The specified {label} already exists.")


def invalid_request(problem: RequestProblem) -> BatchError:
    """400 with the code, message and values that ``spec.request_error`` found."""
    return BatchError(400, problem.code, problem.message, problem.values)


def authentication_failed(problem: AuthProblem | str) -> BatchError:
    """403 ``AuthenticationFailed``, the reason as ``AuthenticationErrorDetail``.

    Text and detail key as the Batch service sent them (Azure/BatchExplorer#239).
    """
    detail = problem.detail if isinstance(problem, AuthProblem) else problem
    return BatchError(
        403,
        "AuthenticationFailed",
        "Server failed to authenticate the request. Make sure the value of Authorization header "
        "is formed correctly including the signature.",
        {"AuthenticationErrorDetail": detail},
    )


def unsupported(method: str, path: str, version: str = LATEST_VERSION) -> BatchError:
    """The answer for a request the emulator cannot serve; ``path`` is percent-decoded,
    ``version`` the api-version the request declares.

    - an operation of the description that the emulator does not implement: 501
      ``NotImplemented`` (a Batch code; 501 is also a status azure-core does not retry);
    - a path of the description with a method it does not define: 405 ``UnsupportedHttpVerb``
      with an ``Allow`` header;
    - a path the description does not have: 400 ``InvalidUri``, Storage's answer to a URI that
      names no resource (the Batch code list has the code, not the case).
    """
    spec = get_spec(version)
    operation = spec.match(method, path)
    if operation is not None:
        return BatchError(
            501,
            "NotImplemented",
            "The operation is not implemented.",
            {"Reason": f"The emulator does not implement {operation.operation_id}."},
        )
    allowed = spec.allowed_methods(path)
    if allowed:
        return BatchError(
            405,
            "UnsupportedHttpVerb",
            "The resource doesn't support specified Http Verb.",
            headers={"Allow": ", ".join(allowed)},
        )
    return BatchError(
        400,
        "InvalidUri",
        "The requested URI does not represent any resource on the server.",
        {"UriPath": path},
    )


def body_too_large(max_bytes: int | None = None) -> BatchError:
    """413 ``RequestBodyTooLarge``: the SDK's ``create_tasks`` halves its chunk on this code."""
    values = {"MaxLimit": str(max_bytes)} if max_bytes is not None else None
    return BatchError(
        413,
        "RequestBodyTooLarge",
        "The request body is too large and exceeds the maximum permissible limit.",
        values,
    )


def server_busy(retry_after: int = 1) -> BatchError:
    """503 ``ServerBusy`` with ``Retry-After``, which the SDK's retry policy honours."""
    return BatchError(
        503,
        "ServerBusy",
        "The server is currently unable to receive requests. Please retry your request.",
        headers={"Retry-After": str(retry_after)},
    )


def condition_not_met(*, read: bool = False) -> BatchError:
    """``ConditionNotMet``: 304 for a read (no body may be sent then), 412 otherwise."""
    return BatchError(
        304 if read else 412,
        "ConditionNotMet",
        "The condition specified using HTTP conditional header(s) is not met.",
    )


def api_version_error(version: str | None) -> BatchError | None:
    """400 for a request without an api-version the emulator serves, as the service answers.

    No ``api-version``: ``MissingRequiredQueryParameter`` (the service's answer quoted in
    Azure/azure-sdk-for-js#22398); one it does not serve: ``InvalidQueryParameterValue``, what
    a Batch account answered a client declaring a version that did not exist
    (Azure/azure-sdk-for-python#19224), with the parameter named as for any query value.
    """
    if version is None:
        return BatchError(
            400,
            "MissingRequiredQueryParameter",
            "A query parameter that's mandatory for this request is not specified.",
            {"QueryParameterName": "api-version"},
        )
    if version not in API_VERSIONS:
        return BatchError(
            400,
            "InvalidQueryParameterValue",
            "Value for one of the query parameters specified in the request URI is invalid.",
            {
                "QueryParameterName": "api-version",
                "QueryParameterValue": version,
                "Reason": f"The api-versions served are {', '.join(API_VERSIONS)}.",
            },
        )
    return None


def not_emulated(property_name: str, reason: str) -> BatchError:
    """501 ``NotImplemented`` for a request the emulator cannot carry out faithfully: refused
    rather than run differently (501 is a status azure-core does not retry)."""
    return BatchError(
        501,
        "NotImplemented",
        "The operation is not implemented.",
        {"PropertyName": property_name, "Reason": reason},
    )
