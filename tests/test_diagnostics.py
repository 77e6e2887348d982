"""Instability prediction and probe diagnostics, on hand-made histories."""

import math

import numpy as np
import pandas as pd
import pytest

from analysis.diagnostics import log_z_drift, probe_panels
from analysis.predict import (early_attention_logits, fit_log_poly, late_mean, predict_instability,
                              size_where_crossing, value_at_fraction)


def test_value_at_fraction_takes_first_probe_at_or_after_it():
    h = pd.DataFrame({"step": [0, 10, 20, 30], "x": [np.nan, 1.0, 2.0, 3.0]})
    assert value_at_fraction(h, "x", 0.5, steps=40) == 2.0
    assert value_at_fraction(h, "x", 0.01, steps=40) == 1.0  # before the first probe -> first probe
    assert math.isnan(value_at_fraction(h, "y", 0.5, steps=40))


def test_late_mean_averages_the_tail():
    h = pd.DataFrame({"step": [10, 20, 30, 40, 50], "g": [5.0, 4.0, 3.0, 2.0, 1.0]})
    assert late_mean(h, "g", tail=0.2) == pytest.approx((2.0 + 1.0) / 2)  # steps >= 0.8 * 50
    assert late_mean(h, "g", tail=0.4) == pytest.approx((3.0 + 2.0 + 1.0) / 3)


def test_quadratic_fit_in_log_size_extrapolates_exactly():
    # log10(y) = 0.5 * (log10 N)^2 - 5 * log10 N + 14, an exact quadratic
    true = lambda n: 10 ** (0.5 * math.log10(n) ** 2 - 5 * math.log10(n) + 14)
    sizes = [1e6, 3e6, 1e7]
    early = pd.DataFrame([{"method": "baseline", "size": f"s{i}", "lr": 0.1, "n_params": n,
                           "diverged": False, "early_logit": true(n)} for i, n in enumerate(sizes)])
    pred = predict_instability(early, "baseline", danger=1e4, extrapolate=(2.0,))
    (row,) = pred.to_dict("records")
    assert row["next_params"] == pytest.approx(2e7)
    assert row["predicted_logit"] == pytest.approx(true(2e7), rel=1e-6)
    assert row["predicted_diverged"] == (true(2e7) > 1e4)
    # holdout: a line through the two smaller sizes, compared with the largest's observed value
    line = fit_log_poly(np.array(sizes[:2]), np.array([true(n) for n in sizes[:2]]), degree=2)
    assert row["holdout_predicted"] == pytest.approx(10 ** line(math.log10(1e7)), rel=1e-6)
    assert row["holdout_observed_logit"] == pytest.approx(true(1e7))


def test_grad_rms_crossing_of_eps():
    params = np.array([1e6, 1e7, 1e8])
    rms = 1e-3 * (params / 1e6) ** -1.0  # falls 10x per 10x params
    assert size_where_crossing(params, rms, 1e-8) == pytest.approx(1e11, rel=1e-6)


def test_early_attention_logits_reads_each_runs_history():
    runs = pd.DataFrame([{"method": "baseline", "size": "a", "lr": 0.1, "n_params": 100, "diverged": False,
                          "steps": 100, "run_dir": "r1"}])
    hist = {"r1": pd.DataFrame({"step": [0, 1, 2, 3], "attn_logit_max_l0": [np.nan, 5.0, 6.0, 7.0]})}
    early = early_attention_logits(runs, hist, fraction=0.02)
    assert early.loc[0, "early_logit"] == 6.0  # 2% of 100 steps = step 2


def test_log_z_drift_is_change_of_distance_from_zero():
    away = pd.DataFrame({"step": [0, 10, 20, 30, 40, 50], "log_z_mean": [np.nan, 7.0, 8.0, 9.0, 10.0, 12.0]})
    assert log_z_drift(away, tail=0.2) == pytest.approx((10.0 + 12.0) / 2 - 7.0)  # steps >= 0.8 * 50
    toward = pd.DataFrame({"step": [10, 20, 30], "log_z_mean": [7.0, 3.0, -1.0]})
    assert log_z_drift(toward, tail=0.1) == pytest.approx(1.0 - 7.0)  # |log Z| fell: negative drift


def test_probe_panels_draw_families_present(tmp_path):
    runs = pd.DataFrame([{"method": m, "size": "s", "lr": 0.01, "run_dir": m, "diverged": False}
                         for m in ("a", "b")])
    hist = {m: pd.DataFrame({"step": [10, 20], "grad_rms_mean": [1e-3, 2e-3], "adam_v_max": [1.0, 2.0],
                             "gate/blocks.0.attn.q": [0.5, 0.6]}) for m in ("a", "b")}
    fig = probe_panels(runs, hist, "s", 0.01)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert any("gradient RMS" in t for t in titles) and any("gates" in t for t in titles)
    assert not any("curvature" in t for t in titles)
