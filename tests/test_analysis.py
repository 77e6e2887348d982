"""Scoring, intervals, ranks and the leaderboard, on hand-computed and synthetic runs tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from analysis_synthetic import L0, benchmark, noise, runs_table, settings_for

from analysis.bootstrap import grid_of, resample
from analysis.leaderboard import leaderboard
from analysis.runs import effective_loss, with_effective_loss
from analysis.sensitivity import score
from analysis.settings import SettingsError, reference_of, resolve


def run(method="a", size="s1", lr=1e-3, seed=0, loss=3.0, init=7.5):
    return dict(method=method, size=size, lr=lr, seed=seed, final_val_loss=loss, init_loss=init,
                diverged=loss is None)


def scores_of(rows, **kw) -> pd.DataFrame:
    runs = pd.DataFrame(rows)
    return score(runs, settings_for(runs, **kw))[0]


def one(scores, method="a", size="s1"):
    return scores[(scores["method"] == method) & (scores["size"] == size)].iloc[0]


# ---------------------------------------------------------------- one l0 per benchmark

def test_effective_loss_rules():
    assert effective_loss(3.0, False, 7.0) == 3.0
    assert effective_loss(9.0, False, 7.0) == 7.0            # clipped to l0
    assert effective_loss(2.0, True, 7.0) == 7.0             # diverged counts as l0
    assert effective_loss(float("nan"), False, 7.0) == 7.0   # non-finite counts as l0
    assert effective_loss(None, False, 7.0) == 7.0
    assert math.isnan(effective_loss(None, True, float("nan")))


def test_l0_is_ln_vocab_unless_the_benchmark_sets_it():
    runs = pd.DataFrame([run()]).assign(vocab_size=512.0)
    bench = benchmark(["a"], sizes=("s1",))
    bench["analysis"].pop("l0")
    s = resolve(bench, runs)
    assert s.l0 == pytest.approx(math.log(512)) and "512" in s.l0_source
    bench["analysis"]["l0"] = 5.0
    assert resolve(bench, runs).l0 == 5.0
    with pytest.raises(SettingsError, match="vocab_size"):
        resolve(benchmark(["a"], sizes=("s1",), l0=None), pd.concat([runs, runs.assign(vocab_size=1024.0)]))


def test_equal_final_losses_with_different_init_losses_score_equally():
    """Per-run init losses differ by method; the benchmark's one l0 makes them irrelevant."""
    rows = []
    for method, init in (("a", 8.1), ("b", 7.8)):
        rows += [run(method, lr=1e-3, loss=3.0, init=init), run(method, lr=1e-2, loss=2.5, init=init),
                 run(method, lr=1e-1, loss=None, init=init)]
    s = scores_of(rows)
    assert one(s, "a")["lr_sensitivity"] == one(s, "b")["lr_sensitivity"] == pytest.approx((0.5 + 0 + (L0 - 2.5)) / 3)


def test_sensitivity_three_lr_grid_hand_computed():
    s = scores_of([run(lr=1e-3, loss=3.0), run(lr=3e-3, loss=2.5), run(lr=1e-2, loss=None)])
    r = one(s)
    assert r["lr_sensitivity"] == pytest.approx(((3.0 - 2.5) + 0 + (L0 - 2.5)) / 3)
    assert r["best_loss"] == 2.5 and r["best_lr"] == 3e-3
    assert (r["n_runs"], r["n_diverged"], r["n_lrs"], r["l0"]) == (3, 1, 3, L0)


def test_loss_above_l0_is_clipped_and_seeds_averaged_before_scoring():
    s = scores_of([run(lr=1e-3, seed=0, loss=3.0), run(lr=1e-3, seed=1, loss=2.0),
                   run(lr=1e-2, seed=0, loss=None), run(lr=1e-2, seed=1, loss=9.0)])
    r = one(s)
    assert r["best_loss"] == pytest.approx(2.5)  # the best seed-AVERAGED cell, not the best run
    assert r["lr_sensitivity"] == pytest.approx((0 + (L0 - 2.5)) / 2)


def test_all_diverged_has_no_best_lr_and_never_learned():
    s = scores_of([run(lr=1e-2, loss=None), run(lr=1e-1, loss=None)])
    r = one(s)
    assert r["lr_sensitivity"] == 0.0 and r["best_loss"] == L0 and math.isnan(r["best_lr"]) and r["never_learned"]


# ---------------------------------------------------------------- bootstrap intervals

def two_methods(gap: float, spread: float = 0.02, seeds=(0, 1, 2)):
    """b's curve is a's with its high-LR cell raised by gap; seeds share an offset."""
    def loss(m, si, li, seed):
        base = [3.0, 2.6, 2.9][li] + noise(seed, spread)
        return base + (gap if (m == "b" and li == 2) else 0.0)
    return runs_table(loss, ["a", "b"], seeds=seeds)


def test_intervals_contain_the_estimate_and_are_reproducible():
    runs = two_methods(0.3)
    s1, s2 = score(runs, settings_for(runs))[0], score(runs, settings_for(runs))[0]
    pd.testing.assert_frame_equal(s1, s2)
    for stat in ("lr_sensitivity", "best_loss", "best_lr"):
        assert (s1[f"{stat}_lo"] <= s1[stat] + 1e-12).all() and (s1[stat] <= s1[f"{stat}_hi"] + 1e-12).all()
    assert (s1["lr_sensitivity_hi"] > s1["lr_sensitivity_lo"]).all()


def test_one_seed_gives_no_interval_and_no_shared_rank():
    runs = two_methods(0.0, seeds=(0,))
    s, scored = score(runs, settings_for(runs))
    assert s[["lr_sensitivity_lo", "lr_sensitivity_hi", "best_loss_lo"]].isna().all().all()
    lb = leaderboard(s, scored, settings_for(runs))
    assert list(lb["rank"]) == [1, 2] and not lb["rank_shared"].any()


def test_resamples_are_shared_by_every_method():
    """The draw depends on the grid's shape and the seed only: renaming or reordering methods
    changes nothing, so differences are paired."""
    runs = two_methods(0.3)
    g = grid_of(runs, ["s1", "s2"])
    a, b = resample(g, 1000, 0), resample(grid_of(runs.replace({"a": "z"}), ["s1", "s2"]), 1000, 0)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert a.indices.shape == (1000, 2, 3, 3)
    # a seed offset shared by both methods cancels in the paired difference (and, shared by
    # every LR of a seed, in LR sensitivity itself: the cluster bootstrap keeps a seed whole)
    s, scored = score(runs, settings_for(runs))
    diff = scored.reps["best_loss"][:, 1, 0] - scored.reps["best_loss"][:, 0, 0]
    assert np.ptp(diff) < 0.5 * np.ptp(scored.reps["best_loss"][:, 0, 0])
    assert np.ptp(scored.reps["lr_sensitivity"][:, 0, 0]) < 1e-12


# ---------------------------------------------------------------- ranks

def three_methods(gaps):
    def loss(m, si, li, seed):
        rng = np.random.default_rng([ord(m), si, li, seed])
        return [3.0, 2.6, 2.9][li] + gaps[m] * (li == 2) + rng.normal(0, 0.03)
    return runs_table(loss, list(gaps), seeds=(0, 1, 2, 3, 4))


def test_shared_ranks_one_one_three():
    runs = three_methods({"a": 0.0, "b": 0.005, "c": 1.0})
    s, scored = score(runs, st := settings_for(runs))
    lb = leaderboard(s, scored, st)
    assert list(lb["method"]) == ["a", "b", "c"]
    assert list(lb["rank"]) == [1, 1, 3] and list(lb["rank_shared"]) == [True, True, False]
    b = lb.set_index("method").loc["b"]
    assert b["diff_above_lo"] <= 0 <= b["diff_above_hi"]
    assert list(s[s["size"] == "s1"]["rank"]) == [1, 1, 3]


def test_never_learned_is_never_first():
    """A method diverging everywhere scores LR sensitivity 0; it is still ranked last."""
    def loss(m, si, li, seed):
        return None if m == "broken" else [3.0, 2.6, 2.9][li] + noise(seed)
    runs = runs_table(loss, ["ok", "broken"])
    s, scored = score(runs, st := settings_for(runs))
    lb = leaderboard(s, scored, st)
    assert list(lb["method"]) == ["ok", "broken"] and list(lb["rank"]) == [1, 2]
    broken = lb.set_index("method").loc["broken"]
    assert broken["lr_sensitivity"] == 0 and broken["status"] == "never learned at s1, s2"
    assert list(s[s["size"] == "s2"].sort_values("rank")["method"]) == ["ok", "broken"]


def test_never_learned_at_one_size_and_margin():
    def loss(m, si, li, seed):  # 'weak' ends 0.05 below l0 at s2: within the 0.1 margin
        return L0 - 0.05 if (m == "weak" and si == 1) else [3.0, 2.6, 2.9][li] + 0.5 * (m == "weak") + noise(seed)
    runs = runs_table(loss, ["ok", "weak"])
    s, scored = score(runs, st := settings_for(runs))
    assert bool(one(s, "weak", "s2")["never_learned"]) and not bool(one(s, "weak", "s1")["never_learned"])
    lb = leaderboard(s, scored, st).set_index("method")
    assert lb.loc["weak", "never_learned_sizes"] == "s2" and lb.loc["weak", "rank"] == 2
    s2, _ = score(runs, settings_for(runs, never_learned_margin=0.01))
    assert not one(s2, "weak", "s2")["never_learned"]


def test_incomplete_methods_ranked_after_complete_ones():
    runs = two_methods(0.5)
    runs = pd.concat([runs, runs_table(lambda m, si, li, seed: 2.5, ["z"], sizes=("s1",))])
    s, scored = score(runs, st := settings_for(runs))
    lb = leaderboard(s, scored, st)
    assert list(lb["method"]) == ["a", "b", "z"]
    z = lb.set_index("method").loc["z"]
    assert not z["complete"] and z["missing_sizes"] == "s2" and math.isnan(z["best_loss"])


def test_leaderboard_columns_and_mean_over_sizes():
    runs = two_methods(0.3)
    s, scored = score(runs, st := settings_for(runs))
    lb = leaderboard(s, scored, st).set_index("method")
    a = lb.loc["a"]
    assert a["lr_sensitivity"] == pytest.approx(s[s["method"] == "a"]["lr_sensitivity"].mean())
    assert a["lr_sensitivity_lo"] <= a["lr_sensitivity"] <= a["lr_sensitivity_hi"]
    for col in ("lr_sensitivity[s1]", "lr_sensitivity_lo[s2]", "best_lr_hi", "l0", "seeds", "diff_above"):
        assert col in lb.columns
    assert a["runs"] == 18 and a["seeds"] == 3 and a["l0"] == L0


def test_changes_lr_meaning_propagates():
    runs = runs_table(lambda m, si, li, seed: 3.0 - 0.1 * li, ["mu", "sp"], rescales=("mu",))
    s, scored = score(runs, st := settings_for(runs))
    lb = leaderboard(s, scored, st).set_index("method")
    assert bool(lb.loc["mu", "changes_lr_meaning"]) and not bool(lb.loc["sp", "changes_lr_meaning"])


def test_reference_defaults_to_the_first_method_and_is_validated():
    assert reference_of(benchmark(["x", "y"])) == "x"
    assert reference_of(benchmark(["x", "y"], reference="y")) == "y"
    with pytest.raises(SettingsError, match="reference 'q' is not one of its methods: x, y"):
        reference_of(benchmark(["x", "y"], reference="q"))


def test_effective_loss_column_uses_the_benchmark_l0():
    df = with_effective_loss(pd.DataFrame([run(loss=None, init=9.0), run(lr=1e-2, loss=8.0, init=9.0)]), 7.0)
    assert list(df["effective_loss"]) == [7.0, 7.0] and list(df["l0"]) == [7.0, 7.0]
