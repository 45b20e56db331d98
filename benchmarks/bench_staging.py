"""Staging into Azurite: fanout beside the raw azure-storage-blob SDK and a one-by-one upload.

300 files of 1 KB and one of 256 MB go into a fresh prefix of a local Azurite three ways, in
interleaved rounds (these machines are noisy), best time of each:

- fanout: ``Storage.stage`` through the fanout-azure signer (md5 of every file included);
- raw SDK: ``upload_blob`` from a thread pool, the big file in parallel blocks; the best of a
  few concurrency settings;
- one at a time: each file in turn with ``upload_blob`` defaults, as the Batch tutorial does.

    python benchmarks/bench_staging.py [--big-mb 256] [--small 300] [--rounds 2]

Targets: fanout / raw <= 1.15, one-at-a-time / fanout >= 1.8. Needs Azurite (``make test``
installs it) and the fanout-azure plugin.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from azure.storage.blob import BlobServiceClient
from azurite import Azurite, start_azurite
from fanout_azure.blob_signer import AzureBlobSigner

from fanout.storage import Storage

RAW_SETTINGS = ((8, 4), (16, 8), (32, 8))
"""(files at once, blocks at once for the big file) tried for the raw SDK."""


def make_files(directory: Path, small: int, big_mb: int) -> list[Path]:
    files = []
    for number in range(small):
        path = directory / f"small-{number:03d}.txt"
        path.write_bytes(os.urandom(1024))
        files.append(path)
    big = directory / "big.bin"
    with big.open("wb") as out:
        for _ in range(big_mb):
            out.write(os.urandom(1024 * 1024))
    files.append(big)
    return files


def fresh_container(service: BlobServiceClient) -> str:
    name = f"bench-{uuid.uuid4().hex[:10]}"
    service.create_container(name)
    return name


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=300)
    parser.add_argument("--big-mb", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fanout-bench-staging-") as work:
        root = Path(work)
        (root / "files").mkdir()
        files = make_files(root / "files", args.small, args.big_mb)
        total_mb = sum(path.stat().st_size for path in files) / 1e6
        with start_azurite(root / "azurite") as azurite:
            service = azurite.blob_service()
            os.environ["AZURE_STORAGE_CONNECTION_STRING"] = azurite.connection_string
            runs = contenders(azurite, service, files)
            best = {name: float("inf") for name in runs}
            for _ in range(args.rounds):
                for name, run in runs.items():
                    best[name] = min(best[name], run())
                    for container in service.list_containers(name_starts_with="bench-"):
                        service.delete_container(container.name)

    print(f"{args.small} files of 1 KB + 1 of {args.big_mb} MB ({total_mb:.0f} MB) into Azurite,")
    print(f"best of {args.rounds} rounds")
    for name, seconds in best.items():
        print(f"  {name:<16} {seconds:7.2f} s  {total_mb / seconds:7.1f} MB/s")
    print(f"fanout / raw SDK        = {best['fanout'] / best['raw SDK']:.2f}  (target <= 1.15)")
    ratio = best["one at a time"] / best["fanout"]
    print(f"one at a time / fanout  = {ratio:.2f}  (target >= 1.8)")
    return 0


def contenders(
    azurite: Azurite, service: BlobServiceClient, files: list[Path]
) -> dict[str, Callable[[], float]]:
    def fanout() -> float:
        container = fresh_container(service)
        expires = datetime.now(UTC) + timedelta(hours=1)
        storage = Storage(AzureBlobSigner(f"az://{container}/bench", expires))
        return timed(lambda: storage.stage(files, storage.path("staged")))

    def raw() -> float:
        results = []
        for file_threads, block_threads in RAW_SETTINGS:
            container = service.get_container_client(fresh_container(service))

            def upload(path: Path, blocks: int = block_threads, container: Any = container) -> None:
                with path.open("rb") as data:
                    container.upload_blob(path.name, data, overwrite=True, max_concurrency=blocks)

            def upload_all(threads: int = file_threads) -> None:
                with ThreadPoolExecutor(threads) as pool:
                    list(pool.map(upload, files))

            results.append(timed(upload_all))
        return min(results)

    def one_at_a_time() -> float:
        container = service.get_container_client(fresh_container(service))

        def upload_all() -> None:
            for path in files:
                with path.open("rb") as data:
                    container.upload_blob(path.name, data, overwrite=True)

        return timed(upload_all)

    return {"fanout": fanout, "raw SDK": raw, "one at a time": one_at_a_time}


if __name__ == "__main__":
    sys.exit(main())
