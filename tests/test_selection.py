"""One best-LR rule and one divergence rule (stabench/selection.py), used by evaluation and analysis."""

from __future__ import annotations

import math

import numpy as np
from analysis_synthetic import L0, runs_table, settings_for, write_results

from analysis import statistics as st
from analysis.leaderboard import leaderboard
from analysis.sensitivity import score
from stabench.selection import best_index, best_lr_run, effective_loss, is_diverged

LRS = (1e-2, 1e-1)


def disagreeing_runs():
    """Every run starts at 9.0 (its own init loss), above the benchmark's l0 = ln 1097 ~ 7.0.
    LR 1e-2: seed 0 diverged, seed 1 reached 2.8; LR 1e-1: both seeds 5.0.
    Old evaluation rule (each run's own init loss as l0): (9 + 2.8)/2 = 5.9 > 5.0, picks 1e-1.
    Benchmark l0: (7 + 2.8)/2 = 4.9 < 5.0, picks 1e-2 (the leaderboard's best LR)."""
    def loss(m, si, li, seed):
        return (None if seed == 0 else 2.8) if li == 0 else 5.0
    return runs_table(loss, ["m"], sizes=("s1",), lrs=LRS, seeds=(0, 1), init_loss=lambda m: 9.0)


def test_evaluation_and_leaderboard_select_the_same_best_lr_run(tmp_path):
    from stabench.evaluation.runner import select_best

    runs = disagreeing_runs()
    paths = write_results(tmp_path, runs)
    chosen, cands = select_best([p.parent for p in paths])
    settings = settings_for(runs)
    scores, scored = score(runs, settings)
    board = leaderboard(scores, scored, settings, runs)
    assert float(board.set_index("method").loc["m", "best_lr"]) == 1e-2
    assert chosen == str(tmp_path / "runs/m/s1/lr0.01-s1")  # the LR the leaderboard names, its seed that trained
    assert {c["lr"]: c["effective_loss"] for c in cands if c["seed"] == 0}[1e-2] == math.log(1097)


def test_best_lr_run_and_vectorised_best_lr_agree():
    rng = np.random.default_rng(0)
    for _ in range(200):
        losses = rng.uniform(2.0, 9.0, size=(3, 4))  # seeds x LRs
        diverged = rng.random((3, 4)) < 0.3
        runs = [{"lr": lr, "seed": s, "final_val_loss": losses[s, j], "diverged": diverged[s, j]}
                for j, lr in enumerate((1e-3, 1e-2, 1e-1, 1.0)) for s in range(3)]
        cells = np.array([[effective_loss(losses[s, j], diverged[s, j], L0) for s in range(3)] for j in range(4)]).mean(1)
        best = best_lr_run(runs, L0)
        lr = st.best_lr(cells, (1e-3, 1e-2, 1e-1, 1.0), L0)
        assert (best is None and math.isnan(lr)) or best["lr"] == lr
    assert best_index(np.array([7.5, 7.0, 8.0]), 7.0) == -1  # nothing below l0: no best LR
    assert best_index(np.array([3.0, 3.0]), 7.0) == 0          # ties: the smaller LR


def test_divergence_is_judged_against_the_benchmark_l0():
    assert is_diverged(float("nan"), 7.0, 1.5) and is_diverged(10.6, 7.0, 1.5)
    assert not is_diverged(10.4, 7.0, 1.5)  # a run that started at 9 and rose to 10.4: same threshold for all
