"""Moving bytes between this machine and the run's storage, through fsspec.

Storage holds, under its root URL::

    jobs/<job>/staged/<md5>/<name>          app and input files, by content (shared by runs)
    jobs/<job>/runs/<run-id>/ledger.json    the run's ledger: a snapshot ...
    jobs/<job>/runs/<run-id>/journal-<n>.jsonl   ... and the tasks finished since
    jobs/<job>/runs/<run-id>/outputs/<task-id>/...   what each task produced

Staged files are addressed by their md5, so a re-run uploads only what changed and a resumed
run always finds the exact bytes it planned with. Every write lands under its final name only
when complete, and every download is checked against the stored size before it is renamed
into place.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from fanout.atomic import atomic_write
from fanout.errors import StorageError
from fanout.signing import Signer

CHUNK = 1024 * 1024
STAGING_CONCURRENCY = 16
LISTING_PAGE = 1000
"""Entries a storage listing returns per request, at least (S3: 1,000; Azure Blob: 5,000)."""


@dataclass(frozen=True, slots=True)
class Digest:
    """Size and md5 of some bytes."""

    size: int
    md5: str


@dataclass(frozen=True, slots=True)
class StagedFile:
    """A local file and where its bytes are in storage."""

    source: Path
    path: str
    digest: Digest


def copy_stream(source: BinaryIO, target: BinaryIO | None = None) -> Digest:
    """Read ``source`` to its end in chunks, writing to ``target`` if given; its digest."""
    md5 = hashlib.md5(usedforsecurity=False)
    size = 0
    while chunk := source.read(CHUNK):
        md5.update(chunk)
        size += len(chunk)
        if target is not None:
            target.write(chunk)
    return Digest(size, md5.hexdigest())


def file_digest(path: Path) -> Digest:
    """Size and md5 of a local file."""
    with path.open("rb") as handle:
        return copy_stream(handle)


def default_storage_url(job_dir: Path) -> str:
    """Where a job keeps its files when it names no storage: ``.fanout/`` beside the job file."""
    return local_url(job_dir / ".fanout")


def normalize_url(url: str, relative_to: Path) -> str:
    """A storage URL with a bare local path made absolute (relative to ``relative_to``)."""
    if "://" in url:
        return url.rstrip("/")
    return local_url((relative_to / os.path.expanduser(url)).resolve())


def local_url(path: Path) -> str:
    """The fsspec URL of a local path: ``file://`` and the path as it is (no percent-encoding,
    which fsspec would not decode)."""
    return f"file://{path}"


class Storage:
    """The run's storage, rooted at one fsspec URL."""

    def __init__(self, signer: Signer) -> None:
        self.signer = signer
        self.url = signer.url
        self.fs, root = signer.filesystem()
        self.root = root.rstrip("/")
        self._is_local = "file" in _protocols(self.fs)
        self._prefix_pages = 1

    def path(self, *parts: str) -> str:
        """The storage path of ``parts`` joined under the root."""
        return "/".join((self.root, *parts))

    def read_url(self, path: str) -> str:
        """A URL a node can read ``path`` from (signed, where the storage needs it)."""
        return self.signer.read_url(self.fs, path)

    def write_url(self, prefix: str) -> str:
        """A URL prefix under which a node can create files, and do nothing else."""
        return self.signer.write_url(self.fs, prefix)

    def check_reachable(self) -> None:
        """Fail early, before anything else is created, if the storage cannot be used."""
        self.signer.check(self.fs, self.root)

    def stage(
        self,
        files: Iterable[Path],
        prefix: str,
        on_progress: Callable[[int], None] = lambda nbytes: None,
    ) -> dict[Path, StagedFile]:
        """Upload ``files`` under ``prefix/<md5>/<name>``, skipping those already there.

        ``on_progress`` is called with the size of each file once it is in place.
        """

        listed = self.files_under(prefix)  # one listing, rather than a request per file
        present = {f"{prefix}/{name}": int(info["size"]) for name, info in listed.items()}

        def stage_one(source: Path) -> StagedFile:
            digest = file_digest(source)
            target = f"{prefix}/{digest.md5}/{source.name}"
            if present.get(target) != digest.size:
                self._put(source, target, digest)
            on_progress(digest.size)
            return StagedFile(source, target, digest)

        unique = sorted(set(files))
        with ThreadPoolExecutor(STAGING_CONCURRENCY, thread_name_prefix="stage") as pool:
            return {staged.source: staged for staged in pool.map(stage_one, unique)}

    def download(self, path: str, destination: Path, info: dict[str, Any] | None = None) -> Digest:
        """Copy ``path`` to ``destination`` atomically, checked against the stored size (and
        md5, where the storage keeps one); returns its digest. ``info``: the file's details
        from a listing (``files_under``), which saves asking for them."""
        info = info if info is not None else self.fs.info(path)
        stored_md5 = self.signer.stored_md5(info)
        with atomic_write(destination) as out, self.signer.open_read(self.fs, path, info) as source:
            digest = copy_stream(source, out)
            if digest.size != info["size"]:
                raise StorageError(
                    f"download of {path} is incomplete: {digest.size} of {info['size']} bytes"
                )
            if stored_md5 is not None and digest.md5 != stored_md5:
                raise StorageError(f"download of {path} is corrupt: its md5 does not match")
        return digest

    def files_under(self, prefix: str) -> dict[str, dict[str, Any]]:
        """Every file under ``prefix`` with its details (size, and md5 where the storage keeps
        one), by path relative to ``prefix``, sorted: one listing."""
        found = self.signer.list_files(self.fs, prefix)
        start = len(prefix) + 1
        return {
            path[start:]: info
            for path, info in sorted(found.items())
            if path.startswith(f"{prefix}/") and info.get("type") != "directory"
        }

    def files_of(self, prefix: str, names: Collection[str]) -> dict[str, dict[str, Any]]:
        """``files_under(prefix/name)`` for each of ``names``, in as few listings as it
        takes: one per name while that is fewer requests than one listing of everything
        under ``prefix`` (whose pages the last such listing counted), else that listing.
        So collecting the tasks that finished since the last poll costs a constant number
        of requests however many there were. Local storage: nothing, since listing each
        name on its own costs no request (and is best done beside its download)."""
        if self._is_local:
            return {}
        if len(names) <= self._prefix_pages:
            return {name: self.files_under(f"{prefix}/{name}") for name in names}
        everything = self.files_under(prefix)
        self._prefix_pages = max(1, math.ceil(len(everything) / LISTING_PAGE))
        grouped: dict[str, dict[str, Any]] = {name: {} for name in names}
        for relative, info in everything.items():
            name, _, path = relative.partition("/")
            if name in grouped:
                grouped[name][path] = info
        return grouped

    def remove(self, path: str) -> None:
        """Delete ``path`` and everything under it; a missing path is fine."""
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def read_tail(self, path: str, max_bytes: int) -> bytes:
        """The last ``max_bytes`` of the file ``path``; nothing if there is no such file."""
        try:
            with self.fs.open(path, "rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(size - max_bytes, 0))
                return bytes(handle.read())
        except FileNotFoundError:
            return b""

    def read_json(self, path: str) -> Any:
        with self.fs.open(path, "rb") as handle:
            return json.load(handle)

    def read_bytes(self, path: str) -> bytes | None:
        """The whole file ``path``; None if there is no such file."""
        try:
            with self.fs.open(path, "rb") as handle:
                return bytes(handle.read())
        except FileNotFoundError:
            return None

    def append(self, path: str, data: bytes) -> None:
        """Add ``data`` at the end of the file ``path`` (created if missing). Once this
        returns it outlives this process, however it dies: handed to the kernel (no fsync:
        one per finished task would cost more than the task, and a machine that loses power
        loses the outputs' own unsynced bytes too) or stored by the storage service. On Azure
        Blob Storage the file is an append blob, so each call costs its own bytes, not the
        file's."""
        if self._is_local:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as out:
                out.write(data)
            return
        with self.fs.open(path, "ab") as out:
            out.write(data)

    def write_json(self, path: str, data: Any) -> None:
        """Write ``data`` so that readers see the old or the new document, never half of one."""
        encoded = json.dumps(data, separators=(",", ":")).encode("utf-8")
        if self._is_local:
            with atomic_write(Path(path)) as out:
                out.write(encoded)
        else:
            self.fs.pipe_file(path, encoded)

    def list_dirs(self, path: str) -> list[str]:
        """Names of the directories directly under ``path``."""
        if not self.fs.exists(path):
            return []
        return sorted(
            entry["name"].rstrip("/").rsplit("/", 1)[-1]
            for entry in self.fs.ls(path, detail=True)
            if entry["type"] == "directory"
        )

    def _put(self, source: Path, target: str, digest: Digest) -> None:
        if self._is_local:
            with atomic_write(Path(target)) as out, source.open("rb") as src:
                copy_stream(src, out)
        else:
            self.signer.upload(self.fs, source, target, digest)


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)
