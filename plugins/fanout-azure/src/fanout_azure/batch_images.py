"""Choosing the VM image of a pool from what the Batch account supports right now.

Images come and go (Ubuntu 20.04 left Batch in 2025), so none is hard-coded: the setting names
a publisher, an offer and a SKU prefix, and the newest verified Linux image the service lists
for them, whose Batch support has not ended, is used with its node agent SKU.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from fanout.errors import BackendError

if TYPE_CHECKING:
    from azure.batch import BatchClient
    from azure.batch.models import BatchSupportedImage, BatchVmImageReference

MAX_CANDIDATES = 5
"""How many near misses an error message names."""


def resolve_image(client: BatchClient, spec: str) -> tuple[BatchVmImageReference, str]:
    """The image reference and node agent SKU id for ``spec`` (``publisher/offer/sku-prefix``)."""
    publisher, offer, sku_prefix = _parse(spec)
    images = list(client.list_supported_images())
    matches = [image for image in images if _matches(image, publisher, offer, sku_prefix)]
    now = datetime.now(UTC)
    usable = [image for image in matches if _unusable_because(image, now) is None]
    if not usable:
        raise BackendError(_no_image_message(spec, matches, images, now))
    best = max(usable, key=_newest)
    return best.image_reference, best.node_agent_sku_id


def _parse(spec: str) -> tuple[str, str, str]:
    parts = spec.split("/")
    if len(parts) != 3 or not all(parts):
        raise BackendError(f"image '{spec}' is not publisher/offer/sku-prefix")
    return parts[0], parts[1], parts[2]


def _matches(image: BatchSupportedImage, publisher: str, offer: str, sku_prefix: str) -> bool:
    """Whether ``image`` is of ``publisher`` and ``offer`` with a SKU starting with
    ``sku_prefix``; Marketplace names are case-insensitive."""
    reference = image.image_reference
    return (
        (reference.publisher or "").lower() == publisher.lower()
        and (reference.offer or "").lower() == offer.lower()
        and (reference.sku or "").lower().startswith(sku_prefix.lower())
    )


def _unusable_because(image: BatchSupportedImage, now: datetime) -> str | None:
    """Why a matching image cannot be used, or None when it can."""
    if str.lower(image.os_type) != "linux":
        return "not Linux"
    if str.lower(image.verification_type) != "verified":
        return "not verified"
    end = image.batch_support_end_of_life
    if end is not None and end <= now:
        return f"past its end of life ({end:%Y-%m-%d})"
    return None


def _natural(text: str) -> tuple[tuple[int, str], ...]:
    """A sort key that orders ``9`` before ``10`` within SKUs and versions."""
    return tuple(
        (int(part), "") if part.isdigit() else (-1, part) for part in re.split(r"(\d+)", text)
    )


def _newest(image: BatchSupportedImage) -> tuple[tuple[tuple[int, str], ...], ...]:
    reference = image.image_reference
    return _natural(reference.sku or ""), _natural(reference.version or "")


def _label(image: BatchSupportedImage) -> str:
    reference = image.image_reference
    return f"{reference.publisher}/{reference.offer}/{reference.sku}"


def _no_image_message(
    spec: str,
    matches: list[BatchSupportedImage],
    images: list[BatchSupportedImage],
    now: datetime,
) -> str:
    if matches:
        reasons = "; ".join(
            f"{_label(image)} is {_unusable_because(image, now)}" for image in matches
        )
        return f"no usable Batch image for '{spec}': {reasons}"
    publisher = spec.split("/")[0].lower()
    near = sorted(
        _label(image)
        for image in images
        if (image.image_reference.publisher or "").lower() == publisher
        and _unusable_because(image, now) is None
    )
    if not near:
        return f"no Batch image for '{spec}', and none of publisher '{publisher}'"
    return f"no Batch image for '{spec}'; closest: {', '.join(near[:MAX_CANDIDATES])}"
