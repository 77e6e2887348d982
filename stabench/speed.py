"""``stabench speed``: tokens/s and model FLOP utilization of the real trainer.

It times the real training loop (``stabench.loop.train``) (probes at their interval, the same optimizer and autocast), on
random tokens so that no corpus or tokenizer is needed, for named sizes of a benchmark or
explicit shapes, compiled and not. The first ``warmup`` steps (compilation, allocator
warm-up) are excluded: throughput is measured between two probe rows of the history.

FLOPs per token follow the usual estimate (Kaplan et al.; nanoGPT's estimate_mfu):
6 x (matmul parameters) + 12 x n_layers x seq_len x d_model for attention scores and mixing.
"""

from __future__ import annotations

import copy
import csv
import tempfile
from pathlib import Path

import numpy as np

from .config import ConfigError
from .io import write_json
from .loop import train
from .recorder import HISTORY_NAME
from .runspec import resolve_run

# Dense bf16 peak of known accelerators, TFLOP/s (vendor figures, without sparsity).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0}


def peak_tflops(device_name: str) -> float | None:
    return next((v for k, v in PEAK_TFLOPS.items() if k in device_name), None)


def flops_per_token(d_model: int, n_layers: int, vocab: int, seq_len: int, mlp_ratio: int = 4) -> float:
    matmul_params = n_layers * (4 + 2 * mlp_ratio) * d_model ** 2 + d_model * vocab
    return 6 * matmul_params + 12 * n_layers * seq_len * d_model


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


def measure(benchmark: dict, size: str, *, method: str, steps: int, warmup: int, compile_model: bool,
            workdir: Path, lr: float = 1e-3) -> dict:
    bench = copy.deepcopy(benchmark)
    bench["train"].update(steps=steps, compile=compile_model, eval_every=steps + 1, eval_windows=4,
                          checkpoint_every=steps + 1, warmup_steps=min(bench["train"]["warmup_steps"], steps // 10))
    run = resolve_run(bench, method=method, size=size, lr=lr, seed=0)
    config = run.config
    vocab = bench["data"]["vocab_size"]
    tokens_needed = steps * bench["train"]["batch_size"] * (bench["train"]["seq_len"] + 1) + 10 * bench["train"]["seq_len"]
    data_dir = random_token_data(workdir / "data", bench["data"], vocab, max(tokens_needed, 1_000_000))
    out = workdir / f"{size}-{'compiled' if compile_model else 'eager'}"
    metrics, = train([run], [out], data_dir, progress=False)
    with open(out / HISTORY_NAME) as f:
        history = [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
    tok_s = throughput(history, warmup) or metrics["tokens_per_second"]  # whole loop if too few probes
    dims = config["model"]
    flops = flops_per_token(dims["d_model"], dims["n_layers"], vocab, bench["train"]["seq_len"], dims["mlp_ratio"])
    peak = peak_tflops(metrics["device"])
    return {"size": size, "d_model": dims["d_model"], "n_layers": dims["n_layers"], "compiled": compile_model,
            "batch": bench["train"]["batch_size"], "seq_len": bench["train"]["seq_len"], "vocab": vocab,
            "tokens_per_second": tok_s, "tflops": tok_s * flops / 1e12,
            "mfu": tok_s * flops / 1e12 / peak if peak else None, "device": metrics["device"],
            "precision": metrics["precision"], "probe_every": bench["train"]["probe_every"]}


def run_speed(benchmark: dict, sizes: list[str], *, method: str, steps: int, warmup: int,
              compile_modes: list[bool], out_json: Path | None = None) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory(prefix="stabench-speed-") as tmp:
        for size in sizes:
            for compile_model in compile_modes:
                row = measure(benchmark, size, method=method, steps=steps, warmup=warmup,
                              compile_model=compile_model, workdir=Path(tmp))
                results.append(row)
                mfu = f"{100 * row['mfu']:5.1f}%" if row["mfu"] is not None else "  n/a"
                print(f"{size:>10s} d{row['d_model']:<5d} L{row['n_layers']:<3d} "
                      f"{'compiled' if compile_model else 'eager':>8s}  {row['tokens_per_second']:>12,.0f} tok/s  "
                      f"{row['tflops']:8.2f} TFLOP/s  MFU {mfu}  ({row['device']}, {row['precision']})", flush=True)
    if out_json:
        write_json(out_json, results)
    return results


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

