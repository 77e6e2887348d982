"""Per-run numbers read from each run's history.csv, added to runs.csv by the aggregate step.

Claims and predictions then work on one table (pure functions, testable on hand-built frames)
instead of re-reading histories. Columns added:
- log_z_divergence: how far mean log Z sits outside its healthy range [0, ln V] late in training
  (output-logit divergence, Wortsman 3.1.2; see ``log_z_divergence``; NaN for a diverged run);
- early_step, early_attn_logit: the first block's max attention logit at one early step shared
  by every run of a size (Wortsman 3.4 use step 2000 of 1e5: 2 % of the planned steps), so a
  run that diverged early is read at the same step as the others, or not at all;
- late_grad_rms: gradient RMS over the last 20 % of the probed steps (compared with Adam eps);
- peak/<family>: the largest reading of each declared probe family;
- spikes/<family>, spikes_near/<family>, near_steps/<family>: loss spikes against each family
  that declares a threshold (analysis/probe_families.crossing_counts).
The history columns named here are the engine's own probes (stabench.probes.ENGINE_PROBES), not any
method's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.probe_families import crossing_counts, family_values

EARLY_FRACTION = 0.02  # Wortsman et al.: step 2000 of 1e5
FIRST_BLOCK_LOGIT = "attn_logit_max_l0"
LOG_Z = "log_z_mean"
GRAD_RMS = "grad_rms_mean"


def late_mean(history: pd.DataFrame, column: str, tail: float = 0.2) -> float:
    """Mean of ``column`` over the last ``tail`` of the probed steps (a steady-state value)."""
    if column not in history:
        return math.nan
    rows = history.dropna(subset=[column])
    if rows.empty:
        return math.nan
    start = rows["step"].max() * (1 - tail)
    return float(rows[rows["step"] >= start][column].mean())


def log_z_divergence(history: pd.DataFrame, vocab_size: float, tail: float = 0.2) -> float:
    """Late-training mean distance of log Z outside [0, ln V], its healthy range (nats; 0 = it
    stayed in range; NaN without readings or vocabulary).

    Why this statistic (Wortsman et al. 2023, section 3.1.2, output logit divergence): the
    cross-entropy is invariant to adding one constant to every output logit, so nothing in the
    loss holds log Z = logsumexp(logits) in place. Without weight decay, at high LRs, the
    logits "diverge and become very negative" (log Z falls far below 0) late in training and
    the loss degrades; z-loss (coef * log Z^2) "encourages log Z to remain close to 0". Two
    points bound where a healthy run's log Z sits: ln V, the log Z of a model whose logits are
    all ~0 (where every run starts: small initial logits, V the vocabulary), and 0, where
    z-loss pulls it. Moving inside [0, ln V] is what learning and z-loss do; a normalizer
    that leaves it, below 0 (the paper's direction) or above ln V (logits growing positive),
    has diverged by that many nats. So a fall from +8 to -6 counts 6, a rise to ln V + 4
    counts 4, and z-loss's own pull from +8 toward 0 counts 0 (a distance from each run's
    early value counted that pull as drift and scored z-loss as the cause of what it cures).
    The range is the same for every run of a benchmark (one V), not each run's first
    reading, which at high LRs is itself an excursion. Late = the mean over the last
    ``tail`` of the probed steps: the paper sees the divergence late in training, and one
    reading is noisy. Runs that diverged are left out by the caller (their last readings
    describe a blown-up loss, which the loss statistics already count).
    """
    if LOG_Z not in history or not (math.isfinite(vocab_size) and vocab_size > 1):
        return math.nan
    rows = history.dropna(subset=[LOG_Z])
    if rows.empty:
        return math.nan
    top = math.log(vocab_size)
    outside = (rows[LOG_Z] - top).clip(lower=0) + (-rows[LOG_Z]).clip(lower=0)
    return late_mean(rows.assign(_outside=outside), "_outside", tail)


def early_steps(runs: pd.DataFrame, histories: dict[str, pd.DataFrame],
                fraction: float = EARLY_FRACTION) -> dict[str, float]:
    """size -> the early step of that size: the first probed step (> 0) at or after ``fraction``
    of the size's planned steps (the most common plan among its runs; a method may plan more)."""
    out = {}
    for size, group in runs.groupby("size"):
        plan = group["planned_steps"].dropna()
        plan = float(plan.mode().iloc[0]) if not plan.empty else float(group["steps"].max())
        probed = sorted({float(s) for d in group["run_dir"]
                         if d in histories and FIRST_BLOCK_LOGIT in histories[d]
                         for s in histories[d].dropna(subset=[FIRST_BLOCK_LOGIT])["step"] if s > 0})
        later = [s for s in probed if s >= fraction * plan]
        out[str(size)] = later[0] if later else math.nan
    return out


def value_at_step(history: pd.DataFrame, column: str, step: float) -> float:
    if column not in history or not math.isfinite(step):
        return math.nan
    rows = history[(history["step"] == step)][column].dropna()
    return float(rows.iloc[0]) if not rows.empty else math.nan


def _spike_steps(run_dir: str) -> list[float]:
    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        return []
    return [float(s) for s in json.loads(path.read_text(encoding="utf-8")).get("loss_spike_steps") or []]


def add_run_stats(runs: pd.DataFrame, histories: dict[str, pd.DataFrame],
                  families: dict[str, dict]) -> pd.DataFrame:
    """runs with the columns listed in the module docstring (NaN where a run has no history)."""
    df = runs.copy()
    if df.empty:
        return df
    early = early_steps(df, histories)
    empty = pd.DataFrame({"step": []})
    rows = []
    for r in df.itertuples():
        h = histories.get(r.run_dir, empty)
        row = {"log_z_divergence": math.nan if bool(getattr(r, "diverged", False))
               else log_z_divergence(h, float(getattr(r, "vocab_size", math.nan))),
               "early_step": early.get(str(r.size), math.nan),
               "late_grad_rms": late_mean(h, GRAD_RMS)}
        row["early_attn_logit"] = value_at_step(h, FIRST_BLOCK_LOGIT, row["early_step"])
        for fid, fam in families.items():
            values = family_values(h, fam)
            row[f"peak/{fid}"] = float(np.nanmax(values)) if values is not None and values.notna().any() \
                else math.nan
            if fam.get("threshold") is not None:
                counts = crossing_counts(h, fam, _spike_steps(r.run_dir), r.steps)
                for key in ("spikes", "spikes_near", "near_steps"):
                    row[f"{key}/{fid}"] = counts[key]
        rows.append(row)
    return pd.concat([df.reset_index(drop=True), pd.DataFrame(rows)], axis=1)
