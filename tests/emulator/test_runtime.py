"""The emulator's node runtime with real processes, and real Azurite for resource and output files.

Each test is one promise of the node agent: Batch's directories, no shell, a node's environment,
wall-clock limits and cancels that end every process, resource files by URL and by container
(paged listings included), output files per upload condition and pattern, failure codes as the
service reports them, and no SAS in any message or log.
"""

from __future__ import annotations

import re
import signal
import stat
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest
from azure.storage.blob import (
    BlobSasPermissions,
    ContainerSasPermissions,
    generate_blob_sas,
    generate_container_sas,
)
from azurite import Azurite, nowhere
from fanout_azure.emulator import runtime
from fanout_azure.emulator.runtime import (
    ENV_NAMES,
    NODE_PATH,
    AttemptResult,
    NodeIdentity,
    NodePaths,
    format_time,
    parse_duration,
    run_start_task,
    run_task,
    should_retry,
)

JOB = "job1"
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,7})?Z")
IDENTITY = NodeIdentity(
    account="emuaccount",
    account_url="http://127.0.0.1:8080",
    pool_id="pool1",
    node_id="tvmps_node-0",
    is_dedicated=True,
)


@pytest.fixture
def node(tmp_path: Path) -> NodePaths:
    return NodePaths(tmp_path / "node")


def task(task_id: str, command: str, **extra: Any) -> dict[str, Any]:
    return {"id": task_id, "commandLine": command, **extra}


def run(
    node: NodePaths, spec: dict[str, Any], job_env: list[dict[str, Any]] | None = None
) -> AttemptResult:
    return run_task(IDENTITY, node, JOB, spec, job_env or [], threading.Event())


def task_dir(node: NodePaths, task_id: str) -> Path:
    return node.root / "workitems" / JOB / "job-1" / task_id


def stdout(node: NodePaths, task_id: str) -> str:
    return (task_dir(node, task_id) / "stdout.txt").read_text()


def running(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie waiting for its reaper does not)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return status.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def environment(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def assert_failed(result: AttemptResult, category: str, code: str) -> None:
    assert result.result == "failure"
    assert result.failure_info is not None, result
    assert (result.failure_info["category"], result.failure_info["code"]) == (category, code)
    assert "sig=" not in str(result.failure_info), "a SAS signature leaked into failureInfo"


# ------------------------------------------------------------------ directories, command, env


def test_a_task_runs_in_batch_directories(node: NodePaths) -> None:
    result = run(node, task("t1", "/bin/sh -c 'pwd; echo oops >&2'"))
    directory = task_dir(node, "t1")
    assert result.result == "success"
    assert (result.exit_code, result.failure_info) == (0, None)
    assert TIME.fullmatch(result.start_time) and TIME.fullmatch(result.end_time)
    assert result.start_time <= result.end_time
    assert stdout(node, "t1") == f"{directory / 'wd'}\n"
    assert (directory / "stderr.txt").read_text() == "oops\n"
    assert node.task_dir(JOB, "t1") == directory
    assert node.shared() == node.root / "shared"


def test_a_start_task_runs_in_startup_wd_without_job_variables(node: NodePaths) -> None:
    result = run_start_task(IDENTITY, node, {"commandLine": "env"}, threading.Event())
    startup = node.root / "startup"
    assert result.result == "success"
    env = environment((startup / "stdout.txt").read_text())
    assert env["AZ_BATCH_TASK_WORKING_DIR"] == str(startup / "wd")
    assert env["AZ_BATCH_TASK_DIR"] == str(startup)
    assert "AZ_BATCH_JOB_ID" not in env and "AZ_BATCH_TASK_ID" not in env
    assert (startup / "wd").is_dir()


def test_each_attempt_starts_with_an_empty_working_directory(node: NodePaths) -> None:
    run(node, task("again", "/bin/sh -c 'echo one > left.txt; echo first'"))
    result = run(node, task("again", "/bin/sh -c 'ls -A; echo second'"))
    assert result.result == "success"
    assert stdout(node, "again") == "second\n"


def test_the_command_line_runs_without_a_shell(node: NodePaths) -> None:
    run(node, task("plain", "echo $HOME 'a  b' *"))
    assert stdout(node, "plain") == "$HOME a  b *\n"
    run(node, task("shell", "/bin/sh -c 'echo $AZ_BATCH_TASK_ID'"))
    assert stdout(node, "shell") == "shell\n"


def test_the_environment_is_a_nodes_not_the_emulators(
    node: NodePaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FANOUT_TEST_SECRET", "s3cret")
    job_env = [{"name": "SHARED", "value": "job"}, {"name": "BOTH", "value": "job"}]
    settings = [{"name": "BOTH", "value": "task"}, {"name": "EMPTY"}]
    run(node, task("env", "env", environmentSettings=settings), job_env)
    env = environment(stdout(node, "env"))
    directory = task_dir(node, "env")
    assert set(ENV_NAMES) <= env.keys()
    assert {name for name in env if name.startswith("AZ_BATCH_")} == set(ENV_NAMES)
    assert env["AZ_BATCH_ACCOUNT_NAME"] == "emuaccount"
    assert env["AZ_BATCH_ACCOUNT_URL"] == "http://127.0.0.1:8080/"
    assert env["AZ_BATCH_JOB_ID"] == JOB and env["AZ_BATCH_TASK_ID"] == "env"
    assert env["AZ_BATCH_POOL_ID"] == "pool1" and env["AZ_BATCH_NODE_ID"] == "tvmps_node-0"
    assert env["AZ_BATCH_NODE_IS_DEDICATED"] == "true"
    assert env["AZ_BATCH_NODE_ROOT_DIR"] == str(node.root)
    assert env["AZ_BATCH_NODE_SHARED_DIR"] == str(node.root / "shared")
    assert env["AZ_BATCH_NODE_STARTUP_DIR"] == str(node.root / "startup")
    assert env["AZ_BATCH_TASK_DIR"] == str(directory)
    assert env["AZ_BATCH_TASK_WORKING_DIR"] == str(directory / "wd")
    assert env["AZ_BATCH_CERTIFICATES_DIR"] == str(directory / "certs")
    assert (env["AZ_BATCH_TASK_USER"], env["AZ_BATCH_TASK_USER_IDENTITY"]) == (
        "_azbatch",
        "PoolNonAdmin",
    )
    assert (env["SHARED"], env["BOTH"], env["EMPTY"]) == ("job", "task", "")
    assert "FANOUT_TEST_SECRET" not in env
    assert env["PATH"] == NODE_PATH
    assert Path(env["HOME"]).is_relative_to(node.root)

    admin = {"autoUser": {"scope": "task", "elevationLevel": "admin"}}
    run(node, task("admin", "env", userIdentity=admin))
    assert environment(stdout(node, "admin"))["AZ_BATCH_TASK_USER_IDENTITY"] == "TaskAdmin"


# ------------------------------------------------------------------------- exits and failures


def test_a_nonzero_exit_is_a_retryable_user_error(node: NodePaths) -> None:
    result = run(node, task("three", "/bin/sh -c 'exit 3'"))
    assert result.exit_code == 3
    assert_failed(result, "usererror", "FailureExitCode")
    assert should_retry(result)


def test_a_missing_program_is_command_program_not_found(node: NodePaths) -> None:
    result = run(node, task("nope", "no-such-program-anywhere --flag"))
    assert result.exit_code is None
    assert_failed(result, "usererror", "CommandProgramNotFound")
    assert not should_retry(result)


def test_a_program_that_cannot_start_is_command_launch_failed(
    node: NodePaths, tmp_path: Path
) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    result = run(node, task("noexec", str(script)))
    assert result.exit_code is None
    assert_failed(result, "usererror", "CommandLaunchFailed")


def test_the_wall_clock_limit_ends_the_task(node: NodePaths) -> None:
    began = time.monotonic()
    spec = task(
        "slow", "/bin/sh -c 'echo $$; exec sleep 30'", constraints={"maxWallClockTime": "PT0.5S"}
    )
    result = run(node, spec)
    assert time.monotonic() - began < 3
    assert result.exit_code == -signal.SIGTERM  # the sleep it became, as a node reports it
    assert_failed(result, "servererror", "TaskEnded")
    assert not should_retry(result)
    assert not running(int(stdout(node, "slow")))


def test_a_process_deaf_to_sigterm_gets_sigkill(
    node: NodePaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "KILL_GRACE_S", 0.3)
    spec = task(
        "deaf",
        "/bin/sh -c 'trap \"\" TERM; sleep 30 & echo $!; wait'",
        constraints={"maxWallClockTime": "PT0.3S"},
    )
    began = time.monotonic()
    result = run(node, spec)
    assert time.monotonic() - began < 3
    assert result.exit_code == -signal.SIGKILL  # the shell, deaf to SIGTERM
    assert not running(int(stdout(node, "deaf")))


def test_nothing_a_task_started_outlives_it(node: NodePaths) -> None:
    began = time.monotonic()
    result = run(node, task("bg", "/bin/sh -c 'sleep 30 & echo $!'"))
    assert result.result == "success"
    assert time.monotonic() - began < 2
    assert not running(int(stdout(node, "bg")))


def test_cancel_ends_the_processes_and_returns_at_once(node: NodePaths) -> None:
    cancel = threading.Event()
    results: list[AttemptResult] = []
    spec = task("stop", "/bin/sh -c 'sleep 30 & echo $!; wait'")
    worker = threading.Thread(
        target=lambda: results.append(run_task(IDENTITY, node, JOB, spec, [], cancel))
    )
    worker.start()
    out = task_dir(node, "stop") / "stdout.txt"
    deadline = time.monotonic() + 5
    while not (out.exists() and out.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.02)
    cancelled = time.monotonic()
    cancel.set()
    worker.join(timeout=5)
    assert time.monotonic() - cancelled < 1.5
    [result] = results
    assert_failed(result, "usererror", "TaskEnded")
    assert not running(int(out.read_text()))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("PT10S", 10),
        ("PT1H30M", 5400),
        ("P1D", 86400),
        ("P1DT2H", 93600),
        ("PT0.5S", 0.5),
        ("P2W", 1209600),
        ("P", 0),
        ("P10675199DT2H48M5.4775807S", 10675199 * 86400 + 2 * 3600 + 48 * 60 + 5.4775807),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10S", "PT", "P1Y", "P1M", "PT1X", "-PT1S"])
def test_parse_duration_refuses_what_is_no_fixed_duration(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_times_are_written_as_the_service_writes_them() -> None:
    assert format_time(datetime(2023, 9, 7, 6, 26, 59, 413640, UTC)) == "2023-09-07T06:26:59.41364Z"
    assert format_time(datetime(2023, 9, 7, 6, 26, 59, tzinfo=UTC)) == "2023-09-07T06:26:59Z"
    east = timezone(timedelta(hours=2))
    assert format_time(datetime(2023, 9, 7, 8, 0, 0, 1, east)) == "2023-09-07T06:00:00.000001Z"


# ------------------------------------------------------------------------------ resource files


def sas_url(azurite: Azurite, container: str, blob: str | None, **permission: bool) -> str:
    """A blob URL with a blob SAS, or (``blob`` None) a container URL with a container SAS."""
    expiry = datetime.now(UTC) + timedelta(hours=1)
    if blob is None:
        sas = generate_container_sas(
            azurite.account,
            container,
            account_key=azurite.key,
            permission=ContainerSasPermissions(**permission),
            expiry=expiry,
        )
        return f"{azurite.endpoint}/{container}?{sas}"
    sas = generate_blob_sas(
        azurite.account,
        container,
        blob,
        account_key=azurite.key,
        permission=BlobSasPermissions(**permission),
        expiry=expiry,
    )
    return f"{azurite.endpoint}/{container}/{blob}?{sas}"


@pytest.mark.azurite
def test_resource_files_by_url_and_by_container(
    node: NodePaths, azurite: Azurite, azure_container: str
) -> None:
    with azurite.blob_service() as service:
        container = service.get_container_client(azure_container)
        container.upload_blob("tools/tool.sh", b"#!/bin/sh\necho tool ran\n")
        container.upload_blob("inputs/a.txt", b"A\n")
        container.upload_blob("inputs/sub/b.txt", b"B\n")
        container.upload_blob("other/c.txt", b"C\n")
    listing = sas_url(azurite, azure_container, None, read=True, list=True)
    resources = [
        {
            "httpUrl": sas_url(azurite, azure_container, "tools/tool.sh", read=True),
            "filePath": "bin/tool.sh",
            "fileMode": "0755",
        },
        {"storageContainerUrl": listing, "blobPrefix": "inputs/", "filePath": "data"},
        {"storageContainerUrl": listing, "blobPrefix": "other/"},
    ]
    command = (
        "/bin/sh -c './bin/tool.sh && cat data/inputs/a.txt data/inputs/sub/b.txt other/c.txt'"
    )
    result = run(node, task("fetch", command, resourceFiles=resources))
    assert result.result == "success", result
    assert stdout(node, "fetch") == "tool ran\nA\nB\nC\n"
    wd = task_dir(node, "fetch") / "wd"
    assert not (wd / "data" / "other").exists()
    assert stat.S_IMODE((wd / "bin" / "tool.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((wd / "data" / "inputs" / "a.txt").stat().st_mode) == 0o770


@pytest.mark.azurite
def test_a_failed_download_fails_the_attempt_before_the_command(
    node: NodePaths, azurite: Azurite, azure_container: str
) -> None:
    list_only = sas_url(azurite, azure_container, None, list=True)
    cases = [
        ({"httpUrl": sas_url(azurite, azure_container, "absent.txt", read=True)}, "BlobNotFound"),
        ({"httpUrl": list_only.replace("?", "/x.txt?"), "filePath": "x"}, "BlobAccessDenied"),
        ({"autoStorageContainerName": "data"}, "BlobDownloadMiscError"),
        ({"storageContainerUrl": list_only, "filePath": "../up"}, None),
        ({"httpUrl": f"{azurite.endpoint}/{azure_container}/x", "filePath": "../x"}, None),
    ]
    with azurite.blob_service() as service:
        service.get_container_client(azure_container).upload_blob("x.txt", b"x")
    for number, (resource, code) in enumerate(cases):
        spec = task(f"dl{number}", "/bin/sh -c 'touch ran'", resourceFiles=[resource])
        result = run(node, spec)
        assert result.exit_code is None
        assert_failed(result, "usererror", code or "ResourceFileCreateFailed")
        assert not should_retry(result)
        assert not (task_dir(node, f"dl{number}") / "wd" / "ran").exists()


def test_an_unreachable_storage_is_a_server_error(node: NodePaths) -> None:
    url = f"{nowhere().endpoint}/c/x.txt?sv=2021&sig=c2VjcmV0"
    result = run(node, task("away", "true", resourceFiles=[{"httpUrl": url, "filePath": "x"}]))
    assert_failed(result, "servererror", "BlobDownloadMiscError")


class PagedContainer(BaseHTTPRequestHandler):
    """A container of three blobs listed one per page, as List Blobs pages with NextMarker."""

    blobs = ("in/a.txt", "in/b.txt", "in/c.txt")
    requests: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.requests.append(self.path)
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        if query.get("sig") != ["c2VjcmV0"]:
            self.send_error(403)
        elif query.get("comp") == ["list"]:
            self._page(int(query.get("marker", ["0"])[0]))
        else:
            self._send(parts.path.split("/cont/", 1)[1].encode())

    def _page(self, index: int) -> None:
        more = f"<NextMarker>{index + 1}</NextMarker>" if index + 1 < len(self.blobs) else ""
        blob = f"<Blob><Name>{self.blobs[index]}</Name></Blob>"
        self._send(f"<EnumerationResults><Blobs>{blob}</Blobs>{more}</EnumerationResults>".encode())

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def paged_container() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), PagedContainer)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/acct/cont?sv=2021&sig=c2VjcmV0"
    finally:
        server.shutdown()
        server.server_close()


def test_a_container_listing_is_followed_page_by_page(
    node: NodePaths, paged_container: str
) -> None:
    resource = {"storageContainerUrl": paged_container, "blobPrefix": "in/"}
    result = run(node, task("paged", "cat in/a.txt in/b.txt in/c.txt", resourceFiles=[resource]))
    assert result.result == "success", result
    assert stdout(node, "paged") == "in/a.txtin/b.txtin/c.txt"
    listings = [path for path in PagedContainer.requests if "comp=list" in path]
    assert len(listings) == 3 and all("prefix=in%2F" in path for path in listings)


# -------------------------------------------------------------------------------- output files


def output(pattern: str, container_url: str, path: str | None, condition: str) -> dict[str, Any]:
    destination: dict[str, Any] = {"containerUrl": container_url}
    if path is not None:
        destination["path"] = path
    return {
        "filePattern": pattern,
        "destination": {"container": destination},
        "uploadOptions": {"uploadCondition": condition},
    }


def blobs(azurite: Azurite, container: str) -> dict[str, bytes]:
    with azurite.blob_service() as service:
        client = service.get_container_client(container)
        return {name: client.download_blob(name).readall() for name in client.list_blob_names()}


@pytest.mark.azurite
def test_output_files_by_pattern_and_path(
    node: NodePaths, azurite: Azurite, azure_container: str
) -> None:
    write = sas_url(azurite, azure_container, None, create=True, write=True)
    command = (
        "/bin/sh -c 'mkdir -p out/sub; echo r > out/result.txt; echo a > out/a.log;"
        " echo b > out/sub/b.log; echo h > out/.hidden.log; echo p > plain.txt;"
        " echo to-stdout; echo to-stderr >&2'"
    )
    outputs = [
        output("out/result.txt", write, "r/result.txt", "tasksuccess"),
        output("plain.txt", write, None, "taskcompletion"),
        output("out/**/*.log", write, "logs/", "taskcompletion"),
        output("../std*.txt", write, "ok", "TaskCompletion"),
        output("$OUT/result.txt", write, "expanded.txt", "tasksuccess"),
        output("out/result.txt", write, "never.txt", "taskfailure"),
        output("missing-*.txt", write, "none", "taskcompletion"),
    ]
    env = [{"name": "OUT", "value": "out"}]
    spec = task("ok", command, outputFiles=outputs, environmentSettings=env)
    result = run(node, spec)
    assert result.result == "success", result
    assert blobs(azurite, azure_container) == {
        "r/result.txt": b"r\n",
        "plain.txt": b"p\n",
        "logs/a.log": b"a\n",
        "logs/sub/b.log": b"b\n",
        "ok/stdout.txt": b"to-stdout\n",
        "ok/stderr.txt": b"to-stderr\n",
        "expanded.txt": b"r\n",
    }
    log = (task_dir(node, "ok") / "fileuploadout.txt").read_text()
    assert "Uploaded out/result.txt" in log and "sig=" not in log


@pytest.mark.azurite
def test_upload_conditions_after_a_failing_exit(
    node: NodePaths, azurite: Azurite, azure_container: str
) -> None:
    write = sas_url(azurite, azure_container, None, create=True, write=True)
    outputs = [
        output("r.txt", write, "success.txt", "tasksuccess"),
        output("r.txt", write, "failure.txt", "taskfailure"),
        output("r.txt", write, "completion.txt", "taskcompletion"),
    ]
    result = run(node, task("bad", "/bin/sh -c 'echo x > r.txt; exit 2'", outputFiles=outputs))
    assert result.exit_code == 2
    assert_failed(result, "usererror", "FailureExitCode")
    assert set(blobs(azurite, azure_container)) == {"failure.txt", "completion.txt"}


@pytest.mark.azurite
def test_a_failed_upload_fails_a_task_that_exited_zero(
    node: NodePaths, azurite: Azurite, azure_container: str
) -> None:
    read_only = sas_url(azurite, azure_container, None, read=True, list=True)
    result = run(
        node,
        task(
            "up",
            "/bin/sh -c 'echo x > r.txt'",
            outputFiles=[output("r.txt", read_only, None, "tasksuccess")],
        ),
    )
    assert result.exit_code == 0
    assert_failed(result, "usererror", "FileUploadMiscError")
    assert not should_retry(result)
    errors = (task_dir(node, "up") / "fileuploaderr.txt").read_text()
    assert "403" in errors and "sig=" not in errors

    absent = sas_url(azurite, "no-such-container", None, create=True, write=True)
    result = run(
        node,
        task(
            "up",
            "/bin/sh -c 'echo x > r.txt'",
            outputFiles=[output("r.txt", absent, None, "taskcompletion")],
        ),
    )
    assert_failed(result, "usererror", "FileUploadContainerNotFound")
