"""az:// storage against a real Azurite: the same outputs as local files, least-privilege SAS,
no secret anywhere, idempotent staging, and clear errors for bad credentials or a dead endpoint.
"""

from __future__ import annotations

import hashlib
import re
import socketserver
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from azure.storage.blob import ContentSettings
from azurite import Azurite, http, nowhere
from conftest import REPO, load_record, run_fanout, write_inputs, write_job
from fanout_azure.blob_signer import AzureBlobSigner

from fanout.errors import StorageError
from fanout.storage import Storage
from fanout.transfer import TransferError, fetch

pytestmark = pytest.mark.azurite

EXAMPLE = REPO / "examples" / "topwords" / "job.toml"
SIGNATURE = re.compile(r"sig=[A-Za-z0-9%+/=]{20,}")


def azure_env(azurite: Azurite, key: str | None = None) -> dict[str, str]:
    service = Azurite(endpoint=azurite.endpoint, key=key or azurite.key)
    return {"AZURE_STORAGE_CONNECTION_STRING": service.connection_string}


@pytest.fixture
def signer(azurite: Azurite, azure_container: str, monkeypatch: pytest.MonkeyPatch) -> Storage:
    """Storage in the test's container, with SAS URLs valid for an hour."""
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    expires = datetime.now(UTC) + timedelta(hours=1)
    storage = Storage(AzureBlobSigner(f"az://{azure_container}/runs", expires))
    storage.check_reachable()
    return storage


def without_job_line(text: str) -> str:
    """Outputs name the job, whose id holds the run id: compare everything else."""
    return "\n".join(line for line in text.splitlines() if not line.startswith("Job:"))


def test_example_gives_the_same_outputs_as_local_files(
    azurite: Azurite, azure_container: str, tmp_path: Path
) -> None:
    env = {**azure_env(azurite), "FANOUT_LOCAL_ROOT": str(tmp_path / "nodes")}
    local = run_fanout(
        "run",
        EXAMPLE,
        "--storage",
        tmp_path / "files",
        "--out",
        tmp_path / "local",
        cwd=tmp_path,
        env=env,
    )
    assert local.returncode == 0, local.stderr + local.stdout
    cloud = run_fanout(
        "run",
        EXAMPLE,
        "--storage",
        f"az://{azure_container}/fanout",
        "--out",
        tmp_path / "cloud",
        cwd=tmp_path,
        env=env,
    )
    assert cloud.returncode == 0, cloud.stderr + cloud.stdout
    outputs = sorted(
        p.relative_to(tmp_path / "local") for p in (tmp_path / "local").rglob("*_OUTPUT.txt")
    )
    assert len(outputs) == 3
    for relative in outputs:
        expected = without_job_line((tmp_path / "local" / relative).read_text())
        assert without_job_line((tmp_path / "cloud" / relative).read_text()) == expected
    record = load_record(tmp_path / "cloud")
    assert record["storage"] == f"az://{azure_container}/fanout"
    with azurite.blob_service() as service:
        names = [b.name for b in service.get_container_client(azure_container).list_blobs()]
    assert any(name.endswith("/ledger.json") for name in names)
    assert sum("/outputs/" in name for name in names) == 3


def test_sas_urls_grant_only_what_they_are_for(signer: Storage, tmp_path: Path) -> None:
    source = tmp_path / "input.txt"
    source.write_text("staged bytes")
    staged = signer.stage([source], signer.path("staged"))[source]
    read_url = signer.read_url(staged.path)
    write_url = signer.write_url(signer.path("outputs", "task-1"))
    blob_url, _, write_query = write_url.partition("?")

    assert http(read_url) == (200, b"staged bytes")
    status, _ = http(read_url, "PUT", b"overwrite", {"x-ms-blob-type": "BlockBlob"})
    assert status == 403  # an input SAS cannot write
    assert (
        http(f"{blob_url}/new.txt?{write_query}", "PUT", b"out", {"x-ms-blob-type": "BlockBlob"})[0]
        == 201
    )
    assert http(f"{blob_url}/new.txt?{write_query}")[0] == 403  # an output SAS cannot read
    status, _ = http(f"{blob_url}/new.txt?{write_query}", "DELETE")
    assert status == 403  # ... nor delete
    container_url = blob_url.split("/runs/")[0]
    assert http(f"{container_url}?restype=container&comp=list&{write_query}")[0] == 403  # nor list


def test_an_expired_sas_is_named_as_such(
    azurite: Azurite, azure_container: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    storage = Storage(
        AzureBlobSigner(f"az://{azure_container}/x", datetime.now(UTC) + timedelta(seconds=2))
    )
    source = tmp_path / "a.txt"
    source.write_text("a")
    url = storage.read_url(storage.stage([source], storage.path("staged"))[source].path)
    fetch(url, tmp_path / "fresh.txt")  # still valid
    time.sleep(3)
    with pytest.raises(TransferError, match="expired"):
        fetch(url, tmp_path / "late.txt")
    assert not (tmp_path / "late.txt").exists()


def test_a_task_is_stopped_at_the_budget_before_its_sas_expires(
    azurite: Azurite, azure_container: str, job_dir: Path
) -> None:
    """Signed URLs expire ``expiry_margin`` after the budget, and the local backend stops
    every task at the budget: no task ever meets an expired URL."""
    write_inputs(job_dir, {"a.txt": "a"})
    write_job(
        job_dir,
        {
            "job": {
                "name": "expiring",
                "inputs": ["*.txt"],
                "command": "sleep 4; cp {input} out.txt",
                "outputs": ["out.txt"],
                "budget": "1s",
            },
            "storage": {"url": f"az://{azure_container}/x", "expiry_margin": "1s"},
        },
    )
    result = run_fanout("run", "job.toml", "--out", "out", cwd=job_dir, env=azure_env(azurite))
    assert result.returncode == 1, result.stderr + result.stdout
    task = load_record(job_dir / "out")["tasks"][0]
    assert task["state"] == "failed"
    assert task["error"] == "the run's budget of 1s ran out"


def test_no_secret_reaches_any_artifact(
    azurite: Azurite, azure_container: str, job_dir: Path
) -> None:
    write_inputs(job_dir, {"in/a.txt": "alpha", "in/b.txt": "beta"})
    write_job(
        job_dir,
        {
            "job": {
                "name": "secrets",
                "inputs": ["in/*.txt"],
                "command": "env > env.out; ps -ef > ps.out; cp {input} copy.out",
                "outputs": ["*.out"],
            },
            "storage": {"url": f"az://{azure_container}/s"},
            "backends.local": {"keep": True, "root": "nodes"},
        },
    )
    env = azure_env(azurite)
    result = run_fanout("run", "job.toml", "--out", "out", "-vv", cwd=job_dir, env=env)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "DEBUG" in result.stderr  # the most verbose log, the SDK's requests included

    texts = {"stdout": result.stdout, "stderr": result.stderr}
    for path in job_dir.rglob("*"):
        if path.is_file():
            texts[str(path)] = path.read_text(errors="replace")
    with azurite.blob_service() as service:
        container = service.get_container_client(azure_container)
        for blob in container.list_blobs():
            texts[blob.name] = container.download_blob(blob.name).readall().decode(errors="replace")
    assert any("FANOUT_TASK_ID" in text for text in texts.values())  # the env dump is there
    for where, text in texts.items():
        assert azurite.key not in text, where
        assert "AccountKey" not in text, where
        assert not SIGNATURE.search(text), where


def test_a_rerun_does_not_upload_unchanged_files(signer: Storage, tmp_path: Path) -> None:
    files = [tmp_path / f"f{n}.txt" for n in range(5)]
    for number, path in enumerate(files):
        path.write_text(f"content {number}")
    first = signer.stage(files, signer.path("staged"))
    etags = {path: signer.fs.info(staged.path)["etag"] for path, staged in first.items()}
    files[0].write_text("changed")
    second = signer.stage(files, signer.path("staged"))
    for path in files[1:]:
        assert signer.fs.info(second[path].path)["etag"] == etags[path]
    assert second[files[0]].path != first[files[0]].path
    assert second[files[0]].digest.md5 == hashlib.md5(b"changed").hexdigest()


def test_a_corrupt_download_never_lands_under_its_name(
    signer: Storage, azurite: Azurite, azure_container: str, tmp_path: Path
) -> None:
    with azurite.blob_service() as service:
        blob = service.get_blob_client(azure_container, "runs/bad.txt")
        wrong_md5 = bytearray(hashlib.md5(b"something else").digest())
        blob.upload_blob(b"actual bytes")
        blob.set_http_headers(ContentSettings(content_md5=wrong_md5))  # bit rot, as it were
    destination = tmp_path / "out" / "bad.txt"
    with pytest.raises(StorageError, match="corrupt"):
        signer.download(signer.path("bad.txt"), destination)
    assert list((tmp_path / "out").iterdir()) == []


class _TruncatingHandler(BaseHTTPRequestHandler):
    """Promises 1,000 bytes, sends 100, hangs up: a download cut off half-way."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"x" * 100)
        self.wfile.flush()
        self.connection.close()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def truncating_server() -> Iterator[str]:
    with socketserver.TCPServer(("127.0.0.1", 0), _TruncatingHandler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{server.server_address[1]}/file.bin"
        server.shutdown()


def test_an_interrupted_download_leaves_no_partial_file(
    truncating_server: str, tmp_path: Path
) -> None:
    with pytest.raises(TransferError):
        fetch(truncating_server, tmp_path / "file.bin")
    assert list(tmp_path.iterdir()) == []


def test_a_wrong_key_is_refused_before_anything_starts(
    azurite: Azurite, azure_container: str, job_dir: Path
) -> None:
    write_inputs(job_dir, {"a.txt": "a"})
    write_job(job_dir, {"job": {"name": "badkey", "inputs": ["*.txt"], "command": "true"}})
    wrong = "A" * 86 + "=="
    result = run_fanout(
        "run",
        "job.toml",
        "--storage",
        f"az://{azure_container}/k",
        cwd=job_dir,
        env=azure_env(azurite, wrong),
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "fanout: error: authentication failed for storage account devstoreaccount1"
    )
    assert not (job_dir / "fanout-out").exists()
    with azurite.blob_service() as service:
        assert list(service.get_container_client(azure_container).list_blobs()) == []


def test_an_unreachable_endpoint_is_named(job_dir: Path) -> None:
    write_inputs(job_dir, {"a.txt": "a"})
    write_job(job_dir, {"job": {"name": "down", "inputs": ["*.txt"], "command": "true"}})
    dead = nowhere()
    started = time.monotonic()
    result = run_fanout(
        "run", "job.toml", "--storage", "az://runs/x", cwd=job_dir, env=azure_env(dead)
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"fanout: error: cannot reach {dead.endpoint}"
    assert time.monotonic() - started < 30
    assert not (job_dir / "fanout-out").exists()
    assert not (job_dir / ".fanout").exists()


def test_sas_over_plain_http_is_refused_unless_loopback(
    job_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = Azurite(endpoint="http://storage.example.com/devstoreaccount1")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", remote.connection_string)
    storage = Storage(AzureBlobSigner("az://runs/x", datetime.now(UTC) + timedelta(hours=1)))
    with pytest.raises(StorageError, match="plain http"):
        storage.check_reachable()


def test_staging_many_files_at_once_prints_no_warning(
    azurite: Azurite, azure_container: str, tmp_path: Path, job_dir: Path
) -> None:
    # More files than threads stage at once, and than urllib3 keeps connections by default.
    write_inputs(job_dir, {f"in{n:02}.txt": f"input {n}" for n in range(40)})
    write_job(
        job_dir,
        {"job": {"name": "crowd", "inputs": ["*.txt"], "command": "cp {input} {input_stem}.out",
                 "outputs": ["*.out"]}},
    )  # fmt: skip
    env = {**azure_env(azurite), "FANOUT_LOCAL_ROOT": str(tmp_path / "nodes")}
    result = run_fanout("run", "job.toml", "--storage", f"az://{azure_container}/many",
                        "--out", "out", cwd=job_dir, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    assert result.stderr == ""
    with azurite.blob_service() as service:
        blobs = service.get_container_client(azure_container).list_blob_names()
        assert len([name for name in blobs if "/staged/" in name]) == 40
    assert (job_dir / "out" / "in39" / "in39.out").read_text() == "input 39"
