"""Per-run probe statistics, instability prediction and probe families, on hand-made histories."""

import math

import numpy as np
import pandas as pd
import pytest
from analysis_synthetic import SIZES, runs_table

from analysis.predict import (extrapolate_attention, fit_log_poly, grad_rms_fits, holdout_attention,
                              size_where_crossing)
from analysis.probe_families import crossing_counts, declared_families, family_of, family_values
from analysis.run_stats import add_run_stats, early_steps, late_mean, log_z_divergence


def test_late_mean_averages_the_tail():
    h = pd.DataFrame({"step": [10, 20, 30, 40, 50], "g": [5.0, 4.0, 3.0, 2.0, 1.0]})
    assert late_mean(h, "g", tail=0.2) == pytest.approx((2.0 + 1.0) / 2)  # steps >= 0.8 * 50
    assert math.isnan(late_mean(h, "missing"))


V = 2048  # ln V = 7.62: where every run's log Z starts (small initial logits)


def test_log_z_inside_its_healthy_range_is_no_divergence():
    """Moving inside [0, ln V] is learning or z-loss's own pull toward 0: it counts nothing."""
    steps = [25, 50, 75, 100, 125]
    z_loss_pull = pd.DataFrame({"step": steps, "log_z_mean": [7.4, 6.5, 5.9, 5.5, 5.3]})
    still = pd.DataFrame({"step": steps, "log_z_mean": [7.4, 7.4, 7.3, 7.35, 7.3]})
    assert log_z_divergence(z_loss_pull, V) == 0.0 and log_z_divergence(still, V) == 0.0


def test_log_z_diverging_downward_counts_as_divergence():
    """Output-logit divergence (Wortsman 3.1.2): the logits become very negative, log Z falls from
    ~ln V through 0 and beyond. A fall to -6 is 6 nats of divergence, however far it fell from its
    start; a rise above ln V counts the same way; a NaN reading or a missing vocabulary gives NaN."""
    steps = [0, 25, 50, 75, 100]
    falls = pd.DataFrame({"step": steps, "log_z_mean": [8.0, 4.0, 0.0, -4.0, -6.0]})
    assert log_z_divergence(falls, V, tail=0.1) == pytest.approx(6.0)
    assert log_z_divergence(falls, V, tail=0.3) == pytest.approx((4.0 + 6.0) / 2)
    rises = pd.DataFrame({"step": steps, "log_z_mean": [8.0, 9.0, 10.0, 11.0, 11.62]})
    assert log_z_divergence(rises, V, tail=0.1) == pytest.approx(11.62 - math.log(V))
    assert math.isnan(log_z_divergence(falls, math.nan))
    assert math.isnan(log_z_divergence(pd.DataFrame({"step": steps}), V))


def test_a_diverged_run_has_no_log_z_divergence_reading():
    """A run whose loss diverged is counted by the loss statistics; its last log Z readings
    describe the blow-up, so the column is NaN and a compare averages over the LRs both trained."""
    runs = pd.DataFrame([
        {"method": "a", "size": "s", "lr": lr, "steps": 100, "planned_steps": 100, "run_dir": d,
         "diverged": div, "vocab_size": V} for lr, d, div in ((0.1, "ok", False), (1.0, "div", True))])
    hist = {d: pd.DataFrame({"step": [25, 50], "log_z_mean": [-3.0, -9.0]}) for d in ("ok", "div")}
    out = add_run_stats(runs, hist, {}).set_index("run_dir")["log_z_divergence"]
    assert out["ok"] == pytest.approx(9.0) and math.isnan(out["div"])


def test_early_point_is_the_same_step_for_every_run_of_a_size():
    """A diverged run (truncated at step 30) is read at the size's early step, not at 2 % of its
    own length; a method that plans more steps does not move the size's early step."""
    runs = pd.DataFrame([
        {"method": "a", "size": "s", "lr": 0.1, "steps": 1000, "planned_steps": 1000, "run_dir": "ok", "diverged": False},
        {"method": "a", "size": "s", "lr": 1.0, "steps": 30, "planned_steps": 1000, "run_dir": "div", "diverged": True},
        {"method": "b", "size": "s", "lr": 0.1, "steps": 2000, "planned_steps": 2000, "run_dir": "long", "diverged": False},
    ])
    steps = np.arange(0, 1001, 10)
    hist = {d: pd.DataFrame({"step": steps[: n], "attn_logit_max_l0": np.arange(n) + 1.0})
            for d, n in (("ok", 101), ("div", 4), ("long", 101))}
    assert early_steps(runs, hist) == {"s": 20.0}  # 2 % of 1000, the most common plan
    out = add_run_stats(runs, hist, {}).set_index("run_dir")
    assert list(out["early_step"]) == [20.0, 20.0, 20.0]
    assert out.loc["ok", "early_attn_logit"] == 3.0 and out.loc["div", "early_attn_logit"] == 3.0
    runs.loc[1, "steps"] = 10  # diverged before the early step: no value, not a later one
    hist["div"] = hist["div"].iloc[:2]
    assert math.isnan(add_run_stats(runs, hist, {}).set_index("run_dir").loc["div", "early_attn_logit"])


def early_runs(sizes=SIZES):
    """log10(logit) = exact quadratic in log10(non-embedding params)."""
    from analysis_synthetic import PARAMS
    true = lambda n: 10 ** (0.5 * math.log10(n) ** 2 - 4 * math.log10(n) + 9)  # noqa: E731
    return runs_table(lambda m, si, li, seed: 3.0, ["a"], sizes=sizes, lrs=(0.1,), seeds=(0,),
                      extra={"early_attn_logit": lambda m, si, li, seed: true(PARAMS[sizes[si]])}), true


def test_quadratic_with_three_sizes_fits_exactly_and_the_holdout_uses_a_line():
    runs, true = early_runs()
    ext = extrapolate_attention(runs, "a", SIZES).iloc[0]
    assert ext["degree"] == 2 and ext["exact_fit"]
    assert ext["predicted_logit_2x"] == pytest.approx(true(192_000 * 2), rel=1e-6)
    held = holdout_attention(runs, "a", 1e4, SIZES).iloc[0]
    line = fit_log_poly(np.array([12_000.0, 48_000.0]), np.array([true(12_000), true(48_000)]))
    assert held["held_out"] == "s3" and held["fit_sizes"] == 2
    assert held["predicted_logit"] == pytest.approx(10 ** line(math.log10(192_000)), rel=1e-6)
    assert held["observed_logit"] == pytest.approx(true(192_000))


def test_size_is_non_embedding_parameters():
    runs, _ = early_runs()
    runs["n_params"] = 1e9  # the total count must not be used
    held = holdout_attention(runs, "a", 1e4, SIZES).iloc[0]
    assert held["predicted_logit"] < 1e6


def test_grad_rms_fit_is_per_method_with_its_own_eps():
    from analysis_synthetic import PARAMS
    rms = {"a": lambda n: 1e-3 * (n / 1e4) ** -1.0, "b": lambda n: 1e-2 * (n / 1e4) ** -0.5}
    runs = runs_table(lambda m, si, li, seed: 3.0, ["a", "b"], sizes=SIZES, lrs=(0.01,), seeds=(0,),
                      extra={"late_grad_rms": lambda m, si, li, seed: rms[m](PARAMS[SIZES[si]])})
    runs.loc[runs["method"] == "b", "eps"] = 1e-6
    fits = grad_rms_fits(runs, SIZES).set_index("method")
    assert fits.loc["a", "slope"] == pytest.approx(-1.0) and fits.loc["b", "slope"] == pytest.approx(-0.5)
    assert fits.loc["a", "params_at_eps"] == pytest.approx(1e4 * 1e5, rel=1e-6)     # 1e-3 -> 1e-8
    assert fits.loc["b", "params_at_eps"] == pytest.approx(1e4 * 1e8, rel=1e-6)     # 1e-2 -> 1e-6
    assert fits.loc["a", "predicted"] == pytest.approx(fits.loc["a", "observed"])  # exact power law
    assert size_where_crossing(np.array([1e6, 1e7]), np.array([1e-3, 1e-4]), 1e-8) == pytest.approx(1e11)


FAMILIES = {"curv": {"title": "lr x lambda", "log_y": True, "headline": "curv", "columns": ["curv"], "threshold": 38.0},
            "gates": {"title": "gates", "log_y": False, "headline": None, "columns": ["gate/a", "gate/b"],
                      "threshold": None}}


def test_declared_families_union_and_values(tmp_path):
    import json
    for i, fams in enumerate([{"gates": {**FAMILIES["gates"], "columns": ["gate/a"]}},
                              {"gates": FAMILIES["gates"], "curv": FAMILIES["curv"]}]):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "metrics.json").write_text(json.dumps({"probe_families": fams}))
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "metrics.json").write_text("{}")
    fams = declared_families([tmp_path / "0", tmp_path / "1", tmp_path / "old"])
    assert list(fams) == ["gates", "curv"] and fams["gates"]["columns"] == ["gate/a", "gate/b"]
    h = pd.DataFrame({"step": [10, 20], "gate/a": [1.0, 3.0], "gate/b": [3.0, 5.0], "curv": [1.0, 50.0]})
    assert list(family_values(h, fams["gates"])) == [2.0, 4.0] and list(family_values(h, fams["curv"])) == [1.0, 50.0]
    assert family_of(fams, "gate/b") == "gates" and family_of(fams, "curv") == "curv" and family_of(fams, "x") is None


def test_spike_crossing_counts():
    h = pd.DataFrame({"step": [10, 20, 30, 40, 50], "curv": [1.0, 50.0, 1.0, 1.0, 1.0]})
    c = crossing_counts(h, FAMILIES["curv"], spike_steps=[22, 45], steps=50)
    # near = within one probe interval (10 steps) of step 20: steps 10..30
    assert c == {"spikes": 2.0, "spikes_near": 1.0, "near_steps": 21.0, "steps": 50.0}
    none = crossing_counts(h.assign(curv=1.0), FAMILIES["curv"], [22], 50)
    assert none["spikes_near"] == 0 and none["near_steps"] == 0
