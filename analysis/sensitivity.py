"""LR sensitivity, best loss and best LR per (method, size), with bootstrap intervals and ranks.

Definitions are in analysis/statistics.py (Wortsman et al. 2023, section 2.2), on effective
losses with the benchmark's one l0 (analysis/runs.py). Intervals come from the shared paired
cluster bootstrap over seeds with a t-interval (analysis/bootstrap.py; the best LR's interval
is the percentile range of the LRs the resamples chose); ranks per size from analysis/ranking.py.

Lower LR sensitivity is better. The metric ignores the absolute loss level (a method that
never learns scores 0: it is marked never learned and ranked last), and it is not comparable
for methods that change what "LR" means (changes_lr_meaning), which the report flags.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import statistics as st
from analysis.bootstrap import Grid, Resamples, grid_of, original, resample
from analysis.ranking import LEARNED, NEVER, competition_ranks, never_learned, ordered
from analysis.runs import as_text, with_effective_loss
from analysis.settings import Settings

STATS = ("lr_sensitivity", "best_loss", "best_lr")
SCORE_COLUMNS = [
    "method", "size", *[f"{s}{x}" for s in STATS for x in ("", "_lo", "_hi")],
    "rank", "rank_shared", "never_learned", "l0",
    "n_lrs", "n_runs", "n_seeds", "n_diverged", "changes_lr_meaning", "method_versions",
]


@dataclass(frozen=True)
class Scored:
    """Point estimates [method, size] and bootstrap replicates [B, method, size] per statistic."""
    grid: Grid
    point: dict[str, np.ndarray]
    reps: dict[str, np.ndarray]
    resamples: Resamples

    def interval(self, values: np.ndarray, point=None) -> tuple[np.ndarray, np.ndarray]:
        """The t-interval of replicates ``values`` around ``point`` (analysis/bootstrap.py)."""
        return self.resamples.interval(values, point)


def grid_statistics(cells: np.ndarray, lrs, l0: float) -> dict[str, np.ndarray]:
    """The three scores from effective-loss cells [..., LR]."""
    return {"lr_sensitivity": st.lr_sensitivity(cells), "best_loss": st.best_loss(cells),
            "best_lr": st.best_lr(cells, lrs, l0)}


def score_grid(runs: pd.DataFrame, settings: Settings) -> Scored:
    """Point estimates and replicates of the scores of every (method, size) of the runs."""
    df = with_effective_loss(runs, settings.l0)
    grid = grid_of(df, settings.sizes)
    cube = grid.cube(df, "effective_loss")
    boot = resample(grid, settings.resamples, settings.seed, settings.confidence)
    point = {k: v[0] for k, v in grid_statistics(original(grid).cell_means(cube), grid.lrs, settings.l0).items()}
    reps = grid_statistics(boot.cell_means(cube), grid.lrs, settings.l0)
    return Scored(grid=grid, point=point, reps=reps, resamples=boot)


def score(runs: pd.DataFrame, settings: Settings) -> tuple[pd.DataFrame, Scored]:
    """scores.csv (one row per method and size present, columns SCORE_COLUMNS) and the scores."""
    if runs.empty:
        grid = grid_of(runs, settings.sizes)
        return pd.DataFrame(columns=SCORE_COLUMNS), Scored(grid, {}, {}, resample(grid, 0, settings.seed))
    df = with_effective_loss(runs, settings.l0)
    df["method_versions"] = as_text(df["method_versions"]) if "method_versions" in df else ""
    scored = score_grid(df, settings)
    grid = scored.grid
    rows = []
    for si, size in enumerate(grid.sizes):
        present = [mi for mi, m in enumerate(grid.methods) if ((df["method"] == m) & (df["size"] == size)).any()]
        nl = never_learned(scored.point["best_loss"][present, si], settings.l0, settings.never_learned_margin)
        groups = [NEVER if n else LEARNED for n in nl]
        keys = [(g, round(float(scored.point["lr_sensitivity"][mi, si]), 12),
                 float(scored.point["best_loss"][mi, si]), grid.methods[mi]) for g, mi in zip(groups, present)]
        order = ordered(keys)
        chain = [present[i] for i in order]
        ranks, shared = competition_ranks(
            [groups[i] for i in order],
            lambda a, b: scored.interval(scored.reps["lr_sensitivity"][:, chain[a], si]
                                         - scored.reps["lr_sensitivity"][:, chain[b], si],
                                         scored.point["lr_sensitivity"][chain[a], si]
                                         - scored.point["lr_sensitivity"][chain[b], si]))
        for pos, mi in enumerate(chain):
            method = grid.methods[mi]
            r = df[(df["method"] == method) & (df["size"] == size)]
            row = {"method": method, "size": size}
            for stat in STATS:
                # the best LR lives on the LR grid: the LRs the resamples chose (percentile)
                lo, hi = scored.resamples.percentile(scored.reps[stat][:, mi, si]) if stat == "best_lr" \
                    else scored.interval(scored.reps[stat][:, mi, si], scored.point[stat][mi, si])
                row.update({stat: float(scored.point[stat][mi, si]), f"{stat}_lo": float(lo),
                            f"{stat}_hi": float(hi)})
            rows.append({**row, "rank": ranks[pos], "rank_shared": shared[pos],
                         "never_learned": groups[order[pos]] == NEVER, "l0": settings.l0,
                         "n_lrs": int(r["lr"].nunique()), "n_runs": int(len(r)),
                         "n_seeds": int(r["seed"].nunique()), "n_diverged": int(r["diverged"].sum()),
                         "changes_lr_meaning": bool(r["changes_lr_meaning"].any()),
                         "method_versions": ";".join(sorted({v for v in r["method_versions"] if v}))})
    return pd.DataFrame(rows, columns=SCORE_COLUMNS), scored
