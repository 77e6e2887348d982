"""The statistics claims are tested on, with point estimates and shared bootstrap replicates.

A claim names a statistic (claims/schema.yaml); ``values`` returns it for every method at once
as (point [method, size], replicates [B, method, size]), or, for statistics defined across
sizes, with a single "size" column. Every replicate uses the same resamples as the scores
(analysis/bootstrap.py), so a difference between two methods is a paired difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import statistics as st
from analysis.bootstrap import Grid, Resamples, grid_of, original, resample
from analysis.probe_families import family_of
from analysis.runs import with_effective_loss
from analysis.settings import Settings

ACROSS = "across sizes"
LABELS = {  # statistic -> (words, unit)
    "lr_sensitivity": ("LR sensitivity", "nats"),
    "best_loss": ("best loss", "nats"),
    "best_lr": ("best LR", "decades"),
    "max_stable_lr": ("largest stable LR", "LR grid steps"),
    "best_lr_drift": ("best-LR drift across widths", "LR doublings per width doubling"),
    "probe_peak": ("peak of {probe}", "decades"),
    "log_z_divergence": ("log Z outside [0, ln V] late in training", "nats"),
}


# Statistics read on the LR grid: they compare methods at the same peak LR, which a method that
# changes what the LR means (its CHANGES_LR_MEANING flag) does not share with the others.
LR_STATISTICS = frozenset({"lr_sensitivity", "best_lr", "max_stable_lr", "best_lr_drift"})


class NotTestable(Exception):
    """The grid lacks what a claim needs; the message says what, in a few words."""


@dataclass(frozen=True)
class Context:
    """Everything a claim test reads: the runs (effective losses filled), settings, grid,
    resamples, and the probe families the runs declare."""
    runs: pd.DataFrame
    settings: Settings
    grid: Grid
    boot: Resamples
    families: dict

    @classmethod
    def build(cls, runs: pd.DataFrame, settings: Settings, families: dict | None = None) -> "Context":
        df = with_effective_loss(runs, settings.l0) if not runs.empty else runs
        grid = grid_of(df, settings.sizes)
        return cls(runs=df, settings=settings, grid=grid, families=dict(families or {}),
                   boot=resample(grid, settings.resamples, settings.seed, settings.confidence))

    def per_size(self, column: str) -> np.ndarray:
        """size -> the median of a runs column, as an array over the grid's sizes."""
        med = self.runs.groupby("size")[column].median()
        return np.array([float(med.get(s, np.nan)) for s in self.grid.sizes])

    def cells(self, column: str, transform=None) -> tuple[np.ndarray, np.ndarray]:
        """Seed-mean cells of a runs column: point [M, S, L] and replicates [B, M, S, L]."""
        cube = self.grid.cube(self.runs, column)
        if transform is not None:
            cube = transform(cube)
        return original(self.grid).cell_means(cube)[0], self.boot.cell_means(cube)

    def stable_cells(self) -> tuple[np.ndarray, np.ndarray]:
        """Cells of 1.0 for a run that neither diverged nor stayed within the never-learned
        margin of l0, else 0.0 (NaN for a missing run)."""
        r = self.runs
        ok = (~r["diverged"].astype(bool)) & (r["effective_loss"] < self.settings.l0 - self.settings.never_learned_margin)
        cube = self.grid.cube(r.assign(_stable=ok.astype(float)), "_stable")
        return original(self.grid).cell_means(cube)[0], self.boot.cell_means(cube)


def probe_column(ctx: Context, probe: str, hint: str = "") -> str:
    """The runs column peak/<family> of a claim's probe; NotTestable when no run recorded it."""
    fid = family_of(ctx.families, probe)
    col = f"peak/{fid}" if fid else None
    if col is None or col not in ctx.runs or ctx.runs[col].isna().all():
        raise NotTestable(f"needs the {probe} probe" + (f" ({hint})" if hint else ""))
    return col


def values(ctx: Context, statistic: str, probe: str | None = None, hint: str = "",
           pair: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray, bool]:
    """(point [M, S], replicates [B, M, S], across_sizes) of a statistic. Run-column statistics
    average over the LRs at which both methods of ``pair`` have a value in every cell."""
    l0, lrs = ctx.settings.l0, ctx.grid.lrs
    if statistic in ("lr_sensitivity", "best_loss", "best_lr", "best_lr_drift"):
        pt, bs = ctx.cells("effective_loss")
        if statistic in ("lr_sensitivity", "best_loss"):
            fn = getattr(st, statistic)
            return fn(pt), fn(bs), False
        lr_pt, lr_bs = np.log2(st.best_lr(pt, lrs, l0)), np.log2(st.best_lr(bs, lrs, l0))
        if statistic == "best_lr":
            return lr_pt / np.log2(10), lr_bs / np.log2(10), False
        widths = np.log2(ctx.per_size("d_model"))
        drift = (lambda y: np.abs(st.slope(y, widths))[..., None])
        return drift(lr_pt), drift(lr_bs), True
    if statistic == "max_stable_lr":
        pt, bs = ctx.stable_cells()
        return st.max_stable_index(pt), st.max_stable_index(bs), False
    if statistic == "probe_peak":
        column = probe_column(ctx, probe or "", hint)
        pt, bs = ctx.cells(column, transform=lambda c: np.log10(np.where(c > 0, c, np.nan)))
    elif statistic in ctx.runs and pd.api.types.is_numeric_dtype(ctx.runs[statistic]):
        pt, bs = ctx.cells(statistic)
        if np.isnan(pt).all():
            raise NotTestable(f"needs {statistic} in the runs (no run recorded it)")
    else:
        raise NotTestable(f"needs {statistic} in the runs (unknown statistic)")
    mask = np.isfinite(pt[list(pair)]).all(axis=0) if pair else np.isfinite(pt).any(axis=0)
    return st.grid_mean(pt, mask), st.grid_mean(bs, mask), False


def label(statistic: str, probe: str | None = None) -> tuple[str, str]:
    words, unit = LABELS.get(statistic, (statistic.replace("_", " "), ""))
    return words.format(probe=probe or "probe"), unit
