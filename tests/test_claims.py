"""Every shipped claim driven to every verdict it can reach, on synthetic runs tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from analysis_synthetic import L0, SIZES, benchmark, noise, runs_table, settings_for

from analysis.claim_checks import NO_VERDICT, PER_SIZE_SEEDS
from analysis.claim_stats import Context
from analysis.claims import (CONTRADICTED, INCONCLUSIVE, NOT_TESTABLE, SUPPORTED, ClaimError, check, claims_table,
                             load_claims, sentence)

CLAIMS_DIR = Path(__file__).resolve().parent.parent / "claims"
CLAIMS = {c["id"]: c for c in load_claims(CLAIMS_DIR)}
CURVATURE = {"curvature": {"title": "lr x lambda_max", "log_y": True, "headline": "lr_lambda_max",
                           "columns": ["lr_lambda_max"], "threshold": 38.0}}


def verdict(claim_id: str, runs: pd.DataFrame, families=None, **settings):
    res = check(CLAIMS[claim_id], Context.build(runs, settings_for(runs, **settings), families))
    return res


def swing(seed: int, d: float) -> float:
    """A per-seed difference of one method only: -d, 0, +d for seeds 0, 1, 2. Its mean is 0, so
    the estimate shows no effect while the bootstrap interval straddles 0: inconclusive."""
    return d * (seed - 1)


def curve(penalty: float):
    """Loss over the LR grid: best at the middle LR, the top LR raised by `penalty`."""
    return lambda li: [3.0, 2.6, 2.7 + penalty][li]


def compare_runs(method, against, how, seeds=(0, 1, 2), stat="lr_sensitivity", uses=None, sizes=SIZES[:2], extra=None):
    """Runs where `method` is better / worse / no different from `against` on lr_sensitivity
    (or on best_loss for stat='best_loss')."""
    def loss(m, si, li, seed):
        base = curve(0.6)(li) + noise(seed)
        if how == "same":
            return base + (swing(seed, 0.2) if (m == method and li == 2) else 0.0)
        better = (m == method) == (how == "better")
        if stat == "best_loss":
            return base - (0.2 if better else 0.0)
        return base - (0.5 if (better and li == 2) else 0.0)
    return runs_table(loss, [against, method], seeds=seeds, uses=uses, sizes=sizes, extra=extra)


# ---------------------------------------------------------------- compare: LR sensitivity

SENSITIVITY_CLAIMS = [("qk_layernorm_lowers_lr_sensitivity", "qk_layernorm", "baseline"),
                      ("longer_warmup_lowers_lr_sensitivity", "warmup_length", "baseline"),
                      ("independent_decay_lowers_lr_sensitivity", "independent_weight_decay", "coupled_weight_decay")]


@pytest.mark.parametrize("claim_id,method,against", SENSITIVITY_CLAIMS)
@pytest.mark.parametrize("how,expected", [("better", SUPPORTED), ("worse", CONTRADICTED), ("same", INCONCLUSIVE)])
def test_sensitivity_claims(claim_id, method, against, how, expected):
    res = verdict(claim_id, compare_runs(method, against, how))
    assert res.verdict == expected, sentence(res)
    # 3 seeds: the per-size rows carry numbers but no verdict; the mean over sizes decides
    assert [f.scope for f in res.findings] == ["s1", "s2", "across sizes"]
    assert [f.verdict for f in res.findings][:2] == [NO_VERDICT, NO_VERDICT]
    assert f"a per-size verdict needs >= {PER_SIZE_SEEDS}" in res.findings[0].detail
    five = verdict(claim_id, compare_runs(method, against, how, seeds=range(PER_SIZE_SEEDS)))
    assert five.verdict == expected and [f.scope for f in five.findings] == ["s1", "s2"]
    assert {f.verdict for f in five.findings} == {expected}


def test_no_per_size_verdict_on_three_seeds():
    """One size, 3 seeds: a verdict there would be a per-size verdict; 5 seeds give one."""
    runs = compare_runs("qk_layernorm", "baseline", "better", sizes=("s1",))
    res = verdict("qk_layernorm_lowers_lr_sensitivity", runs)
    assert res.verdict == NOT_TESTABLE and f"needs >= {PER_SIZE_SEEDS} seeds for a verdict at one size" in res.reason
    res = verdict("qk_layernorm_lowers_lr_sensitivity",
                  compare_runs("qk_layernorm", "baseline", "better", sizes=("s1",), seeds=range(5)))
    assert res.verdict == SUPPORTED and [f.scope for f in res.findings] == ["s1"]


@pytest.mark.parametrize("claim_id,method,against", SENSITIVITY_CLAIMS)
def test_sensitivity_claims_not_testable(claim_id, method, against):
    missing = verdict(claim_id, runs_table(lambda m, si, li, seed: 3.0, [against]))
    assert missing.verdict == NOT_TESTABLE and f"needs {method} beside {against}" in missing.reason
    one_seed = verdict(claim_id, compare_runs(method, against, "better", seeds=(0,)))
    assert one_seed.verdict == NOT_TESTABLE and one_seed.reason == "needs >= 2 seeds (this grid has 1)"


def test_methods_match_by_the_names_they_use():
    runs = compare_runs("qkln", "base", "better", uses={"qkln": "qk_layernorm", "base": "baseline"})
    res = verdict("qk_layernorm_lowers_lr_sensitivity", runs)  # reference: the first method, 'base'
    assert res.verdict == SUPPORTED and res.findings[0].method == "qkln" and res.findings[0].against == "base"


def test_one_size_supported_other_contradicted_is_inconclusive():
    def loss(m, si, li, seed):
        better = (m == "qk_layernorm") == (si == 0)
        return curve(0.6)(li) + noise(seed) - (0.5 if better and li == 2 else 0)
    res = verdict("qk_layernorm_lowers_lr_sensitivity", runs_table(loss, ["baseline", "qk_layernorm"], seeds=range(5)))
    assert res.verdict == INCONCLUSIVE and [f.verdict for f in res.findings] == [SUPPORTED, CONTRADICTED]


# ---------------------------------------------------------------- compare: log Z drift

@pytest.mark.parametrize("how,expected", [("better", SUPPORTED), ("worse", CONTRADICTED), ("same", INCONCLUSIVE)])
def test_z_loss_log_z_divergence(how, expected):
    def drift(m, si, li, seed):
        if how == "same":
            return 0.5 + (swing(seed, 0.3) if m == "nwd_z" else 0.0)
        low = (m == "nwd_z") == (how == "better")
        return (0.1 if low else 2.0) + noise(seed)
    runs = runs_table(lambda m, si, li, seed: 3.0, ["no_weight_decay", "nwd_z"],
                      uses={"nwd_z": "z_loss+no_weight_decay"}, extra={"log_z_divergence": drift})
    res = verdict("z_loss_keeps_log_z_from_drifting", runs)
    assert res.verdict == expected, sentence(res)
    assert all(f.method == "nwd_z" and f.against == "no_weight_decay" for f in res.findings)


@pytest.mark.parametrize("plain_falls,expected", [(True, SUPPORTED), (False, INCONCLUSIVE)])
def test_z_loss_claim_from_log_z_histories(plain_falls, expected):
    """From histories, through the aggregate step's run stats: without z-loss log Z falls from
    ln V through 0 to about -6 (the divergence of Wortsman 3.1.2) while z-loss pulls it from ln V
    toward 0 and no further: supported. When neither leaves [0, ln V], z-loss's pull alone is no
    evidence either way: inconclusive, never contradicted (a distance from each run's early
    value scored that pull as drift)."""
    from analysis.run_stats import add_run_stats
    runs = runs_table(lambda m, si, li, seed: 3.0, ["no_weight_decay", "nwd_z"], seeds=range(5),
                      uses={"nwd_z": "z_loss+no_weight_decay"})
    steps = np.arange(25, 201, 25)
    top = np.log(runs["vocab_size"].iloc[0])

    def log_z(r):
        if r.method == "nwd_z":
            return top - 0.3 * steps / 25
        end = -6.0 - 0.5 * r.seed if plain_falls else top - 0.1 - 0.02 * r.seed
        return np.linspace(top - 0.2, end, len(steps))
    histories = {r.run_dir: pd.DataFrame({"step": steps, "log_z_mean": log_z(r)}) for r in runs.itertuples()}
    runs = add_run_stats(runs, histories, {})
    assert (runs.loc[runs.method == "nwd_z", "log_z_divergence"] == 0).all()
    res = verdict("z_loss_keeps_log_z_from_drifting", runs, seeds=tuple(range(5)))
    assert res.verdict == expected, sentence(res)


def test_z_loss_claim_is_tested_without_weight_decay_only():
    """With weight decay there is no log-Z divergence for z-loss to prevent (Wortsman 3.1.2):
    z_loss against a baseline with decay is not what the claim tests."""
    drift = {"log_z_divergence": lambda m, si, li, seed: (0.1 if m == "z_loss" else 2.0) + noise(seed)}
    runs = runs_table(lambda m, si, li, seed: 3.0, ["baseline", "z_loss"], extra=drift)
    res = verdict("z_loss_keeps_log_z_from_drifting", runs)
    assert res.verdict == NOT_TESTABLE and res.reason.startswith("needs no_weight_decay+z_loss beside no_weight_decay")


def test_cpu_logits_benchmark_tests_the_z_loss_claim():
    """cpu_logits has one size: it has the no-weight-decay pair and the seeds a per-size verdict needs."""
    import yaml

    from analysis.settings import resolve
    from stabench.config import method_specs
    bench = yaml.safe_load((CLAIMS_DIR.parent / "benchmarks" / "cpu_logits.yaml").read_text())
    specs = method_specs(bench)
    assert len(bench["sizes"]) == 1 and len(bench["seeds"]) >= PER_SIZE_SEEDS
    drift = {"log_z_divergence": lambda m, si, li, seed: (0.1 if "z_loss" in specs[m]["use"] else 2.0) + noise(seed)}
    runs = runs_table(lambda m, si, li, seed: 3.0, list(specs), sizes=("s1",), seeds=bench["seeds"],
                      uses={m: v["use"] for m, v in specs.items()}, extra=drift)
    settings = resolve(benchmark(bench["methods"], sizes=("s1",), seeds=bench["seeds"]), runs)
    res = check(CLAIMS["z_loss_keeps_log_z_from_drifting"], Context.build(runs, settings))
    assert res.verdict == SUPPORTED, sentence(res)
    assert {(f.method, f.against) for f in res.findings} == {
        ("no_weight_decay+z_loss", "no_weight_decay"), ("no_weight_decay+z_loss_1e-2", "no_weight_decay")}


def test_z_loss_not_testable_without_the_column():
    runs = runs_table(lambda m, si, li, seed: 3.0, ["no_weight_decay", "nwd_z"], uses={"nwd_z": "z_loss+no_weight_decay"})
    res = verdict("z_loss_keeps_log_z_from_drifting", runs)
    assert res.verdict == NOT_TESTABLE and "log_z_divergence" in res.reason


# ---------------------------------------------------------------- trend: sensitivity vs size

@pytest.mark.parametrize("slope,expected", [(0.3, SUPPORTED), (-0.3, CONTRADICTED), (0.0, INCONCLUSIVE)])
def test_sensitivity_grows_with_size(slope, expected):
    def loss(m, si, li, seed):
        wobble = swing(seed, 0.2) * (si - 1) if (slope == 0 and li == 2) else 0.0
        return curve(0.6 + slope * si)(li) + noise(seed) + wobble
    res = verdict("lr_sensitivity_grows_with_size", runs_table(loss, ["baseline"], sizes=SIZES))
    assert res.verdict == expected, sentence(res)
    assert "per tenfold non-embedding parameters over 3 sizes" in res.findings[0].detail


def test_sensitivity_trend_needs_two_sizes():
    res = verdict("lr_sensitivity_grows_with_size", runs_table(lambda m, si, li, seed: 3.0, ["baseline"], sizes=("s1",)))
    assert res.verdict == NOT_TESTABLE and res.reason == "needs >= 2 sizes (this grid has 1)"


# ---------------------------------------------------------------- compare: best-LR drift across widths

def best_lr_runs(moves: dict, same_width=False):
    """moves[m]: does m's best LR move with width (index 2 at s1, index 0 at s3)?"""
    def loss(m, si, li, seed):
        best = (2 - si) if moves[m] else 1
        return 2.5 + 0.3 * abs(li - best) + noise(seed)
    runs = runs_table(loss, ["baseline", "mup_simple"], sizes=SIZES)
    return runs.assign(d_model=64) if same_width else runs


@pytest.mark.parametrize("moves,expected", [({"baseline": True, "mup_simple": False}, SUPPORTED),
                                            ({"baseline": False, "mup_simple": True}, CONTRADICTED),
                                            ({"baseline": False, "mup_simple": False}, INCONCLUSIVE)])
def test_mup_best_lr_transfers(moves, expected):
    res = verdict("mup_keeps_best_lr_fixed_across_widths", best_lr_runs(moves))
    assert res.verdict == expected, sentence(res)
    assert [f.scope for f in res.findings] == ["across sizes"]


def test_mup_needs_two_widths():
    res = verdict("mup_keeps_best_lr_fixed_across_widths", best_lr_runs({"baseline": True, "mup_simple": False}, True))
    assert res.verdict == NOT_TESTABLE and "widths" in res.reason


# ---------------------------------------------------------------- holdout prediction

def attention_runs(observed_s3, sizes=SIZES):
    """Early logits 2, 20, 200 at every size (x per LR); s1, s2 diverge at the top LR only; s3
    diverges where observed_s3 says."""
    logits = [2.0, 20.0, 200.0]
    def loss(m, si, li, seed):
        div = observed_s3[li] if si == 2 else li == 2
        return None if div else 3.0
    return runs_table(loss, ["baseline"], sizes=sizes,
                      extra={"early_attn_logit": lambda m, si, li, seed: logits[li] * (1 + 0.01 * seed)})


@pytest.mark.parametrize("observed,expected", [((False, False, True), SUPPORTED), ((True, True, False), CONTRADICTED),
                                               ((False, True, True), INCONCLUSIVE)])
def test_attention_logits_predict_divergence(observed, expected):
    res = verdict("attention_logits_predict_divergence", attention_runs(observed))
    assert res.verdict == expected, sentence(res)
    assert "fitted on the 2 smaller sizes (a line in log-size)" in res.findings[0].detail


def test_attention_prediction_inconclusive_when_nothing_to_tell_apart_or_calibrate():
    top = {0: 200.0, 1: 60.0, 2: 18.0}  # the top LR's early logit falls with size: s3 predicted stable
    runs = runs_table(lambda m, si, li, seed: None if (li == 2 and si < 2) else 3.0, ["baseline"], sizes=SIZES,
                      extra={"early_attn_logit": lambda m, si, li, seed: top[si] if li == 2 else 2.0 + 9 * li})
    res = verdict("attention_logits_predict_divergence", runs)
    assert res.verdict == INCONCLUSIVE and "3 of 3" in res.findings[0].detail
    assert "nothing to tell apart" in res.findings[0].detail
    no_div = runs_table(lambda m, si, li, seed: 3.0, ["baseline"], sizes=SIZES,
                        extra={"early_attn_logit": lambda m, si, li, seed: 5.0 * (li + 1)})
    res = verdict("attention_logits_predict_divergence", no_div)
    assert res.verdict == INCONCLUSIVE and "calibrate" in res.findings[0].detail


def test_attention_prediction_not_testable():
    res = verdict("attention_logits_predict_divergence", attention_runs((False, False, True), sizes=SIZES[:2]))
    assert res.verdict == NOT_TESTABLE and res.reason == "needs >= 3 sizes (this grid has 2)"
    res = verdict("attention_logits_predict_divergence",
                  attention_runs((False, False, True)).drop(columns="early_attn_logit"))
    assert res.verdict == NOT_TESTABLE and "attention-logit probe" in res.reason


# ---------------------------------------------------------------- largest stable LR

def stability_runs(method, against, diverge_from: dict, extra_methods=()):
    def loss(m, si, li, seed):
        return None if li >= diverge_from.get(m, 99) else 3.0 - 0.1 * li + noise(seed)
    return runs_table(loss, [against, method, *extra_methods])


@pytest.mark.parametrize("claim_id,method,against", [("wesar_trains_at_higher_lrs", "wesar", "small_init"),
                                                     ("wesar_trains_at_higher_lrs", "wesar", "he_init"),
                                                     ("seq_len_warmup_allows_larger_lrs", "seq_len_warmup", "baseline")])
@pytest.mark.parametrize("diverge,expected", [((99, 2), SUPPORTED), ((1, 99), CONTRADICTED), ((2, 2), INCONCLUSIVE)])
def test_largest_stable_lr(claim_id, method, against, diverge, expected):
    res = verdict(claim_id, stability_runs(method, against, {method: diverge[0], against: diverge[1]}))
    assert res.verdict == expected, sentence(res)


def test_wesar_against_both_inits_and_not_testable():
    runs = stability_runs("wesar", "small_init", {"wesar": 99, "small_init": 2, "he_init": 1}, ("he_init",))
    res = verdict("wesar_trains_at_higher_lrs", runs)
    assert res.verdict == SUPPORTED and {f.against for f in res.findings} == {"small_init", "he_init"}
    res = verdict("wesar_trains_at_higher_lrs", runs_table(lambda m, si, li, seed: 3.0, ["baseline", "wesar"]))
    assert res.verdict == NOT_TESTABLE and res.reason == "needs wesar beside small_init or wesar beside he_init"


def test_a_method_that_changes_what_the_lr_means_is_named_in_lr_grid_findings():
    """A method flagged CHANGES_LR_MEANING takes a different step at the same peak LR: a finding on
    the LR grid says so (the verdict stands: it is what the raw grid shows); one on best loss,
    where each method sits at its own best LR, does not."""
    runs = stability_runs("wesar", "small_init", {"wesar": 1, "small_init": 99})
    runs["changes_lr_meaning"] = runs["method"] == "wesar"
    res = verdict("wesar_trains_at_higher_lrs", runs)
    assert res.verdict == CONTRADICTED
    assert all("wesar changes what the peak LR means" in f.detail for f in res.findings)
    runs = compare_runs("adam_atan2", "baseline", "better", stat="best_loss")
    runs["changes_lr_meaning"] = runs["method"] == "adam_atan2"
    assert not any("peak LR means" in f.detail for f in verdict("adam_atan2_matches_adam", runs).findings)


# ---------------------------------------------------------------- equivalence: Adam-atan2

@pytest.mark.parametrize("how,expected", [("equal", SUPPORTED), ("worse", CONTRADICTED), ("noisy", INCONCLUSIVE)])
def test_adam_atan2_matches_adam(how, expected):
    def loss(m, si, li, seed):
        base = curve(0.3)(li) + noise(seed)
        if m == "adam_atan2" and how == "worse":
            return base + 0.2
        if how == "noisy":
            return base + (swing(seed, 0.05) if m == "adam_atan2" else 0.0)
        return base + (0.001 if m == "adam_atan2" else 0.0)
    res = verdict("adam_atan2_matches_adam", runs_table(loss, ["baseline", "adam_atan2"]))
    assert res.verdict == expected, sentence(res)
    assert "margin +-0.02" in res.findings[0].detail


# ---------------------------------------------------------------- Everett et al.: parameterization, epsilon

@pytest.mark.parametrize("how,expected", [("better", SUPPORTED), ("worse", CONTRADICTED), ("same", INCONCLUSIVE)])
def test_sp_per_layer_lr_beats_mup(how, expected):
    """Best loss (each method at its own best LR) of sp_per_layer_lr against everett_mup; the two
    methods' best LRs differ, which the statistic ignores."""
    def loss(m, si, li, seed):
        best = 1 if m == "sp_per_layer_lr" else 2
        base = 2.5 + 0.3 * abs(li - best) + noise(seed)
        if how == "same":
            return base + (swing(seed, 0.1) if m == "sp_per_layer_lr" else 0.0)
        better = (m == "sp_per_layer_lr") == (how == "better")
        return base - (0.1 if better else 0.0)
    res = verdict("sp_per_layer_lr_beats_mup", runs_table(loss, ["everett_mup", "sp_per_layer_lr"]))
    assert res.verdict == expected, sentence(res)
    assert res.findings[-1].scope == "across sizes" and res.findings[-1].method == "sp_per_layer_lr"


def test_sp_per_layer_lr_needs_two_widths():
    runs = runs_table(lambda m, si, li, seed: 3.0, ["everett_mup", "sp_per_layer_lr"]).assign(d_model=64)
    res = verdict("sp_per_layer_lr_beats_mup", runs)
    assert res.verdict == NOT_TESTABLE and "widths" in res.reason


EPS = ["eps_1e-6", "eps_width_scaled", "eps_1e-15", "adam_atan2"]
EPS_SPECS = [{"label": "eps_1e-6", "use": "adam_eps", "args": {"adam_eps": {"eps": 1e-6}}}, "eps_width_scaled",
             {"label": "eps_1e-15", "use": "adam_eps", "args": {"adam_eps": {"eps": 1e-15}}}, "adam_atan2"]


def eps_verdict(runs):
    from analysis.settings import resolve
    sizes = tuple(dict.fromkeys(runs["size"]))
    settings = resolve(benchmark(EPS_SPECS, sizes=sizes, reference="eps_width_scaled"), runs)
    return check(CLAIMS["fixed_eps_falls_behind_with_width"], Context.build(runs, settings))


@pytest.mark.parametrize("how,expected", [("grows", SUPPORTED), ("shrinks", CONTRADICTED), ("flat", INCONCLUSIVE)])
def test_fixed_eps_falls_behind_with_width(how, expected):
    """eps_1e-6's best loss minus each comparison's, against size: growing with width (gradient
    underflow), shrinking, or flat with seed noise."""
    def loss(m, si, li, seed):
        base = curve(0.3)(li) + noise(seed)
        if m != "eps_1e-6":
            return base
        if how == "flat":
            return base + 0.05 + swing(seed, 0.05) * (si - 1)
        return base + (0.05 * si if how == "grows" else 0.1 - 0.05 * si)
    uses = {"eps_1e-6": "adam_eps", "eps_1e-15": "adam_eps"}
    res = eps_verdict(runs_table(loss, EPS, sizes=SIZES, uses=uses))
    assert res.verdict == expected, sentence(res)
    assert {(f.method, f.against) for f in res.findings} == {("eps_1e-6", m) for m in EPS[1:]}
    assert "minus eps_width_scaled's" in " ".join(f.detail for f in res.findings)


def test_eps_claim_not_testable():
    res = verdict("fixed_eps_falls_behind_with_width", runs_table(lambda m, si, li, seed: 3.0, ["baseline", "adam_atan2"]))
    assert res.verdict == NOT_TESTABLE and res.reason.startswith("needs eps_1e-6 beside eps_width_scaled")
    runs = runs_table(lambda m, si, li, seed: 3.0, EPS, sizes=SIZES[:1])
    assert eps_verdict(runs).reason == "needs >= 2 sizes (this grid has 1)"


# ---------------------------------------------------------------- curvature and spikes

def spike_runs(spikes, near, near_steps, n=6):
    cols = {"spikes/curvature": lambda m, si, li, s: float(spikes), "spikes_near/curvature": lambda m, si, li, s: float(near),
            "near_steps/curvature": lambda m, si, li, s: float(near_steps)}
    return runs_table(lambda m, si, li, seed: 3.0, ["baseline"], extra=cols)


@pytest.mark.parametrize("near,near_steps,expected", [(2, 10, SUPPORTED), (0, 50, CONTRADICTED), (1, 50, INCONCLUSIVE)])
def test_spikes_coincide_with_curvature(near, near_steps, expected):
    res = verdict("spikes_coincide_with_curvature", spike_runs(2, near, near_steps), CURVATURE)
    assert res.verdict == expected, sentence(res)


def test_spikes_not_testable():
    res = verdict("spikes_coincide_with_curvature", spike_runs(2, 2, 10), {})
    assert res.verdict == NOT_TESTABLE and "set probes.curvature_every > 0" in res.reason
    res = verdict("spikes_coincide_with_curvature", spike_runs(0, 0, 10), CURVATURE)
    assert res.verdict == NOT_TESTABLE and "loss spikes" in res.reason


@pytest.mark.parametrize("how,expected", [("better", SUPPORTED), ("worse", CONTRADICTED), ("same", INCONCLUSIVE)])
def test_depth_warmup_lowers_curvature(how, expected):
    def peak(m, si, li, seed):
        if how == "same":
            return 40.0 * 10 ** (swing(seed, 0.3) if m == "depth_warmup" else 0.0)
        low = (m == "depth_warmup") == (how == "better")
        return (10.0 if low else 80.0) * (1 + 0.05 * seed)
    runs = runs_table(lambda m, si, li, seed: 3.0, ["baseline", "depth_warmup"], extra={"peak/curvature": peak})
    res = verdict("depth_warmup_lowers_curvature", runs, CURVATURE)
    assert res.verdict == expected, sentence(res)
    res = verdict("depth_warmup_lowers_curvature", runs, {})
    assert res.verdict == NOT_TESTABLE and res.reason == "needs the lr_lambda_max probe (set probes.curvature_every > 0)"


def test_depth_warmup_not_testable_on_one_block_sizes():
    """Depth warm-up cannot act on a one-block model (it trains as the baseline there): the
    claim is not testable on a grid of one-block sizes, and one-block sizes are left out of a
    grid that also has deeper ones, never judged as if the method had acted."""
    def peak(m, si, li, seed):
        return (10.0 if m == "depth_warmup" else 80.0) * (1 + 0.05 * seed)
    layers = {0: 1, 1: 2, 2: 3}
    runs = runs_table(lambda m, si, li, seed: 3.0, ["baseline", "depth_warmup"], sizes=SIZES,
                      extra={"peak/curvature": peak, "n_layers": lambda m, si, li, s: float(layers[si])})
    res = verdict("depth_warmup_lowers_curvature", runs, CURVATURE)
    assert res.verdict == SUPPORTED, sentence(res)
    assert [f.scope for f in res.findings] == ["s2", "s3", "across sizes"]
    assert all("sizes of fewer than 2 layers left out (s1)" in f.detail for f in res.findings)
    one = runs.assign(n_layers=1.0)
    res = verdict("depth_warmup_lowers_curvature", one, CURVATURE)
    assert res.verdict == NOT_TESTABLE and not res.findings
    assert res.reason == "needs sizes of >= 2 layers: depth_warmup cannot act on fewer (this grid's sizes have 1 at most)"
    assert "not testable here: needs sizes of >= 2 layers" in sentence(res)
    # one deep size and 3 seeds: the mean over sizes needs two deep sizes
    res = verdict("depth_warmup_lowers_curvature", runs.assign(n_layers=runs["size"].map({"s1": 1.0, "s2": 1.0, "s3": 2.0})),
                  CURVATURE)
    assert res.verdict == NOT_TESTABLE and "needs >= 5 seeds for a verdict at one size" in res.reason


def test_two_selectors_naming_one_label_give_one_pair():
    """z-loss's claim names the pair by the methods used and by a label; a grid whose only
    z-loss label matches both is tested once."""
    runs = compare_runs("no_weight_decay+z_loss_1e-2", "no_weight_decay", "better",
                        uses={"no_weight_decay+z_loss_1e-2": "no_weight_decay+z_loss"},
                        extra={"log_z_divergence": lambda m, si, li, s: (0.1 if m != "no_weight_decay" else 1.0) + 0.01 * s})
    plain = runs.assign(method=runs["uses"])  # the synthetic benchmark takes method names, not labels
    res = check(CLAIMS["z_loss_keeps_log_z_from_drifting"], Context.build(runs, settings_for(plain)))
    assert res.verdict == SUPPORTED, sentence(res)
    assert {(f.method, f.against) for f in res.findings} == {("no_weight_decay+z_loss_1e-2", "no_weight_decay")}
    assert len(res.findings) == 3


# ---------------------------------------------------------------- files, table, sentences

def test_shipped_claims_load_and_every_test_kind_is_covered():
    assert len(CLAIMS) == 14
    for c in CLAIMS.values():  # every claim names its section and quotes (or marks a paraphrase) one line
        assert c["section"] and c["quote"] and "\n" not in c["quote"], c["id"]
    assert {c["test"] for c in CLAIMS.values()} == {"compare", "trend", "holdout_prediction", "spike_coincidence"}


def test_claim_selection_and_errors(tmp_path):
    assert [c["id"] for c in load_claims(CLAIMS_DIR, ("adam_atan2_matches_adam",))] == ["adam_atan2_matches_adam"]
    with pytest.raises(ClaimError, match="unknown claim id"):
        load_claims(CLAIMS_DIR, ("nope",))
    (tmp_path / "schema.yaml").write_text((CLAIMS_DIR / "schema.yaml").read_text())
    (tmp_path / "mine.yaml").write_text("id: x\nclaim: c\nsource: s\nsection: '1'\nquote: q\ntest: compare\nfigure: loss_vs_lr\ndirection: up\n")
    with pytest.raises(ClaimError, match="mine.yaml: direction"):
        load_claims(tmp_path)
    (tmp_path / "mine.yaml").write_text("- {id: x, claim: c, source: s, test: trend, method: m, figure: log_z}\n")
    with pytest.raises(ClaimError, match="'section' is a required property"):
        load_claims(tmp_path)
    (tmp_path / "mine.yaml").write_text("- {id: x, claim: c, source: s, section: '1', quote: q, test: trend, method: m, figure: nope}\n")
    with pytest.raises(ClaimError, match="figure 'nope'"):
        load_claims(tmp_path)
    (tmp_path / "mine.yaml").write_text("- {id: x, claim: c, source: s, section: '1', quote: q, test: trend, method: m, figure: log_z}\n"
                                        "- {id: x, claim: c, source: s, section: '1', quote: q, test: trend, method: m, figure: log_z}\n")
    with pytest.raises(ClaimError, match="already used"):
        load_claims(tmp_path)


def test_claims_table_rows_and_sentences():
    runs = compare_runs("qk_layernorm", "baseline", "better")
    ctx = Context.build(runs, settings_for(runs))
    results = [check(c, ctx) for c in CLAIMS.values()]
    table = claims_table(results, 0.95)
    qk = table[table["claim_id"] == "qk_layernorm_lowers_lr_sensitivity"]
    assert list(qk["scope"]) == ["s1", "s2", "across sizes"] and set(qk["verdict"]) == {SUPPORTED}
    assert list(qk["scope_verdict"]) == [NO_VERDICT, NO_VERDICT, SUPPORTED]
    assert (qk["seeds"] == 3).all() and (qk["seeds_for_size_verdict"] == PER_SIZE_SEEDS).all()
    assert (qk["ci_high"] < 0).all() and (qk["figure"] == "figures/loss_vs_lr.png").all()
    assert qk["sentence"].iloc[0].startswith("qk-layernorm lowers LR sensitivity: supported across sizes (s1: ")
    assert "95 % CI" in qk["sentence"].iloc[0] and (qk["summary"] == "supported across sizes").all()
    assert qk["detail"].iloc[:2].str.contains("qk_layernorm's LR sensitivity is 0.167 nats below baseline's").all()
    assert qk["detail"].iloc[2].startswith("mean over 2 sizes, qk_layernorm's LR sensitivity minus baseline's is -0.167")
    untested = table[table["verdict"] == NOT_TESTABLE]
    assert len(untested) == len(CLAIMS) - 2 and untested["detail"].str.startswith("needs").all()
    assert set(table["claim_id"]) == set(CLAIMS)
    assert L0 not in table["estimate"].tolist()
    row = table.set_index("claim_id").loc["adam_atan2_matches_adam"]
    assert row["section"] == "Abstract" and row["quote"].startswith("Finally, we demonstrate") and not row["paraphrase"]
    assert bool(table.set_index("claim_id").loc["longer_warmup_lowers_lr_sensitivity", "paraphrase"])


# ---------------------------------------------------------------- the claims_cpu benchmark

@pytest.mark.parametrize("name", ["claims_cpu", "proxies"])
def test_the_claims_benchmarks_give_every_shipped_claim_a_verdict(name):
    """benchmarks/claims_cpu.yaml (2 CPU cores) and proxies.yaml (one GPU) have what every shipped
    claim needs (the methods of a pair, sizes, widths, blocks, seeds): on a runs table of their
    grid, with made-up numbers and the curvature probe, no claim is 'not testable here'."""
    import numpy as np

    from analysis.settings import resolve
    from stabench.config import BENCHMARKS_DIR, load_benchmark
    from stabench.resources import parameter_count

    bench = load_benchmark(BENCHMARKS_DIR / f"{name}.yaml")
    if name == "claims_cpu":
        assert bench["train"]["device"] in ("auto", "cpu") and bench["eval"]["runs"] == "none"
    assert len(bench["seeds"]) >= 3 and len(bench["sizes"]) >= 3
    rng = np.random.default_rng(0)
    rows = []
    for spec in bench["methods"]:
        label, use = (spec, spec) if isinstance(spec, str) else (spec.get("label", spec["use"]), spec["use"])
        for s, shape in bench["sizes"].items():
            params = parameter_count(shape, 0, 0)
            for li, lr in enumerate(bench["learning_rates"]):
                for seed in bench["seeds"]:
                    rows.append({"method": label, "uses": use, "size": s, "lr": lr, "seed": seed,
                                 "final_val_loss": 6.0 + 0.3 * abs(li - 1) + 0.05 * rng.standard_normal(),
                                 "diverged": li == len(bench["learning_rates"]) - 1 and s != min(bench["sizes"]),
                                 "init_loss": 7.7, "n_params": params + 2 * 2048 * shape["d_model"],
                                 "n_params_non_embedding": params, "d_model": shape["d_model"],
                                 "n_layers": shape["n_layers"], "vocab_size": 2048, "eps": 1e-8,
                                 "steps": 150.0, "planned_steps": 150.0, "changes_lr_meaning": False,
                                 "log_z_divergence": 1 + rng.random(), "early_attn_logit": 10.0 ** (li + 0.1 * params ** 0.25),
                                 "peak/curvature": 40 * (1 + rng.random()), "spikes/curvature": 2.0,
                                 "spikes_near/curvature": 1.0, "near_steps/curvature": 50.0,
                                 "run_dir": f"runs/{label}/{s}/lr{lr:g}-s{seed}"})
    runs = pd.DataFrame(rows)
    ctx = Context.build(runs, resolve(bench, runs), CURVATURE)
    results = {cid: check(claim, ctx) for cid, claim in CLAIMS.items()}
    untested = {cid: r.reason for cid, r in results.items() if r.verdict == NOT_TESTABLE}
    assert not untested
    assert all(r.findings for r in results.values())
