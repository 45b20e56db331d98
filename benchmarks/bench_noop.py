"""1,000 no-op tasks on the local backend, beside xargs -P2 and GNU parallel -j2.

Each task is ``true`` with one tiny input, two at a time. Every tool runs the same inputs, in
interleaved rounds (these machines are noisy); the best wall time of each is compared. fanout's
time is the whole command, cold: Python start-up, staging into fresh storage, node directories,
collecting, the ledger and the run record.

    python benchmarks/bench_noop.py [--tasks 1000] [--rounds 3]

Targets: fanout / xargs <= 4, fanout / parallel < 1.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

SLOTS = 2


def timed(command: list[str], cwd: Path, stdin: str | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, input=stdin, text=True, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fanout-bench-noop-"))
    try:
        inputs = work / "in"
        inputs.mkdir()
        for number in range(args.tasks):
            (inputs / f"input-{number:05d}.txt").write_text(f"{number}\n")
        (work / "job.toml").write_text(
            '[job]\nname = "noop"\ninputs = ["in/*.txt"]\ncommand = "true"\n'
        )
        listing = "\n".join(str(path) for path in sorted(inputs.iterdir())) + "\n"

        def fanout() -> float:
            for leftover in (".fanout", "out"):
                shutil.rmtree(work / leftover, ignore_errors=True)
            command = [sys.executable, "-m", "fanout", "run", "job.toml", "--out", "out"]
            return timed([*command, "--slots", str(SLOTS)], work)

        tools: dict[str, Callable[[], float]] = {
            "xargs -P2": lambda: timed(
                ["xargs", "-P", str(SLOTS), "-n", "1", "true"], work, listing
            ),
            "fanout --slots 2": fanout,
        }
        if shutil.which("parallel"):
            tools["parallel -j2"] = lambda: timed(
                ["parallel", "-j", str(SLOTS), "true"], work, listing
            )
        else:
            print("GNU parallel is not installed: its comparison is skipped")

        best = {name: float("inf") for name in tools}
        for _ in range(args.rounds):
            for name, run in tools.items():
                best[name] = min(best[name], run())

        print(f"{args.tasks} no-op tasks, {SLOTS} at a time, best of {args.rounds} rounds")
        for name, seconds in best.items():
            print(f"  {name:<18} {seconds:7.2f} s  {seconds / args.tasks * 1000:6.2f} ms/task")
        ratio = best["fanout --slots 2"] / best["xargs -P2"]
        print(f"fanout / xargs    = {ratio:.2f}  (target <= 4)")
        if "parallel -j2" in best:
            ratio = best["fanout --slots 2"] / best["parallel -j2"]
            print(f"fanout / parallel = {ratio:.2f}  (target < 1)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
