"""Collecting a task's outputs: one listing, the declared patterns checked against it, each
file downloaded and verified; on local files and on Azurite, where the listing differs."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azurite import Azurite
from fanout_azure.blob_signer import AzureBlobSigner

from fanout.collect import MissingOutput, collect_outputs
from fanout.signing import Signer
from fanout.storage import Storage, local_url

PRODUCED = {"out/a.txt": b"alpha", "deep/x/y.csv": b"1,2", "top.log": b"log"}


@pytest.fixture(params=["file", "az"])
def storage(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Storage]:
    expires = datetime.now(UTC) + timedelta(hours=1)
    if request.param == "file":
        yield Storage(Signer(local_url(tmp_path / "store"), expires))
        return
    azurite: Azurite = request.getfixturevalue("azurite")
    container: str = request.getfixturevalue("azure_container")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    yield Storage(AzureBlobSigner(f"az://{container}/runs", expires))


def produce(storage: Storage) -> str:
    prefix = storage.path("outputs", "t1")
    for relative, data in PRODUCED.items():
        path = f"{prefix}/{relative}"
        storage.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)  # local files need them
        storage.fs.pipe_file(path, data)
    return prefix


def test_every_file_comes_home_with_its_path(storage: Storage, tmp_path: Path) -> None:
    prefix = produce(storage)
    records = collect_outputs(
        storage,
        prefix,
        storage.files_under(prefix),
        ["out/*.txt", "**/*.csv"],
        tmp_path / "o",
        "t1",
    )
    assert {record.path: record.bytes for record in records} == {
        "t1/deep/x/y.csv": 3,
        "t1/out/a.txt": 5,
        "t1/top.log": 3,
    }
    assert (tmp_path / "o" / "t1" / "out" / "a.txt").read_bytes() == b"alpha"


def test_a_pattern_matches_in_its_own_directory_only(storage: Storage, tmp_path: Path) -> None:
    prefix = produce(storage)
    with pytest.raises(MissingOutput, match=r"no file matches '\*\.txt'"):
        collect_outputs(
            storage, prefix, storage.files_under(prefix), ["*.log", "*.txt"], tmp_path / "o", "t1"
        )


def test_a_task_that_wrote_nothing_misses_its_outputs(storage: Storage, tmp_path: Path) -> None:
    with pytest.raises(MissingOutput, match=r"'\*\.out'"):
        collect_outputs(storage, storage.path("outputs", "none"), {}, ["*.out"], tmp_path, "none")
