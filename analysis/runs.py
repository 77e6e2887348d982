"""One row per training run, read from each run's metrics.json.

The training engine writes `results/<bench>/runs/<method>/<size>/lr<lr>-s<seed>/` with a
`metrics.json` and a `history.csv`. This module flattens the metrics into a table
(`runs.csv`) that every later step (scoring, claims, figures, report) reads, and adds the
`effective_loss` column that the LR-sensitivity metric is defined on (docs/metrics.md): one l0 per
benchmark (analysis/settings.py), every loss clipped to it, a diverged run counted as it.
Per-run numbers read from the histories are added by analysis/run_stats.py.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from stabench import selection
from stabench.paths import SPEC_NAME

RUN_COLUMNS = [
    "method", "uses", "size", "lr", "seed",
    "final_val_loss", "init_loss", "l0", "effective_loss",
    "diverged", "diverged_at_step",
    "steps", "planned_steps", "tokens", "wall_seconds", "tokens_per_second",
    "max_attn_logit", "final_log_z", "n_params", "n_params_non_embedding",
    "vocab_size", "d_model", "n_layers", "eps", "loss_spikes",
    "changes_lr_meaning", "method_versions", "run_dir", "identity",
]


def _float(x) -> float:
    """JSON null / missing / junk -> NaN, so arithmetic never trips on None."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def effective_loss(final_val_loss, diverged, l0) -> float:
    """min(l, l0), with a diverged or non-finite run counting as l0 (docs/metrics.md): the one rule,
    stabench/selection.py.

    l0 is the benchmark's (analysis/settings.py), never the run's own init loss: init losses
    differ by method, and a per-run l0 would charge methods with small init logits less for
    every LR they diverge at. Without an l0 (NaN) a diverged run becomes NaN.
    """
    return selection.effective_loss(final_val_loss, diverged, l0)


def as_bool(values) -> pd.Series:
    """Booleans from a column that may hold bools, None/NaN (-> False), 0/1 or the strings
    'True'/'false'/... (a CSV round trip), without pandas' strict bool-like check."""
    s = pd.Series(values)
    def one(x) -> bool:
        if isinstance(x, str):
            return x.strip().lower() in ("true", "1", "yes")
        try:
            return False if pd.isna(x) else bool(x)
        except (TypeError, ValueError):
            return bool(x)
    return s.map(one).astype(bool)


def as_text(values) -> pd.Series:
    """Strings, with missing values (NaN after a CSV round trip) as ''."""
    s = pd.Series(values)
    return pd.Series(["" if pd.isna(x) else str(x) for x in s], index=s.index, dtype=str)


def with_effective_loss(runs: pd.DataFrame, l0: float) -> pd.DataFrame:
    """A copy of runs with columns l0 and effective_loss (from final_val_loss, diverged and the
    benchmark's l0), and clean dtypes for diverged, changes_lr_meaning (missing -> False) and
    uses (missing -> the method label), so hand-built frames score like real ones."""
    df = runs.copy()
    for col in ("diverged", "changes_lr_meaning"):
        df[col] = as_bool(df[col]) if col in df else False
    df["uses"] = as_text(df["uses"]) if "uses" in df else df["method"].astype(str)
    df["uses"] = df["uses"].where(df["uses"] != "", df["method"].astype(str))
    df["l0"] = float(l0)
    df["effective_loss"] = [effective_loss(f, d, l0) for f, d in zip(df["final_val_loss"], df["diverged"])]
    return df


def read_metrics(path: Path | str) -> dict:
    """Parse metrics.json (Python's json accepts the NaN/Infinity a trainer may write); a
    damaged file (metrics or eval record) is a ValueError naming it (snakemake removes and
    rebuilds it on its next run)."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is damaged ({type(exc).__name__}: {exc}); run snakemake again to rebuild it") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path} is damaged (not a JSON object); run snakemake again to rebuild it")
    return record


def run_row(metrics: dict, run_dir: Path | str) -> dict:
    """Flatten one metrics.json into a runs-table row (effective_loss and l0 come later)."""
    methods = metrics.get("methods") or []
    config = metrics.get("config") or {}
    model, optimizer, train = (config.get(k) or {} for k in ("model", "optimizer", "train"))
    return {
        "method": str(metrics.get("method", "")),
        # The shipped method names it is built from, for claims that name methods, not labels.
        "uses": "+".join(str(m.get("name")) for m in methods) or str(metrics.get("method", "")),
        "size": str(metrics.get("size", "")),
        "lr": _float(metrics.get("lr")),
        "seed": int(metrics.get("seed") or 0),
        "final_val_loss": _float(metrics.get("final_val_loss")),
        "init_loss": _float(metrics.get("init_loss")),
        "diverged": bool(metrics.get("diverged", False)),
        "diverged_at_step": _float(metrics.get("diverged_at_step")),
        "steps": _float(metrics.get("steps")),
        "planned_steps": _float(train.get("steps")),
        "tokens": _float(metrics.get("tokens")),
        "wall_seconds": _float(metrics.get("wall_seconds")),
        "tokens_per_second": _float(metrics.get("tokens_per_second")),
        "max_attn_logit": _float(metrics.get("max_attn_logit")),
        "final_log_z": _float(metrics.get("final_log_z")),
        "n_params": _float(metrics.get("n_params")),
        "n_params_non_embedding": _float(metrics.get("n_params_non_embedding")),
        "vocab_size": _float(model.get("vocab_size")),
        "d_model": _float(model.get("d_model")),
        "n_layers": _float(model.get("n_layers")),
        "eps": _float(optimizer.get("eps")),
        "loss_spikes": _float(metrics.get("loss_spikes")),
        # One method that rescales the LR makes the whole composite incomparable.
        "changes_lr_meaning": any(bool(m.get("changes_lr_meaning")) for m in methods),
        # Which method versions produced this row (e.g. "a@1+b@2").
        "method_versions": "+".join(f"{m.get('name')}@{m.get('version')}" for m in methods),
        "run_dir": str(run_dir),
        # What the run computed (stabench.runspec), without the benchmark's or method's name:
        # a reference result (stabench.reference) stands for a run of the same identity.
        "identity": str(metrics.get("identity") or ""),
    }


def same_run(metrics: dict, run_dir: Path) -> dict:
    """``metrics`` if it is the result of the run its folder is for (the folder's run.json, which
    the workflow writes), else a ValueError naming both: a result trained there by hand with
    ``stabench train --force`` never enters the tables without a word."""
    spec_path = Path(run_dir) / SPEC_NAME
    if not spec_path.is_file():
        return metrics  # a folder trained before run specs existed
    try:
        wanted = json.loads(spec_path.read_text(encoding="utf-8"))["identity"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"{spec_path}: damaged; delete it and rerun the workflow, which writes it again") from None
    if metrics.get("identity") != wanted:
        raise ValueError(f"{run_dir}: metrics.json holds run {metrics.get('identity')}, but the folder is the "
                         f"workflow's run {wanted} ({SPEC_NAME}); delete {Path(run_dir) / 'metrics.json'} "
                         "to have the workflow train its own run there again")
    return metrics


def collect_runs(metric_paths: Iterable[Path | str]) -> pd.DataFrame:
    """One row per run (columns RUN_COLUMNS; l0 and effective_loss NaN until
    with_effective_loss), sorted by method, size, lr, seed.

    run_dir is the folder holding each metrics.json, where load_history finds the history.
    """
    rows = [run_row(same_run(read_metrics(p), Path(p).parent), Path(p).parent) for p in metric_paths]
    df = pd.DataFrame(rows, columns=RUN_COLUMNS)
    if df.empty:
        return df
    return df.sort_values(["method", "size", "lr", "seed"], kind="stable").reset_index(drop=True)


def size_order(runs: pd.DataFrame, sizes: Iterable[str] = ()) -> list[str]:
    """Sizes smallest first: the given order (the benchmark's) for sizes present, then the rest
    by parameter count."""
    present = list(dict.fromkeys(runs["size"].astype(str))) if "size" in runs else []
    order = [s for s in sizes if s in present]
    rest = [s for s in present if s not in order]
    p = runs.groupby("size")["n_params"].median() if "n_params" in runs else pd.Series(dtype=float)
    rest.sort(key=lambda s: (p.get(s, math.inf), s))
    return order + rest


def size_params(runs: pd.DataFrame) -> dict[str, float]:
    """size -> non-embedding parameter count (Wortsman et al.'s model size; all parameters when
    the runs do not record it)."""
    col = "n_params_non_embedding" if "n_params_non_embedding" in runs and \
        runs["n_params_non_embedding"].notna().any() else "n_params"
    if col not in runs or runs.empty:
        return {}
    return runs.groupby("size")[col].median().astype(float).to_dict()


EVAL_PREFIX = "eval/"  # runs.csv column of a zero-shot score: eval/<task>/<metric>
EVAL_STATUS = {  # record status -> runs.csv eval_status
    "evaluated": "evaluated",
    "diverged": "diverged (not evaluated)",
    "all_diverged": "diverged (not evaluated)",
}


def eval_columns(df: pd.DataFrame, *, init: bool | None = None, stderr: bool = False) -> list[str]:
    """The eval/<task>/<metric> columns of a runs table, in order; init=True only the
    init_<metric> ones, False none of them, None both; stderr columns only if asked."""
    cols = []
    for c in df.columns:
        if not c.startswith(EVAL_PREFIX):
            continue
        metric = c.rsplit("/", 1)[-1]
        if not stderr and metric.endswith("_stderr"):
            continue
        if init is not None and metric.startswith("init_") != init:
            continue
        cols.append(c)
    return cols


def join_evals(runs: pd.DataFrame, eval_paths: Iterable[Path | str]) -> pd.DataFrame:
    """Add the zero-shot scores of stabench eval records to the runs table.

    A record names the run it evaluated (method, size, lr, seed); its flat ``scores`` become
    columns eval/<task>/<metric>. eval_status says what happened to each run: evaluated,
    diverged (not evaluated), not selected (eval.runs: best evaluates one run per method and
    size), or '' when no record covers it. eval_skipped lists tasks that could not be loaded,
    with the reason.
    """
    df = runs.copy()
    if df.empty:
        return df
    key = list(zip(df["method"].astype(str), df["size"].astype(str), df["lr"].astype(float),
                   df["seed"].astype(int)))
    index = {k: i for i, k in enumerate(key)}
    status = [""] * len(df)
    skipped = [""] * len(df)
    scores: dict[str, list[float]] = {}

    def at(method, size, lr, seed):
        try:
            return index.get((str(method), str(size), float(lr), int(seed)))
        except (TypeError, ValueError):
            return None

    for path in eval_paths:
        rec = read_metrics(path)
        for cand in rec.get("candidates") or []:  # the other runs of a 'best' selection
            i = at(rec.get("method"), rec.get("size"), cand.get("lr"), cand.get("seed"))
            if i is not None and not status[i]:
                status[i] = "diverged (not evaluated)" if cand.get("diverged") else "not selected"
        i = at(rec.get("method"), rec.get("size"), rec.get("lr"), rec.get("seed"))
        if i is None:
            continue
        status[i] = EVAL_STATUS.get(rec.get("status"), str(rec.get("status")))
        skipped[i] = "; ".join(f"{t}: {r.get('reason', '')}" for t, r in (rec.get("tasks") or {}).items()
                               if r.get("status") == "skipped")
        for name, value in (rec.get("scores") or {}).items():
            scores.setdefault(EVAL_PREFIX + name, [math.nan] * len(df))[i] = _float(value)
    df["eval_status"] = status
    df["eval_skipped"] = skipped
    for col in sorted(scores):
        df[col] = scores[col]
    return df


def load_history(run_dir: Path | str) -> pd.DataFrame:
    """history.csv of one run, every column numeric (blank val_loss cells -> NaN).

    Probe columns vary between engine versions, so nothing beyond `step` is required;
    callers check for the columns they plot.
    """
    df = pd.read_csv(Path(run_dir) / "history.csv")
    return df.apply(pd.to_numeric, errors="coerce")
