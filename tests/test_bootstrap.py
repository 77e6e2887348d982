"""The cluster bootstrap over seeds and its t-interval, on synthetic runs with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from analysis_synthetic import runs_table
from scipy import stats

from analysis import statistics as st
from analysis.bootstrap import grid_of, original, resample

SEED_EFFECT = {0: -0.3, 1: 0.05, 2: 0.25, 3: -0.1, 4: 0.1}  # one seed's offset, the same at every LR


def correlated_runs(seeds=(0, 1, 2, 3, 4)):
    """One method whose runs of a seed share an offset across LRs (shared batches and init), plus a
    little cell noise."""
    def loss(m, si, li, seed):
        rng = np.random.default_rng([li, seed])
        return [3.0, 2.6, 2.8][li] + SEED_EFFECT[seed] + rng.normal(0, 0.01)
    return runs_table(loss, ["a"], sizes=("s1",), seeds=seeds)


def grid_mean_interval(runs, cluster: bool):
    grid = grid_of(runs, ["s1"])
    cube = grid.cube(runs.assign(x=runs["final_val_loss"]), "x")
    boot = resample(grid, 2000, 0, 0.95, cluster=cluster)
    point = st.grid_mean(original(grid).cell_means(cube)[0])
    lo, hi = boot.interval(st.grid_mean(boot.cell_means(cube))[:, 0, 0], point[0, 0])
    return boot, (float(lo), float(hi)), float(point[0, 0])


def test_seeds_correlated_across_lrs_widen_the_interval():
    """The mean over LRs of one method: resampling each LR cell's seeds on its own averages the
    seed effect away (as if the 3 LRs were 3 independent experiments); resampling seeds whole keeps
    it. Same data, same t-interval: only the resampling differs."""
    runs = correlated_runs()
    _, (clo, chi), _ = grid_mean_interval(runs, cluster=True)
    _, (ilo, ihi), _ = grid_mean_interval(runs, cluster=False)
    assert (chi - clo) > 1.5 * (ihi - ilo)
    # the cluster interval is the classical t-interval of the per-seed grid means
    per_seed = np.array([np.mean([[3.0, 2.6, 2.8][li] + SEED_EFFECT[s] for li in range(3)]) for s in range(5)])
    half = stats.t.ppf(0.975, 4) * per_seed.std(ddof=1) / np.sqrt(5)
    assert float(chi - clo) == pytest.approx(2 * half, rel=0.1)


def test_one_draw_applies_to_every_cell_and_method():
    runs = correlated_runs(seeds=(0, 1, 2))
    grid = grid_of(runs, ["s1"])
    idx = resample(grid, 50, 1).indices
    assert idx.shape == (50, 1, 3, 3) and (idx == idx[:, :1, :1, :]).all()
    assert not (resample(grid, 50, 1, cluster=False).indices == idx[:, :1, :1, :]).all()


def test_t_interval_is_not_too_narrow_at_three_seeds():
    """Three seeds with values 0, 1, 2 in one cell: a percentile (or BCa) interval cannot leave
    [0, 2]; the t-interval is 1 +- t(2) * 1/sqrt(3) = -1.48 to 3.48."""
    runs = runs_table(lambda m, si, li, seed: 3.0 + seed, ["a"], sizes=("s1",), lrs=(1e-2,), seeds=(0, 1, 2))
    grid = grid_of(runs, ["s1"])
    cube = grid.cube(runs, "final_val_loss")
    boot = resample(grid, 4000, 0, 0.95)
    lo, hi = boot.interval(boot.cell_means(cube)[:, 0, 0, 0], 4.0)
    assert float(lo) == pytest.approx(4.0 - 2.484, abs=0.1) and float(hi) == pytest.approx(4.0 + 2.484, abs=0.1)
    plo, phi = boot.percentile(boot.cell_means(cube)[:, 0, 0, 0])
    assert 3.0 <= plo and phi <= 5.0  # bounded by the data: the reason it is not used for verdicts


def test_one_seed_has_no_interval():
    runs = correlated_runs(seeds=(0,))
    boot, (lo, hi), point = grid_mean_interval(runs, cluster=True)
    assert np.isnan(lo) and np.isnan(hi) and np.isfinite(point)
