"""Task ids derived from input names, valid on Azure Batch.

Azure Batch accepts ids of at most 64 characters made of ASCII letters, digits, hyphens and
underscores, and treats two ids that differ only in case as the same. Ids are built from the input
file name so that a person can tell which task ran which input; when two names reduce to the same
id, or a name has to be shortened, a short hash of the full input path keeps ids unique and stable
across runs (so a resumed run finds its tasks again).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable

MAX_ID_LENGTH = 64
_HASH_LENGTH = 8
_INVALID_RUN = re.compile(r"[^A-Za-z0-9_-]+")
_HYPHENS = re.compile(r"-{2,}")
_VALID_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def is_valid_task_id(candidate: str) -> bool:
    """Whether ``candidate`` is an id Azure Batch accepts."""
    return bool(_VALID_ID.fullmatch(candidate))


def readable_id(name: str) -> str:
    """The readable part of an id: ``name`` folded to ASCII, with other runs turned into '-'.

    Accented letters lose their accents (``café`` gives ``cafe``); every run of characters with
    no ASCII form, spaces, dots or hyphens becomes a single hyphen. May return an empty string.
    """
    decomposed = unicodedata.normalize("NFKD", name)
    ascii_only = "".join(ch if ch.isascii() else "-" for ch in decomposed if not _is_mark(ch))
    return _HYPHENS.sub("-", _INVALID_RUN.sub("-", ascii_only)).strip("-")


def derive_task_ids(names: Iterable[tuple[str, str]]) -> list[str]:
    """One id per ``(name, key)`` pair, in order: valid, readable, and unique ignoring case.

    ``name`` is what the id is read from (an input's file name without its extension); ``key``
    identifies the input uniquely (its path) and seeds the hash that disambiguates.
    """
    pairs = list(names)
    bases = [readable_id(name) for name, _ in pairs]
    counts: dict[str, int] = {}
    for base in bases:
        counts[base.casefold()] = counts.get(base.casefold(), 0) + 1

    ids: list[str] = []
    taken: set[str] = set()
    for base, (_, key) in zip(bases, pairs, strict=True):
        needs_hash = not base or len(base) > MAX_ID_LENGTH or counts[base.casefold()] > 1
        candidate = _with_hash(base, key) if needs_hash else base
        salt = 0
        while candidate.casefold() in taken:  # a hash collision, or a name that looks like one
            salt += 1
            candidate = _with_hash(base, f"{key}\0{salt}")
        taken.add(candidate.casefold())
        ids.append(candidate)
    return ids


def _with_hash(base: str, key: str) -> str:
    # surrogateescape: a file name that is not valid UTF-8 still has bytes to hash.
    digest = hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[:_HASH_LENGTH]
    if not base:
        return f"task-{digest}"
    keep = MAX_ID_LENGTH - _HASH_LENGTH - 1
    return f"{base[:keep].rstrip('-')}-{digest}"


def _is_mark(ch: str) -> bool:
    return unicodedata.category(ch).startswith("M")
