"""A report a researcher reads without squinting (issue 23): a diverged run shows as an x in
every panel over LR, no fit runs past its data and no title states a number outside it, a
panel without data says so, every figure has its SVG, and the leaderboard's main table keeps
to the ranking columns with zero-shot scores named in words. Figures are built, not rendered
to pixels, except where the saved files are the point."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from analysis_synthetic import L0, PARAMS, noise, runs_table, write_results

from analysis import diagnostics as D
from analysis import figures as F
from analysis.plots import curve_runs
from analysis.report import empty_reason, eval_header, eval_value, table_context
from analysis.runs import load_history, size_params

SIZES = ["s1", "s2"]


def top_lr_diverges(m, si, li, seed):
    return None if li == 2 else 3.0 - 0.1 * li + 0.05 * si + noise(seed)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """Two methods, two sizes, three LRs, two seeds; every run at the highest LR diverged."""
    root = tmp_path_factory.mktemp("grid")
    runs = runs_table(top_lr_diverges, ["a", "b"], seeds=(0, 1), extra={"max_attn_logit": lambda *a: 5.0})
    runs["run_dir"] = [str(root / d) for d in runs["run_dir"]]
    write_results(root, runs)
    runs["effective_loss"] = runs["final_val_loss"].fillna(L0)
    runs["diverged_at_step"] = np.where(runs["diverged"], 40.0, np.nan)
    return runs, {d: load_history(d) for d in runs["run_dir"]}


def x_marks(ax) -> np.ndarray:
    """The (x, y) of every diverged-run x in a panel."""
    cols = [c.get_offsets() for c in ax.collections if c.get_label() == DIVERGED_LABEL]
    return np.vstack(cols) if cols else np.empty((0, 2))


DIVERGED_LABEL = F.DIVERGED["label"]


def test_loss_vs_lr_draws_every_diverged_run_at_l0(grid):
    runs, _ = grid
    fig = F.loss_vs_lr(runs, SIZES, F.method_palette(runs["method"]), size_params(runs), L0, {"errorbar": None})
    for ax in fig.axes[:2]:
        marks = x_marks(ax)
        assert len(marks) == 4 and np.allclose(marks[:, 1], L0)  # 2 methods x 2 seeds, each at l0
    F.plt.close(fig)


def test_attention_panels_keep_diverged_runs(grid):
    runs, _ = grid
    fig = F.attn_logit_vs_lr(runs, SIZES, F.method_palette(runs["method"]), size_params(runs),
                             {"errorbar": None}, danger=1e4)
    assert [len(x_marks(ax)) for ax in fig.axes[:2]] == [4, 4]
    F.plt.close(fig)


def test_highest_lr_curves_show_diverged_runs_at_l0(grid):
    """The issue's case: the runs of the highest LR diverged and used to vanish from its panels."""
    runs, histories = grid
    scores = pd.DataFrame({"method": ["a", "a", "b", "b"], "size": SIZES * 2, "best_lr": 1e-2})
    curves = curve_runs(runs, scores, histories)
    fig = F.training_curves(curves, "loss", "training loss (nats/token)", F.method_palette(runs["method"]),
                            {"errorbar": None}, clip=1.5 * L0, mark_at=L0)
    for ax in fig.axes:
        marks = x_marks(ax)
        if "highest LR" in ax.get_title():
            assert len(marks) == 4 and np.allclose(marks, [40.0, L0])
        else:
            assert len(marks) == 0
    F.plt.close(fig)


def test_fits_stay_within_their_data_and_titles_state_no_number_outside_it(grid):
    runs, _ = grid
    runs = runs.assign(late_grad_rms=[1e-3 / (1 + p / 1e4) for p in runs["n_params_non_embedding"]],
                       early_attn_logit=[3.0 * (1 + lr * 10) for lr in runs["lr"]])
    lo, hi = min(PARAMS[s] for s in SIZES), max(PARAMS[s] for s in SIZES)
    for fig in (D.grad_rms_figure(runs, SIZES, 1e-2), D.instability_figure(runs, SIZES)):
        for ax in fig.axes:
            for line in ax.get_lines():
                x = np.asarray(line.get_xdata(), float)
                if len(x) > 2:  # a fit, not a reference line
                    assert lo * 0.999 <= x.min() and x.max() <= hi * 1.001, (ax.get_title(), x.max())
        titles = " ".join(ax.get_title() for ax in fig.axes)
        assert "reaches it at" not in titles  # 1e-8 is far below these gradients: no crossing to state
        F.plt.close(fig)
    assert D.eps_reached(pd.DataFrame({"params": [1e3, 1e4], "value": [1e-3, 1e-4]}), 1e-8) \
        == "eps 1e-08; above it over 1k-10k params"
    headers = table_context(pd.DataFrame({"lr": [0.1], "params_at_eps": [5e16], "predicted_logit_4x": [9.0]}))
    assert headers["columns"][0] == "lr" and all("extrapolation" in h for h in headers["columns"][1:])


def test_a_panel_without_data_says_so_and_a_figure_without_any_is_marked(tmp_path):
    df = pd.DataFrame({"x": [1.0, 2.0], "y": [1.0, 2.0], "col": ["full", "full"]})
    g = F.sns.FacetGrid(df, col="col", col_order=["full", "empty"])
    g.map_dataframe(F.sns.lineplot, x="x", y="y")
    g.refline(y=1.5)  # a reference line alone is no data
    F.blank_empty_panels(g.figure)
    full, empty = g.axes.flat
    assert full.axison and not empty.axison
    assert any("no data for this panel" in t.get_text() for t in empty.texts)
    assert getattr(g.figure, F.EMPTY_ATTR, None) is None
    F.save_figure(g.figure, tmp_path / "g.png", tmp_path / "g.svg")
    assert empty_reason(tmp_path / "g.png") is None

    fig = F.empty_figure("Probes", "the runs declare no probe families")
    F.save_figure(fig, tmp_path / "e.png", tmp_path / "e.svg")
    assert empty_reason(tmp_path / "e.png") == "the runs declare no probe families"
    assert (tmp_path / "e.svg").read_text().lstrip().startswith("<?xml")


def test_zero_shot_columns_read_in_words():
    h = eval_header("eval/stabench_cloze/perplexity")
    assert (h["task"], h["metric"], h["better"]) == ("Cloze (last word)", "perplexity", "lower")
    assert eval_header("eval/stabench_cloze/ll")["better"] == "higher"
    assert eval_header("eval/stabench_continuation/init_acc")["metric"] == "before training: accuracy"
    assert eval_header("eval/hellaswag/acc_norm")["task"] == "hellaswag"  # an lm-eval task keeps its name
    assert eval_value("eval/stabench_cloze/perplexity", 7.315e9) == ("7.3e+09", "= e^22.7")
    assert eval_value("eval/stabench_cloze/perplexity", 41.5) == ("41.5", "")
    assert eval_value("eval/stabench_cloze/acc", 0.25) == ("0.250", "")


def test_leaderboard_main_table_keeps_to_the_ranking(tmp_path):
    """However many sizes and zero-shot metrics, the main table has six columns; the rest are
    one click away, each zero-shot metric with its legend line."""
    from test_report_outcomes import run_pipeline
    html = run_pipeline(tmp_path, "readable", {"methods": ["a", "b"], "sizes": ("s1", "s2", "s3")},
                        figures=False)
    main = html[html.index('id="leaderboard"'):]
    main = main[:main.index("</thead>")]
    assert len(re.findall(r"<th[ >]", main)) == 6
    details = html[html.index('<details id="leaderboard-more">'):]
    details = details[:details.index("</details>")]
    for s in ("s1", "s2", "s3"):
        assert f"LR sensitivity<br>{s}" in details


def drawn_ticks(ax) -> list:
    """The tick labels matplotlib draws: those within the view limits (it keeps others)."""
    (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
    return ([t for t in ax.get_xticklabels() if x0 <= t.get_position()[0] <= x1]
            + [t for t in ax.get_yticklabels() if y0 <= t.get_position()[1] <= y1])


def collisions(fig) -> list[tuple[str, str]]:
    """Pairs of drawn labels (axis labels, titles, tick labels) whose boxes overlap."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [(t.get_text(), t.get_window_extent(renderer)) for ax in fig.axes if ax.axison
             for t in (ax.xaxis.label, ax.yaxis.label, ax.title, *drawn_ticks(ax))
             if t.get_visible() and t.get_text().strip()]
    return [(a, b) for i, (a, box) in enumerate(texts) for b, other in texts[i + 1:] if box.overlaps(other)]


def test_labels_do_not_collide(grid):
    """The issue's log Z figure: each row's y label ran into the next; sizes within one decade
    got minor tick labels (2x10^4, 3x10^4, ...) printed over each other."""
    runs, histories = grid
    runs = runs.assign(late_grad_rms=[1e-3 / (1 + p / 1e4) for p in runs["n_params_non_embedding"]],
                       early_attn_logit=[3.0 * (1 + lr * 10) for lr in runs["lr"]])
    scores = pd.DataFrame({"method": ["a", "a", "b", "b"], "size": SIZES * 2, "best_lr": 1e-2})
    palette = F.method_palette(runs["method"])
    figures = {
        "log_z": F.training_curves(curve_runs(runs, scores, histories), "log_z_mean",
                                   "mean log Z of the output logits", palette, {"errorbar": None}),
        "grad_rms_vs_size": D.grad_rms_figure(runs, SIZES, 1e-2),
        "instability_prediction": D.instability_figure(runs, SIZES),
    }
    for name, fig in figures.items():
        assert collisions(fig) == [], name
        F.plt.close(fig)
