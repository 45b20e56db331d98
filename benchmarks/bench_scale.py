"""How fanout's cost per task holds up as runs grow, on the local backend.

For each N (1,000, 10,000 and 100,000 by default), N no-op tasks (``true`` with one tiny input)
run two at a time through ``fanout run --slots 2`` and through ``xargs -P2``, in the same
round, cold (Python start-up, staging into fresh storage, collecting, the ledger and the run
record all count). It prints each tool's wall time and cost per task, the ratio fanout /
xargs, how fanout's cost per task at N compares with its cost at the smallest N, fanout's
peak RSS (from wait4), and what fanout wrote to storage beside the final ledger's size.

    python benchmarks/bench_scale.py [--tasks 1000,10000,100000] [--rounds 1]

Targets: fanout / xargs <= 2 at 1,000; fanout's cost per task within 25% from the smallest N
to the largest; peak RSS below 300 MB at 100,000; bytes written to storage (staging aside)
within a small multiple of the final ledger's size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SLOTS = 2


@dataclass(frozen=True)
class Measured:
    seconds: float
    peak_rss_mb: float
    written_mb: float


def measured(command: list[str], cwd: Path, stdin: str | None = None) -> Measured:
    """Run ``command``; its wall time, peak RSS and bytes written (the kernel's counts)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        cwd=cwd,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    if stdin is not None:
        assert process.stdin is not None
        process.stdin.write(stdin)
        process.stdin.close()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{command[0]} failed with status {status}")
    written = usage.ru_oublock * 512 / 1e6  # 512-byte blocks written, this process alone
    return Measured(seconds, usage.ru_maxrss / 1024, written)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="1000,10000,100000")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    sizes = [int(n) for n in args.tasks.split(",")]

    per_task: dict[int, float] = {}
    print(f"no-op tasks, {SLOTS} at a time, best of {args.rounds} rounds")
    for count in sizes:
        work = Path(tempfile.mkdtemp(prefix="fanout-bench-scale-"))
        try:
            inputs = work / "in"
            inputs.mkdir()
            for number in range(count):
                (inputs / f"input-{number:06d}.txt").write_text(f"{number}\n")
            (work / "job.toml").write_text(
                '[job]\nname = "scale"\ninputs = ["in/*.txt"]\ncommand = "true"\n'
            )
            listing = "\n".join(str(path) for path in sorted(inputs.iterdir())) + "\n"
            best_fanout: Measured | None = None
            best_xargs: Measured | None = None
            for _ in range(args.rounds):
                xargs = measured(["xargs", "-P", str(SLOTS), "-n", "1", "true"], work, listing)
                for leftover in (".fanout", "out"):
                    shutil.rmtree(work / leftover, ignore_errors=True)
                command = [sys.executable, "-m", "fanout", "run", "job.toml", "--out", "out"]
                fanout = measured([*command, "--slots", str(SLOTS)], work)
                if best_xargs is None or xargs.seconds < best_xargs.seconds:
                    best_xargs = xargs
                if best_fanout is None or fanout.seconds < best_fanout.seconds:
                    best_fanout = fanout
            assert best_fanout is not None and best_xargs is not None
            ledger = next((work / ".fanout").rglob("ledger.json")).stat().st_size / 1e6
            staged = sum(p.stat().st_size for p in (work / ".fanout").rglob("staged/*/*")) / 1e6
        finally:
            shutil.rmtree(work, ignore_errors=True)
        per_task[count] = best_fanout.seconds / count
        print(
            f"N = {count:>7,}: fanout {best_fanout.seconds:7.2f} s"
            f" ({per_task[count] * 1000:.2f} ms/task), xargs {best_xargs.seconds:6.2f} s,"
            f" fanout / xargs = {best_fanout.seconds / best_xargs.seconds:.2f};"
            f" peak RSS {best_fanout.peak_rss_mb:.0f} MB;"
            f" written {best_fanout.written_mb:.1f} MB (staged {staged:.1f} MB,"
            f" final ledger {ledger:.2f} MB)"
        )
    smallest = min(per_task)
    for count, cost in per_task.items():
        if count != smallest:
            print(f"cost per task at {count:,} / at {smallest:,} = {cost / per_task[smallest]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
