"""Rank methods by LR sensitivity averaged over model sizes, with intervals and shared ranks.

Ranking (analysis/ranking.py): methods that learned at every size and were scored at every
size first, then incomplete ones (a mean over fewer sizes is not comparable: Wortsman et al.
find sensitivity changes with scale), then methods that never learned at some size; within a
group by mean LR sensitivity (lower is better), ties broken by best loss at the largest size,
then by name; a method whose paired difference to the method above has an interval
containing 0 shares its rank. The interval of the mean over sizes comes from the same
bootstrap replicates as the per-size ones (analysis/bootstrap.py).

Best loss and best LR are those of the largest size (the model the leaderboard is about).
Zero-shot scores (stabench eval, when the benchmark evaluates) are not part of the ranking:
they add one column per task metric, eval/<task>/<metric>, taken from the method's best-LR run
at the largest size (seed-mean if several seeds were evaluated); NaN where that run was not
evaluated (diverged grid, eval.runs: none, a skipped task).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import statistics as st
from analysis.ranking import GROUP_NAMES, INCOMPLETE, LEARNED, NEVER, competition_ranks, ordered
from analysis.runs import as_text, eval_columns
from analysis.sensitivity import STATS, Scored
from analysis.settings import Settings


def sens_col(size: str, suffix: str = "") -> str:
    """Leaderboard column of one size's LR sensitivity (suffix '_lo' / '_hi': its interval)."""
    return f"lr_sensitivity{suffix}[{size}]"


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


def leaderboard(scores: pd.DataFrame, scored: Scored, settings: Settings,
                runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """scores (analysis/sensitivity.score) -> one ranked row per method; see the module doc.

    Columns: rank, rank_shared, method, status, the three scores with _lo/_hi, the paired
    difference to the method ranked above (diff_above, _lo, _hi), diverged, runs, seeds,
    lr_sensitivity[<size>] with its interval per size, changes_lr_meaning, complete,
    missing_sizes, never_learned_sizes, l0, method_versions, and eval/<task>/<metric>.
    """
    grid = scored.grid
    sizes = list(grid.sizes)
    per_size = [sens_col(s, x) for s in sizes for x in ("", "_lo", "_hi")]
    columns = ["rank", "rank_shared", "method", "status",
               *[f"{s}{x}" for s in STATS for x in ("", "_lo", "_hi")],
               "diff_above", "diff_above_lo", "diff_above_hi", "diverged", "runs", "seeds", *per_size,
               "changes_lr_meaning", "complete", "missing_sizes", "never_learned_sizes", "l0", "method_versions"]
    if scores.empty or not sizes:
        return pd.DataFrame(columns=columns)
    mean_point = st.mean_over_sizes(scored.point["lr_sensitivity"])           # [M]
    mean_reps = st.mean_over_sizes(scored.reps["lr_sensitivity"])             # [B, M]
    rows = []
    for mi, method in enumerate(grid.methods):
        s = scores[scores["method"] == method].set_index("size")
        missing = [z for z in sizes if z not in s.index]
        never = [z for z in sizes if z in s.index and bool(s.at[z, "never_learned"])]
        group = NEVER if never else (INCOMPLETE if missing else LEARNED)
        lo, hi = scored.interval(mean_reps[:, mi], mean_point[mi])
        row = {"method": method, "group": group, "lr_sensitivity": float(mean_point[mi]),
               "lr_sensitivity_lo": float(lo), "lr_sensitivity_hi": float(hi)}
        largest = sizes[-1]
        for stat in ("best_loss", "best_lr"):
            for x in ("", "_lo", "_hi"):
                row[stat + x] = float(s.at[largest, stat + x]) if largest in s.index else np.nan
        for z in sizes:
            for x in ("", "_lo", "_hi"):
                row[sens_col(z, x)] = float(s.at[z, "lr_sensitivity" + x]) if z in s.index else np.nan
        row.update({
            "status": "; ".join(filter(None, [f"never learned at {', '.join(never)}" if never else "",
                                              f"missing {', '.join(missing)}" if missing else ""])),
            "diverged": int(s["n_diverged"].sum()), "runs": int(s["n_runs"].sum()),
            "seeds": int(s["n_seeds"].max()) if len(s) else 0,
            "changes_lr_meaning": bool(s["changes_lr_meaning"].astype(bool).any()),
            "complete": not missing, "missing_sizes": " ".join(missing), "never_learned_sizes": " ".join(never),
            "l0": settings.l0,
            "method_versions": ";".join(sorted({v for part in as_text(s["method_versions"])
                                                for v in part.split(";") if v})),
            "_mi": mi})
        rows.append(row)
    keys = [(r["group"], round(r["lr_sensitivity"], 12), r["best_loss"], r["method"]) for r in rows]
    rows = [rows[i] for i in ordered(keys)]

    def diff(a: int, b: int) -> tuple[float, float]:
        return scored.interval(mean_reps[:, rows[a]["_mi"]] - mean_reps[:, rows[b]["_mi"]],
                               mean_point[rows[a]["_mi"]] - mean_point[rows[b]["_mi"]])

    ranks, shared = competition_ranks([r["group"] for r in rows], diff)
    for i, r in enumerate(rows):
        r["rank"], r["rank_shared"] = ranks[i], shared[i]
        same = i > 0 and rows[i - 1]["group"] == r["group"] != NEVER
        lo, hi = diff(i, i - 1) if same else (np.nan, np.nan)
        r["diff_above"] = r["lr_sensitivity"] - rows[i - 1]["lr_sensitivity"] if same else np.nan
        r["diff_above_lo"], r["diff_above_hi"] = float(lo), float(hi)
        r["status"] = r["status"] or GROUP_NAMES[r["group"]]
    out = pd.DataFrame(rows)[columns]
    evals = eval_at_best(runs, out, sizes[-1])
    for col in evals.columns:
        out[col] = evals[col].reindex(out["method"]).to_numpy(dtype=float)
    return out
