"""Analysis layer: scoring on hand-computed examples, leaderboard order, figures, report."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.leaderboard import leaderboard
from analysis.runs import collect_runs, effective_loss, load_history
from analysis.sensitivity import score

L0 = 7.0


def run(method="base", size="s64", lr=1e-3, seed=0, loss=3.0, diverged=False, l0=L0, clr=False):
    return dict(method=method, size=size, lr=lr, seed=seed, final_val_loss=loss,
                init_loss=l0, diverged=diverged, changes_lr_meaning=clr)


def frame(*rows):
    return pd.DataFrame(list(rows))


def one(scores, method="base", size="s64"):
    return scores[(scores["method"] == method) & (scores["size"] == size)].iloc[0]


# ---------------------------------------------------------------- effective loss / scoring

def test_effective_loss_rules():
    assert effective_loss(3.0, 7.0, False) == 3.0
    assert effective_loss(9.0, 7.0, False) == 7.0          # clipped to l0
    assert effective_loss(2.0, 7.0, True) == 7.0           # diverged counts as l0
    assert effective_loss(float("nan"), 7.0, False) == 7.0  # non-finite counts as l0
    assert effective_loss(None, 7.0, False) == 7.0
    assert effective_loss(float("inf"), 7.0, False) == 7.0


def test_sensitivity_three_lr_grid_hand_computed():
    s = score(frame(run(lr=1e-3, loss=3.0), run(lr=3e-3, loss=2.5),
                    run(lr=1e-2, loss=float("nan"), diverged=True)))
    r = one(s)
    assert r["lr_sensitivity"] == pytest.approx(((3.0 - 2.5) + 0 + (7.0 - 2.5)) / 3)  # 5/3
    assert r["best_loss"] == 2.5 and r["best_lr"] == 3e-3
    assert (r["n_runs"], r["n_diverged"], r["n_lrs"]) == (3, 1, 3)


def test_loss_above_l0_is_clipped():
    s = score(frame(run(lr=1e-3, loss=2.0), run(lr=1e-2, loss=9.0)))
    assert one(s)["lr_sensitivity"] == pytest.approx(((2.0 - 2.0) + (7.0 - 2.0)) / 2)


def test_seeds_averaged_before_scoring():
    # lr 1e-3: seeds 3.0 and 2.0 -> 2.5 ; lr 1e-2: seed 0 diverged (7.0), seed 1 3.0 -> 5.0
    s = score(frame(run(lr=1e-3, seed=0, loss=3.0), run(lr=1e-3, seed=1, loss=2.0),
                    run(lr=1e-2, seed=0, loss=None, diverged=True), run(lr=1e-2, seed=1, loss=3.0)))
    r = one(s)
    # l* is the best seed-AVERAGED cell (2.5), not the best single run (2.0).
    assert r["best_loss"] == pytest.approx(2.5)
    assert r["lr_sensitivity"] == pytest.approx((0 + (5.0 - 2.5)) / 2)
    assert (r["n_runs"], r["n_diverged"], r["n_lrs"]) == (4, 1, 2)


def test_l_star_is_per_method_and_size():
    s = score(frame(run("a", "s64", 1e-3, loss=3.0), run("a", "s64", 1e-2, loss=4.0),
                    run("a", "s128", 1e-3, loss=2.0), run("a", "s128", 1e-2, loss=2.2),
                    run("b", "s64", 1e-3, loss=1.0), run("b", "s64", 1e-2, loss=1.5)))
    assert one(s, "a", "s64")["lr_sensitivity"] == pytest.approx(0.5)   # (0 + 1)/2, l*=3
    assert one(s, "a", "s128")["lr_sensitivity"] == pytest.approx(0.1)  # (0 + .2)/2, l*=2
    assert one(s, "b", "s64")["lr_sensitivity"] == pytest.approx(0.25)
    assert one(s, "a", "s128")["best_loss"] == 2.0


def test_all_diverged_scores_zero_without_best_lr():
    s = score(frame(run(lr=1e-2, loss=None, diverged=True), run(lr=1e-1, loss=None, diverged=True)))
    r = one(s)
    assert r["lr_sensitivity"] == 0.0 and r["best_loss"] == L0 and math.isnan(r["best_lr"])


def test_changes_lr_meaning_propagates():
    runs = frame(run("mup", lr=1e-3, clr=True), run("mup", lr=1e-2, loss=3.5, clr=False),
                 run("base", lr=1e-3), run("base", lr=1e-2, loss=3.5))
    s = score(runs)
    assert bool(one(s, "mup")["changes_lr_meaning"]) and not bool(one(s, "base")["changes_lr_meaning"])
    lb = leaderboard(s, ["s64"]).set_index("method")
    assert bool(lb.loc["mup", "changes_lr_meaning"]) and not bool(lb.loc["base", "changes_lr_meaning"])


# ---------------------------------------------------------------- leaderboard

def scores_frame(rows):
    return pd.DataFrame([dict(method=m, size=sz, lr_sensitivity=sens, best_loss=bl, best_lr=1e-3,
                              n_lrs=3, n_runs=3, n_diverged=nd, changes_lr_meaning=False,
                              method_versions="")
                         for m, sz, sens, bl, nd in rows])


def test_leaderboard_ranking_and_tie_break():
    s = scores_frame([
        ("a", "s64", 0.2, 3.0, 1), ("a", "s128", 0.4, 2.9, 2),   # mean 0.3, best 2.9
        ("b", "s64", 0.1, 3.1, 0), ("b", "s128", 0.1, 3.0, 0),   # mean 0.1
        ("c", "s64", 0.3, 2.5, 0), ("c", "s128", 0.3, 2.4, 1),   # mean 0.3, best 2.4 -> beats a
    ])
    lb = leaderboard(s, ["s64", "s128"])
    assert list(lb["method"]) == ["b", "c", "a"]
    assert list(lb["rank"]) == [1, 2, 3]
    a = lb.set_index("method").loc["a"]
    assert a["lr_sensitivity"] == pytest.approx(0.3)
    assert a["best_loss"] == 2.9                       # of the largest size
    assert a["diverged"] == 3 and a["runs"] == 6
    assert a["lr_sensitivity[s64]"] == 0.2 and a["lr_sensitivity[s128]"] == 0.4


def test_leaderboard_incomplete_methods_ranked_last():
    s = scores_frame([("a", "s64", 0.5, 3.0, 0), ("a", "s128", 0.5, 2.9, 0),
                      ("z", "s64", 0.01, 3.0, 0)])       # better score but no s128
    lb = leaderboard(s, ["s64", "s128"])
    assert list(lb["method"]) == ["a", "z"]
    z = lb.set_index("method").loc["z"]
    assert not z["complete"] and z["missing_sizes"] == "s128"
    assert math.isnan(z["lr_sensitivity[s128]"]) and math.isnan(z["best_loss"])


# ---------------------------------------------------------------- synthetic results on disk

METHODS = {  # method -> (changes_lr_meaning, loss at each lr index, diverges at lr >= index)
    "baseline": (False, [3.2, 2.9, 3.1], 2),
    "qk_layernorm+z_loss": (False, [3.1, 2.8, 2.9], 99),
    "mup_simple": (True, [3.0, 2.95, 3.0], 99),
}
LRS = [1e-3, 1e-2, 1e-1]
SIZES = {"s64": 100_000, "s128": 400_000}


def write_fake_results(root: Path) -> list[Path]:
    paths = []
    for method, (clr, losses, div_from) in METHODS.items():
        for size, n_params in SIZES.items():
            for i, lr in enumerate(LRS):
                for seed in (0, 1):
                    d = root / "runs" / method / size / f"lr{lr:g}-s{seed}"
                    d.mkdir(parents=True)
                    diverged = i >= div_from
                    shift = -0.2 if size == "s128" else 0.0
                    final = None if diverged else losses[i] + shift + 0.01 * seed
                    comps = [{"name": n, "args": {}, "version": "1", "changes_lr_meaning": clr}
                             for n in method.split("+")]
                    m = dict(method=method, size=size, lr=lr, seed=seed, final_val_loss=final,
                             init_loss=L0, diverged=diverged, diverged_at_step=7 if diverged else None,
                             steps=20, tokens=20 * 512, wall_seconds=1.5, tokens_per_second=6800.0,
                             max_attn_logit=float("nan") if diverged else 10 * lr * 100,
                             final_log_z=0.5, n_params=n_params, config={"lr": lr}, methods=comps,
                             versions={"python": "3.12", "torch": "2.x", "stabench": "0.1.0"},
                             device="cpu")
                    (d / "metrics.json").write_text(json.dumps(m))
                    steps = np.arange(0, 21)
                    loss = L0 - (L0 - (final or L0)) * (1 - np.exp(-steps / 5))
                    if diverged:
                        loss = np.where(steps >= 7, np.nan, loss)
                    h = pd.DataFrame({"step": steps, "tokens": steps * 512, "lr": lr, "loss": loss,
                                      "grad_norm": 1.0,
                                      "val_loss": np.where(steps % 10 == 0, loss, np.nan),
                                      "log_z_mean": steps * 0.02, "attn_logit_max": 5.0,
                                      "attn_logit_max_l0": 5.0, "attn_logit_max_l1": 4.0})
                    h.to_csv(d / "history.csv", index=False)
                    paths.append(d / "metrics.json")
    return paths


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    return root, write_fake_results(root)


def test_collect_runs_and_history(fake):
    root, paths = fake
    runs = collect_runs(paths)
    assert len(runs) == len(paths) == 36
    assert runs["changes_lr_meaning"].groupby(runs["method"]).all().to_dict() == {
        "baseline": False, "mup_simple": True, "qk_layernorm+z_loss": False}
    div = runs[runs["diverged"]]
    assert len(div) == 4 and (div["effective_loss"] == L0).all()
    assert set(runs["method_versions"]) >= {"qk_layernorm@1+z_loss@1"}
    h = load_history(runs["run_dir"].iloc[0])
    assert {"step", "loss", "val_loss", "log_z_mean"} <= set(h.columns)
    assert h["val_loss"].notna().sum() == 3


def test_figures_nonempty_pngs(fake, tmp_path):
    from analysis import figures as F
    from analysis.report import choose_curve_runs
    root, paths = fake
    runs = collect_runs(paths)
    scores = score(runs)
    pal = F.method_palette(runs["method"])
    chosen = choose_curve_runs(runs, ["s64", "s128"])
    assert len(chosen) == 6 and all("/s128/" in c for c in chosen)
    hist = {Path(c).relative_to(root).as_posix(): load_history(c) for c in chosen}
    meth = {k: k.split("/")[1] for k in hist}
    figs = {
        "loss_vs_lr": F.loss_vs_lr(runs, ["s64", "s128"], pal),
        "sensitivity_vs_size": F.sensitivity_vs_size(scores, ["s64", "s128"], SIZES, pal),
        "attn_logit_vs_lr": F.attn_logit_vs_lr(runs, ["s64", "s128"], pal),
        "loss_curves": F.loss_curves(hist, meth, pal),
        "log_z": F.log_z_curves(hist, meth, pal),
        "empty": F.log_z_curves({"x": pd.DataFrame({"step": [0, 1]})}),  # missing probe tolerated
    }
    for name, fig in figs.items():
        p = F.save_png(fig, tmp_path / f"{name}.png")
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 2000


def test_cli_end_to_end_report(fake, tmp_path):
    from analysis.cli import main
    root, paths = fake
    runs_csv, scores_csv, lb_csv = tmp_path / "runs.csv", tmp_path / "scores.csv", tmp_path / "lb.csv"
    assert main(["aggregate", "--metrics", *map(str, paths), "--runs-csv", str(runs_csv)]) == 0
    assert main(["score", "--runs-csv", str(runs_csv), "--sizes", "s64", "s128",
                 "--scores-csv", str(scores_csv), "--leaderboard-csv", str(lb_csv)]) == 0
    lb = pd.read_csv(lb_csv)
    assert list(lb["rank"]) == [1, 2, 3]
    assert main(["figures", "--runs-csv", str(runs_csv), "--scores-csv", str(scores_csv),
                 "--sizes", "s64", "s128", "--outdir", str(tmp_path / "fig")]) == 0
    for f in ("loss_vs_lr", "sensitivity_vs_size", "attn_logit_vs_lr", "loss_curves", "log_z"):
        assert (tmp_path / "fig" / f"{f}.png").stat().st_size > 2000
    bench = tmp_path / "bench.yaml"
    bench.write_text("name: tiny\nsizes: [s64, s128]\nlrs: [0.001, 0.01, 0.1]\n")
    docs = {m: f"Doc of {m}: <b>not bold</b> & escaped." for m in METHODS}
    (tmp_path / "docs.json").write_text(json.dumps(docs))
    (tmp_path / "prov.json").write_text(json.dumps({"git_commit": "abc123", "torch": "2.x"}))
    out = tmp_path / "report.html"
    assert main(["report", "--leaderboard-csv", str(lb_csv), "--runs-csv", str(runs_csv),
                 "--figures-dir", str(tmp_path / "fig"), "--benchmark-yaml", str(bench),
                 "--method-docs", str(tmp_path / "docs.json"), "--provenance",
                 str(tmp_path / "prov.json"), "--out", str(out)]) == 0
    text = out.read_text()
    from analysis.cli import FIGURE_FILES
    assert text.count("data:image/png;base64,") == len(FIGURE_FILES)  # core figures + diagnostics
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text)
    assert "<script" not in text
    # leaderboard method names in rank order inside the leaderboard table
    table = text[text.index('<table id="leaderboard"'):]
    table = table[:table.index("</table>")]
    pos = [table.index(f">{m}<") if f">{m}<" in table else table.index(f">{m}") for m in lb["method"]]
    assert pos == sorted(pos)
    for m, doc in docs.items():
        assert doc.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in text
    assert "<b>not bold</b>" not in text
    assert "rescales LR" in text and "abc123" in text and "tiny" in text
    assert "<details>" in text


def test_cli_empty_grid_still_writes_every_output(tmp_path):
    """Snakemake needs every declared output even before any run exists."""
    from analysis.cli import main
    c = lambda n: str(tmp_path / n)  # noqa: E731
    main(["aggregate", "--metrics", "--runs-csv", c("runs.csv")])
    main(["score", "--runs-csv", c("runs.csv"), "--sizes", "s64", "--scores-csv", c("scores.csv"),
          "--leaderboard-csv", c("lb.csv")])
    main(["figures", "--runs-csv", c("runs.csv"), "--scores-csv", c("scores.csv"), "--sizes", "s64",
          "--outdir", c("fig")])
    (tmp_path / "b.yaml").write_text("name: empty\n")
    main(["report", "--leaderboard-csv", c("lb.csv"), "--runs-csv", c("runs.csv"), "--figures-dir",
          c("fig"), "--benchmark-yaml", c("b.yaml"), "--out", c("r.html")])
    from analysis.cli import FIGURE_FILES
    assert len(list((tmp_path / "fig").glob("*.png"))) == len(FIGURE_FILES)
    assert "stabench report: empty" in (tmp_path / "r.html").read_text()
