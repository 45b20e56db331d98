"""Benchmark node_task/topwords.py against the obvious read-everything word count.

Usage::

    python benchmarks/bench_topwords.py [--mb 200]

Generates a text file of ``--mb`` MiB (deterministic pseudo-random words with Zipf-like
frequencies, mixed case, punctuation and lines of varying length) and a copy of its first
quarter in a temporary directory. It then times, best of 3, ``topwords.py FILE --top 10``
against a baseline that reads the whole file with ``open().read()`` and counts
``str.split()`` tokens stripped of punctuation with ``collections.Counter``; both run as
subprocesses of the Python running this script. Peak RSS is taken per child with
``os.wait4``: ``RUSAGE_CHILDREN`` would give the maximum over all children so far.

It prints the time ratio topwords/baseline (the target is at most 1.0) and the ratio of
topwords' peak RSS on the full and the quarter file (the target is about 1.0: memory must not
grow with the file). It fails if topwords and the baseline disagree on the top 10.
Unix only (it needs ``os.wait4``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "node_task" / "topwords.py"
TOP = 10
RUNS = 3
SEED = 20240601
VOCABULARY_SIZE = 5000
TOKENS_PER_BLOCK = 1_000_000
URN_SIZE = 1 << 20
# ru_maxrss is in KiB on Linux and in bytes on macOS.
RSS_UNIT = 1 if sys.platform == "darwin" else 1024

BASELINE = f"""
import collections, json, string, sys
with open(sys.argv[1], encoding="utf-8", errors="replace") as file:
    tokens = file.read().split()
words = collections.Counter(w for w in (t.strip(string.punctuation) for t in tokens) if w)
print(json.dumps(words.most_common({TOP})))
"""

# (how a word is dressed up, relative frequency): mostly bare, sometimes capitalised,
# followed by punctuation or quoted.
DECORATIONS = (
    ("{}", 60),
    ("{},", 8),
    ("{}.", 5),
    ("{};", 1),
    ("{}?", 1),
    ('"{}"', 2),
    ("({})", 1),
    ("'{}'", 1),
)
CASES = ((str.lower, 20), (str.capitalize, 3), (str.upper, 1))
# Mostly ordinary lines, a few empty ones and a few paragraphs on a single line.
LINE_LENGTHS = [*range(1, 25), *range(5, 16), 0, 0, 600]


@dataclass
class Measurement:
    seconds: float
    peak_rss: int  # bytes
    stdout: str


def vocabulary(rng: random.Random) -> list[str]:
    """Distinct words of 1 to 14 letters, a few of them accented, shortest first."""
    words: set[str] = set()
    while len(words) < VOCABULARY_SIZE:
        letters = rng.choices("etaoinshrdlcumwfgypbvkjxqz", k=rng.randint(1, 14))
        if rng.random() < 0.03:
            letters[rng.randrange(len(letters))] = rng.choice("éèüöñçø")
        words.add("".join(letters))
    return sorted(words, key=lambda word: (len(word), word))


def token_urn(rng: random.Random) -> list[str]:
    """Every decorated form of every word, repeated in proportion to a Zipf-like weight.

    Drawing uniformly from this list is several times faster than ``random.choices`` with
    weights, which bisects a list of cumulative weights for every token.
    """
    forms: list[tuple[str, float]] = []
    for rank, word in enumerate(vocabulary(rng), start=1):
        for case, case_weight in CASES:
            for pattern, decoration_weight in DECORATIONS:
                forms.append((pattern.format(case(word)), case_weight * decoration_weight / rank))
    scale = URN_SIZE / sum(weight for _, weight in forms)
    urn = [form for form, weight in forms for _ in range(max(1, round(weight * scale)))]
    return urn + ["--"] * (len(urn) // 300)  # dashes between spaces: tokens that strip to nothing


def generate(path: Path, size: int, seed: int = SEED) -> None:
    """Write ``size`` bytes of text; the same seed gives the same text."""
    rng = random.Random(seed)
    urn = token_urn(rng)
    written = 0
    with open(path, "wb") as out:
        while written < size:
            words = rng.choices(urn, k=TOKENS_PER_BLOCK)
            lines = []
            start = 0
            while start < len(words):
                end = start + rng.choice(LINE_LENGTHS)
                lines.append(" ".join(words[start:end]))
                start = end
            data = ("\n".join(lines) + "\n").encode()[: size - written]
            out.write(data)
            written += len(data)


def measure(command: list[str], cwd: Path) -> Measurement:
    """Run ``command`` to completion; its wall time, its own peak RSS and its output."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    with process.stdout:
        stdout = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait for it again
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit status {process.returncode}")
    return Measurement(seconds, usage.ru_maxrss * RSS_UNIT, stdout)


def best_of(runs: int, command: list[str], cwd: Path) -> Measurement:
    """The fastest of ``runs`` runs, with the highest peak RSS seen in any of them."""
    measurements = [measure(command, cwd) for _ in range(runs)]
    fastest = min(measurements, key=lambda measurement: measurement.seconds)
    peak_rss = max(measurement.peak_rss for measurement in measurements)
    return Measurement(fastest.seconds, peak_rss, fastest.stdout)


def read_topwords_output(path: Path) -> list[tuple[str, int]]:
    """The (word, count) rows between the two dashed lines of a topwords output file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    first_rule, second_rule = (i for i, line in enumerate(lines) if line.startswith("---"))
    rows = [line.split("\t") for line in lines[first_rule + 1 : second_rule]]
    return [(word.removesuffix(":"), int(count)) for word, count in rows]


def run_topwords(text: Path, workdir: Path) -> tuple[Measurement, list[tuple[str, int]]]:
    measurement = best_of(
        RUNS, [sys.executable, str(SCRIPT), str(text), "--top", str(TOP)], workdir
    )
    return measurement, read_topwords_output(workdir / f"{text.stem}_OUTPUT{text.suffix}")


def mib(size: float) -> str:
    return f"{size / (1 << 20):.4g} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=200, help="size of the large file in MiB")
    args = parser.parse_args()
    if args.mb < 1:
        parser.error("--mb must be at least 1")

    with tempfile.TemporaryDirectory(prefix="bench_topwords-") as directory:
        workdir = Path(directory)
        full, quarter = workdir / "full.txt", workdir / "quarter.txt"
        start = time.perf_counter()
        # Generate in other processes: a child's ru_maxrss includes the peak RSS of the process
        # that started it (Linux accounts the memory it replaces at exec), so this process must
        # stay small for the figures to be the children's own. The quarter file uses the same
        # seed, so it holds the first quarter of the same text.
        with ProcessPoolExecutor(max_workers=2) as pool:
            list(pool.map(generate, [full, quarter], [args.mb << 20, args.mb << 18]))
        elapsed = time.perf_counter() - start
        print(f"generated {mib(args.mb << 20)} and {mib(args.mb << 18)} of text in {elapsed:.1f} s")
        print(f"Python {sys.version.split()[0]} on {sys.platform}\n")

        baseline = best_of(RUNS, [sys.executable, "-c", BASELINE, str(full)], workdir)
        topwords_full, top_full = run_topwords(full, workdir)
        topwords_quarter, _ = run_topwords(quarter, workdir)

    print(f"{'run':<24}{'best of ' + str(RUNS):>12}{'peak RSS':>12}")
    for name, measurement in [
        (f"baseline, {args.mb} MiB", baseline),
        (f"topwords, {args.mb} MiB", topwords_full),
        (f"topwords, {args.mb / 4:g} MiB", topwords_quarter),
    ]:
        print(f"{name:<24}{measurement.seconds:>10.2f} s{mib(measurement.peak_rss):>12}")
    print()
    time_ratio = topwords_full.seconds / baseline.seconds
    rss_ratio = topwords_full.peak_rss / topwords_quarter.peak_rss
    print(f"topwords/baseline time ratio: {time_ratio:.2f} (target <= 1.0)")
    print(f"rss(full)/rss(quarter):       {rss_ratio:.2f} (target ~1.0)")

    baseline_top = [(word, count) for word, count in json.loads(baseline.stdout)]
    if top_full != baseline_top:
        raise SystemExit(f"top {TOP} differ:\ntopwords: {top_full}\nbaseline: {baseline_top}")
    print(f"\ntopwords and the baseline agree on the top {TOP}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
