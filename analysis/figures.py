"""The report's result figures, drawn with seaborn's own faceting (relplot / FacetGrid).

Conventions shared by every figure, so they read as one set:
- a panel per model size (smallest first), a line per method, one colour per method from
  ``method_palette`` everywhere; methods that change what "LR" means are dashed;
- bands and error bars are intervals over seeds at the benchmark's confidence (95 % by
  default): seaborn's bootstrap of the seed mean for curves (seeded with the benchmark's
  bootstrap settings), the shared paired bootstrap of analysis/bootstrap.py for scores (read
  from scores.csv);
- losses are effective losses (nats/token) clipped at the benchmark's one l0, drawn dashed;
- a diverged run is an x (at l0 where the y axis is a loss) in every panel that shows LRs, so
  it never silently drops out of a panel;
- nothing is drawn outside the range of the data it comes from.
Every function returns a matplotlib Figure (an empty one that says why when there is nothing
to draw), saved as PNG and SVG by ``save_figure``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.transforms import ScaledTranslation  # noqa: E402

from stabench.io import atomic_path  # noqa: E402
from analysis.catalog import EMPTY_KEY  # noqa: E402

LOSS_UNIT = "nats/token"
HEIGHT, ASPECT = 3.4, 1.15  # one facet, inches

EMPTY_ATTR = "empty_reason"  # set on a Figure that has nothing to draw: the sentence it says instead
DIVERGED = {"marker": "x", "s": 60, "linewidths": 1.8, "zorder": 5, "label": "_diverged"}  # a diverged run, everywhere

sns.set_theme(style="whitegrid", context="notebook")
matplotlib.rcParams["svg.hashsalt"] = "stabench"  # the same figure gives the same SVG bytes


def method_palette(methods: Iterable[str]) -> dict[str, tuple]:
    """Stable method -> colour map: sorted names onto tab10 (husl beyond 10 methods)."""
    names = sorted(set(map(str, methods)))
    colors = sns.color_palette("tab10" if len(names) <= 10 else "husl", max(len(names), 1))
    return dict(zip(names, colors))


def save_figure(fig: plt.Figure, png: Path | str, svg: Path | str, dpi: int = 110) -> Path:
    """Save fig as PNG (embedded in the report) and SVG (scalable, for papers and slides),
    atomically, and close it (figures hold memory until closed). An empty figure's sentence
    goes into the PNG's text under EMPTY_KEY, so the report can say it instead of showing a
    picture of nothing."""
    try:
        reason = getattr(fig, EMPTY_ATTR, None)
        with atomic_path(png) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight",
                        metadata={EMPTY_KEY: reason} if reason else None)
        with atomic_path(svg) as tmp:
            fig.savefig(tmp, format="svg", bbox_inches="tight", metadata={"Date": None})
        return Path(png)
    finally:
        plt.close(fig)


def empty_figure(title: str, message: str) -> plt.Figure:
    """A figure that says why there is nothing to draw (Snakemake still needs the file)."""
    fig, ax = plt.subplots(figsize=(6, 2.2))
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4", wrap=True)
    setattr(fig, EMPTY_ATTR, message)
    return fig


def has_data(ax: plt.Axes) -> bool:
    """Whether anything was plotted in data coordinates: a reference line alone (l0, a
    threshold) only sets y, so a panel holding nothing else counts as empty."""
    return bool(np.isfinite(ax.dataLim.get_points()).all())


def blank_empty_panels(fig: plt.Figure, message: str = "no data for this panel") -> None:
    """Put a sentence in every visible panel that has no data (empty axes read as a broken
    plot); a twin axis shares its panel. When no panel has data, the figure is marked empty."""
    panels: dict[tuple, list[plt.Axes]] = {}
    for ax in fig.axes:
        if ax.axison:
            panels.setdefault(tuple(np.round(ax.get_position().bounds, 4)), []).append(ax)
    empty = [axes for axes in panels.values() if not any(map(has_data, axes))]
    for first, *twins in empty:
        placeholder(first, message)
        for twin in twins:
            twin.set_axis_off()
    if panels and len(empty) == len(panels):
        setattr(fig, EMPTY_ATTR, message)


def mark_diverged(ax: plt.Axes, x, y, methods, palette: Mapping, on_top: bool = False) -> None:
    """An x per diverged run at (x, y), in its method's colour and nudged sideways by a few
    points per method, so methods that diverged at the same place all show. ``on_top``: y is
    a fraction of the panel's height (the value itself is no result), not data."""
    x, y, methods = np.asarray(x, float), np.asarray(y, float), np.asarray(methods, object)
    names = sorted(palette)
    base = ax.get_xaxis_transform() if on_top else ax.transData
    for i, m in enumerate(names):
        sel = methods == m
        if sel.any():
            nudge = ScaledTranslation((i - (len(names) - 1) / 2) * 4 / 72, 0, ax.figure.dpi_scale_trans)
            ax.scatter(x[sel], y[sel], color=palette[m], transform=base + nudge, clip_on=not on_top, **DIVERGED)
            if not on_top:  # a translated transform leaves the data limits alone: the x is data
                ax.update_datalim(np.column_stack([x[sel], y[sel]]))
                ax.autoscale_view()


def diverged_legend(fig: plt.Figure, where: str) -> None:
    """One legend entry for the x of a diverged run, so the marker reads without the caption."""
    fig.legend(handles=[plt.Line2D([], [], color="0.3", ls="", marker=DIVERGED["marker"], markersize=8,
                                   markeredgewidth=DIVERGED["linewidths"], label=f"diverged run ({where})")],
               loc="upper center", bbox_to_anchor=(0.5, 0.0), frameon=False, fontsize=10)


def placeholder(ax: plt.Axes, message: str) -> None:
    """A sentence in place of one panel's plot; the panel keeps its title, and its shared axes
    (scales, ticks) are left alone for the other panels."""
    for artist in list(ax.lines) + list(ax.collections):
        artist.remove()
    ax.set_axis_off()
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4", wrap=True,
            fontsize=9)


def one_lr_message(runs: pd.DataFrame) -> str | None:
    """Why a figure over LR has nothing to show: the grid has a single peak LR (None otherwise)."""
    lrs = sorted(set(runs["lr"].dropna()))
    if len(lrs) == 1:
        return f"one peak LR in the grid ({lrs[0]:g}): a curve over LR needs at least two (the runs table has the values)"
    return None


def dashes(runs: pd.DataFrame) -> dict[str, tuple | str]:
    """Method -> line style: dashed for methods that change what LR means."""
    flagged = set(runs.loc[runs["changes_lr_meaning"].astype(bool), "method"]) if "changes_lr_meaning" in runs else set()
    return {m: (4, 2) if m in flagged else "" for m in sorted(set(runs["method"]))}


def seed_band(resamples: int, seed: int, confidence: float) -> dict:
    """seaborn's interval arguments: the bootstrap CI of the seed mean at the benchmark's
    confidence, with its resample count and seed."""
    return {"errorbar": ("ci", 100 * confidence), "n_boot": resamples, "seed": seed}


def human(n: float) -> str:
    """A parameter count in a few characters: 11.3k, 41.1M, 1.2B."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def size_ticks(axes: Iterable[plt.Axes], params: Mapping[str, float]) -> None:
    """On a log axis of parameters, a tick per model size ("t32" over "24.8k") and no others:
    matplotlib's minor labels within one decade (3x10^3, 4x10^3, ...) run into each other."""
    ticks = sorted((n, s) for s, n in params.items() if np.isfinite(n))
    for ax in axes:
        ax.set_xticks([n for n, _ in ticks], [f"{s}\n{human(n)}" for n, s in ticks])
        ax.minorticks_off()


def _size_titles(grid: sns.FacetGrid, params: Mapping[str, float]) -> None:
    for key, ax in grid.axes_dict.items():
        size = key[-1] if isinstance(key, tuple) else key
        n = params.get(size, np.nan)
        ax.set_title(f"{size} ({human(n)} non-embedding params)" if np.isfinite(n) else str(size))


def loss_vs_lr(runs: pd.DataFrame, sizes: list[str], palette: Mapping, params: Mapping[str, float],
               l0: float, band: dict) -> plt.Figure:
    """Effective final loss against peak LR, a panel per size, a line per method, a band
    over seeds; an x at l0 marks each diverged run, the dashed line is l0."""
    if runs.empty:
        return empty_figure("Final validation loss vs peak LR", "no runs")
    if (why := one_lr_message(runs)) is not None:
        return empty_figure("Final validation loss vs peak LR", why)
    df = runs.assign(size=pd.Categorical(runs["size"], sizes))
    g = sns.relplot(data=df, x="lr", y="effective_loss", hue="method", style="method", col="size",
                    col_order=sizes, kind="line", marker="o", palette=dict(palette), dashes=dashes(df),
                    height=HEIGHT, aspect=ASPECT, facet_kws={"sharey": True}, **band)
    div = df[df["diverged"].astype(bool)]
    for size, ax in g.axes_dict.items():
        d = div[div["size"] == size]
        mark_diverged(ax, d["lr"], np.full(len(d), l0), d["method"], palette)
    if not div.empty:
        diverged_legend(g.figure, "at l0")
    g.refline(y=l0, color="0.35", ls="--", lw=1)
    g.set(xscale="log")
    g.set_axis_labels("peak learning rate", f"final validation loss ({LOSS_UNIT})")
    _size_titles(g, params)
    return g.figure


def attn_logit_vs_lr(runs: pd.DataFrame, sizes: list[str], palette: Mapping, params: Mapping[str, float],
                     band: dict, danger: float) -> plt.Figure:
    """Max attention logit at the end of training against peak LR, log-log, a panel per size."""
    df = runs[np.isfinite(runs["max_attn_logit"]) & (runs["max_attn_logit"] > 0)] if "max_attn_logit" in runs else runs.iloc[0:0]
    if df.empty:
        return empty_figure("Max attention logit vs peak LR", "no attention-logit probe recorded")
    if (why := one_lr_message(df)) is not None:
        return empty_figure("Max attention logit vs peak LR", why)
    df = df.assign(size=pd.Categorical(df["size"], sizes))
    g = sns.relplot(data=df, x="lr", y="max_attn_logit", hue="method", style="method", col="size",
                    col_order=[s for s in sizes if s in set(df["size"])], kind="line", marker="o",
                    palette=dict(palette), dashes=dashes(df), height=HEIGHT, aspect=ASPECT, **band)
    div = runs[runs["diverged"].astype(bool)]
    for size, ax in g.axes_dict.items():  # at the top: a diverged run's last logit is not a result
        d = div[div["size"] == size]
        mark_diverged(ax, d["lr"], np.full(len(d), 0.96), d["method"], palette, on_top=True)
    if not div.empty:
        diverged_legend(g.figure, "at the top, at its LR")
    g.refline(y=danger, color="0.35", ls=":", lw=1.2)
    g.set(xscale="log", yscale="log")
    g.set_axis_labels("peak learning rate", "max attention logit")
    _size_titles(g, params)
    return g.figure


STAT_TITLES = {"lr_sensitivity": f"LR sensitivity ({LOSS_UNIT})", "best_loss": f"best loss ({LOSS_UNIT})",
               "best_lr": "best peak LR"}


def scores_vs_size(scores: pd.DataFrame, palette: Mapping, params: Mapping[str, float]) -> plt.Figure:
    """LR sensitivity, best loss and best LR against non-embedding parameters, a line per method
    with the bootstrap interval of scores.csv as error bars. A panel with nothing to show says
    why instead: LR sensitivity from a single LR, best LR when no run learned."""
    if scores.empty or not params:
        return empty_figure("Scores vs model size", "no scores")
    rows = []
    for stat in STAT_TITLES:
        rows.append(scores.assign(statistic=STAT_TITLES[stat], value=scores[stat], lo=scores[f"{stat}_lo"],
                                  hi=scores[f"{stat}_hi"], params=scores["size"].map(params)))
    long = pd.concat(rows, ignore_index=True).dropna(subset=["params"])
    g = sns.FacetGrid(long, col="statistic", col_order=list(STAT_TITLES.values()), hue="method",
                      hue_order=sorted(set(long["method"])), palette=dict(palette), sharey=False,
                      height=HEIGHT, aspect=ASPECT)

    def with_interval(data, color=None, label=None, **_):
        d = data.sort_values("params")
        err = np.vstack([d["value"] - d["lo"], d["hi"] - d["value"]])
        plt.errorbar(d["params"], d["value"], yerr=None if np.isnan(err).all() else np.abs(err),
                     color=color, label=label, marker="o", capsize=3, lw=1.5)

    g.map_dataframe(with_interval)
    g.set(xscale="log")
    size_ticks(g.axes.flat, {s: n for s, n in params.items() if s in set(scores["size"])})
    best_lr = g.axes_dict[STAT_TITLES["best_lr"]]
    if (scores["best_lr"] > 0).any():
        best_lr.set_yscale("log")
    else:
        placeholder(best_lr, "no run learned at any LR:\nthere is no best LR")
    if "n_lrs" in scores and (scores["n_lrs"].fillna(0) < 2).all():
        placeholder(g.axes_dict[STAT_TITLES["lr_sensitivity"]], "one peak LR per size:\nLR sensitivity needs at least two")
    g.set_titles("{col_name}")
    g.set_axis_labels("non-embedding parameters", "")
    g.add_legend()
    return g.figure


def training_curves(long: pd.DataFrame, column: str, ylabel: str, palette: Mapping, band: dict,
                    clip: float | None = None, mark_at: float | None = None) -> plt.Figure:
    """A history column over steps: a row per size, a column per chosen LR ("best LR" and
    "highest LR" of each method), a line per method with a band over seeds. A diverged run
    (``diverged_at``: its step) is an x at that step, at ``mark_at`` (l0 for a loss) or else
    where its curve ends. Each panel has its own y range, cut at ``clip`` (a diverging run's
    loss shoots off and would flatten the rest)."""
    d = long.dropna(subset=[column]) if column in long else long.iloc[0:0]
    if d.empty:
        return empty_figure(ylabel, f"no '{column}' recorded in the chosen runs")
    cols = [c for c in ("best LR", "highest LR") if c in set(long["which"])]
    g = sns.relplot(data=d, x="step", y=column, hue="method", row="size", col="which", kind="line",
                    palette=dict(palette), row_order=list(dict.fromkeys(long["size"])), col_order=cols,
                    height=HEIGHT * 0.85, aspect=ASPECT * 1.3, facet_kws={"sharey": False}, marker="o",
                    markersize=3, markeredgewidth=0, **band)
    marks = diverged_marks(long, column, mark_at)
    for (size, which), ax in g.axes_dict.items():
        m = marks[(marks["size"] == size) & (marks["which"] == which)]
        mark_diverged(ax, m["step"], m["y"], m["method"], palette)
        if clip is not None:
            v = pd.concat([d.loc[(d["size"] == size) & (d["which"] == which), column], m["y"]])
            if not v.empty:
                lo = float(v.min())
                hi = float(v.max()) if lo >= clip else min(float(v.max()), clip)  # all above: show them
                pad = 0.05 * max(hi - lo, 0.1)
                ax.set_ylim(lo - pad, hi + pad)
    if not marks.empty:
        diverged_legend(g.figure, "at l0, at the step it diverged" if mark_at is not None else "where its curve ends")
    g.set_titles("{row_name}, {col_name} of each method")
    g.set_axis_labels("training step", wrap_label(ylabel))
    return g.figure


def diverged_marks(long: pd.DataFrame, column: str, at: float | None) -> pd.DataFrame:
    """One row per diverged run of the curves (method, size, which, step, y): its divergence
    step, and y = ``at``, or the last recorded value of ``column`` when ``at`` is None."""
    if "diverged_at" not in long or column not in long:
        return pd.DataFrame(columns=["method", "size", "which", "step", "y"])
    rows = []
    for (method, size, which, _), r in long[long["diverged_at"].notna()].groupby(["method", "size", "which", "seed"]):
        v = r.dropna(subset=[column])
        y = at if at is not None else (float(v[column].iloc[-1]) if not v.empty else np.nan)
        rows.append({"method": method, "size": size, "which": which, "step": float(r["diverged_at"].iloc[0]), "y": y})
    return pd.DataFrame(rows, columns=["method", "size", "which", "step", "y"]).dropna(subset=["y"])


def wrap_label(text: str, width: int = 22) -> str:
    """An axis label on lines of at most ``width`` characters: a long y label on one line runs
    into the label of the row below."""
    return textwrap.fill(text, width)
