"""The monitoring listings and everyday control operations: node counts, usage metrics,
removing and rebooting nodes, autoscale, disabling and enabling jobs, reactivating tasks.

``Pools_ListPoolUsageMetrics`` answers an empty list, as the service does for a new account
(the recordings show it): the service reports usage in 30-minute intervals only hours after
they end, later than any emulator outlives its pools.
"""

from __future__ import annotations

from collections.abc import Callable

from fanout_azure.emulator.account import Account
from fanout_azure.emulator.replies import Reply, Request, changed, listing

Handler = Callable[[Request], Reply]


def control_operations(account: Account) -> dict[str, Handler]:
    """The handlers, by operationId."""
    base = account.base_url

    def path(request: Request, name: str) -> str:
        return request.operation.path_params[name]

    def body(request: Request) -> dict[str, object]:
        return request.body if isinstance(request.body, dict) else {}

    def pool_changed(status: int, request: Request, pool_id: str) -> Reply:
        pool = account.pool(pool_id)
        return changed(status, f"{base}{request.path}", pool.etag, pool.modified)

    def node_counts(request: Request) -> Reply:
        return listing(account.node_counts(), request, base)

    def usage_metrics(request: Request) -> Reply:
        return listing([], request, base)

    def remove_nodes(request: Request) -> Reply:
        pool = account.remove_nodes(path(request, "poolId"), body(request))
        return changed(202, f"{base}{request.path}", pool.etag, pool.modified)

    def reboot_node(request: Request) -> Reply:
        option = str(body(request).get("nodeRebootOption", "requeue"))
        node = account.reboot_node(path(request, "poolId"), path(request, "nodeId"), option)
        return pool_changed(202, request, node.pool_id)

    def enable_autoscale(request: Request) -> Reply:
        pool = account.enable_autoscale(path(request, "poolId"), body(request))
        return changed(200, f"{base}{request.path}", pool.etag, pool.modified)

    def evaluate_autoscale(request: Request) -> Reply:
        formula = str(body(request).get("autoScaleFormula", ""))
        run = account.evaluate_autoscale(path(request, "poolId"), formula)
        return Reply(200, run, {"DataServiceId": f"{base}{request.path}"})

    def disable_autoscale(request: Request) -> Reply:
        pool = account.disable_autoscale(path(request, "poolId"))
        return changed(200, f"{base}{request.path}", pool.etag, pool.modified)

    def disable_job(request: Request) -> Reply:
        job = account.disable_job(path(request, "jobId"), str(body(request)["disableTasks"]))
        return changed(202, f"{base}{request.path}", job.etag, job.modified)

    def enable_job(request: Request) -> Reply:
        job = account.enable_job(path(request, "jobId"))
        return changed(202, f"{base}{request.path}", job.etag, job.modified)

    def reactivate_task(request: Request) -> Reply:
        task = account.reactivate_task(path(request, "jobId"), path(request, "taskId"))
        return changed(204, f"{base}{request.path}", task.etag, task.modified)

    return {
        "Pools_ListPoolNodeCounts": node_counts,
        "Pools_ListPoolUsageMetrics": usage_metrics,
        "Pools_RemoveNodes": remove_nodes,
        "Nodes_RebootNode": reboot_node,
        "Pools_EnablePoolAutoScale": enable_autoscale,
        "Pools_EvaluatePoolAutoScale": evaluate_autoscale,
        "Pools_DisablePoolAutoScale": disable_autoscale,
        "Jobs_DisableJob": disable_job,
        "Jobs_EnableJob": enable_job,
        "Tasks_ReactivateTask": reactivate_task,
    }
