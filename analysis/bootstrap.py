"""The seeded, paired bootstrap over seeds behind every interval in the report.

The runs of a benchmark form a grid: method x size x LR x seed. One resample draws, for every
(size, LR) cell, the seed positions to use, with replacement. The draw depends only on the
grid's shape and the benchmark's bootstrap seed, never on a method, so every method (and
every statistic, in every step of the workflow) sees the same resamples. Seeds share their
batches across methods, so this pairing is what makes a difference between two methods
tighter than either method's own interval.

Intervals are percentile intervals of the replicates. With one seed every resample is the
original grid: there is no uncertainty estimate, and intervals are NaN.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd


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
    """Seed indices [B, size, LR, k] shared by every method; ``uncertain`` is False with one seed."""
    indices: np.ndarray
    confidence: float

    @property
    def uncertain(self) -> bool:
        return self.indices.shape[-1] >= 2

    def cell_means(self, cube: np.ndarray) -> np.ndarray:
        """Resampled seed means of a cube [M, S, L, K] -> [B, M, S, L]."""
        s = np.arange(cube.shape[1])[None, :, None, None]
        lr = np.arange(cube.shape[2])[None, None, :, None]
        picked = cube[:, s, lr, self.indices]  # [M, B, S, L, K]
        return np.moveaxis(nanmean(picked, axis=-1), 0, 1)

    def interval(self, replicates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Percentile interval over axis 0 of replicates; NaN without uncertainty (one seed)."""
        if not self.uncertain:
            shape = replicates.shape[1:]
            return np.full(shape, np.nan), np.full(shape, np.nan)
        return percentile_interval(replicates, self.confidence)


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


def resample(grid: Grid, resamples: int, seed: int, confidence: float = 0.95) -> Resamples:
    """Draw the shared seed indices: ``resamples`` draws per (size, LR) cell, seeded."""
    k = max(len(grid.seeds), 1)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, k, size=(resamples, len(grid.sizes), len(grid.lrs), k))
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
