"""Side-by-side throughput of the training core: separate runs against one pack, same threads.

    python scripts/bench_core.py --threads 2                       # this checkout only
    python scripts/bench_core.py --threads 2 --old /path/to/older/checkout   # and an older one

For each size of the benchmark (default ``cpu``), the grid's learning rates of one method are
trained (a) one process per run (K = 1), one after the other, and (b) as one pack (K = number
of LRs); with ``--old``, an older checkout's separate runs and packs are trained in the same
session for comparison. Every configuration runs in a fresh process with the same torch
thread count, and the configurations alternate ``--repeats`` times, so a slower stretch of the
machine does not land on one side only. Reported: training-loop tokens/s over all runs (from
metrics.json: each run's tokens over its loop time), whole-process wall time, and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(checkout: Path, args: list[str], threads: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "stabench", *args, "--threads", str(threads), "--no-progress"],
                   cwd=checkout, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def loop_rate(folders: list[Path]) -> float:
    """Tokens per second of all runs together: total tokens over total loop time (a pack's runs
    share one loop, so its time is counted once)."""
    metrics = [json.loads((f / "metrics.json").read_text()) for f in folders]
    tokens = sum(m["tokens"] for m in metrics)
    packs: dict[float, float] = {}
    for m in metrics:
        seconds = m["tokens"] / m["tokens_per_second"]
        packs[round(seconds, 3) if m.get("packed_with", 1) > 1 else id(m)] = seconds
    return tokens / sum(packs.values())


def measure(checkout: Path, bench: str, method: str, size: str, lrs: list[str], sets: list[str], threads: int,
            packed: bool, work: Path, data: Path) -> tuple[float, float]:
    out = work / ("pack" if packed else "separate")
    shutil.rmtree(out, ignore_errors=True)
    common = [bench, "--method", method, "--size", size, "--data", str(data)] + [f"--set={s}" for s in sets]
    folders = [out / f"lr{lr}" for lr in lrs]
    if packed:
        wall = run(checkout, ["train-pack", *common, *[f"--run={lr}:0:{f}" for lr, f in zip(lrs, folders)]], threads)
    else:
        wall = sum(run(checkout, ["train", *common, "--lr", lr, "--out", str(f)], threads) for lr, f in zip(lrs, folders))
    return loop_rate(folders), wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--benchmark", default="cpu")
    p.add_argument("--method", default="baseline")
    p.add_argument("--sizes", nargs="+", default=["d32", "d64"])
    p.add_argument("--lrs", nargs="+", default=["0.001", "0.003", "0.01", "0.03", "0.1", "0.3"])
    p.add_argument("--set", action="append", default=[], help="benchmark overrides, e.g. train.steps=200")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--old", type=Path, help="an older checkout to compare with (its own stabench package)")
    a = p.parse_args()
    checkouts = {"new": ROOT} | ({"old": a.old.resolve()} if a.old else {})
    with tempfile.TemporaryDirectory(prefix="stabench-bench-") as tmp:
        work = Path(tmp)
        data = work / "data"
        subprocess.run([sys.executable, "-m", "stabench", "prepare", a.benchmark, "--out", str(data), "--no-progress"],
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True, stdout=subprocess.DEVNULL)
        for size in a.sizes:
            results: dict[str, list[tuple[float, float]]] = {}
            for _ in range(a.repeats):
                for name, checkout in checkouts.items():
                    for packed in (False, True):
                        key = f"{name} {'pack' if packed else 'separate'}"
                        results.setdefault(key, []).append(
                            measure(checkout, a.benchmark, a.method, size, a.lrs, a.set, a.threads, packed,
                                    work / name, data))
            med = {k: (statistics.median(r for r, _ in v), statistics.median(w for _, w in v)) for k, v in results.items()}
            base = med["new separate"]
            print(f"\n{a.benchmark} {size} {a.method}, {len(a.lrs)} LRs, {a.threads} threads, median of {a.repeats}:")
            for key, (rate, wall) in med.items():
                print(f"  {key:14s} {rate:10,.0f} tok/s ({rate / base[0]:.2f}x new separate)   "
                      f"wall {wall:6.1f} s ({base[1] / wall:.2f}x)")
            if "old separate" in med:
                old = med["old separate"]
                print(f"  new separate vs old separate: {base[0] / old[0]:.2f}x tok/s; "
                      f"new pack vs old separate: {med['new pack'][0] / old[0]:.2f}x tok/s, {old[1] / med['new pack'][1]:.2f}x wall")


if __name__ == "__main__":
    main()
