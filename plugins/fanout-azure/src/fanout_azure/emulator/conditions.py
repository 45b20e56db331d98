"""Conditional requests: ``If-Match``, ``If-None-Match``, ``If-Modified-Since`` and
``If-Unmodified-Since`` against an object's entity tag and last-modified time.

A write whose condition fails is refused with 412 ``ConditionNotMet`` (a read would get 304), as
the Batch status code table has it. Times compare to the second, the precision of HTTP dates.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from fanout_azure.emulator.errors import BatchError, condition_not_met


def check(
    headers: Mapping[str, str], etag: str, modified: str, *, read: bool = False
) -> BatchError | None:
    """The error the request's conditions (``headers`` with lower-case names) call for, if any,
    for an object with ``etag`` last modified at ``modified`` (RFC 3339)."""
    changed = datetime.strptime(modified[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    if_match = headers.get("if-match")
    if if_match is not None and not _matches(if_match, etag):
        return condition_not_met(read=read)
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None and _matches(if_none_match, etag):
        return condition_not_met(read=read)
    since = _http_date(headers.get("if-modified-since"))
    if since is not None and changed <= since:
        return condition_not_met(read=read)
    until = _http_date(headers.get("if-unmodified-since"))
    if until is not None and changed > until:
        return condition_not_met(read=read)
    return None


def _matches(header: str, etag: str) -> bool:
    """Whether an ``If-Match``-style list (``*``, tags quoted or not) names ``etag``."""
    tags = {tag.strip().removeprefix("W/").strip('"') for tag in header.split(",")}
    return "*" in tags or etag.strip('"') in tags


def _http_date(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None  # an unreadable date is ignored, as HTTP says
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
