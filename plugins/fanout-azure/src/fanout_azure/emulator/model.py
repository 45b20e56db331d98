"""The emulated account's objects — pools, nodes, jobs, tasks — in the service's own shapes.

Each object keeps the document the client sent (``spec``) and what the service adds to it.
``to_json`` gives the object as the REST API shows it, property names and enum spellings as the
official description has them; the server's tests check every answer against that description.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fanout_azure.emulator.autoscale import Samples
from fanout_azure.emulator.runtime import NodeIdentity, NodePaths, format_time

DEFAULT_MAX_WALL_CLOCK = "P10675199DT2H48M5.4775807S"
"""What the service reports for "no limit" (TimeSpan.MaxValue)."""
DEFAULT_RETENTION = "P7D"
NODE_AGENT_VERSION = "1.9.27"
_etags = itertools.count(1)

# What the service echoes back of what the client created, object by object.
_POOL_ECHOED = (
    "displayName",
    "vmSize",
    "virtualMachineConfiguration",
    "startTask",
    "metadata",
    "taskSchedulingPolicy",
    "enableInterNodeCommunication",
    "networkConfiguration",
    "userAccounts",
    "applicationPackageReferences",
    "mountConfiguration",
    "upgradePolicy",
    "autoScaleFormula",
    "autoScaleEvaluationInterval",
    "resourceTags",
    "targetNodeCommunicationMode",
)
"""Older versions' properties among them (``resourceTags``...) are left out of the answers to a
version that does not have them (``shapes.project``)."""
_TASK_ECHOED = (
    "displayName",
    "exitConditions",
    "commandLine",
    "containerSettings",
    "resourceFiles",
    "outputFiles",
    "environmentSettings",
    "affinityInfo",
    "userIdentity",
    "multiInstanceSettings",
    "dependsOn",
    "applicationPackageReferences",
    "authenticationTokenSettings",
)
_JOB_ECHOED = (
    "displayName",
    "usesTaskDependencies",
    "priority",
    "allowTaskPreemption",
    "maxParallelTasks",
    "jobManagerTask",
    "jobPreparationTask",
    "jobReleaseTask",
    "commonEnvironmentSettings",
    "networkConfiguration",
    "metadata",
)


def _echoed(spec: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {key: spec[key] for key in keys if key in spec}


def now() -> str:
    """The current time as the service writes it: RFC 3339, UTC, with a ``Z``."""
    return format_time(datetime.now(UTC))


def new_etag() -> str:
    return f"0x8DC{next(_etags):012X}"


@dataclass
class Versioned:
    """What every top-level object carries: its times and an entity tag."""

    created: str = field(default_factory=now)
    modified: str = field(default_factory=now)
    etag: str = field(default_factory=new_etag)
    state_changed: str = field(default_factory=now)
    previous_state: str | None = None
    previous_state_changed: str | None = None

    def touch(self) -> None:
        self.modified = now()
        self.etag = new_etag()


@dataclass
class Node:
    """A compute node: a directory tree on this machine and a number of task slots."""

    id: str
    pool_id: str
    dedicated: bool
    paths: NodePaths
    vm_size: str
    image: dict[str, Any]
    slots: int
    number: int
    """The node's place in its pool's allocation order: its address and SSH port follow."""
    state: str = "starting"
    state_changed: str = field(default_factory=now)
    allocated: str = field(default_factory=now)
    running_slots: int = 0
    running_tasks: int = 0
    total_tasks_run: int = 0
    total_tasks_succeeded: int = 0
    start_task_info: dict[str, Any] | None = None
    start_task: dict[str, Any] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    def set_state(self, state: str) -> None:
        if state != self.state:
            self.state, self.state_changed = state, now()

    def identity(self, account: str, account_url: str) -> NodeIdentity:
        return NodeIdentity(
            account=account,
            account_url=account_url,
            pool_id=self.pool_id,
            node_id=self.id,
            is_dedicated=self.dedicated,
        )

    def free_slots(self) -> int:
        return self.slots - self.running_slots if self.state in ("idle", "running") else 0

    def _ssh_endpoint(self) -> dict[str, Any]:
        """The SSH rule every Linux node has; nothing listens behind it here."""
        return {
            "name": "SSHRule.0",
            "protocol": "tcp",
            "publicIPAddress": "127.0.0.1",
            "publicFQDN": "localhost",
            "frontendPort": 50000 + self.number,
            "backendPort": 22,
        }

    def to_json(self, base_url: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "url": f"{base_url}/pools/{self.pool_id}/nodes/{self.id}",
            "state": self.state,
            "schedulingState": "enabled",
            "stateTransitionTime": self.state_changed,
            "lastBootTime": self.allocated,
            "allocationTime": self.allocated,
            "ipAddress": f"10.0.{self.number // 250}.{self.number % 250 + 4}",
            "ipv6Address": "",
            "affinityId": f"TVM:{self.id}",
            "vmSize": self.vm_size,
            "totalTasksRun": self.total_tasks_run,
            "runningTasksCount": self.running_tasks,
            "runningTaskSlotsCount": self.running_slots,
            "totalTasksSucceeded": self.total_tasks_succeeded,
            "isDedicated": self.dedicated,
            "nodeAgentInfo": {"version": NODE_AGENT_VERSION, "lastUpdateTime": self.allocated},
            "virtualMachineInfo": {"imageReference": self.image},
            "endpointConfiguration": {"inboundEndpoints": [self._ssh_endpoint()]},
        }
        if self.start_task is not None:
            body["startTask"] = self.start_task
        if self.start_task_info is not None:
            body["startTaskInfo"] = self.start_task_info
        return body


def node_id(pool_id: str, number: int, dedicated: bool) -> str:
    """An id in the service's style: ``tvmps_<64 hex>_d`` (or ``_p`` for a spot node)."""
    digest = hashlib.sha256(f"{pool_id}/{number}".encode()).hexdigest()
    return f"tvmps_{digest}_{'d' if dedicated else 'p'}"


@dataclass
class Pool(Versioned):
    """A pool: the client's creation document, its nodes, and where it is in its life."""

    id: str = ""
    spec: dict[str, Any] = field(default_factory=dict)
    root: Path = Path()
    state: str = "active"
    allocation_state: str = "resizing"
    allocation_changed: str = field(default_factory=now)
    target_dedicated: int = 0
    target_spot: int = 0
    nodes: list[Node] = field(default_factory=list)
    created_nodes: int = 0
    auto_pool_of: str | None = None
    """The job whose auto-pool this is."""
    resize_errors: list[dict[str, Any]] = field(default_factory=list)
    samples: Samples = field(default_factory=Samples)
    """Its metrics as its autoscale evaluations sampled them."""
    auto_scale_run: dict[str, Any] | None = None
    next_evaluation: float = 0.0
    """When its autoscale formula is evaluated next (monotonic seconds)."""

    @property
    def slots_per_node(self) -> int:
        return int(self.spec.get("taskSlotsPerNode", 1))

    def to_json(self, base_url: str) -> dict[str, Any]:
        copied = _echoed(self.spec, _POOL_ECHOED)
        dedicated = sum(1 for node in self.nodes if node.dedicated)
        body: dict[str, Any] = {
            "id": self.id,
            "url": f"{base_url}/pools/{self.id}",
            "eTag": self.etag,
            "lastModified": self.modified,
            "creationTime": self.created,
            "state": self.state,
            "stateTransitionTime": self.state_changed,
            "allocationState": self.allocation_state,
            "allocationStateTransitionTime": self.allocation_changed,
            "resizeTimeout": self.spec.get("resizeTimeout", "PT15M"),
            "currentDedicatedNodes": dedicated,
            "currentLowPriorityNodes": len(self.nodes) - dedicated,
            "targetDedicatedNodes": self.target_dedicated,
            "targetLowPriorityNodes": self.target_spot,
            "enableAutoScale": bool(self.spec.get("enableAutoScale", False)),
            "taskSlotsPerNode": self.slots_per_node,
            **copied,
        }
        if self.resize_errors:
            body["resizeErrors"] = self.resize_errors
        if self.auto_scale_run is not None and body["enableAutoScale"]:
            body["autoScaleRun"] = self.auto_scale_run
        body.setdefault("vmSize", "standard_d1_v2")
        body.setdefault("enableInterNodeCommunication", False)
        body.setdefault("taskSchedulingPolicy", {"nodeFillType": "spread"})
        return body


@dataclass
class Task(Versioned):
    """A task: the client's document, its state, and the attempt running it, if any."""

    id: str = ""
    job_id: str = ""
    spec: dict[str, Any] = field(default_factory=dict)
    state: str = "active"
    retries: int = 0
    requeues: int = 0
    """How often its node left the pool while it ran (``executionInfo.requeueCount``)."""
    execution: dict[str, Any] = field(default_factory=dict)
    node: Node | None = None
    last_node: Node | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    deleted: bool = False
    """Deleted while it ran: its attempt ends without a result, the task is gone already."""

    def set_state(self, state: str) -> None:
        if state != self.state:
            self.previous_state, self.previous_state_changed = self.state, self.state_changed
            self.state, self.state_changed = state, now()
            self.touch()

    @property
    def required_slots(self) -> int:
        return int(self.spec.get("requiredSlots", 1))

    def summary(self) -> dict[str, Any]:
        """The few properties of ``to_json`` a listing's ``$filter`` usually reads, cheaply."""
        return {"id": self.id, "state": self.state, "stateTransitionTime": self.state_changed}

    def to_json(self, base_url: str, constraints: dict[str, Any]) -> dict[str, Any]:
        copied = _echoed(self.spec, _TASK_ECHOED)
        body: dict[str, Any] = {
            "id": self.id,
            "url": f"{base_url}/jobs/{self.job_id}/tasks/{self.id}",
            "eTag": self.etag,
            "lastModified": self.modified,
            "creationTime": self.created,
            "state": self.state,
            "stateTransitionTime": self.state_changed,
            **copied,
            "constraints": constraints,
            "requiredSlots": self.required_slots,
            "executionInfo": {
                "retryCount": self.retries,
                "requeueCount": self.requeues,
                **self.execution,
            },
        }
        body.setdefault(
            "userIdentity", {"autoUser": {"scope": "pool", "elevationLevel": "nonadmin"}}
        )
        if self.previous_state is not None:
            body["previousState"] = self.previous_state
            body["previousStateTransitionTime"] = self.previous_state_changed
        ran_on = self.node or self.last_node
        if ran_on is not None:
            directory = f"workitems/{self.job_id}/job-1/{self.id}"
            node_url = f"{base_url}/pools/{ran_on.pool_id}/nodes/{ran_on.id}"
            body["nodeInfo"] = {
                "affinityId": f"TVM:{ran_on.id}",
                "nodeUrl": node_url,
                "poolId": ran_on.pool_id,
                "nodeId": ran_on.id,
                "taskRootDirectory": directory,
                "taskRootDirectoryUrl": f"{node_url}/files/{directory}",
            }
        return body


@dataclass
class Job(Versioned):
    """A job: the client's document, its tasks in the order they were added, its state."""

    id: str = ""
    spec: dict[str, Any] = field(default_factory=dict)
    state: str = "active"
    pool_id: str = ""
    tasks: dict[str, Task] = field(default_factory=dict)
    """By case-folded id, in the order tasks were added."""
    incomplete: int = 0
    """How many of its tasks are not completed."""
    execution: dict[str, Any] = field(default_factory=dict)
    born: float = field(default_factory=time.monotonic)
    """When it was created (monotonic seconds): its ``maxWallClockTime`` counts from then."""
    deadline: float | None = None
    """When ``constraints.maxWallClockTime`` ends the job (monotonic seconds)."""

    def task_constraints(self, task: Task) -> dict[str, Any]:
        """A task's constraints as the service reports them: its own, else the job's."""
        own = task.spec.get("constraints", {})
        return {
            "maxWallClockTime": own.get("maxWallClockTime", DEFAULT_MAX_WALL_CLOCK),
            "retentionTime": own.get("retentionTime", DEFAULT_RETENTION),
            "maxTaskRetryCount": own.get(
                "maxTaskRetryCount",
                self.spec.get("constraints", {}).get("maxTaskRetryCount", 0),
            ),
        }

    def to_json(self, base_url: str) -> dict[str, Any]:
        copied = _echoed(self.spec, _JOB_ECHOED)
        constraints = self.spec.get("constraints", {})
        body: dict[str, Any] = {
            "id": self.id,
            "url": f"{base_url}/jobs/{self.id}",
            "eTag": self.etag,
            "lastModified": self.modified,
            "creationTime": self.created,
            "state": self.state,
            "stateTransitionTime": self.state_changed,
            "usesTaskDependencies": False,
            "priority": 0,
            "maxParallelTasks": -1,
            "allowTaskPreemption": False,
            **copied,
            "constraints": {
                "maxWallClockTime": constraints.get("maxWallClockTime", DEFAULT_MAX_WALL_CLOCK),
                "maxTaskRetryCount": constraints.get("maxTaskRetryCount", 0),
            },
            "poolInfo": self.spec["poolInfo"],
            "onAllTasksComplete": self.spec.get("onAllTasksComplete", "noaction"),
            "onTaskFailure": self.spec.get("onTaskFailure", "noaction"),
            "executionInfo": {"startTime": self.created, "poolId": self.pool_id, **self.execution},
        }
        if self.previous_state is not None:
            body["previousState"] = self.previous_state
            body["previousStateTransitionTime"] = self.previous_state_changed
        return body

    def set_state(self, state: str) -> None:
        if state != self.state:
            self.previous_state, self.previous_state_changed = self.state, self.state_changed
            self.state, self.state_changed = state, now()
            self.touch()
