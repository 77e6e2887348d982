"""A report for any outcome: the analysis CLI from aggregate to report.html on degenerate grids
(every run diverged, one LR, one size, one seed, one method, all of these at once). Every
figure is drawn or replaced by a sentence that says why (in the report too, instead of a
picture of nothing), every PNG has its SVG; nothing crashes, and no figure needs the
last-resort placeholder of analysis.plots.draw_one."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.text
import pytest
import yaml
from markupsafe import escape as html_escape
from analysis_synthetic import LRS, SIZES, benchmark, noise, runs_table, write_results

from analysis import catalog
from analysis import figures as F
from analysis.cli import main
from analysis.report import empty_reason

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


def run_pipeline(tmp_path: Path, name: str, change: dict, loss=learned, figures: bool = True) -> str:
    """The analysis CLI from aggregate to report.html on GRID | change; the report's HTML."""
    grid = GRID | change
    methods, kw = grid["methods"], {k: grid[k] for k in ("sizes", "lrs", "seeds")}
    metrics = write_results(tmp_path, runs_table(loss, methods, **kw))
    bench = tmp_path / "benchmark.yaml"
    bench.write_text(yaml.safe_dump(benchmark(methods, **kw) | {"name": name}))
    f = lambda n: str(tmp_path / n)  # noqa: E731
    b = ["--benchmark-yaml", str(bench)]
    assert main(["aggregate", "--metrics", *map(str, metrics), "--runs-csv", f("runs.csv"), *b]) == 0
    assert main(["score", "--runs-csv", f("runs.csv"), "--scores-csv", f("scores.csv"),
                 "--leaderboard-csv", f("lb.csv"), *b]) == 0
    assert main(["claims", "--runs-csv", f("runs.csv"), "--claims-dir", str(REPO / "claims"),
                 "--claims-csv", f("claims.csv"), *b]) == 0
    if figures:
        assert main(["figures", "--runs-csv", f("runs.csv"), "--scores-csv", f("scores.csv"), "--outdir", f("fig"),
                     *b]) == 0
    assert main(["report", "--leaderboard-csv", f("lb.csv"), "--runs-csv", f("runs.csv"), "--claims-csv",
                 f("claims.csv"), "--figures-dir", f("fig"), "--out", f("report.html"), *b]) == 0
    return (tmp_path / "report.html").read_text()


@pytest.mark.parametrize("case", list(CASES))
def test_report_for_any_outcome(tmp_path, monkeypatch, capsys, case):
    """Every figure is drawn or says why; a drawn one has data in every visible panel and its
    SVG beside it (linked from the report); an empty one shows its sentence, not a picture."""
    loss, change, sentences = CASES[case]
    texts, blank = {}, {}
    save = F.save_figure

    def recording_save(fig, png, svg, dpi=110):
        name = Path(png).stem
        texts[name] = " ".join(t.get_text() for t in fig.findobj(matplotlib.text.Text))
        blank[name] = [ax.get_title() for ax in fig.axes if ax.axison and not F.has_data(ax)]
        return save(fig, png, svg, dpi=40)  # a low resolution: the test is about drawing, not pixels

    monkeypatch.setattr(F, "save_figure", recording_save)
    html = run_pipeline(tmp_path, case, change, loss)
    assert "could not be drawn" not in capsys.readouterr().err  # no figure needed the last resort
    assert set(texts) == set(catalog.FIGURES)
    for name, sentence in sentences.items():
        assert sentence in texts[name], (name, texts[name])
    assert f"stabench report: {case}" in html
    assert {n: b for n, b in blank.items() if b} == {}  # no panel without data
    pictures = html.count("data:image/png;base64,")
    empty = re.findall(r'<p class="empty">Nothing to draw: ([^<]*)\.</p>', html)
    assert pictures + len(empty) == len(catalog.FIGURES)
    for name in catalog.FIGURES:
        png, svg = tmp_path / "fig" / catalog.figure_file(name), tmp_path / "fig" / catalog.svg_file(name)
        assert png.read_bytes()[:4] == b"\x89PNG" and b"<svg" in svg.read_bytes()[:2000], name
        reason = empty_reason(png)
        assert (reason is None) == (f'href="fig/{catalog.svg_file(name)}"' in html), name
        assert reason is None or str(html_escape(reason)) in empty, name
    for name, sentence in sentences.items():  # a whole-figure sentence is said in the report itself
        if empty_reason(tmp_path / "fig" / catalog.figure_file(name)):
            assert sentence in html, name


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
