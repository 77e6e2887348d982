"""The GPU measurements of docs/performance.md, as one script that fits a short lease.

    PYTHONPATH=. python scripts/device_check.py --out OUT_DIR --budget 470

Runs, in order of importance, until the time budget is spent (an item whose estimated cost no
longer fits is skipped and recorded as such): ``stabench speed`` (in this process, so torch
and the compile caches load once) and ``scripts/reference_trainer.py`` at the GPU shapes,
eager and compiled, single runs and packs; a pack with a diverging member (LR 30) under bf16
and compile; profiles of 20 steps (GPU busy time against wall time, kernels per step). Each result is one JSON line in
``OUT_DIR/rows.jsonl``, written as soon as it is measured, with the graphs compiled during
the item (torch._dynamo's counters). A short table is printed last.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

GPU_SHAPE = ["--batch", "64", "--seq", "256", "--vocab", "8192"]
SPEED_SETS = ["--set", "probes.curvature_every=0", "--set", "train.probe_every=50"]
TINY = False  # --tiny: every shape at d32, batch 4 x 32, vocab 512 (a CPU rehearsal of the script)


def tiny_args(args: list[str]) -> list[str]:
    """The same command at a CPU-sized shape when rehearsing."""
    if not TINY:
        return args
    swap = {"--shape": "32x2x2", "--batch": "4", "--seq": "32", "--vocab": "512", "--d-model": "32",
            "--n-layers": "2", "--n-heads": "2", "--steps": "60", "--warmup": "20"}
    return [swap.get(args[i - 1], a) if i else a for i, a in enumerate(args)]


def speed(shape: str, compiled: bool, packs: list[int], steps: int = 150, extra: list[str] = ()) -> list[dict]:
    from stabench.cli import main
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speed.json"
        main(tiny_args(["speed", "proxies", "--shape", shape, *GPU_SHAPE, *extra, "--steps", str(steps), "--warmup",
                         "50", "--compile", "on" if compiled else "off", "--pack", *map(str, packs), *SPEED_SETS,
                         "--out", str(out)]))
        return json.loads(out.read_text())


def reference(d: int, layers: int, heads: int, compiled: bool, batch: int = 64, seq: int = 256) -> list[dict]:
    import reference_trainer
    argv = ["--d-model", str(d), "--n-layers", str(layers), "--n-heads", str(heads), "--vocab", "8192",
            "--batch", str(batch), "--seq", str(seq), "--steps", "100", "--warmup", "20"]
    return [reference_trainer.main(tiny_args(argv + (["--compile"] if compiled else ["--ops"])))]


def diverging_pack() -> list[dict]:
    """A pack of 3 (LR 1e-3, 1e-2, 30) under bf16 and compile: the LR-30 member must be
    recorded as diverged and leave; the others finish."""
    from stabench.config import load_benchmark, resolve_benchmark_path
    from stabench.loop import train
    from stabench.runspec import resolve_run
    from stabench.speed import random_token_data
    bench = load_benchmark(resolve_benchmark_path("proxies"), [
        "train.steps=200", "train.warmup_steps=10", "train.probe_every=10", "train.eval_every=100",
        "train.checkpoint_every=100", "train.compile=true", "train.batch_size=64", "probes.curvature_every=0"])
    bench["sizes"] = {"d128": {"d_model": 32 if TINY else 128, "n_layers": 2, "n_heads": 2}}
    if TINY:
        bench["train"].update(batch_size=4, seq_len=32)
    with tempfile.TemporaryDirectory() as tmp:
        data = random_token_data(Path(tmp) / "data", bench["data"], 8192, 4_000_000)
        runs = [resolve_run(bench, method="baseline", size="d128", lr=lr, seed=0) for lr in (1e-3, 1e-2, 30.0)]
        metrics = train(runs, [Path(tmp) / f"m{i}" for i in range(3)], data, progress=False)
    return [{"item": "diverging pack", "lr": r.config["lr"], "diverged": m["diverged"], "steps": m["steps"],
             "final_val_loss": m["final_val_loss"], "precision": m["precision"], "device": m["device"]}
            for r, m in zip(runs, metrics)]


def profile_speed(shape: str, compiled: bool, pack: int) -> list[dict]:
    """Kernels per step, GPU busy time per step against wall time per step, and the top ops of
    20 steps (after warm-up and compilation) of ``stabench speed`` at ``shape``."""
    from torch.profiler import ProfilerActivity, profile

    from stabench.cli import main
    gpu = torch.cuda.is_available()
    prof = profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else []))
    steps = range(21, 41)  # after the first recompiles (steps 1-2), before the first probe step (50)
    wall = {}
    sync = torch.cuda.synchronize if gpu else (lambda: None)

    @contextlib.contextmanager
    def instrument(step, probing):
        if step == steps[0]:
            sync()
            prof.__enter__()
            wall["start"] = time.perf_counter()
        yield
        if step == steps[-1]:
            sync()
            wall["end"] = time.perf_counter()
            prof.__exit__(None, None, None)

    import stabench.speed as speed_module
    real_train = speed_module.train
    speed_module.train = lambda *a, **k: real_train(*a, **{**k, "instrument": instrument})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            main(tiny_args(["speed", "proxies", "--shape", shape, *GPU_SHAPE, "--steps", "60", "--warmup", "20",
                            "--compile", "on" if compiled else "off", "--pack", str(pack), *SPEED_SETS,
                            "--out", str(Path(tmp) / "s.json")]))
    finally:
        speed_module.train = real_train
    events = prof.key_averages()
    n = len(steps)
    cuda = [e for e in events if e.device_type.name == "CUDA"]
    top_cuda = sorted(cuda, key=lambda e: e.self_device_time_total, reverse=True)[:10]
    top_cpu = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    return [{"shape": shape, "compiled": compiled, "pack": pack,
             "wall_ms_per_step": round((wall["end"] - wall["start"]) * 1000 / n, 3),
             "gpu_busy_ms_per_step": round(sum(e.self_device_time_total for e in cuda) / 1000 / n, 3),
             "kernels_per_step": sum(e.count for e in cuda) / n,
             "top_cuda_ms_per_step": {e.key[:70]: round(e.self_device_time_total / 1000 / n, 3) for e in top_cuda},
             "top_cpu_ms_per_step": {e.key[:70]: round(e.self_cpu_time_total / 1000 / n, 3) for e in top_cpu}}]


# (name, estimated seconds, thunk): most important first.
PLAN = [
    ("stabench d128 compiled K=1,7", 60, lambda: speed("128x2x2", True, [1, 7])),
    ("stabench d256 compiled K=1,7", 80, lambda: speed("256x4x4", True, [1, 7])),
    ("profile d256 compiled K=1", 50, lambda: profile_speed("256x4x4", True, 1)),
    ("ref d768 16x1024 compiled", 50, lambda: reference(768, 12, 12, True, batch=16, seq=1024)),
    ("stabench d768 16x1024 compiled K=1", 80,
     lambda: speed("768x12x12", True, [1], steps=100, extra=["--batch", "16", "--seq", "1024"])),
    ("profile d128 eager K=7", 25, lambda: profile_speed("128x2x2", False, 7)),
    ("stabench d512 compiled K=1", 70, lambda: speed("512x8x8", True, [1])),
    ("ref d128 eager", 15, lambda: reference(128, 2, 2, False)),
    ("stabench d128 eager K=1,7,21", 40, lambda: speed("128x2x2", False, [1, 7, 21])),
    ("ref d256 eager", 15, lambda: reference(256, 4, 4, False)),
    ("stabench d256 eager K=1,7", 30, lambda: speed("256x4x4", False, [1, 7])),
    ("ref d128 compiled", 40, lambda: reference(128, 2, 2, True)),
    ("ref d256 compiled", 40, lambda: reference(256, 4, 4, True)),
    ("diverging pack compiled bf16", 60, diverging_pack),
    ("stabench d512 eager K=1,3", 30, lambda: speed("512x8x8", False, [1, 3])),
    ("ref d512 compiled", 45, lambda: reference(512, 8, 8, True)),
    ("stabench d768 16x1024 eager K=1", 40,
     lambda: speed("768x12x12", False, [1], steps=100, extra=["--batch", "16", "--seq", "1024"])),]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--budget", type=float, default=470.0, help="seconds for the whole script")
    p.add_argument("--only", nargs="*", help="names (prefixes) of the plan's items to run")
    p.add_argument("--tiny", action="store_true", help="rehearse on a CPU at tiny shapes")
    args = p.parse_args()
    global TINY
    TINY = args.tiny
    args.out.mkdir(parents=True, exist_ok=True)
    rows_file = args.out / "rows.jsonl"
    start = time.perf_counter()
    env = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    print(json.dumps(env), flush=True)
    from torch._dynamo.utils import counters
    for name, estimate, thunk in PLAN:
        if args.only and not any(name.startswith(o) for o in args.only):
            continue
        left = args.budget - (time.perf_counter() - start)
        record = {"item": name, **env}
        if estimate > left:
            record["skipped"] = f"estimated {estimate} s, {left:.0f} s left"
            rows = [record]
        else:
            graphs_before = counters["stats"]["unique_graphs"]
            t0 = time.perf_counter()
            try:
                rows = [{**record, **r} for r in thunk()]
            except Exception as exc:  # one failing item must not cost the others
                rows = [{**record, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]}]
            for r in rows:
                r["item_seconds"] = round(time.perf_counter() - t0, 1)
                r["graphs_compiled"] = counters["stats"]["unique_graphs"] - graphs_before
        with open(rows_file, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        for r in rows:
            print(summary(r), flush=True)
    shutil.copy(rows_file, args.out / "rows_final.jsonl")
    print(f"total {time.perf_counter() - start:.0f} s", flush=True)


def summary(r: dict) -> str:
    if "skipped" in r or "error" in r:
        return f"{r['item']:<34s} {r.get('skipped') or r['error'][:200]}"
    if r.get("trainer") == "reference":
        return (f"{r['item']:<34s} {r['tokens_per_second']:>12,.0f} tok/s  ops {r.get('ops_per_step')}  "
                f"compile {r.get('compile_seconds')}  {r['item_seconds']} s")
    if "tokens_per_second" in r:
        return (f"{r['item']:<34s} K={r['pack']:<3d} {r['tokens_per_second']:>12,.0f} tok/s "
                f"({r['tokens_per_second_per_member']:,.0f}/member) MFU {r['mfu']}  ops {r['ops_per_step']}  "
                f"graphs {r['graphs_compiled']}  {r['item_seconds']} s")
    return f"{r['item']:<34s} " + json.dumps({k: v for k, v in r.items() if k not in ("item", "torch", "device")})[:300]


if __name__ == "__main__":
    main()
