"""Diagnostic figures from the probes in history.csv: what each method does to training.

- output-logit divergence: log Z over training with and without weight decay and z-loss;
- instability prediction: early first-block attention logit vs size per LR, with the fit;
- gradient RMS vs model size against Adam's eps;
- best LR vs width per method (muParam's should be flat);
- probe panels: every probe family (gradient/update RMS, Adam second moment, gates, ...)
  over training, one line per method, so each method is shown with its own probe;
- preconditioned curvature lr x lambda_max against the Adam threshold 38, spikes marked.
Every function returns a Figure (or an empty one that says why), like analysis/figures.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.figures import _empty_figure, _flagged, _label, _sizes, method_palette
from analysis.predict import ATTN_LOGIT_DANGER, fit_log_poly, late_mean, predict_log_poly, size_where_crossing

ADAM_THRESHOLD_BETA1_09 = 38.0  # (2 + 2 beta1) / (1 - beta1), Cohen et al. 2022

# Methods contrasted in the output-logit view, when the benchmark has them (Wortsman 3.2).
LOG_Z_METHODS = ("baseline", "no_weight_decay", "z_loss", "no_weight_decay+z_loss", "qk_layernorm+z_loss")

# Probe families drawn in the probe panels: (column or prefix, title, log scale).
PROBE_FAMILIES = (
    ("grad_rms_mean", "gradient RMS (mean over matrices)", True),
    ("update_rms_mean", "Adam update RMS m/(sqrt(v)+eps)", True),
    ("adam_v_max", "Adam second moment: max", True),
    ("adam_v_norm", "Adam second moment: norm", True),
    ("grad_norm", "gradient norm (before clipping)", True),
    ("lr_lambda_max", "lr x preconditioned curvature", True),
    ("gate/", "WeSaR gates (mean |alpha|)", False),
    ("seq_len", "training sequence length", False),
    ("active_blocks", "active blocks", False),
)


def run_settings(run_dir: str) -> dict:
    """Optimizer and model settings of a run, from its metrics.json (for grouping figures)."""
    config = _metrics(run_dir).get("config") or {}
    optimizer, model = config.get("optimizer", {}), config.get("model", {})
    return {"eps": optimizer.get("eps", math.nan), "weight_decay": optimizer.get("weight_decay", math.nan),
            "d_model": model.get("d_model", math.nan), "n_layers": model.get("n_layers", math.nan)}


def _largest_size(runs: pd.DataFrame, size_order) -> str:
    return _sizes(runs, size_order)[-1]


def _family_values(history: pd.DataFrame, key: str) -> pd.Series | None:
    """A probe family as one series: the column, or the mean |value| of columns with a prefix."""
    if key.endswith("/"):
        cols = [c for c in history.columns if c.startswith(key)]
        return history[cols].abs().mean(axis=1) if cols else None
    return history[key] if key in history else None


def chosen_lr(runs: pd.DataFrame, size: str) -> float:
    """The highest LR at which the baseline (or most methods) did not diverge at ``size``."""
    at = runs[runs["size"] == size]
    base = at[at["method"] == "baseline"] if (at["method"] == "baseline").any() else at
    ok = base[~base["diverged"].astype(bool)]
    return float((ok if not ok.empty else base)["lr"].max())


def log_z_drift(history: pd.DataFrame, tail: float = 0.2) -> float:
    """How far log Z moved away from 0: |log Z| late in training minus |log Z| at the first probe.

    Output-logit divergence (Wortsman et al. 3.2) is log Z drifting away from 0; z-loss pulls it
    toward 0 (a negative drift). Late = the mean over the last ``tail`` of the probed steps.
    """
    if "log_z_mean" not in history:
        return math.nan
    rows = history.dropna(subset=["log_z_mean"])
    if rows.empty:
        return math.nan
    late = late_mean(rows.assign(abs_log_z=rows["log_z_mean"].abs()), "abs_log_z", tail)
    return float(late - abs(rows["log_z_mean"].iloc[0]))


def log_z_drift_table(runs: pd.DataFrame, histories: dict[str, pd.DataFrame]) -> pd.DataFrame:
    rows = [{"method": r.method, "size": r.size, "lr": r.lr, "diverged": bool(r.diverged),
             "log_z_drift": log_z_drift(histories[r.run_dir])}
            for r in runs.itertuples() if r.run_dir in histories]
    return pd.DataFrame(rows)


def log_z_figure(runs: pd.DataFrame, histories: dict[str, pd.DataFrame], size_order=None,
                 palette=None) -> plt.Figure:
    """log Z vs step at the two highest LRs of the largest size, with/without decay and z-loss."""
    present = set(runs["method"])
    methods = [m for m in LOG_Z_METHODS if m in present]
    methods += sorted(m for m in present - set(methods) if "z_loss" in m or "weight_decay" in m)
    methods = methods[:8] or sorted(present)[:6]
    size = _largest_size(runs, size_order)
    lrs = sorted(runs.loc[runs["size"] == size, "lr"].unique())[-2:]
    if not lrs:
        return _empty_figure("Output-logit divergence", "no runs")
    palette = palette or method_palette(runs["method"])
    fig, axes = plt.subplots(1, len(lrs), figsize=(5.2 * len(lrs), 4), squeeze=False, sharey=True)
    for ax, lr in zip(axes[0], lrs):
        for method in methods:
            sel = runs[(runs["method"] == method) & (runs["size"] == size) & (runs["lr"] == lr)]
            for r in sel.itertuples():
                h = histories.get(r.run_dir)
                if h is None or "log_z_mean" not in h:
                    continue
                h = h.dropna(subset=["log_z_mean"])
                ax.plot(h["step"], h["log_z_mean"], color=palette.get(method), label=method)
        ax.axhline(0, color="0.5", lw=0.8, ls=":")
        ax.set_title(f"{size}, peak LR {lr:g}")
        ax.set_xlabel("training step")
    axes[0][0].set_ylabel("mean log Z of the output logits")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle("Output-logit divergence: log Z over training (0 is where z-loss pulls it)")
    fig.tight_layout()
    return fig


def instability_figure(early: pd.DataFrame, method: str = "baseline", palette=None) -> plt.Figure:
    """Early first-block max attention logit vs parameters per LR, fitted and extrapolated."""
    data = early[(early["method"] == method) & early["early_logit"].notna()]
    if data.empty:
        return _empty_figure("Instability prediction", f"no attention-logit probes for {method}")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lrs = sorted(data["lr"].unique())
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(lrs)))
    for lr, color in zip(lrs, colors):
        g = data[data["lr"] == lr].groupby("n_params").agg(y=("early_logit", "mean"), div=("diverged", "any"))
        ax.scatter(g.index, g["y"], color=color, marker="o", label=f"LR {lr:g}")
        ax.scatter(g.index[g["div"]], g["y"][g["div"]], color=color, marker="x", s=80)
        fit = fit_log_poly(g.index.to_numpy(float), g["y"].to_numpy(float))
        if fit is not None:
            xs = np.geomspace(g.index.min(), g.index.max() * 4, 50)
            ax.plot(xs, [predict_log_poly(fit, x) for x in xs], color=color, ls="--", lw=1)
    ax.axhline(ATTN_LOGIT_DANGER, color="red", ls=":", lw=1, label="danger ~1e4")
    ax.set(xscale="log", yscale="log", xlabel="parameters", ylabel="first block's max attention logit (early)",
           title=f"Instability prediction ({method}): fit in log-size, extrapolated to 4x; x = diverged")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    return fig


def grad_rms_table(runs: pd.DataFrame, histories: dict[str, pd.DataFrame]) -> pd.DataFrame:
    rows = []
    for r in runs.itertuples():
        h = histories.get(r.run_dir)
        if h is None or "grad_rms_mean" not in h:
            continue
        rows.append({"method": r.method, "size": r.size, "lr": r.lr, "n_params": r.n_params,
                     "eps": run_settings(r.run_dir)["eps"], "grad_rms": late_mean(h, "grad_rms_mean")})
    return pd.DataFrame(rows)


def grad_rms_figure(table: pd.DataFrame, lr: float, palette=None) -> plt.Figure:
    """Late-training gradient RMS vs parameters per method at one LR, with each eps drawn."""
    data = table[(table["lr"] == lr) & table["grad_rms"].notna()] if not table.empty else table
    if data.empty:
        return _empty_figure("Gradient RMS vs eps", "no gradient-RMS probes")
    palette = palette or method_palette(data["method"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, g in data.groupby("method"):
        g = g.sort_values("n_params")
        ax.plot(g["n_params"], g["grad_rms"], marker="o", color=palette.get(method), label=method)
    for eps in sorted(data["eps"].unique()):
        ax.axhline(eps, color="0.4", ls=":", lw=0.8)
        ax.text(data["n_params"].min(), eps, f" eps {eps:g}", va="bottom", fontsize=8, color="0.3")
        crossing = size_where_crossing(data["n_params"].to_numpy(float), data["grad_rms"].to_numpy(float), eps)
        if math.isfinite(crossing) and crossing < 1e15:
            ax.axvline(crossing, color="0.7", ls="--", lw=0.6)
    ax.set(xscale="log", yscale="log", xlabel="parameters", ylabel="gradient RMS (last 20% of training)",
           title=f"Gradient RMS vs size at peak LR {lr:g}: when it nears eps, Adam's update shrinks")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    return fig


def best_lr_vs_width(scores: pd.DataFrame, runs: pd.DataFrame, palette=None) -> plt.Figure:
    """Best peak LR vs d_model per method: a flat line means the optimal LR transfers."""
    widths = {r.size: run_settings(r.run_dir)["d_model"] for r in runs.drop_duplicates("size").itertuples()}
    data = scores.assign(d_model=scores["size"].map(widths)).dropna(subset=["best_lr", "d_model"])
    if data["d_model"].nunique() < 2:
        return _empty_figure("Best LR vs width", "needs at least two widths")
    palette = palette or method_palette(data["method"])
    flagged = _flagged(runs)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, g in data.groupby("method"):
        g = g.sort_values("d_model")
        ax.plot(g["d_model"], g["best_lr"], marker="o", color=palette.get(method), label=_label(method, flagged),
                ls="--" if method in flagged else "-")
    ax.set(xscale="log", yscale="log", xlabel="width d_model", ylabel="best peak LR",
           title="Best LR vs width (muParam should be flat: its optimal LR transfers across widths)")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def probe_panels(runs: pd.DataFrame, histories: dict[str, pd.DataFrame], size: str, lr: float,
                 palette=None) -> plt.Figure:
    """Each probe family over training, a line per method, at one (size, LR)."""
    sel = runs[(runs["size"] == size) & (runs["lr"] == lr)]
    present = [(key, title, log) for key, title, log in PROBE_FAMILIES
               if any(_family_values(histories[r], key) is not None for r in sel["run_dir"] if r in histories)]
    if not present:
        return _empty_figure("Probes", "no probe columns")
    palette = palette or method_palette(runs["method"])
    cols = 3
    nrows = math.ceil(len(present) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.4 * nrows), squeeze=False)
    for ax, (key, title, log) in zip(axes.flat, present):
        for r in sel.itertuples():
            h = histories.get(r.run_dir)
            values = _family_values(h, key) if h is not None else None
            if values is None:
                continue
            ok = values.notna()
            if ok.any():
                ax.plot(h.loc[ok, "step"], values[ok], color=palette.get(r.method), label=r.method, lw=1.2)
        if key == "lr_lambda_max":
            ax.axhline(ADAM_THRESHOLD_BETA1_09, color="red", ls=":", lw=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        if log:
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(present):]:
        ax.set_axis_off()
    handles = {}
    for ax in axes.flat:
        for h, l in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(l, h)
    fig.legend(list(handles.values()), list(handles), loc="center left", bbox_to_anchor=(1.0, 0.5),
               frameon=False, fontsize=8)
    fig.suptitle(f"Probes over training at {size}, peak LR {lr:g}")
    fig.tight_layout()
    return fig


def curvature_figure(runs: pd.DataFrame, histories: dict[str, pd.DataFrame], max_runs: int = 4,
                     palette=None) -> plt.Figure:
    """lr_t x lambda_max over training against 38, with the runs' loss spikes marked."""
    with_curv = [r for r in runs.itertuples()
                 if r.run_dir in histories and "lr_lambda_max" in histories[r.run_dir]
                 and histories[r.run_dir]["lr_lambda_max"].notna().any()]
    if not with_curv:
        return _empty_figure("Preconditioned curvature", "no curvature probes (probes.curvature_every is 0)")
    with_curv.sort(key=lambda r: (-_spikes(r.run_dir), -r.lr))
    chosen = with_curv[:max_runs]
    palette = palette or method_palette(runs["method"])
    fig, axes = plt.subplots(len(chosen), 1, figsize=(8, 2.8 * len(chosen)), squeeze=False, sharex=True)
    for ax, r in zip(axes[:, 0], chosen):
        h = histories[r.run_dir]
        c = h.dropna(subset=["lr_lambda_max"])
        ax.plot(c["step"], c["lr_lambda_max"], color=palette.get(r.method), marker=".", label="lr x lambda_max")
        ax.axhline(ADAM_THRESHOLD_BETA1_09, color="red", ls=":", lw=1, label="Adam threshold 38")
        ax.set_yscale("log")
        ax.set_ylabel("lr x lambda_max")
        loss_ax = ax.twinx()
        l = h.dropna(subset=["loss"]) if "loss" in h else h.iloc[0:0]
        loss_ax.plot(l["step"], l["loss"], color="0.6", lw=0.8)
        for step in _spike_steps(r.run_dir):
            ax.axvline(step, color="orange", lw=0.8, alpha=0.8)
        loss_ax.set_ylabel("train loss", color="0.5")
        ax.set_title(f"{r.method} {r.size} lr={r.lr:g}: {_spikes(r.run_dir)} loss spikes (orange)", fontsize=10)
    axes[-1, 0].set_xlabel("step")
    axes[0, 0].legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def _metrics(run_dir: str) -> dict:
    return json.loads((Path(run_dir) / "metrics.json").read_text())


def _spikes(run_dir: str) -> int:
    return int(_metrics(run_dir).get("loss_spikes") or 0)


def _spike_steps(run_dir: str) -> list:
    return list(_metrics(run_dir).get("loss_spike_steps") or [])
