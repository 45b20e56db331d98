"""fanout on azure-batch beside a plain SDK script doing the same work, as runs grow.

For each N (1,000, 5,000 and 20,000 by default), N tiny tasks (``cp {input} {input_stem}.out``,
one output each) run against a fresh ``fanout batch-emulator`` process and one Azurite, first
through ``fanout run --backend azure-batch``, then through ``plain_run`` below: what a careful
user of the SDKs would write by hand, and nothing more. It stages the inputs (16 threads, one
upload each), creates a job on an auto-pool of the same nodes and slots with the tasks' resource
and output files, adds the tasks (``create_tasks``), sets terminatejob, polls the task counts
every ``--poll-interval`` seconds until every task has completed, lists the outputs once and
downloads each (16 threads), then deletes the job. It prints both wall times and their ratio.

    python benchmarks/bench_scale_batch.py [--tasks 1000,5000,20000] [--nodes 2] [--slots 8]
        [--poll-interval 1]

Target: fanout / plain <= 1.3 at every N.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from azure.batch import BatchClient
from azure.batch import models as m
from azure.core.credentials import AzureNamedKeyCredential
from azure.storage.blob import (
    BlobSasPermissions,
    BlobServiceClient,
    ContainerSasPermissions,
    generate_blob_sas,
    generate_container_sas,
)
from azurite import Azurite, start_azurite
from batch_emulator import IMAGE
from bench_batch_requests import start_emulator, stop_emulator, write_job
from fanout_azure.emulator.command import DEFAULT_ACCOUNT, DEFAULT_KEY

THREADS = 16


def plain_run(
    azurite: Azurite,
    container: str,
    endpoint: str,
    inputs: list[Path],
    out: Path,
    args: argparse.Namespace,
) -> None:
    """The same work as fanout's run, with the SDKs and nothing else."""
    blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
    box = blobs.get_container_client(container)
    expiry = datetime.now(UTC) + timedelta(hours=2)
    base = f"{azurite.endpoint}/{container}"

    def stage(path: Path) -> str:
        name = f"plain/in/{path.name}"
        with path.open("rb") as data:
            box.upload_blob(name, data, overwrite=True)
        sas = generate_blob_sas(
            azurite.account, container, name, account_key=azurite.key,
            permission=BlobSasPermissions(read=True), expiry=expiry,
        )  # fmt: skip
        return f"{base}/{name}?{sas}"

    with ThreadPoolExecutor(THREADS) as pool:
        urls = list(pool.map(stage, inputs))
    write_sas = generate_container_sas(
        azurite.account, container, account_key=azurite.key,
        permission=ContainerSasPermissions(create=True, write=True), expiry=expiry,
    )  # fmt: skip
    batch = BatchClient(endpoint, AzureNamedKeyCredential(DEFAULT_ACCOUNT, DEFAULT_KEY))
    job_id = f"plain-{uuid.uuid4().hex[:8]}"
    pool_spec = m.BatchPoolSpecification(
        vm_size="standard_d2s_v3",
        virtual_machine_configuration=IMAGE,
        target_dedicated_nodes=args.nodes,
        task_slots_per_node=args.slots,
    )
    auto = m.BatchAutoPoolSpecification(pool_lifetime_option="job", pool=pool_spec)
    batch.create_job(
        m.BatchJobCreateOptions(id=job_id, pool_info=m.BatchPoolInfo(auto_pool_specification=auto))
    )
    tasks = [
        m.BatchTaskCreateOptions(
            id=path.stem,
            command_line=f"/bin/sh -c 'cp {path.name} {path.stem}.out'",
            resource_files=[m.ResourceFile(http_url=url, file_path=path.name)],
            output_files=[
                m.OutputFile(
                    file_pattern="*.out",
                    destination=m.OutputFileDestination(
                        container=m.OutputFileBlobContainerDestination(
                            container_url=f"{base}?{write_sas}", path=f"plain/out/{path.stem}"
                        )
                    ),
                    upload_options=m.OutputFileUploadConfiguration(upload_condition="tasksuccess"),
                )
            ],
        )
        for path, url in zip(inputs, urls, strict=True)
    ]
    batch.create_tasks(job_id, tasks, max_concurrency=4)
    batch.update_job(job_id, m.BatchJobUpdateOptions(all_tasks_complete_mode="terminatejob"))
    while batch.get_job_task_counts(job_id).task_counts.completed < len(tasks):
        time.sleep(args.poll_interval)
    names = list(box.list_blob_names(name_starts_with="plain/out/"))

    def download(name: str) -> None:
        target = out / name.removeprefix("plain/out/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(box.download_blob(name).readall())

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(download, names))
    if len(names) != len(tasks):
        raise SystemExit(f"plain: {len(names)} outputs, not {len(tasks)}")
    batch.begin_delete_job(job_id, polling_interval=1).result()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="1000,5000,20000")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="fanout-bench-scale-batch-"))
    try:
        with start_azurite(root) as azurite:
            service = BlobServiceClient.from_connection_string(azurite.connection_string)
            for count in (int(n) for n in args.tasks.split(",")):
                work = root / f"n{count}"
                work.mkdir()
                job = write_job(work / "job", count, args.nodes, args.slots, args.poll_interval)
                inputs = sorted((work / "job" / "inputs").iterdir())
                container = f"bench{uuid.uuid4().hex[:8]}"
                service.create_container(container)
                emulator, endpoint = start_emulator(work)
                env = {
                    **os.environ,
                    "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
                    "AZURE_BATCH_ENDPOINT": endpoint,
                    "AZURE_BATCH_ACCOUNT": DEFAULT_ACCOUNT,
                    "AZURE_BATCH_ACCESS_KEY": DEFAULT_KEY,
                }
                try:
                    started = time.perf_counter()
                    subprocess.run(
                        [sys.executable, "-m", "fanout", "run", str(job), "--backend",
                         "azure-batch", "--storage", f"az://{container}/bench",
                         "--out", str(work / "out")],
                        cwd=job.parent, env=env, check=True, stdout=subprocess.DEVNULL,
                    )  # fmt: skip
                    fanout = time.perf_counter() - started
                    started = time.perf_counter()
                    plain_run(azurite, container, endpoint, inputs, work / "plain", args)
                    plain = time.perf_counter() - started
                finally:
                    stop_emulator(emulator)
                    service.delete_container(container)
                print(
                    f"N = {count:>6,}: fanout {fanout:7.1f} s, plain SDK script {plain:7.1f} s,"
                    f" fanout / plain = {fanout / plain:.2f}",
                    flush=True,
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
