"""The run ledger in real storage (local files and Azurite): snapshots and the journal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azurite import Azurite
from fanout_azure.blob_signer import AzureBlobSigner

from fanout.errors import FanoutError
from fanout.ledger import Ledger, TaskRecord
from fanout.signing import Signer
from fanout.storage import Storage, local_url

EXPIRES = datetime.now(UTC) + timedelta(hours=1)


@pytest.fixture(params=["file", "az"])
def storage(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Storage:
    if request.param == "file":
        found = Storage(Signer(local_url(tmp_path / "store"), EXPIRES))
    else:
        azurite: Azurite = request.getfixturevalue("azurite")
        container: str = request.getfixturevalue("azure_container")
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
        found = Storage(AzureBlobSigner(f"az://{container}/runs", EXPIRES))
    found.check_reachable()
    return found


def new_ledger(storage: Storage, count: int = 3) -> Ledger:
    tasks = {
        f"t{n}": TaskRecord(id=f"t{n}", input=f"/in/t{n}", command="true") for n in range(count)
    }
    return Ledger(storage, "20261204-000000-abcd", "job", "/job.toml", "local", "/out", tasks)


def finish(ledger: Ledger, task_id: str, state: str) -> None:
    ledger.tasks[task_id].state = state
    ledger.note_finished(ledger.tasks[task_id])


def journal(storage: Storage, ledger: Ledger) -> bytes | None:
    return storage.read_bytes(f"{ledger.run_path}/journal-{ledger.journal}.jsonl")


def states(ledger: Ledger) -> dict[str, str]:
    return {task_id: record.state for task_id, record in ledger.tasks.items()}


def test_finished_tasks_are_appended_and_read_back(storage: Storage) -> None:
    ledger = new_ledger(storage)
    ledger.save()
    finish(ledger, "t0", "succeeded")
    ledger.flush()
    first = journal(storage, ledger)
    finish(ledger, "t1", "failed")
    ledger.flush()
    ledger.flush()  # nothing new: nothing written
    data = journal(storage, ledger)
    assert data is not None and first is not None
    assert data.startswith(first) and data.count(b"\n") == 2  # appended, not rewritten

    loaded = Ledger.load(storage, "job", ledger.run_id)
    assert states(loaded) == {"t0": "succeeded", "t1": "failed", "t2": "pending"}

    ledger.save()  # a snapshot starts a new journal; the old one goes
    assert journal(storage, ledger) is None
    assert storage.read_bytes(f"{ledger.run_path}/journal-{ledger.journal - 1}.jsonl") is None
    assert states(Ledger.load(storage, "job", ledger.run_id)) == states(loaded)


def test_a_journal_older_than_the_snapshot_is_ignored(storage: Storage) -> None:
    ledger = new_ledger(storage)
    ledger.save()
    finish(ledger, "t0", "failed")
    ledger.flush()
    stale = journal(storage, ledger)
    assert stale is not None
    ledger.tasks["t0"].state = "succeeded"
    ledger.save()
    # As if killed between the snapshot and removing the journal before it:
    storage.append(f"{ledger.run_path}/journal-{ledger.journal - 1}.jsonl", stale)
    assert states(Ledger.load(storage, "job", ledger.run_id))["t0"] == "succeeded"


def test_a_last_line_cut_short_is_dropped_and_a_damaged_one_is_an_error(
    storage: Storage,
) -> None:
    ledger = new_ledger(storage)
    ledger.save()
    finish(ledger, "t0", "succeeded")
    ledger.flush()
    path = f"{ledger.run_path}/journal-{ledger.journal}.jsonl"
    storage.append(path, b'{"id": "t1", "sta')  # the write a kill -9 cut
    assert states(Ledger.load(storage, "job", ledger.run_id))["t0"] == "succeeded"

    storage.append(path, b"\n" + (journal(storage, ledger) or b"").splitlines()[0] + b"\n")
    with pytest.raises(FanoutError, match=r"journal .* is damaged at line 2"):
        Ledger.load(storage, "job", ledger.run_id)


def test_a_ledger_from_a_newer_fanout_is_refused(storage: Storage) -> None:
    ledger = new_ledger(storage)
    storage.write_json(f"{ledger.run_path}/ledger.json", {**ledger.to_json(), "version": 99})
    with pytest.raises(FanoutError, match="recorded by a newer fanout"):
        Ledger.load(storage, "job", ledger.run_id)
