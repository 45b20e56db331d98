"""The emulator beside the live service: for each operation both the emulator and the recordings
of the real service cover, the same status, the same headers, and every property the real
service sent that the 2025-06-01 description still defines.

The recordings (``shared/azure-batch-spec/recordings``) were made by the azure-batch SDK's own
tests against live Azure, at api-version 2023-05-01.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from azure.batch import models as m
from batch_emulator import Running, make_pool
from conftest import wait_until
from fanout_azure.emulator.spec import load_spec

RECORDINGS = Path(__file__).resolve().parents[3] / "shared" / "azure-batch-spec" / "recordings"
COMPARED_HEADERS = {
    "content-type",
    "dataserviceid",
    "dataserviceversion",
    "etag",
    "last-modified",
    "location",
    "request-id",
    "x-content-type-options",
    "ocp-batch-file-isdirectory",
    "ocp-batch-file-url",
    "ocp-creation-time",
}
NESTED = {
    "BatchTask": {
        "executionInfo": "BatchTaskExecutionInfo",
        "nodeInfo": "BatchNodeInfo",
        "constraints": "BatchTaskConstraints",
    },
    "BatchJob": {"executionInfo": "BatchJobExecutionInfo", "constraints": "BatchJobConstraints"},
    "BatchNodeFile": {"properties": "FileProperties"},
}

NOT_ASKED_FOR = {"networkConfiguration"}
"""Echoes of what the recorded client created with and these tests do not: not comparable."""

pytestmark = pytest.mark.skipif(
    not RECORDINGS.is_dir(), reason="shared/azure-batch-spec is not there"
)


def recorded(name: str, method: str, path_end: str) -> dict[str, Any]:
    """The first entry of recording ``name`` for ``method`` whose path ends with ``path_end``."""
    entries = json.loads((RECORDINGS / f"test_batch.pyTestBatchtest_batch_{name}.json").read_text())
    for entry in entries["Entries"]:
        path = entry["RequestUri"].split("?")[0]
        if entry["RequestMethod"] == method and path.endswith(path_end):
            return dict(entry)
    raise LookupError(f"{method} …{path_end} is not in {name}")


class Capture:
    """The raw answer of the last call made with ``hook``."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body: Any = None

    def hook(self, response: Any) -> None:
        http = response.http_response
        self.status = http.status_code
        self.headers = {name.lower(): value for name, value in http.headers.items()}
        text = (
            http.text()
            if http.headers.get("Content-Type", "").startswith("application/json")
            else ""
        )
        self.body = json.loads(text) if text else None


def spec_properties(definition: str) -> set[str]:
    return set(load_spec()["definitions"][definition].get("properties", {}))


def missing_properties(ours: dict[str, Any], theirs: dict[str, Any], definition: str) -> list[str]:
    """Properties the live service sent, the description defines, and the emulator left out."""
    known = spec_properties(definition) - NOT_ASKED_FOR
    missing = sorted((set(theirs) & known) - set(ours))
    for name, nested in NESTED.get(definition, {}).items():
        if isinstance(theirs.get(name), dict) and isinstance(ours.get(name), dict):
            missing += [
                f"{name}/{key}" for key in missing_properties(ours[name], theirs[name], nested)
            ]
    return missing


def compare(capture: Capture, entry: dict[str, Any], definition: str | None = None) -> None:
    assert capture.status == entry["StatusCode"]
    theirs = {name.lower() for name in entry["ResponseHeaders"]} & COMPARED_HEADERS
    assert sorted(theirs - set(capture.headers)) == []
    if definition is None:
        return
    body = entry["ResponseBody"]
    their_object = body["value"][0] if "value" in body else body
    our_object = capture.body["value"][0] if "value" in capture.body else capture.body
    assert missing_properties(our_object, their_object, definition) == []


def test_pools_and_nodes_answer_like_the_service(batch: Running) -> None:
    client, capture = batch.client(), Capture()
    make_pool(client, "recorded", raw_response_hook=capture.hook)
    compare(capture, recorded("network_configuration[sync]", "POST", "/pools"))
    client.get_pool("recorded", raw_response_hook=capture.hook)
    compare(
        capture,
        recorded("network_configuration[sync]", "GET", "/pools/batch_network_6a75260f"),
        "BatchPool",
    )
    wait_until(lambda: all(n.state == "idle" for n in client.list_nodes("recorded")))
    list(client.list_nodes("recorded", raw_response_hook=capture.hook))
    compare(capture, recorded("network_configuration[sync]", "GET", "/nodes"), "BatchNode")
    list(client.list_supported_images(raw_response_hook=capture.hook))
    compare(
        capture, recorded("create_pools[sync]", "GET", "/supportedimages"), "BatchSupportedImage"
    )


def test_jobs_tasks_and_files_answer_like_the_service(batch: Running) -> None:
    client, capture = batch.client(), Capture()
    make_pool(client, "files")
    job = m.BatchJobCreateOptions(id="recorded", pool_info=m.BatchPoolInfo(pool_id="files"))
    client.create_job(job, raw_response_hook=capture.hook)
    compare(capture, recorded("jobs[sync]", "POST", "/jobs"))
    client.get_job("recorded", raw_response_hook=capture.hook)
    compare(capture, recorded("jobs[sync]", "GET", "/jobs/batch_job2_bb11edc"), "BatchJob")

    task = m.BatchTaskCreateOptions(id="test_task", command_line="/bin/sh -c 'echo hello world'")
    client.create_task("recorded", task, raw_response_hook=capture.hook)
    compare(capture, recorded("files[async]", "POST", "/tasks"))
    wait_until(lambda: client.get_task("recorded", "test_task").state == "completed")
    client.get_task("recorded", "test_task", raw_response_hook=capture.hook)
    compare(capture, recorded("files[async]", "GET", "/tasks/test_task"), "BatchTask")
    list(client.list_task_files("recorded", "test_task", raw_response_hook=capture.hook))
    compare(capture, recorded("files[async]", "GET", "/tasks/test_task/files"), "BatchNodeFile")
    client.get_task_file_properties(
        "recorded", "test_task", "stdout.txt", raw_response_hook=capture.hook
    )
    compare(capture, recorded("files[async]", "HEAD", "/files/stdout.txt"))
    b"".join(
        client.download_task_file(
            "recorded", "test_task", "stdout.txt", raw_response_hook=capture.hook
        )
    )
    compare(capture, recorded("files[async]", "GET", "/files/stdout.txt"))
