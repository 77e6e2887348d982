"""Figures for the report (matplotlib Agg + seaborn theme; every function returns a Figure).

Conventions shared by all figures, so they read as one set:
- one colour per method from method_palette(all methods), passed to every figure, so a
  method has the same colour everywhere (default: palette of the methods in the data);
- methods that change what "LR" means are drawn dashed and labelled "(rescales LR)";
- losses are cross-entropy in nats per token; LRs are peak LRs on a log axis;
- diverged runs are drawn as an x at the init loss l0, the value the metric gives them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from stabench.io import atomic_path  # noqa: E402
from analysis.runs import with_effective_loss  # noqa: E402

ATTN_LOGIT_DANGER = 1e4  # Wortsman et al.: attention-logit growth precedes divergence past ~1e4
LOSS_UNIT = "nats/token"

sns.set_theme(style="whitegrid", context="notebook")


def method_palette(methods: Iterable[str]) -> dict[str, tuple]:
    """Stable method -> colour map: sorted names onto tab10 (husl beyond 10 methods)."""
    names = sorted(set(map(str, methods)))
    colors = sns.color_palette("tab10" if len(names) <= 10 else "husl", max(len(names), 1))
    return dict(zip(names, colors))


def save_png(fig: plt.Figure, path: Path | str, dpi: int = 110) -> Path:
    """Save fig as PNG atomically and close it (figures hold memory until closed)."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
        return Path(path)
    finally:
        plt.close(fig)


def _empty_figure(title: str, message: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
    return fig


def _sizes(runs: pd.DataFrame, size_order: list[str] | None) -> list[str]:
    """size_order filtered to sizes present, then any other sizes by parameter count."""
    present = list(dict.fromkeys(runs["size"].astype(str)))
    order = [s for s in (size_order or []) if s in present]
    rest = [s for s in present if s not in order]
    if "n_params" in runs:
        p = runs.groupby("size")["n_params"].median()
        rest.sort(key=lambda s: (p.get(s, math.inf), s))
    else:
        rest.sort()
    return order + rest


def _flagged(df: pd.DataFrame) -> set[str]:
    if "changes_lr_meaning" not in df:
        return set()
    return set(df.loc[df["changes_lr_meaning"].astype(bool), "method"].astype(str))


def _label(method: str, flagged: set[str]) -> str:
    return f"{method} (rescales LR)" if method in flagged else method


def _panel_title(size: str, runs: pd.DataFrame) -> str:
    if "n_params" in runs:
        p = runs.loc[runs["size"] == size, "n_params"].median()
        if np.isfinite(p):
            return f"{size} ({p / 1e6:.3g}M params)"
    return size


def _figure_legend(fig: plt.Figure, axes) -> None:
    handles, labels = {}, []
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if handles:
        fig.legend([handles[lab] for lab in labels], labels, loc="center left",
                   bbox_to_anchor=(1.0, 0.5), frameon=False)


def _panels(n: int, width: float = 4.6, height: float = 4.0):
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, axes[0]


def loss_vs_lr(runs: pd.DataFrame, size_order: list[str] | None = None,
               palette: Mapping[str, tuple] | None = None) -> plt.Figure:
    """Final validation loss vs peak LR, a line per method, a panel per size (the
    Figure-1 view of Wortsman et al.). Lines follow the seed-averaged effective loss (the
    number the LR-sensitivity metric uses); diverged runs are an x at l0; the dashed line
    is the init loss l0."""
    title = "Final validation loss vs peak learning rate"
    if runs.empty:
        return _empty_figure(title, "no runs")
    df = with_effective_loss(runs)
    palette = dict(palette or method_palette(df["method"]))
    flagged = _flagged(df)
    sizes = _sizes(df, size_order)
    fig, axes = _panels(len(sizes))
    for ax, size in zip(axes, sizes):
        d = df[df["size"] == size]
        l0 = float(d["init_loss"].mean())
        for method, m in d.groupby("method", sort=True):
            color = palette.get(method, "0.3")
            ls = "--" if method in flagged else "-"
            cells = m.groupby("lr").agg(loss=("effective_loss", "mean"),
                                        all_div=("diverged", "all")).reset_index()
            ax.plot(cells["lr"], cells["loss"], ls, color=color, label=_label(method, flagged))
            ok = cells[~cells["all_div"]]
            ax.plot(ok["lr"], ok["loss"], "o", color=color, ms=5)
            div = m[m["diverged"] | ~np.isfinite(m["final_val_loss"])]
            if len(div):
                ax.plot(div["lr"], div["init_loss"], "x", color=color, ms=9, mew=2)
        if np.isfinite(l0):
            ax.axhline(l0, color="0.35", ls="--", lw=1, label="init loss l0 (diverged runs: x)")
            finite = d["effective_loss"][np.isfinite(d["effective_loss"])]
            lo = float(finite.min()) if len(finite) else l0 * 0.5
            pad = 0.05 * max(l0 - lo, 0.1)
            ax.set_ylim(lo - pad, l0 + 2 * pad)
        ax.set_xscale("log")
        ax.set_title(_panel_title(size, df))
        ax.set_xlabel("peak learning rate (log scale)")
        ax.set_ylabel(f"final validation loss ({LOSS_UNIT})")
    fig.suptitle(title + " (lower is better; a flat curve means low LR sensitivity)")
    _figure_legend(fig, axes)
    fig.tight_layout()
    return fig


def sensitivity_vs_size(scores: pd.DataFrame, size_order: list[str],
                        n_params: Mapping[str, float] | None = None,
                        palette: Mapping[str, tuple] | None = None) -> plt.Figure:
    """LR sensitivity vs model size, a line per method. x is the parameter count on a log
    axis when n_params (size -> count) covers every size, else the sizes in order."""
    title = "LR sensitivity vs model size (lower is better)"
    if scores.empty:
        return _empty_figure(title, "no scores")
    sizes = [s for s in size_order if s in set(scores["size"])] or sorted(scores["size"].unique())
    n_params = dict(n_params or {})
    use_params = all(np.isfinite(float(n_params.get(s, np.nan))) for s in sizes)
    xpos = {s: float(n_params[s]) if use_params else i for i, s in enumerate(sizes)}
    palette = dict(palette or method_palette(scores["method"]))
    flagged = _flagged(scores)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, m in scores[scores["size"].isin(sizes)].groupby("method", sort=True):
        m = m.assign(x=m["size"].map(xpos)).sort_values("x")
        ax.plot(m["x"], m["lr_sensitivity"], "--" if method in flagged else "-", marker="o",
                color=palette.get(method, "0.3"), label=_label(method, flagged))
    ticks = [xpos[s] for s in sizes]
    if use_params:
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{s}\n{n_params[s] / 1e6:.3g}M" for s in sizes])
        ax.minorticks_off()
        ax.set_xlabel("model size (parameters, log scale)")
    else:
        ax.set_xticks(ticks, sizes)
        ax.set_xlabel("model size")
    ax.set_ylabel(f"LR sensitivity ({LOSS_UNIT})")
    ax.set_title(title)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    return fig


def attn_logit_vs_lr(runs: pd.DataFrame, size_order: list[str] | None = None,
                     palette: Mapping[str, tuple] | None = None) -> plt.Figure:
    """Final max attention logit (max over layers) vs peak LR, log-log, a panel per size.
    Attention-logit growth is the instability qk-layernorm targets; the dotted line is the
    ~1e4 level past which Wortsman et al. see divergence. Diverged runs are an x."""
    title = "Max attention logit at the end of training vs peak learning rate"
    if runs.empty or "max_attn_logit" not in runs:
        return _empty_figure(title, "no attention-logit probe recorded")
    df = with_effective_loss(runs)
    df = df[np.isfinite(df["max_attn_logit"]) & (df["max_attn_logit"] > 0)]
    if df.empty:
        return _empty_figure(title, "no finite attention logits recorded")
    palette = dict(palette or method_palette(runs["method"]))
    flagged = _flagged(df)
    sizes = _sizes(df, size_order)
    fig, axes = _panels(len(sizes))
    for ax, size in zip(axes, sizes):
        d = df[df["size"] == size]
        for method, m in d.groupby("method", sort=True):
            color = palette.get(method, "0.3")
            cells = m.groupby("lr")["max_attn_logit"].mean().reset_index()
            ax.plot(cells["lr"], cells["max_attn_logit"], "--" if method in flagged else "-",
                    marker="o", ms=4, color=color, label=_label(method, flagged))
            div = m[m["diverged"]]
            if len(div):
                ax.plot(div["lr"], div["max_attn_logit"], "x", color=color, ms=9, mew=2)
        ax.axhline(ATTN_LOGIT_DANGER, color="0.35", ls=":", lw=1.2,
                   label="~1e4: divergence level (Wortsman et al.)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(_panel_title(size, df))
        ax.set_xlabel("peak learning rate (log scale)")
        ax.set_ylabel("max attention logit (log scale)")
    fig.suptitle(title + " (x = diverged run)")
    _figure_legend(fig, axes)
    fig.tight_layout()
    return fig


def _curves(histories: Mapping[str, pd.DataFrame], column: str, methods: Mapping[str, str] | None,
            palette: Mapping[str, tuple] | None, title: str, ylabel: str,
            val_points: bool, clip_to_start: bool) -> plt.Figure:
    usable = {k: h for k, h in histories.items() if column in h and h[column].notna().any()}
    if not usable:
        return _empty_figure(title, f"no '{column}' recorded in the chosen runs")
    methods = dict(methods or {k: k for k in usable})
    palette = dict(palette or method_palette(methods.get(k, k) for k in usable))
    styles = ["-", "--", ":", "-."]
    seen: dict[str, int] = {}
    fig, ax = plt.subplots(figsize=(10, 5))
    starts, lows = [], []
    for label, h in usable.items():
        method = methods.get(label, label)
        n = seen[method] = seen.get(method, -1) + 1
        color = palette.get(method, "0.3")
        y = pd.to_numeric(h[column], errors="coerce")
        ok = np.isfinite(y)
        ax.plot(h["step"][ok], y[ok], styles[n % len(styles)], color=color, lw=1.3, label=label)
        if ok.any():
            starts.append(float(y[ok].iloc[0]))
            lows.append(float(y[ok].min()))
        if val_points and "val_loss" in h:
            v = h[np.isfinite(pd.to_numeric(h["val_loss"], errors="coerce"))]
            if len(v):
                ax.plot(v["step"], v["val_loss"], "o", color=color, ms=5, mec="white")
                lows.append(float(v["val_loss"].min()))
    if clip_to_start and starts:
        # A diverging run shoots off to huge losses; keep the interesting range visible.
        top, bottom = max(starts), min(lows)
        pad = 0.05 * max(top - bottom, 0.1)
        ax.set_ylim(bottom - pad, top + 3 * pad)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    return fig


def loss_curves(histories: Mapping[str, pd.DataFrame], methods: Mapping[str, str] | None = None,
                palette: Mapping[str, tuple] | None = None) -> plt.Figure:
    """Train loss vs step (lines) with validation loss at eval steps (dots), one line per
    chosen run. histories: label -> history DataFrame; methods: label -> method, to colour
    runs by method (a method's 2nd run is dashed)."""
    return _curves(histories, "loss", methods, palette,
                   "Training loss vs step (dots: validation loss)",
                   f"loss ({LOSS_UNIT})", val_points=True, clip_to_start=True)


def log_z_curves(histories: Mapping[str, pd.DataFrame], methods: Mapping[str, str] | None = None,
                 palette: Mapping[str, tuple] | None = None) -> plt.Figure:
    """Mean log Z (logsumexp of the output logits) vs step for the chosen runs: its drift
    away from 0 is the output-logit divergence that z-loss targets."""
    return _curves(histories, "log_z_mean", methods, palette,
                   "Mean log Z of the output logits vs step (output-logit divergence)",
                   "mean log Z (nats)", val_points=False, clip_to_start=False)
