"""How a storage protocol is opened, and how nodes reach it without its credentials.

A node never receives a storage credential: it receives URLs, each good for one thing — reading
one staged file, or writing a task's outputs — until the run's time budget runs out. The default
``Signer`` serves local files and any fsspec protocol no plugin claims: it opens the URL with
fsspec's own defaults and hands out plain fsspec URLs, which a node on this machine can open.
A plugin registers a subclass for its protocols through ``fanout_register_signers``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar

import fsspec

from fanout.errors import StorageError

if TYPE_CHECKING:
    from fanout.storage import Digest


class Signer:
    """Opens one storage and signs URLs for nodes; one instance serves one run.

    ``expires`` is when every URL it hands out must stop working.
    """

    protocols: ClassVar[tuple[str, ...]] = ()
    """The URL protocols (``az``, ``abfs``, ...) this signer serves."""

    def __init__(self, url: str, expires: datetime) -> None:
        self.url = url
        self.expires = expires

    def filesystem(self) -> tuple[Any, str]:
        """The fsspec filesystem and the root path within it."""
        try:
            fs, root = fsspec.core.url_to_fs(self.url)
        except (ImportError, ValueError) as exc:
            raise StorageError(f"storage '{self.url}': {exc}") from None
        return fs, root

    def check(self, fs: Any, root: str) -> None:
        """Fail with one clear ``StorageError`` if the storage cannot be used.

        Called once, after every other check of the run and before anything else is created;
        it may create the root itself.
        """
        try:
            fs.makedirs(root, exist_ok=True)
            fs.ls(root)
        except Exception as exc:
            raise StorageError(f"cannot use storage {self.url}: {exc}") from None

    def read_url(self, fs: Any, path: str) -> str:
        """A URL from which a node can read the file at ``path``, and nothing else."""
        return str(fs.unstrip_protocol(path))

    def write_url(self, fs: Any, prefix: str) -> str:
        """A URL prefix under which a node can create files (``{url}/{name}`` before any
        query string), and nothing else."""
        return str(fs.unstrip_protocol(prefix))

    def upload(self, fs: Any, source: Path, target: str, digest: Digest) -> None:
        """Upload the local file ``source`` (of this digest) to ``target``, whole or not at all.

        Called from many threads at once. The default is fsspec's ``put_file``; a signer may
        use its storage's own client where that is faster or records the md5.
        """
        fs.put_file(str(source), target)

    def list_files(self, fs: Any, prefix: str) -> dict[str, dict[str, Any]]:
        """Every file under ``prefix`` by path, with its details (``size``, and what
        ``stored_md5`` reads): one listing request per page. The default is fsspec's
        ``find``; a signer may use its storage's own client where ``find`` asks more."""
        try:
            found: dict[str, dict[str, Any]] = fs.find(prefix, detail=True)
        except FileNotFoundError:
            return {}
        return found

    def open_read(
        self, fs: Any, path: str, info: dict[str, Any]
    ) -> AbstractContextManager[BinaryIO]:
        """A file object reading the file at ``path``, whose details (``info``, from a
        listing) are known: a signer may skip asking for them again. The default is fsspec's
        ``open``."""
        return fs.open(path, "rb")  # type: ignore[no-any-return]

    def stored_md5(self, info: dict[str, Any]) -> str | None:
        """The md5 the storage recorded for a file (from ``fs.info``), if it keeps one."""
        return None
