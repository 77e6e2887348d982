"""LR sensitivity per (method, size), exactly as METHODS.md (Wortsman et al. 2023, s2.2):

    LR sensitivity(A) = mean over eta in the grid of  min(l(A, eta), l0) - l*

- l(A, eta): final validation loss; a diverged run counts as l0 (the loss at init).
- l*: the lowest loss of A over the same grid, per method and model size.
- With several seeds, effective losses are averaged over seeds per (method, size, lr)
  first, so l* is the best seed-averaged cell and every LR weighs the same in the mean.

Lower is better. The metric ignores the absolute loss level (a method that never learns
scores 0), so best_loss is reported beside it; and it is not comparable for methods that
change what "LR" means (changes_lr_meaning), which the report flags.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.runs import as_text, with_effective_loss

SCORE_COLUMNS = [
    "method", "size", "lr_sensitivity", "best_loss", "best_lr",
    "n_lrs", "n_runs", "n_diverged", "changes_lr_meaning", "method_versions",
]


def _score_group(cells: pd.DataFrame) -> dict:
    """cells: one row per LR of one (method, size), seed-averaged, sorted by lr."""
    loss = cells["loss"].to_numpy(dtype=float)
    finite = np.isfinite(loss)
    if not finite.any():
        return {"lr_sensitivity": np.nan, "best_loss": np.nan, "best_lr": np.nan}
    best = float(np.nanmin(loss))
    i = int(np.nanargmin(loss))  # ties: smallest LR (cells are sorted by lr)
    # If every LR diverged, l* = l0 and the score is 0: there is no "best LR" to report.
    best_lr = np.nan if bool(cells["all_diverged"].all()) else float(cells["lr"].iloc[i])
    return {
        "lr_sensitivity": float(np.mean(loss[finite] - best)),
        "best_loss": best,
        "best_lr": best_lr,
    }


def score(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (method, size): lr_sensitivity, best_loss (= l*), best_lr, grid size (n_lrs),
    run counts, whether any of the method's components changes what LR means, and the
    method versions that produced the runs. Needs columns method, size, lr,
    final_val_loss, init_loss, diverged (effective_loss is recomputed from them)."""
    if runs.empty:
        return pd.DataFrame(columns=SCORE_COLUMNS)
    df = with_effective_loss(runs)
    if "method_versions" not in df:
        df["method_versions"] = ""
    df["method_versions"] = as_text(df["method_versions"])
    cells = (
        df.groupby(["method", "size", "lr"], sort=True)
        .agg(loss=("effective_loss", "mean"), all_diverged=("diverged", "all"))
        .reset_index()
    )
    rows = []
    for (method, size), g in cells.groupby(["method", "size"], sort=True):
        r = df[(df["method"] == method) & (df["size"] == size)]
        versions = sorted({v for v in r["method_versions"] if v})
        rows.append({
            "method": method,
            "size": size,
            **_score_group(g.sort_values("lr")),
            "n_lrs": int(len(g)),
            "n_runs": int(len(r)),
            "n_diverged": int(r["diverged"].sum()),
            "changes_lr_meaning": bool(r["changes_lr_meaning"].any()),
            "method_versions": ";".join(versions),
        })
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)
