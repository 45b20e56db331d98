"""The supported-images list the emulator serves: a small catalog in the service's shape.

Enough to choose an image the way a careful client must — the newest verified image whose
support has not ended, and its node agent SKU — including one entry past its end of life.
"""

from __future__ import annotations

from typing import Any

SUPPORTED_IMAGES: list[dict[str, Any]] = [
    {
        "nodeAgentSKUId": "batch.node.ubuntu 20.04",
        "imageReference": {
            "publisher": "canonical",
            "offer": "0001-com-ubuntu-server-focal",
            "sku": "20_04-lts",
            "version": "latest",
        },
        "osType": "linux",
        "batchSupportEndOfLife": "2025-04-30T00:00:00.0000000Z",
        "verificationType": "verified",
    },
    {
        "nodeAgentSKUId": "batch.node.ubuntu 22.04",
        "imageReference": {
            "publisher": "canonical",
            "offer": "0001-com-ubuntu-server-jammy",
            "sku": "22_04-lts",
            "version": "latest",
        },
        "osType": "linux",
        "batchSupportEndOfLife": "2027-06-30T00:00:00.0000000Z",
        "verificationType": "verified",
    },
    {
        "nodeAgentSKUId": "batch.node.ubuntu 24.04",
        "imageReference": {
            "publisher": "canonical",
            "offer": "ubuntu-24_04-lts",
            "sku": "server",
            "version": "latest",
        },
        "osType": "linux",
        "verificationType": "verified",
    },
    {
        "nodeAgentSKUId": "batch.node.ubuntu 24.04",
        "imageReference": {
            "publisher": "canonical",
            "offer": "ubuntu-24_04-lts",
            "sku": "server-gen1",
            "version": "latest",
        },
        "osType": "linux",
        "verificationType": "unverified",
    },
]
