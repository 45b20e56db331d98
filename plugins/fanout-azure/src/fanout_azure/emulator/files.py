"""Files on a node, as the file operations of tasks and nodes show them.

A task's files are those of its directory on the node it last ran on (``Tasks_*TaskFile*``); a
node's are those of its whole tree (``Nodes_*NodeFile*``), where a start task leaves
``startup/stdout.txt`` and ``startup/stderr.txt``. Names are paths relative to that directory,
``/``-separated as on a Linux node. No name reaches outside its directory: ``..``, absolute
paths and links that lead out are "not found", as anything else the node does not have.
"""

from __future__ import annotations

import mimetypes
import posixpath
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fanout_azure.emulator.errors import BatchError
from fanout_azure.emulator.runtime import format_time

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


@dataclass(frozen=True)
class FileAnswer:
    """What a file operation answers: its headers, and for a GET its content."""

    headers: dict[str, str]
    content: bytes | None


def file_not_found() -> BatchError:
    return BatchError(404, "FileNotFound", "The specified file does not exist.")


def find(directory: Path | None, name: str) -> Path:
    """The file or directory ``name`` in ``directory``; 404 ``FileNotFound`` if there is none
    or ``name`` leads outside it."""
    if directory is None or not directory.is_dir():
        raise file_not_found()
    normal = posixpath.normpath(name)
    if posixpath.isabs(name) or normal == ".." or normal.startswith("../"):
        raise file_not_found()
    target = directory / normal
    root = directory.resolve()
    if not target.exists() or not target.resolve().is_relative_to(root):
        raise file_not_found()
    return target


def entries(directory: Path | None, recursive: bool, url: str) -> list[dict[str, Any]]:
    """``BatchNodeFile`` documents of what ``directory`` holds (everything below it when
    ``recursive``); ``url`` is the URL of the listing, each entry's is below it."""
    if directory is None or not directory.is_dir():
        return []
    found = directory.rglob("*") if recursive else directory.iterdir()
    documents = []
    for entry in sorted(found):
        name = entry.relative_to(directory).as_posix()
        documents.append(_entry(name, entry, f"{url}/{name}"))
    return documents


def answer(target: Path, url: str, *, content: bool, byte_range: str | None = None) -> FileAnswer:
    """The headers of a file's GET or HEAD answer, as the live service sends them (its URL
    percent-encoded, ``True``/``False``), and the content (``ocp-range`` applied) for a GET.
    A directory has properties but no content: a GET of one is ``FileNotFound``."""
    stat = target.stat()
    is_directory = target.is_dir()
    if content and is_directory:
        raise file_not_found()
    modified = format_datetime(datetime.fromtimestamp(stat.st_mtime, UTC), usegmt=True)
    headers = {
        "Content-Type": _content_type(target.name),
        "ocp-creation-time": modified,
        "ocp-batch-file-isdirectory": str(is_directory),
        "ocp-batch-file-url": quote(url, safe=""),
        "ocp-batch-file-mode": _mode(stat.st_mode),
        "Last-Modified": modified,
    }
    if not content:
        headers["Content-Length"] = "0" if is_directory else str(stat.st_size)
        return FileAnswer(headers, None)
    return FileAnswer(headers, _read(target, stat.st_size, byte_range))


def _entry(name: str, entry: Path, url: str) -> dict[str, Any]:
    document: dict[str, Any] = {"name": name, "url": url, "isDirectory": entry.is_dir()}
    if entry.is_file():
        stat = entry.stat()
        modified = format_time(datetime.fromtimestamp(stat.st_mtime, UTC))
        document["properties"] = {
            "creationTime": modified,
            "lastModified": modified,
            "contentLength": str(stat.st_size),
            "contentType": _content_type(name),
            "fileMode": _mode(stat.st_mode),
        }
    return document


def _read(target: Path, size: int, byte_range: str | None) -> bytes:
    """The file's bytes, or those of ``bytes=FIRST-LAST`` (inclusive; ``-N`` is the last N);
    416 ``InvalidRange`` for a range the file does not have."""
    if not byte_range:
        return target.read_bytes()
    match = _RANGE.fullmatch(byte_range.strip())
    if match is None or match.groups() == ("", ""):
        raise _invalid_range()
    first_text, last_text = match.groups()
    if first_text:
        first = int(first_text)
        last = min(int(last_text), size - 1) if last_text else size - 1
    else:
        first, last = max(0, size - int(last_text)), size - 1
    if first >= size or last < first:
        raise _invalid_range()
    with target.open("rb") as stream:
        stream.seek(first)
        return stream.read(last - first + 1)


def _invalid_range() -> BatchError:
    return BatchError(
        416,
        "InvalidRange",
        "The range specified is invalid for the current size of the resource.",
    )


def _content_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _mode(st_mode: int) -> str:
    return oct(st_mode & 0o7777)[2:]
