"""Keeping secrets out of everything fanout shows or writes.

Whatever reads a credential registers it here; ``redact`` removes every registered secret and
every URL signature (``sig=...``) from a text before it reaches a terminal, a log, an error
message or a run record. ``CREDENTIAL_VARIABLES`` are never passed on to a task.
"""

from __future__ import annotations

import re
import threading

CREDENTIAL_VARIABLES = frozenset(
    {
        "AZURE_STORAGE_CONNECTION_STRING",
        "AZURE_STORAGE_KEY",
        "AZURE_STORAGE_ACCOUNT_KEY",
        "AZURE_STORAGE_SAS_TOKEN",
        "AZURE_BATCH_ACCESS_KEY",
        "AZURE_CLIENT_SECRET",
        "AZURE_CLIENT_CERTIFICATE_PASSWORD",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    }
)
"""Environment variables that hold credentials: a task's environment never includes them."""

MASK = "***"
_SIGNATURE = re.compile(r"(?i)\b(sig=)[^&\s\"'<>]+")
_MIN_SECRET_LENGTH = 8
_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Remember ``value`` as a secret that ``redact`` removes."""
    if value and len(value) >= _MIN_SECRET_LENGTH:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """``text`` without any registered secret or URL signature."""
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, MASK)
    return _SIGNATURE.sub(rf"\g<1>{MASK}", text)
