"""What the runs cost: Snakemake's benchmark files of the train and eval jobs, per method.

Every train and eval job writes ``results/<bench>/benchmarks/{train,eval}/<method>/<size>/...tsv``
(Snakemake's ``benchmark:`` directive: wall seconds ``s`` and peak resident memory ``max_rss``
in MB). A job trains or evaluates one (method, size) or one run of it, so the method and size
are the two folders above the file. The table sums wall time and takes the largest peak per
method and kind, so a reader sees what each method cost to train and to evaluate.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

COLUMNS = ["method", "train_seconds", "train_jobs", "train_peak_mb", "eval_seconds", "eval_jobs", "eval_peak_mb"]


def read_job(path: Path | str) -> dict:
    """One benchmark file -> {kind, method, size, seconds, peak_mb} (kind: train or eval)."""
    path = Path(path)
    row = pd.read_csv(path, sep="\t").iloc[-1]  # a rerun appends a row: the last one is current
    parts = path.parts
    size_at = len(parts) - 2
    # .../benchmarks/<kind>/<method>/<size>/<file>.tsv, or .../<kind>/<method>/<size>.tsv (best-LR eval)
    if parts[-3] in ("train", "eval"):
        kind, method, size = parts[-3], parts[-2], path.stem
    else:
        kind, method, size = parts[size_at - 2], parts[size_at - 1], parts[size_at]
    return {"kind": kind, "method": method, "size": size, "seconds": float(row["s"]),
            "peak_mb": float(row["max_rss"]) if str(row["max_rss"]) != "-" else float("nan")}


def job_costs(paths: list[Path | str]) -> pd.DataFrame:
    """Per method: summed wall seconds, job count and largest peak memory, for training and eval."""
    jobs = pd.DataFrame([read_job(p) for p in paths], columns=["kind", "method", "size", "seconds", "peak_mb"])
    if jobs.empty:
        return pd.DataFrame(columns=COLUMNS)
    out = None
    for kind in ("train", "eval"):
        part = jobs[jobs["kind"] == kind].groupby("method").agg(
            **{f"{kind}_seconds": ("seconds", "sum"), f"{kind}_jobs": ("seconds", "size"),
               f"{kind}_peak_mb": ("peak_mb", "max")})
        out = part if out is None else out.join(part, how="outer")
    return out.reset_index().reindex(columns=COLUMNS)
