"""Predicting instabilities from small models (Wortsman et al. 2023, section 3.4).

Model size is the non-embedding parameter count, as in the paper. Both predictors are fitted
per method across sizes, never pooled over methods (each method changes the quantity):
- attention-logit growth: the first block's max attention logit at one early step shared by
  every run of a size (analysis/run_stats.py), per peak LR, fitted with a polynomial in
  log(size): quadratic, as the paper, when the points allow. With 3 sizes a quadratic passes
  through all 3 points exactly (it tests nothing), so the held-out check fits the sizes but the
  largest (a line through 2) and predicts the largest: predicted against observed, logit and
  divergence. Extrapolations to 2x and 4x the largest size are reported too.
- gradient RMS against Adam's eps: late-training gradient RMS falls with size; a line in
  log-log per method and LR says at which size it reaches that method's eps (where eps
  dominates Adam's denominator and the update shrinks), and with 3+ sizes the held-out check.
Pure functions over the runs table; figures live in analysis/diagnostics.py.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.runs import size_order, size_params

ATTN_LOGIT_DANGER = 1e4  # Wortsman et al.: divergence past ~1e4 at their scale
EXTRAPOLATE = (2.0, 4.0)


def fit_log_poly(x: np.ndarray, y: np.ndarray, degree: int = 2) -> np.poly1d | None:
    """Fit log10(y) as a polynomial in log10(x); the degree drops to what the points allow."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    x, y = np.log10(x[ok]), np.log10(y[ok])
    degree = min(degree, len(np.unique(x)) - 1)
    if degree < 1:
        return None
    return np.poly1d(np.polyfit(x, y, degree))


def predict_log_poly(fit: np.poly1d, x: float) -> float:
    return float(10 ** fit(np.log10(x)))


def size_cells(runs: pd.DataFrame, method: str, column: str, sizes=()) -> pd.DataFrame:
    """Per (size, LR) of one method: params, seed mean of ``column``, diverged (most seeds)."""
    r = runs[runs["method"] == method]
    if r.empty or column not in r:
        return pd.DataFrame(columns=["size", "lr", "params", "value", "diverged"])
    params = size_params(runs)
    g = r.groupby(["size", "lr"]).agg(value=(column, "mean"), diverged=("diverged", "mean")).reset_index()
    g["diverged"] = g["diverged"] > 0.5
    g["params"] = g["size"].map(params)
    order = {s: i for i, s in enumerate(size_order(runs, sizes))}
    return g.sort_values(["lr", "size"], key=lambda c: c.map(order) if c.name == "size" else c).reset_index(drop=True)


def calibrated_threshold(cells: pd.DataFrame) -> float:
    """Geometric mean of the highest stable and the lowest diverged early logit (NaN without a
    divergence or a stable run to calibrate on)."""
    ok = cells[np.isfinite(cells["value"]) & (cells["value"] > 0)]
    stable, div = ok.loc[~ok["diverged"], "value"], ok.loc[ok["diverged"], "value"]
    if stable.empty or div.empty:
        return math.nan
    return float(math.sqrt(stable.max() * div.min()))


def holdout_attention(runs: pd.DataFrame, method: str, threshold: float | str = ATTN_LOGIT_DANGER,
                      sizes=(), column: str = "early_attn_logit") -> pd.DataFrame:
    """Per LR: fit on every size but the largest, predict the largest (predicted vs observed).

    Columns: method, lr, held_out, fit_sizes, threshold, predicted_logit, observed_logit,
    predicted_diverged, observed_diverged, correct (NaN where no fit was possible).
    """
    cells = size_cells(runs, method, column, sizes)
    order = size_order(runs, sizes)
    present = [s for s in order if s in set(cells["size"])]
    if len(present) < 2:
        return pd.DataFrame()
    held, fit_sizes = present[-1], present[:-1]
    fit_cells = cells[cells["size"].isin(fit_sizes)]
    level = calibrated_threshold(fit_cells) if threshold == "calibrate" else float(threshold)
    rows = []
    for lr, g in cells.groupby("lr"):
        f, h = g[g["size"].isin(fit_sizes)], g[g["size"] == held]
        if h.empty:
            continue
        fit = fit_log_poly(f["params"].to_numpy(), f["value"].to_numpy())
        pred = predict_log_poly(fit, float(h["params"].iloc[0])) if fit is not None else math.nan
        predicted = bool(pred > level) if math.isfinite(pred) and math.isfinite(level) else None
        observed = bool(h["diverged"].iloc[0])
        rows.append({"method": method, "lr": float(lr), "held_out": held, "fit_sizes": len(f),
                     "threshold": level, "predicted_logit": pred, "observed_logit": float(h["value"].iloc[0]),
                     "predicted_diverged": predicted, "observed_diverged": observed,
                     "correct": None if predicted is None else predicted == observed})
    return pd.DataFrame(rows)


def extrapolate_attention(runs: pd.DataFrame, method: str, sizes=(), column: str = "early_attn_logit"
                          ) -> pd.DataFrame:
    """Per LR: the fit on every size, its degree, and its predictions at 2x and 4x the largest."""
    cells = size_cells(runs, method, column, sizes)
    rows = []
    for lr, g in cells.groupby("lr"):
        fit = fit_log_poly(g["params"].to_numpy(), g["value"].to_numpy())
        if fit is None:
            continue
        n = int(np.isfinite(g["value"]).sum())
        row = {"method": method, "lr": float(lr), "sizes_fitted": n, "degree": fit.order,
               "exact_fit": fit.order == n - 1}
        largest = float(g["params"].max())
        for k in EXTRAPOLATE:
            row[f"predicted_logit_{k:g}x"] = predict_log_poly(fit, largest * k)
        rows.append(row)
    return pd.DataFrame(rows)


def size_where_crossing(params: np.ndarray, values: np.ndarray, level: float) -> float:
    """Parameter count where a log-log linear fit of ``values`` reaches ``level`` (nan if never)."""
    fit = fit_log_poly(np.asarray(params, float), np.asarray(values, float), degree=1)
    if fit is None or not math.isfinite(level) or level <= 0 or fit.coeffs[0] == 0:
        return math.nan
    slope, intercept = fit.coeffs
    x = (math.log10(level) - intercept) / slope
    return float(10 ** x) if math.isfinite(x) and x < 300 else math.nan


def grad_rms_fits(runs: pd.DataFrame, sizes=(), column: str = "late_grad_rms") -> pd.DataFrame:
    """Per method and LR (runs that did not diverge): the log-log slope of gradient RMS against
    size, the size where it reaches the method's eps, and with 3+ sizes the largest size
    predicted from the others."""
    ok = runs[~runs["diverged"].astype(bool)] if "diverged" in runs else runs
    rows = []
    for method in sorted(set(ok["method"])):
        eps = float(runs.loc[runs["method"] == method, "eps"].median()) if "eps" in runs else math.nan
        cells = size_cells(ok, method, column, sizes).dropna(subset=["value", "params"])
        for lr, g in cells.groupby("lr"):
            if len(g) < 2:
                continue
            fit = fit_log_poly(g["params"].to_numpy(), g["value"].to_numpy(), degree=1)
            row = {"method": method, "lr": float(lr), "eps": eps, "sizes_fitted": len(g),
                   "slope": float(fit.coeffs[0]) if fit is not None else math.nan,
                   "params_at_eps": size_where_crossing(g["params"].to_numpy(), g["value"].to_numpy(), eps)}
            if len(g) >= 3:
                small = fit_log_poly(g["params"].to_numpy()[:-1], g["value"].to_numpy()[:-1], degree=1)
                row.update(held_out=str(g["size"].iloc[-1]), observed=float(g["value"].iloc[-1]),
                           predicted=predict_log_poly(small, float(g["params"].iloc[-1])) if small else math.nan)
            rows.append(row)
    return pd.DataFrame(rows)
