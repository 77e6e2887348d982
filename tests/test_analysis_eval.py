"""Zero-shot eval records joined into runs.csv, the leaderboard and the report (moved here from
test_evaluation.py: it tests the analysis side of evaluation)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from analysis_synthetic import benchmark

from analysis.leaderboard import leaderboard
from analysis.report import eval_context
from analysis.runs import collect_runs, join_evals
from analysis.sensitivity import score
from analysis.settings import resolve


def test_eval_scores_join_runs_leaderboard_and_report(tmp_path):
    metrics = []
    for method in ("a", "b"):
        for size in ("s1", "s2"):
            for lr, loss in ((1e-3, 5.0), (1e-2, 4.0)):
                d = tmp_path / method / size / f"lr{lr:g}"
                d.mkdir(parents=True)
                (d / "metrics.json").write_text(json.dumps({
                    "method": method, "size": size, "lr": lr, "seed": 0, "init_loss": 6.0,
                    "final_val_loss": loss + (0.5 if method == "b" else 0), "diverged": False}))
                metrics.append(d / "metrics.json")
    evals = []
    for method, acc in (("a", 0.5), ("b", 0.25)):
        for size in ("s1", "s2"):
            p = tmp_path / f"{method}-{size}.json"
            p.write_text(json.dumps({
                "status": "evaluated", "method": method, "size": size, "lr": 1e-2, "seed": 0,
                "candidates": [{"lr": 1e-3, "seed": 0, "diverged": False}, {"lr": 1e-2, "seed": 0, "diverged": False}],
                "tasks": {"lambada_openai": {"status": "skipped", "reason": "offline"}},
                "scores": {"stabench_cloze/acc": acc + (0.1 if size == "s2" else 0), "stabench_cloze/init_acc": 0.0}}))
            evals.append(p)
    runs = join_evals(collect_runs(metrics), evals)
    assert list(runs["eval_status"]).count("evaluated") == 4 and list(runs["eval_status"]).count("not selected") == 4
    assert runs["eval/stabench_cloze/acc"].notna().sum() == 4
    settings = resolve(benchmark(["a", "b"], lrs=(1e-3, 1e-2), seeds=(0,)), runs)
    scores, scored = score(runs, settings)
    board = leaderboard(scores, scored, settings, runs)
    assert board.set_index("method")["eval/stabench_cloze/acc"].to_dict() == pytest.approx({"a": 0.6, "b": 0.35})
    assert "eval/stabench_cloze/init_acc" not in board
    ctx = eval_context(runs)
    init = [h for h in ctx["headers"] if h["raw"] == "stabench_cloze init_acc"]
    assert [(h["task"], h["metric"]) for h in init] == [("Cloze (last word)", "before training: accuracy")]
    assert ctx["skipped"] == ["lambada_openai: offline"]
    assert pd.isna(runs.loc[runs["eval_status"] == "not selected", "eval/stabench_cloze/acc"]).all()
