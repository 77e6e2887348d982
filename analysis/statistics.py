"""The statistics a method is scored and compared by, on seed-averaged LR cells.

Every function takes cell means with the LR grid as the LAST axis (any leading axes: bootstrap
replicate, method, size) and reduces it, so one definition serves the point estimate, every
bootstrap replicate and every method at once. Wortsman et al. (2023, section 2.2):

    LR sensitivity = mean over the LR grid of (min(l, l0) - l*),   l* = the best cell

on effective losses (analysis/runs.effective_loss), seed-averaged per cell first so that l* is
the best seed-averaged cell and every LR weighs the same.
"""

from __future__ import annotations

import warnings

import numpy as np

from stabench.selection import best_index


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args, **kwargs)


def lr_sensitivity(cells: np.ndarray) -> np.ndarray:
    """Mean over LRs of the loss above the best cell (missing cells skipped)."""
    best = _quiet(np.nanmin, cells, axis=-1, keepdims=True)
    return _quiet(np.nanmean, cells - best, axis=-1)


def best_loss(cells: np.ndarray) -> np.ndarray:
    return _quiet(np.nanmin, cells, axis=-1)


def best_lr(cells: np.ndarray, lrs, l0: float) -> np.ndarray:
    """The LR of the best cell (ties: the smallest LR); NaN where nothing beat l0 (no best LR
    exists when every LR ended at the loss of the uniform predictor or worse). The rule is
    stabench.selection.best_index, the one evaluation uses to pick the run it evaluates."""
    lrs = np.asarray(lrs, dtype=float)
    i = best_index(cells, l0)
    if not len(lrs):
        return np.full(i.shape, np.nan)
    return np.where(i >= 0, lrs[np.maximum(i, 0)], np.nan)


def max_stable_index(stable: np.ndarray) -> np.ndarray:
    """Index of the largest LR whose cell trained stably in every (resampled) seed; -1 when no
    LR did; NaN when the method has no runs. ``stable`` holds per-cell stable fractions."""
    ok = stable >= 1.0 - 1e-12
    n = stable.shape[-1]
    last = np.where(ok.any(axis=-1), n - 1 - np.argmax(ok[..., ::-1], axis=-1), -1).astype(float)
    return np.where(np.isnan(stable).all(axis=-1), np.nan, last)


def grid_mean(cells: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Mean over the LR cells (only where ``mask``, a boolean over LRs, is True)."""
    if mask is not None:
        cells = np.where(mask, cells, np.nan)
    return _quiet(np.nanmean, cells, axis=-1)


def slope(y: np.ndarray, x) -> np.ndarray:
    """Least-squares slope of y against x over the LAST axis; NaN where any y is missing."""
    x = np.asarray(x, dtype=float)
    xc = x - x.mean()
    denom = float((xc ** 2).sum())
    if len(x) < 2 or denom == 0:
        return np.full(y.shape[:-1], np.nan)
    return (y - y.mean(axis=-1, keepdims=True)) @ xc / denom


def mean_over_sizes(values: np.ndarray) -> np.ndarray:
    """Mean over the LAST axis (sizes), over the sizes a method has."""
    return _quiet(np.nanmean, values, axis=-1)
