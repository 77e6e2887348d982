"""Stability-diagnostic figures: what each method does to training, from the probes.

- instability prediction: early first-block attention logit against size, a panel per method,
  a colour per LR, with the fit over sizes and the held-out prediction (analysis/predict.py);
- gradient RMS against Adam's eps: a panel per method, with its eps and its own fit;
- probe panels: every probe family the runs declare (analysis/probe_families.py), a line per
  method with a band over seeds, at the largest size and the chosen LR (``chosen_lr``);
- loss spikes against every probe family that declares a threshold.
Panels per method and lines per method use seaborn's FacetGrid / relplot; every function
returns a Figure (an empty one that says why), like analysis/figures.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from analysis.figures import ASPECT, HEIGHT, empty_figure, human, size_ticks
from analysis.predict import fit_log_poly, holdout_attention, predict_log_poly, size_cells, size_where_crossing
from analysis.probe_families import family_values
from analysis.runs import size_params

COL_WRAP = 4


def chosen_lr(runs: pd.DataFrame, size: str, reference: str) -> float:
    """The highest LR at which no seed of the reference method diverged at ``size`` (the
    highest LR of the grid when the reference has no such LR)."""
    at = runs[(runs["size"] == size) & (runs["method"] == reference)]
    at = at if not at.empty else runs[runs["size"] == size]
    ok = at.groupby("lr")["diverged"].apply(lambda d: not d.astype(bool).any())
    return float(ok[ok].index.max() if ok.any() else at["lr"].max())


def lr_colors(lrs) -> dict[float, tuple]:
    lrs = sorted({float(x) for x in lrs})
    return dict(zip(lrs, sns.color_palette("viridis", len(lrs))))


def instability_figure(runs: pd.DataFrame, sizes) -> plt.Figure:
    """Early attention logit vs non-embedding parameters, a panel per method, a colour per LR:
    dots = seed means, x = the LR diverged at that size, dashed = the fit on every size, open
    circle = the largest size predicted from the smaller ones (labelled as the extrapolation it
    is), red dotted = the level calibrated on the smaller sizes (analysis/predict.py). Fits are
    drawn over the sizes they were fitted on only."""
    col = "early_attn_logit"
    data = runs.dropna(subset=[col]) if col in runs else runs.iloc[0:0]
    if data.empty:
        return empty_figure("Instability prediction", "no first-block attention-logit probe in the histories")
    if data["size"].nunique() < 2:
        return empty_figure("Instability prediction", f"one model size ({data['size'].iloc[0]}): a prediction "
                            "over sizes needs at least two")
    colors = lr_colors(data["lr"])
    g = sns.FacetGrid(data, col="method", col_wrap=min(COL_WRAP, data["method"].nunique()),
                      height=HEIGHT * 0.9, aspect=ASPECT, sharey=True)
    shown = set()  # which markers some panel draws: the legend names only those
    for method, ax in g.axes_dict.items():
        cells = size_cells(runs, method, col, sizes)
        held = holdout_attention(runs, method, "calibrate", sizes) if len(set(cells["size"])) >= 3 else pd.DataFrame()
        held = held.set_index("lr") if not held.empty else held
        for lr, c in cells.groupby("lr"):
            color = colors.get(float(lr), "0.3")
            ax.scatter(c["params"], c["value"], color=color, s=22)
            d = c[c["diverged"]]
            ax.scatter(d["params"], d["value"], color=color, marker="x", s=70)
            shown |= {"diverged"} if not d.empty else set()
            fit = fit_log_poly(c["params"].to_numpy(), c["value"].to_numpy())
            if fit is not None:  # over the sizes it was fitted on, no further
                xs = np.geomspace(c["params"].min(), c["params"].max(), 40)
                ax.plot(xs, [predict_log_poly(fit, x) for x in xs], color=color, ls="--", lw=1)
            if float(lr) in held.index and math.isfinite(held.at[float(lr), "predicted_logit"]):
                ax.scatter([c["params"].max()], [held.at[float(lr), "predicted_logit"]], s=60,
                           facecolors="none", edgecolors=color, lw=1.5)
                shown.add("predicted")
        level = float(held["threshold"].iloc[0]) if not held.empty else math.nan
        if math.isfinite(level):
            ax.axhline(level, color="red", ls=":", lw=1)
            shown.add("level")
    g.set(xscale="log", yscale="log")
    size_ticks(g.axes.flat, {s: n for s, n in size_params(runs).items() if s in set(data["size"])})
    g.set_titles("{col_name}")
    g.set_axis_labels("non-embedding parameters", "early first-block max attention logit")
    handles = [plt.Line2D([], [], color=c, marker="o", ls="--", label=f"LR {lr:g}") for lr, c in colors.items()]
    handles += [h for key, h in (
        ("diverged", plt.Line2D([], [], color="0.3", marker="x", ls="", label="diverged at that size")),
        ("predicted", plt.Line2D([], [], color="0.3", marker="o", mfc="none", ls="",
                                 label="extrapolation: largest size\npredicted from the smaller")),
        ("level", plt.Line2D([], [], color="red", ls=":", label="divergence level\n(calibrated on the smaller)")),
    ) if key in shown]
    g.figure.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return g.figure


def grad_rms_figure(runs: pd.DataFrame, sizes, lr: float) -> plt.Figure:
    """Late gradient RMS vs non-embedding parameters at one LR, a panel per method, with the
    method's eps (dotted) and its own log-log fit (dashed) over the sizes measured; the title
    says whether it reaches eps there."""
    col = "late_grad_rms"
    data = runs[(runs["lr"] == lr) & ~runs["diverged"].astype(bool)].dropna(subset=[col]) if col in runs else runs.iloc[0:0]
    if data.empty:
        at = runs[runs["lr"] == lr]
        if col in runs and not at.empty and at["diverged"].astype(bool).all():
            return empty_figure("Gradient RMS vs eps", f"every run at peak LR {lr:g} diverged: no late gradient RMS")
        return empty_figure("Gradient RMS vs eps", "no gradient-RMS probe in the histories")
    if data["size"].nunique() < 2:
        return empty_figure("Gradient RMS vs eps", f"one model size ({data['size'].iloc[0]}): a trend over sizes "
                            "needs at least two")
    params = size_params(runs)
    g = sns.FacetGrid(data, col="method", col_wrap=min(COL_WRAP, data["method"].nunique()),
                      height=HEIGHT * 0.9, aspect=ASPECT, sharey=True)
    for method, ax in g.axes_dict.items():
        cells = size_cells(data, method, col, sizes).dropna(subset=["value", "params"])
        mine = data[data["method"] == method]
        ax.scatter(mine["size"].map(params), mine[col], color="0.2", s=18)
        eps = float(data.loc[data["method"] == method, "eps"].median())
        if math.isfinite(eps) and eps > 0:
            ax.axhline(eps, color="0.4", ls=":", lw=1)
        fit = fit_log_poly(cells["params"].to_numpy(), cells["value"].to_numpy(), degree=1)
        if fit is not None:  # over the sizes it was fitted on, no further
            xs = np.geomspace(cells["params"].min(), cells["params"].max(), 40)
            ax.plot(xs, [predict_log_poly(fit, x) for x in xs], color="C0", ls="--", lw=1)
        ax.set_title(f"{method}\n{eps_reached(cells, eps)}", fontsize=9)
    g.set(xscale="log", yscale="log")
    size_ticks(g.axes.flat, {s: n for s, n in params.items() if s in set(data["size"])})
    g.set_axis_labels("non-embedding parameters", f"gradient RMS, last 20 %\n(peak LR {lr:g})")
    return g.figure


def eps_reached(cells: pd.DataFrame, eps: float) -> str:
    """Where the gradient-RMS fit meets eps, said only within the sizes measured (a crossing
    far beyond them would be a number the data cannot back)."""
    if not (math.isfinite(eps) and eps > 0):
        return "no eps"
    lo, hi = cells["params"].min(), cells["params"].max()
    cross = size_where_crossing(cells["params"].to_numpy(), cells["value"].to_numpy(), eps)
    if math.isfinite(cross) and lo <= cross <= hi:
        return f"eps {eps:g}; the fit reaches it at {human(cross)} params"
    side = "above" if cells["value"].min() > eps else "below" if cells["value"].max() < eps else "around"
    return f"eps {eps:g}; {side} it over {human(lo)}-{human(hi)} params"


def probe_long(runs: pd.DataFrame, histories: Mapping[str, pd.DataFrame], families: dict) -> pd.DataFrame:
    """One row per (run, family, probed step) with the family's value."""
    parts = []
    for r in runs.itertuples():
        h = histories.get(r.run_dir)
        if h is None:
            continue
        for fid, fam in families.items():
            v = family_values(h, fam)
            if v is None or not v.notna().any():
                continue
            ok = v.notna()
            parts.append(pd.DataFrame({"family": fid, "method": r.method, "seed": r.seed,
                                       "step": h.loc[ok, "step"].to_numpy(), "value": v[ok].to_numpy()}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["family", "method", "seed", "step", "value"])


def probe_panels(runs: pd.DataFrame, histories: Mapping[str, pd.DataFrame], families: dict, size: str, lr: float,
                 palette: Mapping, band: dict) -> plt.Figure:
    """Each declared probe family over training at one (size, LR): a panel per family, a line
    per method with a band over seeds, the family's threshold as a red line."""
    if not families:
        return empty_figure("Probes", "the runs declare no probe families (metrics.json: probe_families)")
    sel = runs[(runs["size"] == size) & (runs["lr"] == lr)]
    long = probe_long(sel, histories, families)
    if long.empty:
        return empty_figure("Probes", f"no declared probe recorded at {size}, LR {lr:g}")
    order = [f for f in families if f in set(long["family"])]
    g = sns.relplot(data=long, x="step", y="value", hue="method", col="family", col_order=order, kind="line",
                    col_wrap=min(3, len(order)), palette=dict(palette), height=HEIGHT * 0.85, aspect=ASPECT * 1.2,
                    facet_kws={"sharey": False}, **band)
    for fid, ax in g.axes_dict.items():
        fam = families[fid]
        if fam.get("log_y"):
            ax.set_yscale("log")
        if fam.get("threshold") is not None:
            ax.axhline(fam["threshold"], color="red", ls=":", lw=1)
        ax.set_title(fam.get("title") or fid, fontsize=10)
    g.set_axis_labels("training step", "")
    g.figure.suptitle(f"{size}, peak LR {lr:g}", y=1.04)
    return g.figure


def _step_losses(run_dir: str, history: pd.DataFrame) -> pd.DataFrame:
    """Per-step losses (losses.csv) when the run has them, else the history's probe losses."""
    path = Path(run_dir) / "losses.csv"
    if path.exists():
        return pd.read_csv(path)
    return history[["step", "loss"]].dropna() if "loss" in history else pd.DataFrame(columns=["step", "loss"])


def spikes_figure(runs: pd.DataFrame, histories: Mapping[str, pd.DataFrame], families: dict,
                  spike_steps: Mapping[str, list], max_runs: int = 4) -> plt.Figure:
    """For every family with a threshold: the runs with the most loss spikes, the family's value
    over steps against its threshold, the per-step loss (grey, right axis), spikes in orange."""
    thresholded = {f: fam for f, fam in families.items() if fam.get("threshold") is not None}
    panels = []
    for fid, fam in thresholded.items():
        have = [r for r in runs.itertuples() if r.run_dir in histories
                and (v := family_values(histories[r.run_dir], fam)) is not None and v.notna().any()]
        have.sort(key=lambda r: (-len(spike_steps.get(r.run_dir, [])), -r.lr))
        panels += [(fid, fam, r) for r in have[:max_runs]]
    if not panels:
        return empty_figure("Loss spikes", "no probe family with a threshold was recorded")
    fig, axes = plt.subplots(len(panels), 1, figsize=(8.5, 2.5 * len(panels)), squeeze=False)
    for ax, (fid, fam, r) in zip(axes[:, 0], panels):
        h = histories[r.run_dir]
        v = family_values(h, fam)
        ok = v.notna()
        ax.plot(h.loc[ok, "step"], v[ok], marker=".", color="C0", label=fam.get("title") or fid)
        ax.axhline(fam["threshold"], color="red", ls=":", lw=1)
        if fam.get("log_y"):
            ax.set_yscale("log")
        losses = _step_losses(r.run_dir, h)
        twin = ax.twinx()
        twin.plot(losses["step"], losses["loss"], color="0.6", lw=0.7)
        twin.set_ylabel("loss", color="0.5")
        twin.grid(False)
        steps = spike_steps.get(r.run_dir, [])
        for s in steps:
            ax.axvline(s, color="orange", lw=0.9, alpha=0.8)
        ax.set_title(f"{r.method} {r.size} LR {r.lr:g} seed {r.seed}: {len(steps)} loss spikes; "
                     f"{fam.get('title') or fid}", fontsize=9)
    axes[-1, 0].set_xlabel("training step")
    fig.tight_layout()
    return fig

