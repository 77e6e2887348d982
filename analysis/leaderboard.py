"""Rank methods by LR sensitivity averaged over model sizes.

Ranking key, in order:
1. methods scored at every size in size_order come first: a mean over fewer sizes is not
   comparable (Wortsman et al. find sensitivity changes with scale), so incomplete methods
   are ranked after all complete ones and marked complete=False, missing_sizes=...;
   their lr_sensitivity is the mean over the sizes they do have, their missing
   lr_sensitivity[<size>] cells are NaN;
2. mean LR sensitivity over sizes, lower is better;
3. best_loss at the largest size, lower is better (the tie-break METHODS.md asks for:
   sensitivity alone ignores the absolute loss level);
4. method name, so the order is deterministic.

Zero-shot scores (stabench eval, when the benchmark evaluates) are not part of the ranking:
they add one column per task metric, eval/<task>/<metric>, taken from the method's best-LR run
at the largest size (the run best_loss and best_lr describe; seed-mean if several seeds were
evaluated). The largest size, not a mean over sizes, because that is the model the leaderboard
is about and a mean would mix models of different quality. NaN where that run was not
evaluated (diverged grid, eval.runs: none, a skipped task).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.runs import as_text, eval_columns


def sens_col(size: str) -> str:
    return f"lr_sensitivity[{size}]"


def eval_at_best(runs: pd.DataFrame | None, board: pd.DataFrame, size: str) -> pd.DataFrame:
    """eval/<task>/<metric> (no init_, no stderr) of each method's best-LR run at `size`."""
    if runs is None or runs.empty:
        return pd.DataFrame(index=board["method"])
    cols = eval_columns(runs, init=False)
    out = pd.DataFrame(np.nan, index=board["method"], columns=cols)
    for method, lr in zip(board["method"], board["best_lr"]):
        if pd.isna(lr):
            continue
        r = runs[(runs["method"] == method) & (runs["size"] == size) & np.isclose(runs["lr"], lr)]
        if not r.empty:
            out.loc[method, cols] = r[cols].astype(float).mean(axis=0, skipna=True).to_numpy()
    return out


def leaderboard(scores: pd.DataFrame, size_order: list[str], runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """scores (from sensitivity.score) -> one ranked row per method.

    Columns: rank, method, lr_sensitivity, best_loss, best_lr (both at the largest size,
    the last of size_order), diverged, runs, lr_sensitivity[<size>] per size,
    changes_lr_meaning, complete, missing_sizes, method_versions, and with runs (runs.csv)
    holding eval/ columns, one eval/<task>/<metric> column per zero-shot score (see above).
    Sizes in scores but not in size_order are ignored; an empty size_order means all
    sizes in scores, sorted by name.
    """
    sizes = list(size_order) or sorted(scores["size"].unique())
    per_size = [sens_col(s) for s in sizes]
    columns = ["rank", "method", "lr_sensitivity", "best_loss", "best_lr", "diverged", "runs",
               *per_size, "changes_lr_meaning", "complete", "missing_sizes", "method_versions"]
    s = scores[scores["size"].isin(sizes)]
    if s.empty:
        return pd.DataFrame(columns=columns)
    wide = s.pivot(index="method", columns="size", values="lr_sensitivity").reindex(columns=sizes)
    largest = s[s["size"] == sizes[-1]].set_index("method")
    g = s.groupby("method")
    versions = as_text(s["method_versions"]) if "method_versions" in s else pd.Series("", index=s.index)
    out = pd.DataFrame({
        "method": wide.index,
        "lr_sensitivity": wide.mean(axis=1, skipna=True).to_numpy(),
        "best_loss": largest["best_loss"].reindex(wide.index).to_numpy(dtype=float),
        "best_lr": largest["best_lr"].reindex(wide.index).to_numpy(dtype=float),
        "diverged": g["n_diverged"].sum().reindex(wide.index).astype(int).to_numpy(),
        "runs": g["n_runs"].sum().reindex(wide.index).astype(int).to_numpy(),
    })
    for size in sizes:
        out[sens_col(size)] = wide[size].to_numpy(dtype=float)
    out["changes_lr_meaning"] = g["changes_lr_meaning"].any().reindex(wide.index).astype(bool).to_numpy()
    out["complete"] = wide.notna().all(axis=1).to_numpy()
    out["missing_sizes"] = [" ".join(sz for sz in sizes if pd.isna(wide.at[m, sz])) for m in wide.index]
    out["method_versions"] = [
        ";".join(sorted({v for part in versions[s["method"] == m] for v in part.split(";") if v}))
        for m in wide.index
    ]
    # Round the key so float noise (1e-16) does not decide a tie the loss should decide.
    out["_key"] = out["lr_sensitivity"].round(12)
    out["_incomplete"] = ~out["complete"]
    out = out.sort_values(["_incomplete", "_key", "best_loss", "method"],
                          na_position="last", kind="stable")
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    out = out.drop(columns=["_key", "_incomplete"]).reset_index(drop=True)[columns]
    evals = eval_at_best(runs, out, sizes[-1])
    for col in evals.columns:
        out[col] = evals[col].reindex(out["method"]).to_numpy(dtype=float)
    return out
