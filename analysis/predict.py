"""Predicting instabilities from small models (Wortsman et al. 2023, section 3.4).

Two predictors, both fitted across model sizes at a fixed peak LR:
- attention-logit growth: the first block's max attention logit early in training (they use
  step 2000 of 1e5, i.e. 2 %) grows with model size; a quadratic fit in log(parameters)
  extrapolated to the next sizes says at which size and LR it will pass the danger level
  (~1e4) where runs diverge. When the largest size was trained too, the fit on the smaller
  sizes alone is compared with what the largest size did (predicted vs observed).
- gradient RMS against Adam's eps: gradient RMS falls with scale; a linear fit in log-log says
  at which size it reaches eps, where Adam's update shrinks (eps dominates the denominator).
Pure functions over DataFrames; figures live in analysis/diagnostics.py.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

ATTN_LOGIT_DANGER = 1e4
EARLY_FRACTION = 0.02  # Wortsman et al.: step 2000 of 1e5


def value_at_fraction(history: pd.DataFrame, column: str, fraction: float, steps: int) -> float:
    """The first probed value of ``column`` at or after ``fraction`` of training."""
    if column not in history:
        return math.nan
    rows = history.dropna(subset=[column])
    rows = rows[rows["step"] > 0]
    if rows.empty:
        return math.nan
    later = rows[rows["step"] >= fraction * steps]
    return float((later if not later.empty else rows).iloc[0][column])


def late_mean(history: pd.DataFrame, column: str, tail: float = 0.2) -> float:
    """Mean of ``column`` over the last ``tail`` of the probed steps (a steady-state value)."""
    if column not in history:
        return math.nan
    rows = history.dropna(subset=[column])
    if rows.empty:
        return math.nan
    start = rows["step"].max() * (1 - tail)
    return float(rows[rows["step"] >= start][column].mean())


def early_attention_logits(runs: pd.DataFrame, histories: dict[str, pd.DataFrame],
                           fraction: float = EARLY_FRACTION, column: str = "attn_logit_max_l0") -> pd.DataFrame:
    """One row per run: its first block's max attention logit at ``fraction`` of training."""
    rows = []
    for run in runs.itertuples():
        history = histories.get(run.run_dir)
        if history is None:
            continue
        rows.append({"method": run.method, "size": run.size, "lr": run.lr, "n_params": run.n_params,
                     "diverged": bool(run.diverged),
                     "early_logit": value_at_fraction(history, column, fraction, int(run.steps))})
    return pd.DataFrame(rows)


def fit_log_poly(x: np.ndarray, y: np.ndarray, degree: int = 2) -> np.poly1d | None:
    """Fit log10(y) as a polynomial in log10(x); the degree drops to what the points allow."""
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    x, y = np.log10(x[ok]), np.log10(y[ok])
    degree = min(degree, len(np.unique(x)) - 1)
    if degree < 1:
        return None
    return np.poly1d(np.polyfit(x, y, degree))


def predict_log_poly(fit: np.poly1d, x: float) -> float:
    return float(10 ** fit(np.log10(x)))


def predict_instability(early: pd.DataFrame, method: str, *, danger: float = ATTN_LOGIT_DANGER,
                        extrapolate: tuple[float, ...] = (2.0, 4.0)) -> pd.DataFrame:
    """Per LR: fit the early logit vs size for ``method``; predict the next sizes.

    Columns: lr, fit_sizes, next_params, predicted_logit, predicted_diverged, and — when there
    are 3+ sizes — holdout_params, holdout_predicted (fit without the largest size),
    holdout_observed_logit and holdout_diverged (what the largest size really did).
    """
    rows = []
    data = early[(early["method"] == method) & early["early_logit"].notna()]
    for lr, group in data.groupby("lr"):
        by_size = group.groupby("n_params").agg(early_logit=("early_logit", "mean"),
                                                 diverged=("diverged", "any")).reset_index()
        by_size = by_size.sort_values("n_params")
        fit = fit_log_poly(by_size["n_params"].to_numpy(float), by_size["early_logit"].to_numpy(float))
        if fit is None:
            continue
        largest = float(by_size["n_params"].max())
        for factor in extrapolate:
            pred = predict_log_poly(fit, largest * factor)
            rows.append({"lr": lr, "fit_sizes": len(by_size), "next_params": largest * factor,
                         "predicted_logit": pred, "predicted_diverged": pred > danger})
        if len(by_size) >= 3:
            held = by_size.iloc[-1]
            small_fit = fit_log_poly(by_size["n_params"].to_numpy(float)[:-1],
                                     by_size["early_logit"].to_numpy(float)[:-1])
            if small_fit is not None:
                pred = predict_log_poly(small_fit, float(held["n_params"]))
                for row in rows[-len(extrapolate):]:
                    row.update(holdout_params=float(held["n_params"]), holdout_predicted=pred,
                               holdout_predicted_diverged=pred > danger,
                               holdout_observed_logit=float(held["early_logit"]),
                               holdout_diverged=bool(held["diverged"]))
    return pd.DataFrame(rows)


def size_where_crossing(params: np.ndarray, values: np.ndarray, level: float) -> float:
    """Parameter count where a log-log linear fit of ``values`` reaches ``level`` (nan if never)."""
    fit = fit_log_poly(np.asarray(params, float), np.asarray(values, float), degree=1)
    if fit is None or fit.coeffs[0] == 0:
        return math.nan
    slope, intercept = fit.coeffs
    x = (math.log10(level) - intercept) / slope
    return float(10 ** x) if math.isfinite(x) and 10 ** x > 0 else math.nan
