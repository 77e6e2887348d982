"""The two rules every part of stabench applies to a finished grid of runs, defined once:
which run diverged, and which LR (and run) is a method's best. Both against the benchmark's
ONE l0 (the loss of the uniform predictor, ln(vocab_size), unless the benchmark sets
``analysis.l0``), never a run's own initial loss: initial losses differ by method, and a
per-run threshold would judge methods by different standards (docs/metrics.md).

Used by the analysis (analysis/runs.py, analysis/statistics.py: scores and the leaderboard's
best LR), by evaluation (stabench/evaluation/runner.py: the run it evaluates) and meant for
the training-time divergence check. Imports nothing of stabench or analysis (numpy only), so
any layer can import it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np


def _float(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def uniform_l0(vocab_size) -> float:
    """ln(vocab_size): the benchmark's l0 unless it sets analysis.l0 (NaN when unknown)."""
    v = _float(vocab_size)
    return math.log(v) if math.isfinite(v) and v > 0 else math.nan


def is_diverged(loss, l0: float, factor: float) -> bool:
    """A training loss that is not finite, or above factor x the benchmark's l0."""
    x = _float(loss)
    return not math.isfinite(x) or x > factor * float(l0)


def effective_loss(final_val_loss, diverged, l0) -> float:
    """min(l, l0), with a diverged or non-finite run counting as l0 (docs/metrics.md); without an l0
    (NaN) a diverged run is NaN."""
    final, l0 = _float(final_val_loss), _float(l0)
    bad = bool(diverged) or not math.isfinite(final)
    if not math.isfinite(l0):
        return math.nan if bad else final
    return l0 if bad else min(final, l0)


def best_index(cells: np.ndarray, l0: float) -> np.ndarray:
    """Index of the best LR cell over the LAST axis of seed-mean effective losses (LRs sorted
    ascending): the lowest cell, ties to the smaller LR; -1 where no cell is below l0 (every LR
    ended at the uniform predictor's loss or worse, or diverged: there is no best LR)."""
    cells = np.asarray(cells, dtype=float)
    filled = np.where(np.isnan(cells), np.inf, cells)
    i = np.argmin(filled, axis=-1)
    best = np.take_along_axis(filled, i[..., None], axis=-1)[..., 0]
    return np.where(np.isfinite(best) & (best < l0), i, -1)


def best_lr_run(runs: Iterable[Mapping], l0: float) -> Mapping | None:
    """A method's best-LR run at one size, from mappings with lr, seed, final_val_loss and
    diverged: per LR the seed mean of effective losses (benchmark l0), the best cell by
    ``best_index``, and of that LR the lowest seed that did not diverge; None when no LR is best."""
    runs = list(runs)
    cells: dict[float, list[Mapping]] = {}
    for r in runs:
        cells.setdefault(float(r["lr"]), []).append(r)
    lrs = sorted(cells)
    means = [float(np.nanmean([effective_loss(r.get("final_val_loss"), r.get("diverged"), l0) for r in cells[lr]]))
             for lr in lrs]
    i = int(best_index(np.array(means), l0)) if lrs else -1
    if i < 0:
        return None
    ok = sorted((r for r in cells[lrs[i]] if not r.get("diverged") and math.isfinite(_float(r.get("final_val_loss")))),
                key=lambda r: int(r.get("seed") or 0))
    return ok[0] if ok else None
