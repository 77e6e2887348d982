"""The seeded cluster bootstrap over seeds, and the interval, behind every interval in the report.

Design. The runs of a benchmark form a grid: method x size x LR x seed. A seed is one unit of
the experiment: it fixes the initial weights and the batch order, and it is shared by every LR
of a method, by every method and by every size, so the runs of one seed are correlated across
all those cells (a seed with easy batches is easy at every LR). One resample draws ONE list of
seed indices (k draws with replacement from the k seeds) and applies it to every (size, LR)
cell of every method: a cluster bootstrap with seeds as the clusters. Drawing the seeds of
each LR cell independently (``resample(..., cluster=False)``, kept only to show the difference)
treats correlated cells as independent information, so a statistic averaged over LRs (LR
sensitivity, a probe's mean over the grid) got an interval up to sqrt(number of LRs) too
narrow. The draw depends only on the grid's shape and the benchmark's bootstrap seed, never on
a method, so every method and every statistic sees the same resamples and a difference between
two methods is paired: a seed effect shared by both cancels.

Interval. ``Resamples.interval`` is a t-interval with a cluster-bootstrap standard error:

    estimate +- t(k - 1, 1 - alpha/2) * se,    se = sd(replicates) * sqrt(k / (k - 1)),

k the number of seeds. For a mean over seeds this is exactly the classical t-interval (the
bootstrap variance of a mean of k clusters is (k - 1)/k times s^2/k; the factor undoes that);
for the nonlinear statistics (a minimum over LRs, a slope over sizes) it carries the same
k - 1 degrees of freedom. Not a percentile interval, and not BCa (``scipy.stats.bootstrap``):
both take their endpoints from quantiles of the replicates, and a statistic of k resampled
seeds never leaves the range of what those seeds produce. With 3 seeds there are 10 distinct
resamples, the range of three normal draws is about 1.7 sd on average, and a 95 % interval
for their mean needs t(2) = 4.30 standard errors, +-2.48 sd: every quantile-based interval,
BCa included, is bounded by the data and too narrow at 3 seeds (BCa's jackknife acceleration
from 3 points is itself unstable). The t-interval states its assumption (per-seed values
roughly normal) and widens as seeds get few. With one seed there is no estimate of the spread
and intervals are NaN. How many seeds a verdict at one size needs: analysis/claim_checks.py.

``Resamples.percentile`` keeps the percentile interval for values that live on a grid (the best
LR is one of the benchmark's LRs; a symmetric interval could leave the grid or go negative): it
says which LRs the resamples chose, and no verdict is drawn from it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats


@dataclass(frozen=True)
class Grid:
    """The axes of the runs table: methods (sorted), sizes (smallest first), LRs, seeds."""
    methods: tuple[str, ...]
    sizes: tuple[str, ...]
    lrs: tuple[float, ...]
    seeds: tuple[int, ...]

    def cube(self, runs: pd.DataFrame, column: str) -> np.ndarray:
        """runs[column] as an array [method, size, LR, seed], NaN where a run is missing."""
        out = np.full((len(self.methods), len(self.sizes), len(self.lrs), len(self.seeds)), np.nan)
        if runs.empty or column not in runs:
            return out
        at = [{v: i for i, v in enumerate(axis)} for axis in (self.methods, self.sizes, self.lrs, self.seeds)]
        for m, s, lr, seed, v in zip(runs["method"], runs["size"], runs["lr"], runs["seed"], runs[column]):
            key = (at[0].get(str(m)), at[1].get(str(s)), at[2].get(float(lr)), at[3].get(int(seed)))
            if None not in key:
                out[key] = float(v)
        return out


def grid_of(runs: pd.DataFrame, sizes: list[str] | tuple[str, ...]) -> Grid:
    """The grid of a runs table, sizes in the given order (sizes without runs are dropped)."""
    present = set(runs["size"].astype(str)) if not runs.empty else set()
    return Grid(methods=tuple(sorted(set(runs["method"].astype(str)))) if not runs.empty else (),
                sizes=tuple(s for s in sizes if s in present),
                lrs=tuple(sorted({float(x) for x in runs["lr"]})) if not runs.empty else (),
                seeds=tuple(sorted({int(x) for x in runs["seed"]})) if not runs.empty else ())


@dataclass(frozen=True)
class Resamples:
    """Seed indices [B, size, LR, k] shared by every method (the same draw in every cell for
    the cluster bootstrap); ``uncertain`` is False with one seed."""
    indices: np.ndarray
    confidence: float

    @property
    def seeds(self) -> int:
        return int(self.indices.shape[-1])

    @property
    def uncertain(self) -> bool:
        return self.seeds >= 2

    def cell_means(self, cube: np.ndarray) -> np.ndarray:
        """Resampled seed means of a cube [M, S, L, K] -> [B, M, S, L]."""
        s = np.arange(cube.shape[1])[None, :, None, None]
        lr = np.arange(cube.shape[2])[None, None, :, None]
        picked = cube[:, s, lr, self.indices]  # [M, B, S, L, K]
        return np.moveaxis(nanmean(picked, axis=-1), 0, 1)

    def interval(self, replicates: np.ndarray, point: np.ndarray | float | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """t-interval (module doc) around ``point`` (default: the replicates' mean) over axis 0
        of replicates; NaN without uncertainty (one seed)."""
        if not self.uncertain:
            shape = replicates.shape[1:]
            return np.full(shape, np.nan), np.full(shape, np.nan)
        return t_interval(replicates, point, self.confidence, self.seeds)

    def percentile(self, replicates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Percentile interval over axis 0 (for values on a grid, e.g. the best LR)."""
        if not self.uncertain:
            shape = replicates.shape[1:]
            return np.full(shape, np.nan), np.full(shape, np.nan)
        return percentile_interval(replicates, self.confidence)


def t_interval(replicates: np.ndarray, point, confidence: float, clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """estimate +- t(clusters - 1) * cluster-bootstrap se, over axis 0 of replicates; NaN where
    fewer than half the replicates are defined or the estimate is not."""
    shape = replicates.shape[1:]
    if replicates.shape[0] < 2 or clusters < 2:
        return np.full(shape, np.nan), np.full(shape, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        center = np.nanmean(replicates, axis=0) if point is None else np.broadcast_to(
            np.asarray(point, dtype=float), shape)
        se = np.nanstd(replicates, axis=0) * math.sqrt(clusters / (clusters - 1))
    half = stats.t.ppf(1 - (1 - confidence) / 2, clusters - 1) * se
    enough = (np.isfinite(replicates).mean(axis=0) >= 0.5) & np.isfinite(center)
    return np.where(enough, center - half, np.nan), np.where(enough, center + half, np.nan)


def percentile_interval(replicates: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over axis 0 (values on the replicates' own grid, e.g. LRs); NaN where
    fewer than half the replicates are defined (a statistic that often does not exist)."""
    shape = replicates.shape[1:]
    if replicates.shape[0] == 0:
        return np.full(shape, np.nan), np.full(shape, np.nan)
    alpha = (1 - confidence) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanquantile(replicates, [alpha, 1 - alpha], axis=0, method="inverted_cdf")
    enough = np.isfinite(replicates).mean(axis=0) >= 0.5
    return np.where(enough, lo, np.nan), np.where(enough, hi, np.nan)


def resample(grid: Grid, resamples: int, seed: int, confidence: float = 0.95, cluster: bool = True) -> Resamples:
    """Draw the shared seed indices, seeded: one draw of k seed indices per resample, used in
    every (size, LR) cell (cluster=True, the design); cluster=False draws each cell on its own
    (the old, too narrow scheme, kept for comparison in the tests)."""
    k = max(len(grid.seeds), 1)
    rng = np.random.default_rng(seed)
    shape = (resamples, len(grid.sizes), len(grid.lrs), k)
    if cluster:
        idx = np.ascontiguousarray(np.broadcast_to(rng.integers(0, k, size=(resamples, 1, 1, k)), shape))
    else:
        idx = rng.integers(0, k, size=shape)
    return Resamples(indices=idx, confidence=confidence)


def original(grid: Grid) -> Resamples:
    """The identity 'resample' (every seed once): the point estimates use it."""
    k = max(len(grid.seeds), 1)
    idx = np.broadcast_to(np.arange(k), (1, len(grid.sizes), len(grid.lrs), k))
    return Resamples(indices=np.ascontiguousarray(idx), confidence=0.0)


def nanmean(a: np.ndarray, axis: int) -> np.ndarray:
    """np.nanmean without the all-NaN warning (an all-NaN slice is NaN, as it should be)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=axis)
