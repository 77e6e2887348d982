"""A report for any outcome: the analysis CLI from aggregate to report.html on degenerate grids
(every run diverged, one LR, one size, one seed, one method, all of these at once). Every
figure is drawn or replaced by a sentence that says why; nothing crashes, and no figure needs
the last-resort placeholder of analysis.plots.draw_one."""

from __future__ import annotations

from pathlib import Path

import matplotlib.text
import pytest
import yaml
from analysis_synthetic import LRS, SIZES, benchmark, noise, runs_table, write_results

from analysis import catalog
from analysis import figures as F
from analysis.cli import main

REPO = Path(__file__).resolve().parent.parent


def learned(m, si, li, seed):
    return [3.2, 2.8][li] + 0.1 * si + noise(seed)


def diverged(*_):
    return None


GRID = {"methods": ["a", "b"], "sizes": SIZES[:2], "lrs": LRS[:2], "seeds": (0, 1)}
CASES = {  # name -> (loss, grid changes, {figure: a sentence its placeholder must contain})
    "all_diverged": (diverged, {}, {"scores_vs_size": "there is no best LR",
                                    "grad_rms_vs_size": "diverged: no late gradient RMS"}),
    "one_lr": (learned, {"lrs": LRS[:1]}, {"loss_vs_lr": "one peak LR in the grid",
                                           "attn_logit_vs_lr": "one peak LR in the grid",
                                           "scores_vs_size": "LR sensitivity needs at least two"}),
    "one_size": (learned, {"sizes": SIZES[:1]}, {"instability_prediction": "one model size (s1)",
                                                 "grad_rms_vs_size": "one model size (s1)"}),
    "one_seed": (learned, {"seeds": (0,)}, {}),
    "one_method": (learned, {"methods": ["a"]}, {}),
    "single_run_diverged": (diverged, {"methods": ["a"], "sizes": SIZES[:1], "lrs": LRS[:1], "seeds": (0,)},
                            {"loss_vs_lr": "one peak LR in the grid", "scores_vs_size": "there is no best LR"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_report_for_any_outcome(tmp_path, monkeypatch, capsys, case):
    loss, change, sentences = CASES[case]
    grid = GRID | change
    methods, kw = grid["methods"], {k: grid[k] for k in ("sizes", "lrs", "seeds")}
    runs = runs_table(loss, methods, **kw)
    metrics = write_results(tmp_path, runs)
    bench = tmp_path / "benchmark.yaml"
    bench.write_text(yaml.safe_dump(benchmark(methods, **kw) | {"name": case}))
    texts = {}
    save = F.save_figure

    def recording_save(fig, png, svg, dpi=110):
        texts[Path(png).stem] = " ".join(t.get_text() for t in fig.findobj(matplotlib.text.Text))
        return save(fig, png, svg, dpi=40)  # a low resolution: the test is about drawing, not pixels

    monkeypatch.setattr(F, "save_figure", recording_save)
    f = lambda n: str(tmp_path / n)  # noqa: E731
    b = ["--benchmark-yaml", str(bench)]
    assert main(["aggregate", "--metrics", *map(str, metrics), "--runs-csv", f("runs.csv"), *b]) == 0
    assert main(["score", "--runs-csv", f("runs.csv"), "--scores-csv", f("scores.csv"),
                 "--leaderboard-csv", f("lb.csv"), *b]) == 0
    assert main(["claims", "--runs-csv", f("runs.csv"), "--claims-dir", str(REPO / "claims"),
                 "--claims-csv", f("claims.csv"), *b]) == 0
    assert main(["figures", "--runs-csv", f("runs.csv"), "--scores-csv", f("scores.csv"), "--outdir", f("fig"), *b]) == 0
    assert main(["report", "--leaderboard-csv", f("lb.csv"), "--runs-csv", f("runs.csv"), "--claims-csv",
                 f("claims.csv"), "--figures-dir", f("fig"), "--out", f("report.html"), *b]) == 0
    assert "could not be drawn" not in capsys.readouterr().err  # no figure needed the last resort
    assert set(texts) == set(catalog.FIGURES)
    for name, sentence in sentences.items():
        assert sentence in texts[name], (name, texts[name])
    html = (tmp_path / "report.html").read_text()
    assert f"stabench report: {case}" in html
    assert html.count("data:image/png;base64,") == len(catalog.FIGURES)


def test_a_figure_that_fails_becomes_a_placeholder(tmp_path, capsys):
    """The last resort: a figure whose drawing raises is replaced by one naming the error, with
    one line on stderr, and the next figures are still drawn."""
    from analysis.plots import draw_one

    def broken():
        raise ValueError("Data cannot be log-scaled because all values are <= 0.")

    assert draw_one("loss_vs_lr", broken, tmp_path) is False
    assert (tmp_path / "loss_vs_lr.png").read_bytes()[:4] == b"\x89PNG"
    err = capsys.readouterr().err.strip()
    assert err == ("figure loss_vs_lr could not be drawn (ValueError: Data cannot be log-scaled because all "
                   "values are <= 0.); a placeholder is written instead")
    assert draw_one("spikes", lambda: F.empty_figure("t", "m"), tmp_path) is True
