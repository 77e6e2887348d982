"""Synthetic runs tables and result folders for the analysis tests (no training, milliseconds).

``runs_table`` builds the table `python -m analysis aggregate` would write, from a loss
function of (method, size index, LR index, seed); ``benchmark`` the matching benchmark dict;
``write_results`` a results folder with metrics.json and history.csv per run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.settings import resolve

L0 = 7.0
LRS = (1e-3, 1e-2, 1e-1)
SIZES = ("s1", "s2", "s3")
WIDTHS = {"s1": 32, "s2": 64, "s3": 128}
PARAMS = {"s1": 12_000.0, "s2": 48_000.0, "s3": 192_000.0}  # non-embedding


def benchmark(methods, sizes=SIZES[:2], lrs=LRS, seeds=(0, 1, 2), reference=None, **analysis) -> dict:
    """A benchmark dict (validated and defaults filled by analysis.settings.resolve)."""
    out = {"name": "synthetic", "methods": list(methods),
           "sizes": {s: {"d_model": WIDTHS[s], "n_layers": 2, "n_heads": 2} for s in sizes},
           "learning_rates": list(lrs), "seeds": list(seeds),
           "analysis": {"l0": L0, "bootstrap": {"resamples": 1000}, **analysis}}
    if reference:
        out["reference"] = reference
    return out


def runs_table(loss: Callable[[str, int, int, int], float | None], methods, sizes=SIZES[:2], lrs=LRS,
               seeds=(0, 1, 2), uses: dict | None = None, extra: dict[str, Callable] | None = None,
               init_loss: Callable[[str], float] | None = None, rescales: tuple = ()) -> pd.DataFrame:
    """One row per (method, size, LR, seed); ``loss`` returns the final loss or None (diverged).
    ``extra`` maps a column name to a function of the same arguments."""
    rows = []
    for m in methods:
        for si, s in enumerate(sizes):
            for li, lr in enumerate(lrs):
                for seed in seeds:
                    final = loss(m, si, li, seed)
                    row = {"method": m, "uses": (uses or {}).get(m, m), "size": s, "lr": lr, "seed": seed,
                           "final_val_loss": np.nan if final is None else final, "diverged": final is None,
                           "init_loss": init_loss(m) if init_loss else L0 + 0.5,
                           "n_params": PARAMS[s] * 1.5, "n_params_non_embedding": PARAMS[s], "d_model": WIDTHS[s],
                           "eps": 1e-8, "steps": 100.0, "planned_steps": 100.0, "vocab_size": 1097.0,
                           "changes_lr_meaning": m in rescales, "method_versions": f"{m}@1",
                           "run_dir": f"runs/{m}/{s}/lr{lr:g}-s{seed}"}
                    for col, fn in (extra or {}).items():
                        row[col] = fn(m, si, li, seed)
                    rows.append(row)
    return pd.DataFrame(rows)


def settings_for(runs: pd.DataFrame, **kw):
    methods = list(dict.fromkeys(runs["method"]))
    sizes = tuple(dict.fromkeys(runs["size"]))
    return resolve(benchmark(methods, sizes=sizes, **kw), runs)


def noise(seed: int, scale: float = 0.01) -> float:
    """A deterministic per-seed offset shared by every method (seeds share their batches)."""
    return scale * (seed - 1)


def write_results(root: Path, runs: pd.DataFrame, families: dict | None = None) -> list[Path]:
    """metrics.json and history.csv for every row of a runs table (run_dir under root)."""
    paths = []
    for r in runs.itertuples():
        d = root / r.run_dir
        d.mkdir(parents=True, exist_ok=True)
        final = None if r.diverged else float(r.final_val_loss)
        m = {"method": r.method, "size": r.size, "lr": r.lr, "seed": r.seed, "final_val_loss": final,
             "init_loss": r.init_loss, "diverged": bool(r.diverged), "diverged_at_step": 40 if r.diverged else None,
             "steps": 40 if r.diverged else 100, "tokens": 100 * 512, "wall_seconds": 1.5,
             "tokens_per_second": 6800.0, "max_attn_logit": 10.0 * (1 + r.lr * 100), "final_log_z": 0.5,
             "n_params": r.n_params, "n_params_non_embedding": r.n_params_non_embedding,
             "loss_spikes": 1 if r.lr == max(runs["lr"]) else 0,
             "loss_spike_steps": [60] if r.lr == max(runs["lr"]) else [],
             "config": {"model": {"vocab_size": 1097, "d_model": int(r.d_model), "n_layers": 2},
                        "optimizer": {"eps": 1e-8}, "train": {"steps": 100}},
             "methods": [{"name": n, "args": {}, "version": "1", "changes_lr_meaning": bool(r.changes_lr_meaning)}
                         for n in r.uses.split("+")]}
        if families:
            m["probe_families"] = families
        (d / "metrics.json").write_text(json.dumps(m))
        steps = np.arange(0, 101, 10)
        end = final if final is not None else L0
        loss = L0 - (L0 - end) * (1 - np.exp(-steps / 30))
        if r.diverged:
            loss = np.where(steps > 40, np.nan, loss)
        h = pd.DataFrame({"step": steps, "loss": loss, "lr": r.lr, "grad_norm": 1.0,
                          "log_z_mean": steps * 0.02 * (1 + r.lr), "attn_logit_max_l0": 3.0 * (1 + r.lr * 10)
                          * (1 + r.n_params_non_embedding / 1e5), "grad_rms_mean": 1e-3 / (1 + r.n_params_non_embedding / 1e4),
                          "curv": 30.0 + steps * r.lr * 10, "gate/a": 0.5, "gate/b": 0.7})
        h.loc[0, ["loss", "grad_norm", "curv"]] = np.nan
        h.loc[h["step"] > (40 if r.diverged else 100), :] = np.nan
        h.dropna(subset=["step"]).to_csv(d / "history.csv", index=False)
        paths.append(d / "metrics.json")
    return paths
