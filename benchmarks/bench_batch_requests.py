"""Requests to Azure Batch per run: they should grow with ceil(N/100) and the polls, not with N.

For each N (10, 250 and 10,000 by default), ``fanout run`` runs N tiny tasks
(``cp {input} {input_stem}.out``) with ``--backend azure-batch`` in a subprocess, against a
fresh ``fanout batch-emulator`` (a process of its own, with its own request log) on an auto-pool
of 2 nodes x 8 slots, polling every second, the data in one Azurite shared by the runs. Each run
must exit 0 with N outputs. From the emulator's request log (a ``METHOD PATH STATUS`` line per
request, read as it grows, so each request gets a time) it reports, per N: the requests by
operation kind, the polls (task counts requests), the wall time and its phases, and the ratio of
the requests to the minimum below. The log holds no query string, so a further page of a listing
counts as one more listing: a poll that makes more than two task listings has paged.

    python benchmarks/bench_batch_requests.py [--tasks 10,250,10000] [--poll-interval 1]
        [--nodes 2] [--slots 8] [--run-timeout 1800]

The minimum, from ``fanout_azure.batch_backend``, ``batch_monitor`` and ``batch_pools``:

    minimum = ceil(N / 100) + PER_POLL x polls + FIXED

- ``ceil(N / 100)``: ``addtaskcollection`` requests; the SDK's ``create_tasks`` sends at most
  100 tasks a request.
- ``PER_POLL`` = 4: what a poll costs while tasks complete. ``AzureBatchBackend.poll`` asks the
  service at most once per ``poll_interval``, however often the scheduler calls it; each time
  ``NodeWatcher.poll`` gets the pool (``$select`` of a few fields) and lists its nodes, and
  ``TaskMonitor.poll`` gets the job's task counts and, when the completed count moved, lists the
  tasks completed since the newest completion it saw (``$filter`` on stateTransitionTime; one
  request per 1,000 tasks listed). Beyond the minimum: a listing of the running tasks when the
  running count moved (bounded by the slots, so never paged), and further pages. A poll where no
  count moved costs 4 too: a get of the job (has it ended before running everything?) instead
  of the listing. Below it: once the job has ended and taken its auto-pool with it, a pool get
  answered 404 and no node listing. Once every task is reported, the service is not asked.
- ``FIXED`` = 7: the preflight (list pools, ``maxresults=1``), the supported images (to pick the
  image), create job, update job (``onAllTasksComplete=terminatejob`` once the tasks are in), the
  first poll's job get that learns the auto-pool's id, the job delete, and the SDK's delete
  poller's job get (one 404 when the emulator deletes at once).

The scheduler goes on calling the backend's poll while it downloads the last outputs, but once
every task is reported the backend asks the service nothing more. Polls after the last task
listing ("idle") would be requests that grow with the time collection takes; the "w/o idle"
ratio leaves them out, and there should be none. A ratio that stays flat from N = 250 to
N = 10,000 means that no request is made per task.
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from azurite import Azurite, start_azurite
from fanout_azure.emulator.command import DEFAULT_ACCOUNT, DEFAULT_KEY

TASKS_PER_SUBMISSION = 100
"""``MAX_TASKS_PER_REQUEST`` of the SDK's ``create_tasks``."""
PER_POLL = 4
"""Task counts + one listing of newly completed tasks + the pool + its nodes."""
FIXED = 7
"""List pools, supported images, create job, update job, get job, delete job, its poller's get."""
KINDS = (
    "create job",
    "update job",
    "addtaskcollection",
    "taskcounts",
    "list tasks",
    "list nodes",
    "get pool",
    "get job",
    "delete",
    "other",
)


@dataclass
class Request:
    at: float  # seconds since the run started, when the line appeared in the log
    method: str
    path: str
    status: int

    @property
    def kind(self) -> str:
        return kind_of(self.method, self.path)


@dataclass
class Result:
    tasks: int
    wall_s: float
    requests: list[Request]
    kinds: collections.Counter[str] = field(default_factory=collections.Counter)

    def __post_init__(self) -> None:
        self.kinds.update(request.kind for request in self.requests)

    @property
    def polls(self) -> int:
        return self.kinds["taskcounts"]

    @property
    def minimum(self) -> int:
        return math.ceil(self.tasks / TASKS_PER_SUBMISSION) + PER_POLL * self.polls + FIXED

    @property
    def total(self) -> int:
        return len(self.requests)

    def listings_per_poll(self) -> list[int]:
        """The task listings (pages included) after each task counts request, until the next."""
        counts: list[int] = []
        for request in self.requests:
            if request.kind == "taskcounts":
                counts.append(0)
            elif request.kind == "list tasks" and counts:
                counts[-1] += 1
        return counts

    @property
    def idle_polls(self) -> int:
        """Polls after the last task listing: every task reported, outputs still downloading."""
        listings = self.listings_per_poll()
        return len(listings) - max((i + 1 for i, n in enumerate(listings) if n), default=0)

    @property
    def idle_requests(self) -> int:
        """What those polls cost: task counts, pool gets and node listings after the last
        task listing."""
        last_listing = max(
            (i for i, r in enumerate(self.requests) if r.kind == "list tasks"), default=-1
        )
        polling = {"taskcounts", "get pool", "list nodes"}
        return sum(r.kind in polling for r in self.requests[last_listing + 1 :])

    @property
    def active_minimum(self) -> int:
        return self.minimum - PER_POLL * self.idle_polls

    @property
    def active_ratio(self) -> float:
        return (self.total - self.idle_requests) / self.active_minimum


def kind_of(method: str, path: str) -> str:
    """The operation kind of a request, from its method and path."""
    parts = path.strip("/").split("/")
    if method == "DELETE":
        return "delete"
    if parts[0] == "jobs":
        match len(parts), method, parts[-1]:
            case 1, "POST", _:
                return "create job"
            case 2, "PATCH" | "PUT", _:
                return "update job"
            case 2, "GET", _:
                return "get job"
            case 3, "POST", "addtaskcollection":
                return "addtaskcollection"
            case 3, "GET", "taskcounts":
                return "taskcounts"
            case 3, "GET", "tasks":
                return "list tasks"
    if parts[0] == "pools" and method == "GET":
        if len(parts) == 2:
            return "get pool"
        if len(parts) == 3 and parts[2] == "nodes":
            return "list nodes"
    return "other"


_ID_SEGMENT = re.compile(r"(/(?:pools|jobs|tasks|nodes)/)[^/]+")


def shape(request: Request) -> str:
    """``METHOD PATH STATUS`` with ids replaced by ``{id}``."""
    path = _ID_SEGMENT.sub(r"\1{id}", request.path)
    return f"{request.method} {path} {request.status}"


class Tail(threading.Thread):
    """Follows a file as another process appends lines to it, timestamping each line."""

    def __init__(self, path: Path, started: float) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.started = started
        self.lines: list[tuple[float, str]] = []
        self._done = threading.Event()

    def run(self) -> None:
        with self.path.open() as log:
            pending = ""
            while True:
                chunk = log.read()
                now = time.perf_counter() - self.started
                pending += chunk
                *complete, pending = pending.split("\n")
                self.lines += [(now, line) for line in complete]
                if not chunk:
                    if self._done.is_set():
                        return
                    time.sleep(0.02)

    def finish(self) -> list[tuple[float, str]]:
        self._done.set()
        self.join()
        return self.lines


def start_emulator(work: Path) -> tuple[subprocess.Popen[str], str]:
    """``fanout batch-emulator`` on a free port, and the endpoint it printed."""
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "fanout", "batch-emulator", "--port", "0"),
            *("--root", str(work / "nodes"), "--request-log", str(work / "requests.log")),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    found = re.search(r"https?://\S+", first)
    if found is None:
        process.kill()
        raise SystemExit(f"the emulator printed no endpoint: {first!r}")
    return process, found.group(0)


def stop_emulator(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)


def write_job(directory: Path, tasks: int, nodes: int, slots: int, poll_interval: float) -> Path:
    """N one-line inputs and a job file that copies each to ``<stem>.out``."""
    (directory / "inputs").mkdir(parents=True)
    for number in range(tasks):
        (directory / "inputs" / f"in{number:05d}.txt").write_text(f"{number}\n")
    job = directory / "job.toml"
    job.write_text(
        "\n".join(
            (
                "[job]",
                f'name = "requests-{tasks}"',
                'inputs = ["inputs/*.txt"]',
                'command = "cp {input} {input_stem}.out"',
                'outputs = ["*.out"]',
                "",
                "[backends.azure-batch]",
                f"nodes = {nodes}",
                f"slots = {slots}",
                f"poll_interval = {poll_interval}",
                "",
            )
        )
    )
    return job


def run_once(
    azurite: Azurite, container: str, work: Path, args: argparse.Namespace, tasks: int
) -> Result:
    """One fanout run of ``tasks`` tasks against a fresh emulator."""
    job = write_job(work / "job", tasks, args.nodes, args.slots, args.poll_interval)
    log = work / "requests.log"
    log.touch()
    emulator, endpoint = start_emulator(work)
    env = {
        **os.environ,
        "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
        "AZURE_BATCH_ENDPOINT": endpoint,
        "AZURE_BATCH_ACCOUNT": DEFAULT_ACCOUNT,
        "AZURE_BATCH_ACCESS_KEY": DEFAULT_KEY,
    }
    out = work / "out"
    command = [
        *(sys.executable, "-m", "fanout", "run", str(job), "--backend", "azure-batch"),
        *("--storage", f"az://{container}/bench", "--out", str(out)),
    ]
    try:
        started = time.perf_counter()
        tail = Tail(log, started)
        tail.start()
        with (work / "output.txt").open("w") as output:
            run = subprocess.Popen(
                command, cwd=job.parent, env=env, stdout=output, stderr=subprocess.STDOUT
            )
            try:
                status = run.wait(timeout=args.run_timeout)
            except subprocess.TimeoutExpired:
                run.send_signal(signal.SIGINT)  # fanout stops cleanly and deletes the job
                run.wait(timeout=300)
                raise SystemExit(
                    f"N={tasks}: the run took more than {args.run_timeout:g} s"
                ) from None
        wall = time.perf_counter() - started
    finally:
        stop_emulator(emulator)
    lines = tail.finish()
    if status != 0:
        sys.stdout.write((work / "output.txt").read_text())
        raise SystemExit(f"N={tasks}: fanout exited with status {status}")
    produced = sum(1 for _ in out.rglob("*.out"))
    if produced != tasks:
        raise SystemExit(f"N={tasks}: {produced} outputs came back, not {tasks}")
    requests = []
    for at, line in lines:
        method, path, status_text = line.split(" ")
        requests.append(Request(at, method, path, int(status_text)))
    return Result(tasks, wall, requests)


def first(result: Result, kind: str) -> float | None:
    return next((r.at for r in result.requests if r.kind == kind), None)


def last(result: Result, kind: str) -> float | None:
    return next((r.at for r in reversed(result.requests) if r.kind == kind), None)


def report(result: Result) -> None:
    n = result.tasks
    print(f"\nN = {n:,}: {result.total} requests to Batch, {result.polls} polls,", end="")
    print(f" {result.wall_s:.1f} s")
    statuses: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    for request in result.requests:
        if request.status >= 300:
            statuses[request.kind][request.status] += 1
    print(f"  {'kind':<18} {'requests':>8}  {'per poll':>8}  not 2xx")
    for kind in KINDS:
        count = result.kinds[kind]
        per_poll = f"{count / result.polls:8.2f}" if result.polls else f"{'-':>8}"
        errors = ", ".join(f"{status} x{c}" for status, c in sorted(statuses[kind].items()))
        print(f"  {kind:<18} {count:8d}  {per_poll}  {errors}")
    others = collections.Counter(shape(r) for r in result.requests if r.kind == "other")
    for other, count in others.most_common():
        print(f"      other: {count} x {other}")
    print(f"  {'total':<18} {result.total:8d}")
    submissions = math.ceil(n / TASKS_PER_SUBMISSION)
    print(
        f"  minimum = ceil({n}/100) + {PER_POLL} x {result.polls} polls + {FIXED}"
        f" = {submissions} + {PER_POLL * result.polls} + {FIXED} = {result.minimum};"
        f" actual / minimum = {result.total / result.minimum:.2f}"
    )
    polls_pattern(result)
    phases(result)


def polls_pattern(result: Result) -> None:
    """How many task listings each poll made (a listing is a GET .../tasks, pages included)."""
    histogram = collections.Counter(result.listings_per_poll())
    shown = ", ".join(f"{k}: {v}" for k, v in sorted(histogram.items()))
    print(f"  polls by the task listings they made: {shown}")
    print(
        f"  polls after the last task listing: {result.idle_polls}, costing"
        f" {result.idle_requests} requests ({result.idle_requests / result.total:.0%})"
    )
    print(
        f"  without them: {result.total - result.idle_requests} requests,"
        f" minimum {result.active_minimum}, actual / minimum = {result.active_ratio:.2f}"
    )


def phases(result: Result) -> None:
    """Where the wall time went, from the timestamps of the requests."""
    labels = (
        "start -> first Batch request (startup)",
        "-> create job (preflight, image, staging the inputs)",
        "-> update job (submission)",
        "-> last task listing (tasks run; outputs collected meanwhile)",
        "-> delete job (collecting the rest of the outputs)",
        "-> exit (teardown, run record)",
    )
    points = (
        0.0,
        result.requests[0].at,
        first(result, "create job"),
        last(result, "update job"),
        last(result, "list tasks"),
        first(result, "delete"),
        result.wall_s,
    )
    for label, begin, end in zip(labels, points, points[1:], strict=False):
        if begin is not None and end is not None:
            print(f"  {label:<62} {end - begin:6.1f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="10,250,10000", help="comma-separated task counts")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="seconds")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--run-timeout", type=float, default=1800, help="seconds per run")
    args = parser.parse_args()
    counts = [int(text.replace("_", "")) for text in args.tasks.split(",")]

    results = []
    with tempfile.TemporaryDirectory(prefix="fanout-bench-requests-") as scratch:
        root = Path(scratch)
        with start_azurite(root / "azurite") as azurite, azurite.blob_service() as service:
            container = f"bench-{uuid.uuid4().hex[:10]}"
            service.create_container(container)
            for tasks in counts:
                work = root / f"n{tasks}"
                work.mkdir()
                result = run_once(azurite, container, work, args, tasks)
                report(result)
                results.append(result)

    print(
        f"\n{args.nodes} nodes x {args.slots} slots, poll interval {args.poll_interval:g} s;"
        f" minimum = ceil(N/100) + {PER_POLL} x polls + {FIXED}"
    )
    print(
        f"  {'N':>6} {'requests':>8} {'submits':>7} {'polls':>5} {'idle':>4} {'minimum':>7}"
        f" {'ratio':>5} {'w/o idle':>8} {'req/task':>8} {'wall s':>6}"
    )
    for r in results:
        print(
            f"  {r.tasks:6d} {r.total:8d} {r.kinds['addtaskcollection']:7d} {r.polls:5d}"
            f" {r.idle_polls:4d} {r.minimum:7d} {r.total / r.minimum:5.2f} {r.active_ratio:8.2f}"
            f" {r.total / r.tasks:8.3f} {r.wall_s:6.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
