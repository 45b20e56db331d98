"""What a node does with resource and output files: fetch URLs, deliver files to URLs.

This is the node side of the resource-file contract in ``fanout.backend``; the local backend
uses it for every task, so inputs and outputs cross storage exactly as on a remote node. HTTP(S)
URLs are signed URLs (such as Azure SAS URLs) and travel with plain HTTP, no credential in
hand; any other URL is opened with fsspec (local files directly).
"""

from __future__ import annotations

import base64
import glob
import os
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO
from urllib.parse import parse_qs, quote, urlsplit

import fsspec

from fanout.atomic import atomic_write
from fanout.storage import Digest, copy_stream, file_digest

HTTP_TIMEOUT_S = 60


class TransferError(Exception):
    """A resource file could not be fetched or an output file could not be delivered."""


def fetch(url: str, destination: Path) -> Digest:
    """Download ``url`` to ``destination`` atomically; HTTP downloads are checked against the
    length and md5 the server states."""
    try:
        if _is_http(url):
            return _http_get(url, destination)
        with _open(url, "rb") as source, atomic_write(destination) as out:
            return copy_stream(source, out)
    except urllib.error.HTTPError as exc:
        raise TransferError(f"cannot download {shown(url)}: {_http_reason(exc, url)}") from None
    except (OSError, ValueError) as exc:
        raise TransferError(f"cannot download {shown(url)}: {exc}") from None


def deliver(source: Path, url: str) -> None:
    """Upload the local file ``source`` to ``url``."""
    try:
        if _is_http(url):
            _http_put(source, url)
            return
        with source.open("rb") as src, _open(url, "wb") as out:
            copy_stream(src, out)
    except urllib.error.HTTPError as exc:
        reason = _http_reason(exc, url)
        raise TransferError(f"cannot upload {source.name} to {shown(url)}: {reason}") from None
    except (OSError, ValueError) as exc:
        raise TransferError(f"cannot upload {source.name} to {shown(url)}: {exc}") from None


def join_url(prefix: str, name: str) -> str:
    """``prefix/name``, keeping the prefix's query string (a signature) at the end.

    ``name`` is percent-encoded for HTTP; fsspec URLs take paths as they are.
    """
    base, separator, query = prefix.partition("?")
    if _is_http(prefix):
        name = quote(name)
    return f"{base.rstrip('/')}/{name}{separator}{query}"


def shown(url: str) -> str:
    """``url`` as it may be shown: without its query string, which may hold a signature."""
    return url.split("?", 1)[0]


def matching_files(directory: Path, pattern: str) -> list[str]:
    """Files under ``directory`` matching the glob ``pattern``, relative and sorted."""
    return sorted(
        match
        for match in glob.glob(pattern, root_dir=directory, recursive=True)
        if os.path.isfile(directory / match)
    )


def _is_http(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def _open(url: str, mode: str) -> BinaryIO:
    """A file object for ``url``; local files directly, which costs a tenth of fsspec's way."""
    if url.startswith("file://"):
        path = Path(url.removeprefix("file://"))  # fsspec's file URLs are not percent-encoded
        if "w" in mode:
            path.parent.mkdir(parents=True, exist_ok=True)
        return path.open(mode)  # type: ignore[return-value]
    return fsspec.open(url, mode, auto_mkdir=True).open()  # type: ignore[no-any-return]


def _http_get(url: str, destination: Path) -> Digest:
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
        length = response.headers.get("Content-Length")
        stated_md5 = response.headers.get("Content-MD5")
        with atomic_write(destination) as out:
            digest = copy_stream(response, out)
            if length is not None and digest.size != int(length):
                raise TransferError(f"incomplete: {digest.size} of {length} bytes")
            if stated_md5 and base64.b64decode(stated_md5).hex() != digest.md5:
                raise TransferError("corrupt: its md5 does not match")
    return digest


def _http_put(source: Path, url: str) -> None:
    digest = file_digest(source)
    headers = {
        "Content-Length": str(digest.size),
        "Content-MD5": base64.b64encode(bytes.fromhex(digest.md5)).decode("ascii"),
        # Azure Blob Storage creates a block blob from one PUT; other servers ignore this.
        "x-ms-blob-type": "BlockBlob",
    }
    with source.open("rb") as body:
        request = urllib.request.Request(url, data=body, headers=headers, method="PUT")
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S):
            pass


def _http_reason(error: urllib.error.HTTPError, url: str) -> str:
    """Why a signed URL was refused, in words: an expired signature is named as such."""
    expiry = parse_qs(urlsplit(url).query).get("se")
    if error.code == 403 and expiry:
        try:
            expired_at = datetime.fromisoformat(expiry[0].replace("Z", "+00:00"))
        except ValueError:
            expired_at = None
        if expired_at is not None and expired_at <= datetime.now(UTC):
            return f"the signed URL expired at {expiry[0]}"
    code = error.headers.get("x-ms-error-code") if error.headers else None
    return f"HTTP {error.code} {error.reason}" + (f" ({code})" if code else "")
