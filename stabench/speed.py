"""``stabench speed``: tokens/s, model FLOP utilization and ops per step of the real trainer.

It times the real training loop (``stabench.loop.train``: probes at their interval, the same
optimizer and autocast) on random tokens, so that no corpus or tokenizer is needed, for named
sizes of a benchmark or explicit shapes, compiled and not, as one run (``--pack 1``) or as a
pack of K runs at K learning rates around ``--lr`` (``--pack K``: one ensemble, the way the
workflow trains a sweep). The first ``warmup`` steps (compilation, allocator warm-up) are excluded: throughput
is measured between two probe rows of the history, which are host syncs, so the times are
the device's. Total tokens/s counts every member's tokens; per member is that over K.

Ops per step: the aten ops dispatched during one non-probe training step (forward, backward,
clipping, update, the batch), counted with a ``TorchDispatchMode`` on any device. On a GPU in
eager mode each of them is about one kernel launch, so the count is the step's launch budget;
under ``torch.compile`` only what runs outside the compiled graphs is dispatched, so the
count is taken in eager mode only. FLOPs per token are ``stabench.resources.flops_per_token``
(6 x matmul parameters + attention, as nanoGPT's estimate_mfu).
"""

from __future__ import annotations

import copy
import csv
import tempfile
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .config import ConfigError
from .io import write_json
from .loop import is_probe_step, train
from .recorder import HISTORY_NAME
from .resources import flops_per_token
from .runspec import resolve_run

# Dense bf16 peak of known accelerators, TFLOP/s (vendor figures, without sparsity).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0}


def peak_tflops(device_name: str) -> float | None:
    return next((v for k, v in PEAK_TFLOPS.items() if k in device_name), None)


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched while it is active (every op of every thread it reaches)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def random_token_data(folder: Path, data_cfg: dict, vocab: int, n_tokens: int, seed: int = 0) -> Path:
    """A data folder of uniform random tokens that ``load_data`` accepts."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    dtype = np.uint16 if vocab < 65536 else np.uint32
    np.save(folder / "train.npy", rng.integers(0, vocab, n_tokens, dtype=dtype))
    np.save(folder / "val.npy", rng.integers(0, vocab, max(n_tokens // 20, 70_000), dtype=dtype))
    write_json(folder / "manifest.json", {"source": "random", "data": data_cfg, "vocab_size": vocab, "eos_id": 0})
    return folder


def throughput(history: list[dict], warmup: int) -> float | None:
    """Tokens per second between the first probe row after ``warmup`` steps and the last
    (None when fewer than two probe rows were timed, e.g. probe_every >= steps)."""
    rows = [r for r in history if "time" in r and r["step"] >= warmup]
    if len(rows) < 2:
        rows = [r for r in history if "time" in r]
    if len(rows) < 2:
        return None
    first, last = rows[0], rows[-1]
    return (last["tokens"] - first["tokens"]) / max(last["time"] - first["time"], 1e-9)


def pack_lrs(lr: float, pack: int) -> list[float]:
    """K peak LRs a factor 2^(1/4) apart, centred on ``lr``: a sweep's shape, narrow enough that
    no member diverges and leaves (which would change what is timed)."""
    return [lr * 2 ** ((i - (pack - 1) / 2) / 4) for i in range(pack)]


def first_plain_step(train_cfg: dict) -> int:
    """The first step after step 1 (lazy initialization) that is not a probe step."""
    step = 2
    while is_probe_step(step, train_cfg) and step < train_cfg["steps"]:
        step += 1
    return step


def measure(benchmark: dict, size: str, *, method: str, steps: int, warmup: int, compile_model: bool,
            workdir: Path, lr: float = 1e-3, pack: int = 1, count_ops: bool = True) -> dict:
    bench = copy.deepcopy(benchmark)
    bench["train"].update(steps=steps, compile=compile_model, eval_every=steps + 1, eval_windows=4,
                          checkpoint_every=steps + 1, warmup_steps=min(bench["train"]["warmup_steps"], steps // 10))
    runs = [resolve_run(bench, method=method, size=size, lr=x, seed=0) for x in pack_lrs(lr, pack)]
    config = runs[0].config
    tr, vocab = bench["train"], bench["data"]["vocab_size"]
    tokens_needed = steps * tr["batch_size"] * (tr["seq_len"] + 1) + 10 * tr["seq_len"]
    data_dir = random_token_data(workdir / "data", bench["data"], vocab, max(tokens_needed, 1_000_000))
    mode = "compiled" if compile_model else "eager"
    outs = [workdir / f"{size}-{mode}-k{pack}" / f"lr{i}" for i in range(pack)]
    counter, count_at = OpCounter(), first_plain_step(config["train"])
    counting = count_ops and not compile_model

    def instrument(step: int, probing: bool):
        return counter if counting and step == count_at and not probing else nullcontext()

    metrics = train(runs, outs, data_dir, progress=False, instrument=instrument)
    speeds = []
    for out, m in zip(outs, metrics):
        with open(out / HISTORY_NAME) as f:
            history = [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
        speeds.append(throughput(history, warmup) or m["tokens_per_second"])  # whole loop if too few probes
    finished = [m for m in metrics if not m.get("diverged")]
    per_member = float(np.median(speeds))
    dims = config["model"]
    flops = flops_per_token(dims, vocab, tr["seq_len"], dims["mlp_ratio"])
    total = per_member * pack
    peak = peak_tflops(metrics[0]["device"])
    return {"size": size, "d_model": dims["d_model"], "n_layers": dims["n_layers"], "compiled": compile_model,
            "pack": pack, "batch": tr["batch_size"], "seq_len": tr["seq_len"], "vocab": vocab,
            "tokens_per_second": total, "tokens_per_second_per_member": per_member,
            "tflops": total * flops / 1e12, "mfu": total * flops / 1e12 / peak if peak else None,
            "ops_per_step": counter.count if counting else None, "members_finished": len(finished),
            "device": metrics[0]["device"], "precision": metrics[0]["precision"], "torch": torch.__version__,
            "probe_every": tr["probe_every"], "steps": steps}


def run_speed(benchmark: dict, sizes: list[str], *, method: str, steps: int, warmup: int,
              compile_modes: list[bool], packs: list[int] = (1,), lr: float = 1e-3,
              out_json: Path | None = None) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory(prefix="stabench-speed-") as tmp:
        for size in sizes:
            for compile_model in compile_modes:
                for pack in packs:
                    row = measure(benchmark, size, method=method, steps=steps, warmup=warmup,
                                  compile_model=compile_model, workdir=Path(tmp), pack=pack, lr=lr)
                    results.append(row)
                    print(format_row(row), flush=True)
    if out_json:
        write_json(out_json, results)
    return results


def format_row(row: dict) -> str:
    mfu = f"{100 * row['mfu']:5.1f}%" if row["mfu"] is not None else "  n/a"
    ops = f"{row['ops_per_step']:6d} ops/step" if row["ops_per_step"] is not None else "   n/a ops/step"
    return (f"{row['size']:>10s} d{row['d_model']:<5d} L{row['n_layers']:<3d} "
            f"{'compiled' if row['compiled'] else 'eager':>8s} K={row['pack']:<3d} "
            f"{row['tokens_per_second']:>12,.0f} tok/s ({row['tokens_per_second_per_member']:,.0f} per member)  "
            f"{row['tflops']:8.2f} TFLOP/s  MFU {mfu}  {ops}  ({row['device']}, {row['precision']})")


def shape_sizes(shapes: list[str]) -> dict[str, dict]:
    """'128x2x2' (d_model x n_layers x n_heads) -> a named size."""
    sizes = {}
    for shape in shapes:
        try:
            d, layers, heads = (int(x) for x in shape.lower().split("x"))
        except ValueError:
            raise ConfigError(f"--shape {shape!r}: allowed: d_model x n_layers x n_heads, e.g. 128x2x2") from None
        if min(d, layers, heads) < 1:
            raise ConfigError(f"--shape {shape!r}: allowed: three integers >= 1, e.g. 128x2x2")
        sizes[f"d{d}L{layers}"] = {"d_model": d, "n_layers": layers, "n_heads": heads}
    return sizes
