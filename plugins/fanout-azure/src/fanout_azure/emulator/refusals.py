"""What the emulator refuses rather than run differently from the service (no false greens).

A request body naming any of these, at any depth (a pool, an auto-pool's specification, a
start task, a task, a job manager task...), is refused 501 ``NotImplemented`` naming the
property and the reason. Empty lists are no request at all and pass (older clients send
``"applicationPackageReferences": []`` on every pool update).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

from fanout_azure.emulator.errors import BatchError, not_emulated

REFUSED: Final = {
    "applicationPackageReferences": (
        "The emulator has no application packages: nothing would be installed on its nodes."
    ),
    "containerConfiguration": "The emulator does not run containers: its nodes are directories.",
    "containerSettings": (
        "The emulator does not run containers: the command would run on the node itself."
    ),
    "certificateReferences": (
        "The emulator has no certificates: none would be installed in AZ_BATCH_CERTIFICATES_DIR."
    ),
    "cloudServiceConfiguration": "The emulator's nodes are Linux directories, not cloud services.",
    "applicationLicenses": "The emulator installs no licensed applications on its nodes.",
}


def refusal(document: Any) -> BatchError | None:
    """The refusal of the first property of ``document`` the emulator cannot honour, if any."""
    for name in _named(document):
        return not_emulated(name, REFUSED[name])
    return None


def _named(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key in REFUSED and item not in (None, [], {}):
                yield key
            yield from _named(item)
    elif isinstance(value, list):
        for item in value:
            yield from _named(item)
