"""What an operation of the emulator is given (``Request``) and what it answers (``Reply``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, TypeVar
from urllib.parse import urlencode

from fanout_azure.emulator.errors import BatchError
from fanout_azure.emulator.odata import filter_properties, parse_filter, select
from fanout_azure.emulator.spec import Operation

DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 1000


@dataclass
class Reply:
    """What an operation answers: status, JSON body (or bytes), extra headers."""

    status: int
    body: Any = None
    headers: dict[str, str] | None = None
    raw: bytes | None = None


@dataclass
class Request:
    operation: Operation
    query: dict[str, list[str]]
    body: Any
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    """The request's headers, names in lower case."""

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


def http_date(timestamp: str) -> str:
    """An RFC 3339 time (``...T06:26:59.41364Z``) as an HTTP date."""
    moment = datetime.strptime(timestamp[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return format_datetime(moment, usegmt=True)


def changed(status: int, url: str, etag: str, modified: str) -> Reply:
    """The answer to an action on an object: no body, its new entity tag and time, the URL."""
    return Reply(
        status,
        headers={"ETag": etag, "Last-Modified": http_date(modified), "DataServiceId": url},
    )


T = TypeVar("T")


def listing(documents: list[dict[str, Any]], request: Request, base_url: str) -> Reply:
    """A listing as the service pages it: ``$filter``, ``$select``, ``maxresults``, then
    ``odata.nextLink`` with a ``$skiptoken`` while documents are left."""
    return lazy_listing(documents, lambda document: document, None, request, base_url)


def lazy_listing(
    items: Sequence[T],
    document_of: Callable[[T], dict[str, Any]],
    summary_of: Callable[[T], dict[str, Any]] | None,
    request: Request,
    base_url: str,
) -> Reply:
    """``listing`` of ``items``, each made a document only if it is on the page: a
    ``$filter`` that reads only what ``summary_of`` gives (a few cheap properties) is
    applied to that, so that listing a page of a big job costs the page, not the job."""
    text = request.param("$filter")
    if text:
        keep = parse_filter(text)
        if (
            summary_of is not None
            and items
            and filter_properties(text) <= summary_of(items[0]).keys()
        ):
            items = [item for item in items if keep(summary_of(item))]
        else:
            items = [item for item in items if keep(document_of(item))]
    size = _query_int(request, "maxresults", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
    start = _query_int(request, "$skiptoken", 0, 0, len(items))
    fields = request.param("$select")
    page = [select(document_of(item), fields) for item in items[start : start + size]]
    body: dict[str, Any] = {"value": page}
    if start + size < len(items):
        query = {k: v[0] for k, v in request.query.items() if k != "$skiptoken"}
        query["$skiptoken"] = str(start + size)
        body["odata.nextLink"] = f"{base_url}{request.path}?{urlencode(query)}"
    return Reply(200, body)


def _query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter in ``low..high``; 400 ``InvalidQueryParameterValue`` if not."""
    text = request.param(name)
    if text is None:
        return default
    value = int(text) if text.isdecimal() else low - 1
    if not low <= value <= high:
        raise BatchError(
            400,
            "InvalidQueryParameterValue",
            "Value for one of the query parameters specified in the request URI is invalid.",
            {"QueryParameterName": name, "QueryParameterValue": text},
        )
    return value
