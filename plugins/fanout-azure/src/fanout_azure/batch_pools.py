"""The nodes of a run: the pool specification, reusing a pool, and watching nodes come up.

App files reach a pool fanout creates through its start task: resource files (a read SAS per
blob) copied into ``$AZ_BATCH_NODE_SHARED_DIR``, where ``[job] setup`` then runs with
waitForSuccess, so no task starts on a node whose setup failed. A pool fanout creates carries a
fingerprint of that setup in its metadata; a later run may reuse it only for the same setup.
"""

from __future__ import annotations

import hashlib
import logging
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from fanout.backend import PoolSpec, setup_script
from fanout.errors import BackendError, SetupError
from fanout_azure.batch_allocation import Allocation
from fanout_azure.batch_calls import resent
from fanout_azure.batch_settings import AzureBatchSettings
from fanout_azure.batch_tasks import SHARED_APP_DIR, environment, resource_files, wire_value

if TYPE_CHECKING:
    from azure.batch import BatchClient

log = logging.getLogger(__name__)

RUN_KEY = "fanout-run"
"""Metadata naming the run that created a job or pool: what ``fanout clean`` looks for."""
KEEP_KEY = "fanout-keep"
"""Metadata on a pool kept for later runs (``keep_pool``): ``fanout clean`` leaves it alone
unless asked for ``--all``."""
SETUP_KEY = "fanout-setup"
"""Metadata on a pool fanout created: the fingerprint of its app files and setup."""
STDERR_TAIL_LINES = 20
READY_STATES = frozenset({"idle", "running"})
RESIZE_POLLING_S = 300
"""How often the SDK's resize poller, which fanout does not wait for, asks about the pool:
seldom, since the node watcher follows the pool anyway."""


def setup_fingerprint(pool: PoolSpec) -> str:
    """What a node's start task did, independent of SAS tokens: app files by their stored
    path (which holds their md5) and name, then the setup commands and variables."""
    parts = [f"{urlsplit(f.url).path} {f.path}" for f in pool.app_files]
    parts += [*pool.setup, *(f"{name}={value}" for name, value in sorted(pool.env.items()))]
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:32]


def metadata(run_id: str, **extra: str) -> list[Any]:
    from azure.batch import models as m

    items = {RUN_KEY: run_id, **extra}
    return [m.BatchMetadataItem(name=name, value=value) for name, value in items.items()]


def pool_specification(
    settings: AzureBatchSettings,
    image: tuple[Any, str],
    pool: PoolSpec,
    run_id: str,
    kept: bool = False,
) -> Any:
    """The pool fanout creates: its nodes, and a start task that brings the app and runs setup."""
    from azure.batch import models as m

    reference, agent = image
    spec = m.BatchPoolSpecification(
        vm_size=settings.vm_size,
        virtual_machine_configuration=m.VirtualMachineConfiguration(
            image_reference=reference, node_agent_sku_id=agent
        ),
        task_slots_per_node=settings.slots,
        start_task=start_task(pool),
        metadata=metadata(
            run_id,
            **{SETUP_KEY: setup_fingerprint(pool)},
            **({KEEP_KEY: "true"} if kept else {}),
        ),
    )
    if settings.autoscale_formula:
        spec.enable_auto_scale = True
        spec.auto_scale_formula = settings.autoscale_formula
    else:
        spec.target_dedicated_nodes = settings.nodes
        spec.target_low_priority_nodes = settings.spot_nodes
    return spec


def start_task(pool: PoolSpec) -> Any:
    """What each node runs as it joins the pool: the app files, then ``[job] setup``."""
    from azure.batch import models as m

    copy_app = [f'cp {shlex.quote(f.path)} "{SHARED_APP_DIR}"/' for f in pool.app_files]
    script = "\n".join(
        (
            "set -e",
            *copy_app,
            f'cd "{SHARED_APP_DIR}"',
            f'export FANOUT_APP_DIR="{SHARED_APP_DIR}"',
            setup_script(pool.setup),
        )
    )
    return m.BatchStartTask(
        command_line=f"/bin/sh -c {shlex.quote(script)}",
        resource_files=resource_files(pool.app_files),
        environment_settings=environment(pool.env),
        wait_for_success=True,
        max_task_retry_count=0,
    )


def create_named_pool(client: BatchClient, pool_id: str, spec: Any) -> None:
    """Create the pool ``spec`` (a pool specification) describes, named ``pool_id`` (sent
    again if the answer is lost: ``PoolExists`` then means it went through — the caller just
    found no pool of that name)."""
    from azure.batch import models as m

    pool = m.BatchPoolCreateOptions({**spec.as_dict(), "id": pool_id})
    resent(lambda: client.create_pool(pool), done_if=frozenset({"PoolExists"}))


def reuse_pool(
    client: BatchClient, settings: AzureBatchSettings, pool_id: str, pool: PoolSpec
) -> bool:
    """Check that the existing pool ``pool_id`` can run this job and grow it to the
    node counts the settings ask for. True if its nodes already hold the app files in their
    shared directory (a pool fanout created for the same app and setup).

    The start task of such a pool gets this run's URLs: those of the run that created it
    have expired or will, and nodes that join later (grown, recovered, scaled) run it."""
    from azure.batch import models as m

    existing = client.get_pool(pool_id)
    name = f"pool '{existing.id}'"
    marks = {item.name: item.value for item in existing.metadata or []}
    same_setup = marks.get(SETUP_KEY) == setup_fingerprint(pool)
    if pool.setup and not same_setup:
        if SETUP_KEY in marks:
            raise BackendError(
                f"{name} was set up for other app files or setup commands;"
                " delete it (fanout clean --all) or name another pool"
            )
        raise BackendError(
            f"{name} was not created by fanout, so it cannot run [job] setup: move the setup"
            " into the pool's start task, or let fanout create the pool"
        )
    wanted = {"nodes", "spot_nodes"} & settings.model_fields_set
    grow_dedicated = "nodes" in wanted and settings.nodes > (existing.target_dedicated_nodes or 0)
    grow_spot = "spot_nodes" in wanted and settings.spot_nodes > (
        existing.target_low_priority_nodes or 0
    )
    if same_setup:
        update = m.BatchPoolUpdateOptions(start_task=start_task(pool))
        resent(lambda: client.update_pool(pool_id, update))
    if grow_dedicated or grow_spot:
        _grow(client, existing, settings)
    return same_setup


def _grow(client: BatchClient, pool: Any, settings: AzureBatchSettings) -> None:
    """Resize ``pool`` up to the node counts of ``settings``, when Batch allows it."""
    from azure.batch import models as m

    name = f"pool '{pool.id}'"
    if pool.enable_auto_scale:
        log.warning("%s scales itself: its node counts are left to its formula", name)
        return
    if wire_value(pool.allocation_state) != "steady":
        log.warning("%s is resizing already: not grown to the nodes asked for", name)
        return
    log.info("growing %s to %d + %d nodes", name, settings.nodes, settings.spot_nodes)
    client.begin_resize_pool(
        pool.id,
        m.BatchPoolResizeOptions(
            target_dedicated_nodes=max(settings.nodes, pool.target_dedicated_nodes or 0),
            target_low_priority_nodes=max(settings.spot_nodes, pool.target_low_priority_nodes or 0),
        ),
        polling_interval=RESIZE_POLLING_S,
    )


@dataclass
class NodeWatch:
    """What a poll learned about the pool's nodes."""

    status: str | None
    failed_setup: list[str]
    """One message per node whose start task failed since the last poll, with its stderr."""


class NodeWatcher:
    """Watches a pool's nodes: progress while they come up, allocation errors and start task
    failures as they appear. Each poll gets the pool and lists its nodes (one page per
    thousand nodes), plus the stderr of each node whose start task newly failed."""

    def __init__(
        self,
        client: BatchClient,
        job_id: str,
        pool_id: str | None,
        settings: AzureBatchSettings,
        *,
        auto_pool: bool,
    ) -> None:
        """``pool_id`` None: the job's auto-pool, whose id the job tells once it has one."""
        self.client = client
        self.job_id = job_id
        self.pool_id = pool_id
        self.auto_pool = auto_pool
        self.allocation = Allocation(settings)
        self._reported_failures: set[str] = set()
        self._reported_unusable: set[str] = set()
        self._gone = False

    def poll(self) -> NodeWatch:
        from azure.core.exceptions import ResourceNotFoundError

        if self._gone:
            return NodeWatch(None, [])
        try:
            return self._poll()
        except ResourceNotFoundError:
            if not self.auto_pool:
                raise BackendError(
                    f"pool '{self.pool_id}' was deleted while the run was using it"
                ) from None
            self._gone = True  # the job ended and took its auto-pool with it
            return NodeWatch(None, [])

    def _poll(self) -> NodeWatch:
        if self.pool_id is None:  # an auto-pool: its id comes with the job once it exists
            info = self.client.get_job(self.job_id, select=["executionInfo"]).execution_info
            self.pool_id = info.pool_id if info is not None else None
            if self.pool_id is None:
                return NodeWatch("nodes: waiting for the pool", [])
        pool = self.client.get_pool(
            self.pool_id,
            select=[
                "id",
                "allocationState",
                "resizeErrors",
                "targetDedicatedNodes",
                "targetLowPriorityNodes",
                "currentDedicatedNodes",
                "currentLowPriorityNodes",
                "enableAutoScale",
                "vmSize",
            ],
        )
        nodes = list(self.client.list_nodes(self.pool_id, select=["id", "state", "startTaskInfo"]))
        states = [wire_value(node.state) for node in nodes]
        ready = sum(state in READY_STATES for state in states)
        self.allocation.check(pool, nodes, ready)
        failed = [n for n in nodes if wire_value(n.state) == "starttaskfailed"]
        failures = [self._setup_failure(n) for n in failed if n.id not in self._reported_failures]
        self._reported_failures |= {n.id for n in failed}
        if nodes and len(failed) == len(nodes) and wire_value(pool.allocation_state) == "steady":
            raise SetupError(
                failures[0] if failures else f"setup failed on every node of {pool.id}"
            )
        self._report_unusable([n.id for n in nodes if wire_value(n.state) == "unusable"])
        target = (pool.target_dedicated_nodes or 0) + (pool.target_low_priority_nodes or 0)
        status = f"nodes: {ready} of {target or len(nodes)} ready"
        if failed:
            status += f", {len(failed)} failed setup"
        if self._reported_unusable:
            status += f", {len(self._reported_unusable)} unusable"
        return NodeWatch(status, failures)

    def _report_unusable(self, unusable: list[str]) -> None:
        """An unusable node (Batch lost it, or its disk filled) may come back; say so once."""
        for node_id in sorted(set(unusable) - self._reported_unusable):
            log.warning(
                "node %s of pool %s is unusable; Batch may recover it", node_id, self.pool_id
            )
        self._reported_unusable = set(unusable)

    def _setup_failure(self, node: Any) -> str:
        info = node.start_task_info
        exit_code = info.exit_code if info is not None else None
        detail = f" with exit code {exit_code}" if exit_code is not None else ""
        stderr = self._node_stderr(node.id)
        message = f"setup failed on node {node.id}{detail}"
        return f"{message}: {stderr}" if stderr else message

    def _node_stderr(self, node_id: str) -> str:
        from azure.core.exceptions import HttpResponseError

        try:
            data = b"".join(
                self.client.download_node_file(self.pool_id or "", node_id, "startup/stderr.txt")
            )
        except HttpResponseError:
            return ""
        lines = data.decode("utf-8", "replace").strip().splitlines()
        return "\n".join(lines[-STDERR_TAIL_LINES:])
