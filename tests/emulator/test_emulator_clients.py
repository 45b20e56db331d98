"""The clients people use against the emulator: the Azure CLI's own requests, older api-versions,
numbers sent as strings, and what the emulator refuses rather than run differently.

The Azure CLI's requests are those it sent once to a recording server (see
``fixtures/azure_cli_requests.json``); here each is signed with the SDK's SharedKey policy and
sent over HTTP as it was, with the api-version it declared.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from azure.batch import models as m
from azure.batch._patch import BatchSharedKeyAuthPolicy
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError
from azure.core.pipeline import PipelineContext, PipelineRequest
from azure.core.rest import HttpRequest
from batch_emulator import IMAGE, Running, make_pool
from conftest import wait_until
from fanout_azure.emulator.command import DEFAULT_ACCOUNT, DEFAULT_KEY
from fanout_azure.emulator.spec import API_VERSIONS, LATEST_VERSION, response_problems

CLI_REQUESTS = json.loads(
    (Path(__file__).parent / "fixtures" / "azure_cli_requests.json").read_text(encoding="utf-8")
)["requests"]
OLD = "2024-02-01.19.0"
needs_old = pytest.mark.skipif(
    OLD not in API_VERSIONS,
    reason=f"the official description of api-version {OLD} is not shipped yet"
    " (plugins/fanout-azure/src/fanout_azure/emulator/spec/README.md)",
)
JSON = "application/json; odata=minimalmetadata"


def send(
    batch: Running, method: str, path: str, body: Any = None, content_type: str = JSON
) -> tuple[int, Any]:
    """``method path`` signed with SharedKey as the SDK signs; the status and parsed body."""
    if body is not None and not isinstance(body, str):
        body = json.dumps(body)
    headers = {"content-type": content_type} if body is not None else {}
    content = body.encode() if body is not None else None
    request = HttpRequest(method, batch.endpoint + path, headers=headers, content=content)
    policy = BatchSharedKeyAuthPolicy(AzureNamedKeyCredential(DEFAULT_ACCOUNT, DEFAULT_KEY))
    policy.on_request(PipelineRequest(request, PipelineContext(None)))
    sent = urllib.request.Request(
        request.url, data=request.content, method=method, headers=dict(request.headers)
    )
    try:
        with urllib.request.urlopen(sent, timeout=30) as answer:
            status, raw = answer.status, answer.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    return status, json.loads(raw) if raw else None


def spec_problems(batch: Running) -> list[str]:
    """Every answer checked against the description of the version its request declared."""
    return [
        problem
        for operation_id, _path, status, body, version in batch.answers
        if operation_id and body is not None
        for problem in response_problems(operation_id, status, body, version=version)
    ]


@needs_old
def test_the_azure_cli_requests_are_carried_out(batch: Running) -> None:
    client = batch.client()
    statuses = []
    for request in CLI_REQUESTS:
        if request["path"].startswith("/pools/mypool/resize"):
            wait_until(lambda: client.get_pool("mypool").allocation_state == "steady")
        status, _ = send(
            batch,
            request["method"],
            request["path"],
            request.get("body"),
            request.get("contentType", JSON),
        )
        statuses.append((request["method"], request["path"].split("?")[0], status))
    assert statuses == [
        ("POST", "/pools", 201),
        ("POST", "/pools/mypool/resize", 202),
        ("POST", "/jobs", 201),
        ("POST", "/jobs/myjob/tasks", 201),
        ("GET", "/jobs/myjob/tasks/mytask", 200),
        ("PATCH", "/jobs/myjob", 200),
        ("GET", "/nodecounts", 200),
        ("GET", "/poolusagemetrics", 200),
    ]
    assert client.get_pool("mypool").target_dedicated_nodes == 3
    assert client.get_task("myjob", "mytask").constraints.max_task_retry_count == 2
    assert client.get_job("myjob").priority == 5
    wait_until(lambda: client.get_task("myjob", "mytask").state == "completed")
    assert client.get_task("myjob", "mytask").execution_info.exit_code == 0
    assert spec_problems(batch) == []


def test_strings_that_do_not_convert_are_refused_as_the_service_does(batch: Running) -> None:
    pool = {"id": "p", "vmSize": "standard_d2s_v3", "targetDedicatedNodes": "two"}
    status, body = send(batch, "POST", f"/pools?api-version={LATEST_VERSION}", pool)
    assert status == 400
    assert body["code"] == "InvalidRequestBody"
    values = {item["key"]: item["value"] for item in body["values"]}
    assert values["PropertyName"] == "targetDedicatedNodes"
    assert "Edm.Int32" in values["Reason"]
    job = {"id": "j", "poolInfo": {"poolId": "p"}, "priority": "5.5"}
    assert send(batch, "POST", "/jobs?api-version=2025-06-01", job)[0] == 400
    job["priority"], job["allowTaskPreemption"] = " -5 ", "true"
    assert send(batch, "POST", "/jobs?api-version=2025-06-01", job)[0] == 201
    shown = batch.client().get_job("j")
    assert (shown.priority, shown.allow_task_preemption) == (-5, True)


def old_pool(**changes: Any) -> dict[str, Any]:
    """A pool body valid in 2024-02-01.19.0 and not in 2025-06-01."""
    return {
        "id": "older",
        "vmSize": "standard_d2s_v3",
        "virtualMachineConfiguration": IMAGE.as_dict(),
        "targetDedicatedNodes": 1,
        "targetNodeCommunicationMode": "simplified",
        "resourceTags": {"team": "fanout"},
        **changes,
    }


@needs_old
def test_a_body_of_an_older_version_is_read_by_that_version(batch: Running) -> None:
    status, body = send(batch, "POST", "/pools?api-version=2025-06-01", old_pool())
    assert status == 400
    assert body["code"] == "InvalidRequestBody"
    assert body["values"][0] == {"key": "PropertyName", "value": "targetNodeCommunicationMode"}
    assert send(batch, "POST", f"/pools?api-version={OLD}", old_pool())[0] == 201
    status, shown = send(batch, "GET", f"/pools/older?api-version={OLD}")
    assert status == 200
    assert shown["targetNodeCommunicationMode"] == "simplified"
    assert shown["resourceTags"] == {"team": "fanout"}
    latest = batch.client().get_pool("older")  # 2025-06-01 has neither property
    assert "resourceTags" not in latest.as_dict()
    wait_until(lambda: [n.state for n in batch.client().list_nodes("older")] == ["idle"])
    for version in API_VERSIONS:
        for path in ("/pools/older", "/pools/older/nodes", "/pools"):
            assert send(batch, "GET", f"{path}?api-version={version}")[0] == 200
    assert spec_problems(batch) == []


def test_enum_values_in_another_case_are_one_value(batch: Running) -> None:
    make_pool(batch.client(), "p")
    job = {"id": "j", "poolInfo": {"poolId": "p"}, "onAllTasksComplete": "terminateJob"}
    assert send(batch, "POST", f"/jobs?api-version={LATEST_VERSION}", job)[0] == 201
    task = {"id": "t", "commandLine": "true"}
    assert send(batch, "POST", f"/jobs/j/tasks?api-version={LATEST_VERSION}", task)[0] == 201
    wait_until(lambda: batch.client().get_job("j").state == "completed")
    status, shown = send(batch, "GET", f"/jobs/j?api-version={LATEST_VERSION}")
    assert (status, shown["onAllTasksComplete"]) == (200, "terminatejob")
    assert spec_problems(batch) == []


@pytest.mark.parametrize(
    ("query", "code", "values"),
    [
        (
            "?api-version=2099-01-01",
            "InvalidQueryParameterValue",
            {"QueryParameterName": "api-version", "QueryParameterValue": "2099-01-01"},
        ),
        ("", "MissingRequiredQueryParameter", {"QueryParameterName": "api-version"}),
    ],
    ids=["unknown", "missing"],
)
def test_an_api_version_not_served_is_refused(
    batch: Running, query: str, code: str, values: dict[str, str]
) -> None:
    status, body = send(batch, "GET", f"/pools{query}")
    assert (status, body["code"]) == (400, code)
    given = {item["key"]: item["value"] for item in body["values"]}
    assert values.items() <= given.items()
    assert response_problems("Pools_ListPools", status, body) == []


REFUSED = [
    pytest.param(
        {
            "virtualMachineConfiguration": {
                **IMAGE.as_dict(),
                "containerConfiguration": {"type": "dockerCompatible"},
            }
        },
        "containerConfiguration",
        id="pool-containers",
    ),
    pytest.param(
        {"applicationPackageReferences": [{"applicationId": "ffmpeg"}]},
        "applicationPackageReferences",
        id="pool-packages",
    ),
    pytest.param(
        {"startTask": {"commandLine": "true", "containerSettings": {"imageName": "ubuntu"}}},
        "containerSettings",
        id="start-task-container",
    ),
]


@pytest.mark.parametrize(("extra", "name"), REFUSED)
def test_what_the_emulator_cannot_do_faithfully_is_refused(
    batch: Running, extra: dict[str, Any], name: str
) -> None:
    pool = {"id": "p", "vmSize": "standard_d2s_v3", "virtualMachineConfiguration": IMAGE.as_dict()}
    status, body = send(batch, "POST", "/pools?api-version=2025-06-01", {**pool, **extra})
    assert (status, body["code"]) == (501, "NotImplemented")
    assert body["values"][0] == {"key": "PropertyName", "value": name}
    assert send(batch, "GET", "/pools/p?api-version=2025-06-01")[0] == 404


def test_a_task_in_a_container_is_refused_through_the_sdk(batch: Running) -> None:
    client = batch.client()
    client.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p")))
    task = m.BatchTaskCreateOptions(
        id="t",
        command_line="true",
        container_settings=m.BatchTaskContainerSettings(image_name="ubuntu:22.04"),
    )
    with pytest.raises(HttpResponseError) as caught:
        client.create_task("j", task)
    assert caught.value.status_code == 501
    assert caught.value.error is not None and caught.value.error.code == "NotImplemented"
    assert list(client.list_tasks("j")) == []


@needs_old
def test_an_empty_list_of_certificates_is_no_certificate(batch: Running) -> None:
    assert (
        send(batch, "POST", f"/pools?api-version={OLD}", old_pool(certificateReferences=[]))[0]
        == 201
    )
