"""The emulator's contract with the outside: the official description, SharedKey, error bodies.

- every official example and every recorded request finds its operation; the examples'
  answers pass the strict check, and so do the recorded error bodies (less ``odata.metadata``);
- request bodies are refused with the service's codes, the first fault first;
- the SDK's own signing policy, in memory and over a socket, is accepted by ``verify``, and a
  wrong key, another account or a tampered request is not;
- the emulator's error bodies follow the description's ``BatchError`` strictly.
"""

from __future__ import annotations

import base64
import copy
import http.server
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest
from azure.batch import BatchClient
from azure.batch import models as m
from azure.batch._patch import BatchSharedKeyAuthPolicy
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError
from azure.core.pipeline import PipelineContext, PipelineRequest
from azure.core.rest import HttpRequest
from fanout_azure.emulator import errors
from fanout_azure.emulator.auth import sign, string_to_sign, verify
from fanout_azure.emulator.errors import BatchError, standard_headers
from fanout_azure.emulator.spec import (
    Operation,
    definition_problems,
    get_spec,
    match,
    request_error,
    response_problems,
)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "azure-batch-spec"
"""The reference data: ``shared/`` lies beside the project's clone."""
EXAMPLES = sorted((SHARED / "2025-06-01" / "examples").glob("*.json"))
RECORDINGS = sorted((SHARED / "recordings").glob("*.json"))
pytestmark = pytest.mark.skipif(not EXAMPLES, reason="shared/azure-batch-spec is not there")

ACCOUNT = "fanoutacct"
KEY = base64.b64encode(bytes(range(32))).decode()
OTHER_KEY = base64.b64encode(bytes(range(1, 33))).decode()

EXEMPT_RESPONSES = {
    ("Nodes_ListNodes.json", "200"): [
        f"GET /pools/{{poolId}}/nodes 200: $.value[{index}]: '{name}' is a required property"
        for index in range(3)
        for name in ("ipv6Address", "virtualMachineInfo")
    ],
}
"""Official examples that fail the strict check, with the exact problems expected.

Nodes_ListNodes: 2025-06-01 marks ``BatchNode.ipv6Address`` and ``virtualMachineInfo``
required (read-only, so always sent), but the example, written for an older version, has
neither. The emulator must send both.
"""
EXEMPT_REQUESTS = {
    "Pools_CreatePool_VirtualMachineConfigurationWithExtensions.json": (
        "InvalidRequestBody",
        "targetNodeCommunicationMode",
    ),
}
"""Official example requests the service refuses: this one still sends
``targetNodeCommunicationMode``, which 2025-06-01 no longer has (the recordings README lists it
among the removed properties), and unknown properties are refused."""


def example(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return document


def example_path(template: str, parameters: dict[str, Any]) -> str:
    """The decoded request path of an example: its parameters put into the template."""
    return re.sub(r"\{(\w+)\}", lambda found: str(parameters[found.group(1)]), template)


def recorded_entries() -> list[Any]:
    """Every recorded exchange, as a pytest parameter named after its file and place."""
    entries = []
    for path in RECORDINGS:
        for index, entry in enumerate(json.loads(path.read_text(encoding="utf-8"))["Entries"]):
            name = f"{path.stem[24:]}-{index}-{entry['RequestMethod']}"
            entries.append(pytest.param(entry, id=name))
    return entries


def pool(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "p1",
        "vmSize": "standard_d2s_v3",
        "virtualMachineConfiguration": {
            "imageReference": {"publisher": "canonical", "offer": "ubuntu", "sku": "22_04-lts"},
            "nodeAgentSKUId": "batch.node.ubuntu 22.04",
        },
        "targetDedicatedNodes": 2,
        "taskSchedulingPolicy": {"nodeFillType": "spread"},
    }
    body.update(changes)
    return body


def create_pool() -> Operation:
    operation = match("POST", "/pools")
    assert operation is not None
    return operation


def task_collection(count: int) -> dict[str, Any]:
    task = {
        "commandLine": "/bin/sh -c 'python3 topwords.py input.txt'",
        "resourceFiles": [
            {"httpUrl": "https://a.blob.core.windows.net/c/in?sig=x", "filePath": "in"}
        ],
        "outputFiles": [
            {
                "filePattern": "out/**",
                "destination": {"container": {"containerUrl": "https://a/c?sig=x", "path": "o"}},
                "uploadOptions": {"uploadCondition": "taskcompletion"},
            }
        ],
        "environmentSettings": [{"name": "FANOUT_TASK", "value": "1"}],
        "constraints": {"maxWallClockTime": "PT1H", "retentionTime": "P7D", "maxTaskRetryCount": 2},
        "userIdentity": {"autoUser": {"scope": "pool", "elevationLevel": "nonadmin"}},
    }
    return {"value": [{"id": f"task-{index:05d}", **task} for index in range(count)]}


# (a) The official examples


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.stem)
def test_examples_match_their_operation(path: Path) -> None:
    document = example(path)
    declared = get_spec().operations[document["operationId"]]
    request_path = example_path(declared.template, document["parameters"])
    found = match(declared.method, request_path)
    assert found is not None
    assert found.operation_id == document["operationId"]
    names = re.findall(r"\{(\w+)\}", declared.template)
    assert found.path_params == {name: str(document["parameters"][name]) for name in names}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.stem)
def test_examples_answers_pass_the_strict_check(path: Path) -> None:
    document = example(path)
    for status, response in document["responses"].items():
        problems = response_problems(document["operationId"], int(status), response.get("body"))
        assert problems == EXEMPT_RESPONSES.get((path.name, status), [])


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.stem)
def test_examples_requests_are_accepted(path: Path) -> None:
    document = example(path)
    operation = get_spec().operations[document["operationId"]]
    bodies = [value for value in document["parameters"].values() if isinstance(value, dict)]
    for body in bodies:
        problem = request_error(operation, body)
        if path.name in EXEMPT_REQUESTS:
            assert problem is not None
            assert (problem.code, problem.values["PropertyName"]) == EXEMPT_REQUESTS[path.name]
        else:
            assert problem is None


# (b) The recordings of the live service


@pytest.mark.parametrize("entry", recorded_entries())
def test_recorded_requests_match(entry: dict[str, Any]) -> None:
    raw_path = urlsplit(entry["RequestUri"]).path
    operation = match(entry["RequestMethod"], unquote(raw_path))
    assert operation is not None, raw_path
    assert operation.method == entry["RequestMethod"]
    status = entry["StatusCode"]
    assert status >= 400 or status in operation.success_statuses
    if "{filePath}" in operation.template:
        assert operation.path_params["filePath"].endswith(".txt")


@pytest.mark.parametrize("entry", recorded_entries())
def test_recorded_error_bodies_pass_the_strict_check_without_odata_metadata(
    entry: dict[str, Any],
) -> None:
    if entry["StatusCode"] < 400:
        return
    body = dict(entry["ResponseBody"])
    assert body.pop("odata.metadata").endswith("Container.errors/@Element")
    assert definition_problems("BatchError", body) == []
    assert definition_problems("BatchError", entry["ResponseBody"]) == [
        "BatchError: $: Additional properties are not allowed ('odata.metadata' was unexpected)"
    ]


def test_match_routes() -> None:
    exists = match("HEAD", "/pools/p1")
    assert exists is not None
    assert (exists.operation_id, exists.success_statuses) == ("Pools_PoolExists", (200, 404))
    collection = match("POST", "/jobs/j1/addtaskcollection")
    assert collection is not None
    assert collection.operation_id == "Tasks_CreateTaskCollection"
    assert collection.body_required
    assert collection.body_definition == "BatchTaskGroup"
    file = match("GET", "/jobs/j1/tasks/t1/files/wd/out dir/stdout.txt")
    assert file is not None
    assert file.path_params == {"jobId": "j1", "taskId": "t1", "filePath": "wd/out dir/stdout.txt"}
    listing = match("GET", "/jobs/j1/tasks/t1/files")
    assert listing is not None
    assert listing.operation_id == "Tasks_ListTaskFiles"
    assert match("PUT", "/pools/p1") is None
    assert match("GET", "/pools/p1/nope") is None
    assert match("GET", "/pools/") is None
    assert get_spec().allowed_methods("/pools/p1") == ("DELETE", "GET", "HEAD", "PATCH")


def test_every_operation_of_the_description_is_routed() -> None:
    for operation_id, operation in get_spec().operations.items():
        path = re.sub(r"\{(\w+)\}", r"x-\1", operation.template)
        found = match(operation.method, path)
        assert found is not None
        assert found.operation_id == operation_id


# (c) Request bodies


@pytest.mark.parametrize(
    ("body", "code", "values"),
    [
        pytest.param(
            {k: v for k, v in pool().items() if k != "id"},
            "MissingRequiredProperty",
            {"PropertyName": "id"},
            id="missing-id",
        ),
        pytest.param(
            pool(taskSchedulingPolicy={}),
            "MissingRequiredProperty",
            {"PropertyName": "nodeFillType"},
            id="missing-nested",
        ),
        pytest.param(
            pool(targetDedicatedNodes="two"),
            "InvalidRequestBody",
            {
                "PropertyName": "targetDedicatedNodes",
                "Reason": "Cannot convert a primitive value to the expected type 'Edm.Int32'. "
                "See the inner exception for more details.",
            },
            id="string-for-int32",
        ),
        pytest.param(
            pool(targetDedicatedNodes=2.0),
            "InvalidRequestBody",
            {
                "PropertyName": "targetDedicatedNodes",
                "Reason": "Cannot convert a primitive value to the expected type 'Edm.Int32'. "
                "See the inner exception for more details.",
            },
            id="float-for-int32",
        ),
        pytest.param(
            pool(virtualMachineConfiguration="ubuntu"),
            "InvalidRequestBody",
            {
                "PropertyName": "virtualMachineConfiguration",
                "Reason": "An unexpected 'PrimitiveValue' node was found when reading from the "
                "JSON reader. A 'StartObject' node was expected.",
            },
            id="string-for-object",
        ),
        pytest.param(
            pool(taskSchedulingPolicy={"nodeFillType": "diagonal"}),
            "InvalidPropertyValue",
            {
                "PropertyName": "nodeFillType",
                "PropertyValue": "diagonal",
                "Reason": "The value is not one of the allowed values: spread, pack.",
            },
            id="unknown-enum",
        ),
        pytest.param(
            pool(certificateReferences=[]),
            "InvalidRequestBody",
            {
                "PropertyName": "certificateReferences",
                "Reason": "The property 'certificateReferences' does not exist on type "
                "'BatchPoolCreateOptions'. Make sure to only use property names that are "
                "defined by the type.",
            },
            id="removed-property",
        ),
        pytest.param(
            pool(resizeTimeout="15 minutes"),
            "InvalidRequestBody",
            {
                "PropertyName": "resizeTimeout",
                "Reason": "Cannot convert the literal '15 minutes' to the expected type "
                "'Edm.Time'.",
            },
            id="bad-duration",
        ),
        pytest.param(
            pool(targetDedicatedNodes=2**31),
            "InvalidRequestBody",
            {
                "PropertyName": "targetDedicatedNodes",
                "Reason": "Cannot convert the literal '2147483648' to the expected type "
                "'Edm.Int32'.",
            },
            id="int32-overflow",
        ),
        pytest.param(
            b'{"id": "p1", "vmSize": ',
            "InvalidRequestBody",
            {
                "Reason": "The request body is not valid JSON: "
                "Expecting value: line 1 column 24 (char 23)."
            },
            id="not-json",
        ),
        pytest.param(
            None,
            "InvalidRequestBody",
            {"Reason": "The request body is empty; a JSON object was expected."},
            id="no-body",
        ),
        pytest.param(
            [pool()],
            "InvalidRequestBody",
            {
                "Reason": "An unexpected 'StartArray' node was found when reading from the JSON "
                "reader. A 'StartObject' node was expected."
            },
            id="array-for-object",
        ),
    ],
)
def test_request_errors(body: object, code: str, values: dict[str, str]) -> None:
    problem = request_error(create_pool(), body)
    assert problem is not None
    assert (problem.code, problem.values) == (code, values)
    assert (
        problem.message
        == {
            "InvalidRequestBody": "The specified Request Body is not syntactically valid.",
            "MissingRequiredProperty": "A required property was not specified in the request body.",
            "InvalidPropertyValue": (
                "The value provided for one of the properties in the request body is invalid."
            ),
        }[code]
    )


def test_request_accepts_what_the_service_accepts() -> None:
    operation = create_pool()
    assert request_error(operation, pool()) is None
    assert request_error(operation, json.dumps(pool()).encode()) is None
    # Enums in any case: the live service took "pack" and answered "Pack".
    assert request_error(operation, pool(taskSchedulingPolicy={"nodeFillType": "Pack"})) is None
    # null is an absent property; .NET TimeSpans with leading zeros are durations.
    assert request_error(operation, pool(startTask=None, resizeTimeout="PT06M00S")) is None
    terminate = match("POST", "/jobs/j1/terminate")
    assert terminate is not None
    assert not terminate.body_required
    assert request_error(terminate, None) is None
    assert request_error(terminate, b"") is None
    get = match("GET", "/pools/p1")
    assert get is not None
    assert request_error(get, b"anything") is None


def test_read_only_properties_are_not_required_in_requests() -> None:
    replace = match("PUT", "/jobs/j1")
    assert replace is not None
    assert replace.body_definition == "BatchJob"
    assert request_error(replace, {"poolInfo": {"poolId": "p1"}}) is None
    problem = request_error(replace, {"priority": 1})
    assert problem is not None
    assert problem.values == {"PropertyName": "poolInfo"}


def test_first_problem_is_the_readers_then_in_document_order() -> None:
    operation = create_pool()
    body = pool(taskSchedulingPolicy={"nodeFillType": "diagonal"}, targetLowPriorityNodes="x")
    del body["id"]
    problem = request_error(operation, body)
    assert problem is not None
    assert problem.values["PropertyName"] == "targetLowPriorityNodes"
    body["targetLowPriorityNodes"] = 1
    problem = request_error(operation, body)
    assert problem is not None
    assert problem.code == "MissingRequiredProperty"
    collection = match("POST", "/jobs/j1/addtaskcollection")
    assert collection is not None
    tasks = task_collection(3)
    tasks["value"][2]["constraints"]["maxTaskRetryCount"] = "3"
    tasks["value"][1]["constraints"]["maxWallClockTime"] = "1h"
    problem = request_error(collection, tasks)
    assert problem is not None
    assert problem.values["PropertyName"] == "maxWallClockTime"


def test_a_full_task_collection_is_checked_quickly() -> None:
    collection = match("POST", "/jobs/j1/addtaskcollection")
    assert collection is not None
    body = json.dumps(task_collection(100)).encode()
    assert request_error(collection, body) is None
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        request_error(collection, body)
        timings.append(time.perf_counter() - start)
    assert min(timings) < 0.010


def mutations(document: Any) -> Iterator[Any]:
    """``document`` with one fault at a time: every property dropped, retyped or replaced."""
    yield document
    if isinstance(document, dict):
        for key, value in document.items():
            yield {k: v for k, v in document.items() if k != key}
            for replacement in ("Spread", 1.5, [], {}, True, "PT1H", "2025-01-01T00:00:00Z"):
                yield {**document, key: replacement}
            for changed in mutations(value):
                yield {**document, key: changed}
        yield {**document, "unknownProperty": 1}
    elif isinstance(document, list) and document:
        for changed in mutations(document[0]):
            yield [changed, *document[1:]]


def test_compiled_checks_agree_with_jsonschema() -> None:
    """The fast checks decide alone when a body is valid: they must never disagree."""
    spec = get_spec()
    cases: list[tuple[str, Any]] = []
    for path in EXAMPLES:
        document = example(path)
        operation = spec.operations[document["operationId"]]
        for value in document["parameters"].values():
            if isinstance(value, dict) and operation.body_definition:
                cases += [(operation.body_definition, body) for body in mutations(value)]
        for status, response in document["responses"].items():
            definition = spec._responses[operation.operation_id].get(status) or {}
            name = str(definition.get("$ref", "")).rpartition("/")[2]
            if name and "body" in response:
                cases += [(name, body) for body in mutations(response["body"])]
    assert len(cases) > 1500
    for validators in (spec._strict, spec._lenient):
        for name, instance in cases:
            slow = validators.validator(name).is_valid(instance)
            assert validators.is_valid(name, instance) == slow, (name, instance)


# Strict answers


def test_response_problems_are_strict_and_readable() -> None:
    document = example(SHARED / "2025-06-01" / "examples" / "Pools_GetPool_Basic.json")
    good = document["responses"]["200"]["body"]
    assert response_problems("Pools_GetPool", 200, good) == []
    assert response_problems("Pools_GetPool", 200, json.dumps(good).encode()) == []
    bad = copy.deepcopy(good)
    bad["state"] = "Active"
    bad["odata.metadata"] = "https://account/$metadata#pools/@Element"
    bad["targetDedicatedNodes"] = "3"
    bad["taskSchedulingPolicy"]["nodeFillType"] = "Spread"
    bad["creationTime"] = "2025-01-01 00:00:00"
    bad["resizeTimeout"] = "15m"
    bad["taskSlotsPerNode"] = 1.0
    del bad["vmSize"]
    assert response_problems("Pools_GetPool", 200, bad, where="GET /pools/p1") == [
        "GET /pools/p1: $: 'vmSize' is a required property",
        "GET /pools/p1: $: Additional properties are not allowed ('odata.metadata' was unexpected)",
        "GET /pools/p1: $.creationTime: '2025-01-01 00:00:00' is not a 'date-time'",
        "GET /pools/p1: $.resizeTimeout: '15m' is not a 'duration'",
        "GET /pools/p1: $.state: 'Active' is not one of ['active', 'deleting']",
        "GET /pools/p1: $.targetDedicatedNodes: '3' is not of type 'integer'",
        "GET /pools/p1: $.taskSchedulingPolicy.nodeFillType: 'Spread' is not one of "
        "['spread', 'pack']",
        "GET /pools/p1: $.taskSlotsPerNode: 1.0 is not of type 'integer'",
    ]


def test_response_problems_for_statuses_without_bodies() -> None:
    assert response_problems("Pools_PoolExists", 404, None) == []
    assert response_problems("Pools_DeletePool", 202, b"") == []
    assert response_problems("Pools_DeletePool", 202, {"id": "p1"}) == [
        "DELETE /pools/{poolId} 202: the description declares no body, but one was sent"
    ]
    assert response_problems("Pools_GetPool", 201, None) == [
        "GET /pools/{poolId} 201: status 201 is not declared (declared: 200)"
    ]
    assert response_problems("Tasks_GetTaskFile", 200, b"hello\n") == []
    assert response_problems("Pools_GetPool", 404, errors.not_found("pool", "p1").body()) == []
    assert response_problems("Pools_GetPool", 200, None) == [
        "GET /pools/{poolId} 200: the description declares a body, but none was sent"
    ]


# (d) SharedKey, as the SDK signs


def signed(method: str, url: str, body: bytes | None = None, key: str = KEY) -> HttpRequest:
    """A request signed by the SDK's own policy, as ``BatchClient`` would send it."""
    headers = {"client-request-id": "9c4d50ee-2d56-4cd3-8152-34347dc9f2b0"}
    if body is not None:
        headers["content-type"] = "application/json; odata=minimalmetadata"
    request = HttpRequest(method, url, headers=headers, content=body)
    policy = BatchSharedKeyAuthPolicy(AzureNamedKeyCredential(ACCOUNT, key))
    policy.on_request(PipelineRequest(request, PipelineContext(None)))
    return request


def check(request: HttpRequest, *, key: str = KEY, account: str = ACCOUNT) -> Any:
    parts = urlsplit(request.url)
    query = parse_qs(parts.query, keep_blank_values=True)
    return verify(request.method, parts.path, query, dict(request.headers), account, key)


GET_URL = (
    "http://127.0.0.1:8080/jobs/j%201/tasks?api-version=2025-06-01&maxresults=5"
    "&%24filter=state%20eq%20%27active%27&$select=id,state&timeOut=30"
)
POST_URL = "http://127.0.0.1:8080/jobs/j1/addtaskcollection?api-version=2025-06-01"


def test_the_sdks_signature_is_accepted() -> None:
    get = signed("GET", GET_URL)
    post = signed("POST", POST_URL, json.dumps(task_collection(2)).encode())
    file = signed("HEAD", "http://h/jobs/j/tasks/t/files/wd%2Fa%25b.txt?api-version=2025-06-01")
    assert check(get) is None
    assert check(post) is None
    assert check(file) is None


def test_the_string_to_sign() -> None:
    request = signed("GET", GET_URL)
    parts = urlsplit(request.url)
    text = string_to_sign("GET", parts.path, parse_qs(parts.query), dict(request.headers), ACCOUNT)
    assert text == (
        "GET\n\n\n\n\n\n\n\n\n\n\n\n"
        f"ocp-date:{request.headers['ocp-date']}\n"
        "/fanoutacct/jobs/j%201/tasks"
        "\n$filter:state eq 'active'\n$select:id,state\napi-version:2025-06-01"
        "\nmaxresults:5\ntimeOut:30"
    )
    assert request.headers["Authorization"] == f"SharedKey {ACCOUNT}:{sign(text, KEY)}"
    post = signed("DELETE", "http://h/pools/p1?api-version=2025-06-01")
    parts = urlsplit(post.url)
    text = string_to_sign("DELETE", parts.path, parse_qs(parts.query), dict(post.headers), ACCOUNT)
    assert text.startswith("DELETE\n\n\n0\n")  # a body-less DELETE is signed with length 0


def test_wrong_keys_accounts_and_tampering_are_refused() -> None:
    get = signed("GET", GET_URL)
    post = signed("POST", POST_URL, b'{"value": []}')
    wrong_key = check(get, key=OTHER_KEY)
    assert wrong_key is not None
    assert (wrong_key.status, wrong_key.code) == (403, "AuthenticationFailed")
    assert wrong_key.detail.startswith("The MAC signature found in the HTTP request '")
    assert "Server used following string to sign: 'GET\n" in wrong_key.detail
    assert check(get, account="otheraccount") is not None
    assert check(signed("GET", GET_URL, key=OTHER_KEY)) is not None
    tampered = signed("GET", GET_URL)
    tampered.url = tampered.url.replace("maxresults=5", "maxresults=500")
    assert check(tampered) is not None
    moved = signed("POST", POST_URL, b'{"value": []}')
    moved.url = moved.url.replace("/j1/", "/j2/")
    assert check(moved) is not None
    post.headers["ocp-date"] = "Thu, 01 Jan 2015 00:00:00 GMT"
    assert check(post) is not None
    unsigned = signed("GET", GET_URL)
    del unsigned.headers["Authorization"]
    missing = check(unsigned)
    assert missing is not None
    assert "Authorization" in missing.detail
    bearer = signed("GET", GET_URL)
    bearer.headers["Authorization"] = "Bearer eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9"
    assert check(bearer) is not None


class _Verifying(http.server.BaseHTTPRequestHandler):
    """Checks each request's signature, then answers 404 ``PoolNotFound`` in Batch's shape."""

    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[tuple[str, str, Any]]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        parts = urlsplit(self.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        headers = dict(self.headers.items())
        problem = verify(self.command, parts.path, query, headers, ACCOUNT, KEY)
        self.seen.append((self.command, self.path, problem))
        error = errors.not_found("pool", "p1")
        payload = json.dumps(error.body()).encode() if self.command != "HEAD" else b""
        self.send_response(error.status)
        for name, value in error.response_headers(headers).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client closing its keep-alive connection is not worth a traceback."""


def test_the_sdk_over_a_socket_is_accepted() -> None:
    """What ``BatchClient`` puts on the wire (Content-Length, quoting, ocp-range) verifies."""
    server = _QuietServer(("127.0.0.1", 0), _Verifying)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Verifying.seen = []
    try:
        endpoint = f"http://127.0.0.1:{server.server_port}"
        client = BatchClient(endpoint, AzureNamedKeyCredential(ACCOUNT, KEY), retry_total=0)
        calls = [
            lambda: client.get_pool("p1", select=["id", "state"]),
            lambda: client.create_pool(m.BatchPoolCreateOptions(id="p1", vm_size="small")),
            lambda: client.pool_exists("p1"),
            lambda: client.enable_node_scheduling("p1", "node 1"),
            lambda: client.download_task_file("j", "t", "wd/sub dir/a%b.txt"),
            lambda: client.download_node_file(
                "p1", "n1", "startup/stdout.txt", ocp_range="bytes=0-9"
            ),
            lambda: list(client.list_tasks("j", filter="state eq 'active'", max_results=5)),
            lambda: client.create_task_collection(
                "j",
                m.BatchTaskGroup(task_values=[m.BatchTaskCreateOptions(id="t", command_line="é")]),
            ),
        ]
        for call in calls:
            try:
                call()
            except HttpResponseError as error:  # 15.1.0's pool_exists raises on 404 too
                assert error.status_code == 404
        client.close()
    finally:
        server.shutdown()
        server.server_close()
    assert len(_Verifying.seen) == len(calls)
    assert [problem for _, _, problem in _Verifying.seen] == [None] * len(calls)
    assert "/files/wd%2Fsub%20dir%2Fa%25b.txt?" in _Verifying.seen[4][1]


# (e) Error bodies


def invalid_pool() -> BatchError:
    problem = request_error(create_pool(), pool(targetDedicatedNodes="x"))
    assert problem is not None
    return errors.invalid_request(problem)


ALL_ERRORS = [
    pytest.param(errors.not_found("pool", "p1"), 404, "PoolNotFound", id="pool-not-found"),
    pytest.param(errors.not_found("job", "j1"), 404, "JobNotFound", id="job-not-found"),
    pytest.param(errors.not_found("task", "t1"), 404, "TaskNotFound", id="task-not-found"),
    pytest.param(errors.not_found("node", "n1"), 404, "NodeNotFound", id="node-not-found"),
    pytest.param(errors.not_found("job schedule", "s1"), 404, "JobScheduleNotFound", id="schedule"),
    pytest.param(errors.not_found("file", "f"), 404, "FileNotFound", id="file-not-found"),
    pytest.param(errors.exists("pool", "p1"), 409, "PoolExists", id="pool-exists"),
    pytest.param(errors.exists("job", "j1"), 409, "JobExists", id="job-exists"),
    pytest.param(errors.exists("task", "t1"), 409, "TaskExists", id="task-exists"),
    pytest.param(invalid_pool(), 400, "InvalidRequestBody", id="invalid-request"),
    pytest.param(
        errors.authentication_failed("bad signature"), 403, "AuthenticationFailed", id="auth"
    ),
    pytest.param(
        errors.unsupported("GET", "/pools/p1/nodes/n1/remoteloginsettings"),
        501,
        "NotImplemented",
        id="not-implemented",
    ),
    pytest.param(errors.unsupported("PUT", "/pools/p1"), 405, "UnsupportedHttpVerb", id="verb"),
    pytest.param(errors.unsupported("GET", "/certificates"), 400, "InvalidUri", id="bad-uri"),
    pytest.param(errors.body_too_large(1024), 413, "RequestBodyTooLarge", id="too-large"),
    pytest.param(errors.server_busy(2), 503, "ServerBusy", id="busy"),
    pytest.param(errors.condition_not_met(), 412, "ConditionNotMet", id="condition"),
    pytest.param(
        BatchError(409, "OperationNotValidOnNode", "Not valid.", {"Reason": "x"}),
        409,
        "OperationNotValidOnNode",
        id="custom",
    ),
]


@pytest.mark.parametrize(("error", "status", "code"), ALL_ERRORS)
def test_error_bodies_follow_the_description(error: BatchError, status: int, code: str) -> None:
    assert (error.status, error.code) == (status, code)
    body = error.body("0b0c0d0e-0000-4000-8000-000000000001")
    assert definition_problems("BatchError", body) == []
    assert response_problems("Pools_GetPool", status, body) == []  # the "default" answer
    assert body["code"] == code
    assert body["message"]["lang"] == "en-US"
    assert re.fullmatch(
        rf"{re.escape(error.message)}\nRequestId:0b0c0d0e-0000-4000-8000-000000000001"
        r"\nTime:\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z",
        body["message"]["value"],
    )
    assert [item["key"] for item in body.get("values", [])] == list(error.values)


def test_error_details() -> None:
    auth = errors.authentication_failed("bad signature").body()
    assert auth["values"] == [{"key": "AuthenticationErrorDetail", "value": "bad signature"}]
    assert "values" not in errors.not_found("pool", "p1").body()
    assert errors.not_found("Pool", "p1").message == "The specified pool does not exist."
    assert errors.unsupported("PUT", "/pools/p1").headers == {"Allow": "DELETE, GET, HEAD, PATCH"}
    assert errors.server_busy(2).response_headers()["Retry-After"] == "2"
    with pytest.raises(ValueError, match="unknown kind"):
        errors.not_found("galaxy", "g1")


def test_standard_headers() -> None:
    asked = {"client-request-id": "abc", "return-client-request-id": "true"}
    headers = standard_headers("rid", asked)
    assert headers["request-id"] == "rid"
    assert headers["client-request-id"] == "abc"
    assert headers["Content-Type"] == "application/json; odata=minimalmetadata"
    assert headers["DataServiceVersion"] == "3.0"
    assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", headers["Date"])
    assert "client-request-id" not in standard_headers("rid", {"client-request-id": "abc"})
    assert "Content-Type" not in standard_headers("rid", json_body=False)
    error = errors.not_found("pool", "p1")
    assert error.response_headers()["request-id"] == error.request_id
    assert error.request_id in error.body()["message"]["value"]


def test_file_paths_in_urls_round_trip() -> None:
    """What the SDK quotes with ``safe=""`` and the server unquotes comes back whole."""
    for name in ("stdout.txt", "wd/sub dir/a%b.txt", "workitems\\job-1\\task\\stderr.txt"):
        operation = match("GET", unquote(f"/pools/p1/nodes/n1/files/{quote(name, safe='')}"))
        assert operation is not None
        assert operation.path_params["filePath"] == name
