"""The HTTP face of the emulator: the Batch REST API (the api-versions of ``spec.API_VERSIONS``)
over plain http.

Every request is authenticated with SharedKey as the service does it, matched to an operation of
the official description, and its body validated against that description before an operation
runs; what the emulator does not implement gets a Batch-shaped error. Answers carry the headers
the service sends (``request-id``, ``ETag``, ``Last-Modified``, ...).

Faults (see ``faults``) are set with the constructor's ``faults`` and from outside through the
admin endpoint on the same port (see ``admin``). With ``busy_every=N`` (``fanout batch-emulator
--busy-every N``), N > 0, every N-th request, counted over all requests, is answered 503
``ServerBusy`` with ``Retry-After: 1`` and not executed (not even authenticated). Such a refusal is
logged like any answer (``METHOD PATH 503`` in the request log) and reported to the observer with
an empty operationId. See ``faults``.
"""

from __future__ import annotations

import json
import threading
import traceback
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qs, unquote, urlsplit

from fanout_azure.emulator import admin, catalog, conditions, files, replies, shapes
from fanout_azure.emulator.account import Account
from fanout_azure.emulator.auth import verify
from fanout_azure.emulator.controls import control_operations
from fanout_azure.emulator.errors import (
    BatchError,
    api_version_error,
    authentication_failed,
    body_too_large,
    invalid_request,
    server_busy,
    unsupported,
)
from fanout_azure.emulator.faults import RETRY_AFTER_S, Busy, Faults
from fanout_azure.emulator.model import Job, Task
from fanout_azure.emulator.odata import select
from fanout_azure.emulator.refusals import refusal
from fanout_azure.emulator.replies import Reply, Request, changed, http_date
from fanout_azure.emulator.spec import LATEST_VERSION, Operation, get_spec

MAX_BODY_BYTES = 1024 * 1024
MAX_TASKS_PER_COLLECTION = 100


class BatchEmulator:
    """The server and the account behind it."""

    def __init__(
        self,
        host: str,
        port: int,
        account: str,
        key: str,
        root: Path,
        request_log: TextIO | None = None,
        observer: Callable[[str, str, int, Any, str], None] | None = None,
        busy_every: int = 0,
        faults: Faults | None = None,
    ) -> None:
        self.key = key
        self.request_log = request_log
        self.observer = observer
        """Called with (operationId or "", path, status, JSON body, api-version) for every
        answer; the operationId is that of the description of the version the request
        declared."""
        self.faults = faults or Faults()
        """Every fault knob (see ``faults``); ``busy_every`` sets ``faults.busy.every``."""
        if busy_every:
            self.faults.busy = Busy(busy_every)
        self.busy = self.faults.busy
        """Every ``busy_every``-th request is refused 503 ``ServerBusy`` unexecuted (0: none)."""
        self.lost = self.faults.lost
        """Requests carried out whose answers are never sent."""
        self._log_lock = threading.Lock()
        handler = _handler_for(self)
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.endpoint = f"http://{host}:{self.httpd.server_address[1]}"
        self.account = Account(account, self.endpoint, root, self.faults)
        self.operations: dict[str, Callable[[Request], Reply]] = {
            **_operations(self.account),
            **control_operations(self.account),
        }

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="batch-emulator", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.account.shutdown()

    def log(self, method: str, path: str, status: int) -> None:
        if self.request_log is not None:
            with self._log_lock:
                self.request_log.write(f"{method} {path} {status}\n")
                self.request_log.flush()


def _handler_for(emulator: BatchEmulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "Microsoft-HTTPAPI/2.0"

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_PUT(self) -> None:
            self._serve("PUT")

        def do_PATCH(self) -> None:
            self._serve("PATCH")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

        def do_HEAD(self) -> None:
            self._serve("HEAD")

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _serve(self, method: str) -> None:
            parts = urlsplit(self.path)
            query = parse_qs(parts.query, keep_blank_values=True)
            length = int(self.headers.get("Content-Length") or 0)
            raw_body = self.rfile.read(length) if length else b""
            self.operation_id = ""
            self.api_version = LATEST_VERSION
            self.request_id = str(uuid.uuid4())
            if parts.path.startswith(admin.PREFIX):  # never a Batch path, never a fault
                status, document = admin.answer(
                    emulator.account,
                    emulator.faults,
                    method,
                    parts.path,
                    raw_body,
                    self.client_address[0],
                )
                self._send(method, Reply(status, document))
                emulator.log(method, parts.path, status)
                return
            try:
                if emulator.busy.refuse():
                    raise server_busy(RETRY_AFTER_S)
                reply = self._answer(method, parts.path, query, raw_body)
            except BatchError as error:
                reply = Reply(error.status, error.body(self.request_id), error.headers)
            except Exception:  # an emulator bug: answer it (and log it) rather than hang up
                traceback.print_exc()
                failure = _internal_error()
                reply = Reply(failure.status, failure.body(self.request_id))
            if emulator.lost.take(self.operation_id):
                self.close_connection = True  # carried out, and no answer
            else:
                self._send(method, reply)
            emulator.log(method, parts.path, reply.status)
            if emulator.observer is not None:
                emulator.observer(
                    self.operation_id, parts.path, reply.status, reply.body, self.api_version
                )

        def _answer(
            self, method: str, raw_path: str, query: dict[str, list[str]], raw_body: bytes
        ) -> Reply:
            headers = {name.lower(): value for name, value in self.headers.items()}
            problem = verify(method, raw_path, query, headers, emulator.account.name, emulator.key)
            if problem is not None:
                raise authentication_failed(problem)
            versions = query.get("api-version") or []
            refused = api_version_error(versions[0] if versions else None)
            if refused is not None:
                raise refused
            version = self.api_version = versions[0]
            path = unquote(raw_path)
            declared = get_spec(version).match(method, path)
            if declared is None:
                raise unsupported(method, path, version)
            self.operation_id = declared.operation_id
            operation = get_spec().match(method, path)  # the newest version names the handlers
            if operation is None or operation.operation_id not in emulator.operations:
                raise unsupported(method, path, version)
            if len(raw_body) > MAX_BODY_BYTES:
                raise body_too_large()
            body = _read_body(declared, operation, raw_body, version)
            reply = emulator.operations[operation.operation_id](
                Request(operation, query, body, path, headers)
            )
            if isinstance(reply.body, dict):
                reply.body = _project(declared, reply, version)
            return reply

        def _send(self, method: str, reply: Reply) -> None:
            payload = reply.raw if reply.raw is not None else b""
            if reply.raw is None and reply.body is not None:
                payload = json.dumps(reply.body).encode("utf-8")
            # send_response would add a Date of its own (two then) and "Python/3.11" to Server.
            self.send_response_only(reply.status)
            self.send_header("Server", self.server_version)
            self.send_header("request-id", self.request_id)
            self.send_header("Date", format_datetime(datetime.now(UTC), usegmt=True))
            self.send_header("DataServiceVersion", "3.0")
            self.send_header("X-Content-Type-Options", "nosniff")
            client_request_id = self.headers.get("client-request-id")
            if client_request_id and self.headers.get("return-client-request-id") == "true":
                self.send_header("client-request-id", client_request_id)
            if reply.raw is None and reply.body is not None:
                self.send_header("Content-Type", "application/json; odata=minimalmetadata")
            for name, value in (reply.headers or {}).items():
                self.send_header(name, value)
            if "Content-Length" not in (reply.headers or {}):
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(payload)

    return Handler


def _operations(account: Account) -> dict[str, Callable[[Request], Reply]]:
    """Each implemented operation of the description, by its operationId."""
    base = account.base_url

    def created(url: str, etag: str, modified: str) -> Reply:
        return Reply(
            201,
            headers={
                "ETag": etag,
                "Last-Modified": http_date(modified),
                "Location": url,
                "DataServiceId": url,
            },
        )

    def updated(url: str, etag: str, modified: str) -> Reply:
        return changed(200, url, etag, modified)

    def entity(document: dict[str, Any], request: Request, etag: str, modified: str) -> Reply:
        return Reply(
            200,
            select(document, request.param("$select")),
            {"ETag": etag, "Last-Modified": http_date(modified)},
        )

    def listing(documents: list[dict[str, Any]], request: Request) -> Reply:
        return replies.listing(documents, request, base)

    def path(request: Request, name: str) -> str:
        return request.operation.path_params[name]

    # Pools
    def create_pool(request: Request) -> Reply:
        pool = account.create_pool(request.body)
        return created(f"{base}/pools/{pool.id}", pool.etag, pool.modified)

    def get_pool(request: Request) -> Reply:
        pool = account.pool(path(request, "poolId"))
        return entity(pool.to_json(base), request, pool.etag, pool.modified)

    def update_pool(request: Request) -> Reply:
        pool = account.update_pool(path(request, "poolId"), request.body)
        return updated(f"{base}/pools/{pool.id}", pool.etag, pool.modified)

    def pool_exists(request: Request) -> Reply:
        account.pool(path(request, "poolId"))
        return Reply(200)

    def list_pools(request: Request) -> Reply:
        with account._lock:
            documents = [pool.to_json(base) for pool in account.pools.values()]
        return listing(documents, request)

    def delete_pool(request: Request) -> Reply:
        account.delete_pool(path(request, "poolId"))
        return Reply(202)

    def resize_pool(request: Request) -> Reply:
        account.resize_pool(path(request, "poolId"), request.body)
        return Reply(202)

    def list_nodes(request: Request) -> Reply:
        pool = account.pool(path(request, "poolId"))
        with account._lock:
            documents = [node.to_json(base) for node in pool.nodes]
        return listing(documents, request)

    def get_node(request: Request) -> Reply:
        node = account.node(path(request, "poolId"), path(request, "nodeId"))
        return Reply(200, select(node.to_json(base), request.param("$select")))

    def node_root(request: Request) -> Path:
        return account.node(path(request, "poolId"), path(request, "nodeId")).paths.root

    def list_node_files(request: Request) -> Reply:
        return list_files(request, node_root(request))

    def get_node_file(request: Request) -> Reply:
        return file_reply(request, node_root(request))

    def list_images(request: Request) -> Reply:
        return listing(catalog.SUPPORTED_IMAGES, request)

    # Jobs
    def create_job(request: Request) -> Reply:
        job = account.create_job(request.body)
        return created(f"{base}/jobs/{job.id}", job.etag, job.modified)

    def get_job(request: Request) -> Reply:
        job = account.job(path(request, "jobId"))
        return entity(job.to_json(base), request, job.etag, job.modified)

    def list_jobs(request: Request) -> Reply:
        with account._lock:
            documents = [job.to_json(base) for job in account.jobs.values()]
        return listing(documents, request)

    def update_job(request: Request, replace: bool = False) -> Reply:
        def condition(job: Job) -> BatchError | None:
            return conditions.check(request.headers, job.etag, job.modified)

        job = account.update_job(
            path(request, "jobId"), request.body, replace=replace, condition=condition
        )
        return updated(f"{base}/jobs/{job.id}", job.etag, job.modified)

    def replace_job(request: Request) -> Reply:
        return update_job(request, replace=True)

    def terminate_job(request: Request) -> Reply:
        reason = (request.body or {}).get("terminateReason", "UserTerminate")
        account.terminate_job(path(request, "jobId"), reason)
        return Reply(202)

    def delete_job(request: Request) -> Reply:
        account.delete_job(path(request, "jobId"))
        return Reply(202)

    def task_counts(request: Request) -> Reply:
        return Reply(200, account.task_counts(path(request, "jobId")))

    # Tasks
    def create_task(request: Request) -> Reply:
        (outcome,) = account.add_tasks(path(request, "jobId"), [request.body])
        if isinstance(outcome, BatchError):
            raise outcome
        return created(
            f"{base}/jobs/{outcome.job_id}/tasks/{outcome.id}", outcome.etag, outcome.modified
        )

    def add_task_collection(request: Request) -> Reply:
        specs = request.body.get("value", [])
        if len(specs) > MAX_TASKS_PER_COLLECTION:
            raise BatchError(
                400,
                "InvalidPropertyValue",
                "The value provided for one of the properties in the request body is invalid.",
                {
                    "PropertyName": "value",
                    "Reason": f"at most {MAX_TASKS_PER_COLLECTION} tasks per request",
                },
            )
        results: list[dict[str, Any]] = []
        for outcome in account.add_tasks(path(request, "jobId"), specs):
            if isinstance(outcome, BatchError):
                index = len(results)
                results.append(
                    {
                        "status": "clienterror",
                        "taskId": str(specs[index].get("id", "")),
                        "error": outcome.body(),
                    }
                )
            else:
                results.append(
                    {
                        "status": "success",
                        "taskId": outcome.id,
                        "eTag": outcome.etag,
                        "lastModified": outcome.modified,
                        "location": f"{base}/jobs/{outcome.job_id}/tasks/{outcome.id}",
                    }
                )
        return Reply(200, {"value": results})

    def list_tasks(request: Request) -> Reply:
        """A page of the job's tasks: filtered on their summaries where the ``$filter``
        allows, and only the page made documents (under the lock, so that a task's state
        cannot change between the filter and its document)."""
        job = account.job(path(request, "jobId"))

        def document(task: Task) -> dict[str, Any]:
            return task.to_json(base, job.task_constraints(task))

        with account._lock:
            tasks = list(job.tasks.values())
            return replies.lazy_listing(tasks, document, Task.summary, request, base)

    def get_task(request: Request) -> Reply:
        job = account.job(path(request, "jobId"))
        task = account.task(job.id, path(request, "taskId"))
        with account._lock:
            document = task.to_json(base, job.task_constraints(task))
        return entity(document, request, task.etag, task.modified)

    def terminate_task(request: Request) -> Reply:
        account.terminate_task(path(request, "jobId"), path(request, "taskId"))
        return Reply(204)

    def delete_task(request: Request) -> Reply:
        """200 with no body and only the standard headers, as the recorded deletes answer."""

        def condition(task: Task) -> BatchError | None:
            return conditions.check(request.headers, task.etag, task.modified)

        account.delete_task(path(request, "jobId"), path(request, "taskId"), condition)
        return Reply(200)

    def list_task_files(request: Request) -> Reply:
        return list_files(request, _task_directory(account, request))

    def get_task_file(request: Request) -> Reply:
        return file_reply(request, _task_directory(account, request))

    def list_files(request: Request, directory: Path | None) -> Reply:
        recursive = request.param("recursive") == "true"
        return listing(files.entries(directory, recursive, f"{base}{request.path}"), request)

    def file_reply(request: Request, directory: Path | None) -> Reply:
        """A file's content (GET, ``ocp-range`` honoured) or its properties (HEAD)."""
        target = files.find(directory, path(request, "filePath"))
        found = files.answer(
            target,
            f"{base}{request.path}",
            content=request.operation.method == "GET",
            byte_range=request.headers.get("ocp-range"),
        )
        return Reply(200, raw=found.content, headers=found.headers)

    return {
        "Pools_CreatePool": create_pool,
        "Pools_GetPool": get_pool,
        "Pools_PoolExists": pool_exists,
        "Pools_ListPools": list_pools,
        "Pools_DeletePool": delete_pool,
        "Pools_UpdatePool": update_pool,
        "Pools_ResizePool": resize_pool,
        "Nodes_ListNodes": list_nodes,
        "Nodes_GetNode": get_node,
        "Nodes_ListNodeFiles": list_node_files,
        "Nodes_GetNodeFile": get_node_file,
        "Nodes_GetNodeFileProperties": get_node_file,
        "Pools_ListSupportedImages": list_images,
        "Jobs_CreateJob": create_job,
        "Jobs_GetJob": get_job,
        "Jobs_ListJobs": list_jobs,
        "Jobs_UpdateJob": update_job,
        "Jobs_ReplaceJob": replace_job,
        "Jobs_TerminateJob": terminate_job,
        "Jobs_DeleteJob": delete_job,
        "Jobs_GetJobTaskCounts": task_counts,
        "Tasks_CreateTask": create_task,
        "Tasks_CreateTaskCollection": add_task_collection,
        "Tasks_ListTasks": list_tasks,
        "Tasks_GetTask": get_task,
        "Tasks_TerminateTask": terminate_task,
        "Tasks_DeleteTask": delete_task,
        "Tasks_ListTaskFiles": list_task_files,
        "Tasks_GetTaskFile": get_task_file,
        "Tasks_GetTaskFileProperties": get_task_file,
    }


def _read_body(declared: Operation, operation: Operation, raw: bytes, version: str) -> Any:
    """The body as the service reads it, checked against the declared version's description,
    its enums spelt as the newest version does (the account keeps that spelling); 400 or 501
    (see ``refusals``) when the service, or the emulator, would not take it."""
    if declared.body_schema is None:
        return None
    body, trouble = get_spec(version).read_request(declared, raw or None)
    if trouble is not None:
        raise invalid_request(trouble)
    refused = refusal(body)
    if refused is not None:
        raise refused
    definition = operation.body_definition
    if definition is not None and body is not None:
        body = shapes.respell(get_spec().definitions, definition, body)
    return body


def _project(declared: Operation, reply: Reply, version: str) -> Any:
    """An answer built in the newest version's shapes, as the declared version shows it: what
    that version does not define left out (a pool created by a 2024 client keeps its
    ``resourceTags``, which a 2025-06-01 answer does not have), enums spelt its way."""
    spec = get_spec(version)
    definition = spec.response_definition(declared.operation_id, reply.status)
    if definition is None:
        return reply.body
    return shapes.project(spec.definitions, definition, reply.body)


def _internal_error() -> BatchError:
    """500 ``InternalError``, in the words Storage uses for it."""
    return BatchError(
        500, "InternalError", "The server encountered an internal error. Please retry the request."
    )


def _task_directory(account: Account, request: Request) -> Path | None:
    """Where the task's files are: its directory on the node it last ran on."""
    params = request.operation.path_params
    task = account.task(params["jobId"], params["taskId"])
    node = task.node or task.last_node
    if node is None:
        return None
    return node.paths.task_dir(task.job_id, task.id)
