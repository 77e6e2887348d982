"""The analysis CLI end to end on synthetic result folders: runs.csv -> ... -> report.html."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from analysis_synthetic import benchmark, noise, runs_table, write_results

from analysis import catalog
from analysis.cli import main

REPO = Path(__file__).resolve().parent.parent
CAPTIONS = REPO / "workflow" / "report" / "figures"
FAMILIES = {"curv": {"title": "lr x lambda_max", "log_y": True, "headline": "curv", "columns": ["curv"],
                     "threshold": 38.0},
            "gates": {"title": "gates (mean)", "log_y": False, "headline": None, "columns": ["gate/a", "gate/b"],
                      "threshold": None}}


def loss(m, si, li, seed):
    if m == "broken":
        return None
    return [3.2, 2.8, 3.0][li] + (0.4 if (m == "base" and li == 2) else 0.0) + noise(seed)


def pipeline(root: Path, seeds=(0, 1, 2), families=FAMILIES, figures=True) -> dict[str, Path]:
    runs = runs_table(loss, ["base", "qkln", "broken"], seeds=seeds, uses={"qkln": "qk_layernorm", "base": "baseline"},
                      rescales=("qkln",))
    metrics = write_results(root, runs, families)
    bench = root / "benchmark.yaml"
    bench.write_text(yaml.safe_dump(benchmark(["base", "qkln", "broken"], seeds=seeds) | {"name": "tiny"}))
    f = {k: root / v for k, v in (("runs", "runs.csv"), ("scores", "scores.csv"), ("lb", "lb.csv"),
                                  ("claims", "claims.csv"), ("fig", "fig"), ("out", "report.html"))}
    b = ["--benchmark-yaml", str(bench)]
    assert main(["aggregate", "--metrics", *map(str, metrics), "--runs-csv", str(f["runs"]), *b]) == 0
    assert main(["score", "--runs-csv", str(f["runs"]), "--scores-csv", str(f["scores"]),
                 "--leaderboard-csv", str(f["lb"]), *b]) == 0
    assert main(["claims", "--runs-csv", str(f["runs"]), "--claims-dir", str(REPO / "claims"),
                 "--claims-csv", str(f["claims"]), *b]) == 0
    if figures:  # the slow step (matplotlib rendering): once per module
        assert main(["figures", "--runs-csv", str(f["runs"]), "--scores-csv", str(f["scores"]),
                     "--outdir", str(f["fig"]), *b]) == 0
    (root / "docs.json").write_text(json.dumps({"base": "Doc of base: <b>not bold</b> & escaped."}))
    (root / "prov.json").write_text(json.dumps({"git_commit": "abc123"}))
    assert main(["report", "--leaderboard-csv", str(f["lb"]), "--runs-csv", str(f["runs"]), "--claims-csv",
                 str(f["claims"]), "--figures-dir", str(f["fig"]), "--captions-dir", str(CAPTIONS),
                 "--method-docs", str(root / "docs.json"), "--provenance", str(root / "prov.json"),
                 "--out", str(f["out"]), *b]) == 0
    return f


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    return pipeline(tmp_path_factory.mktemp("bench"))


def test_runs_csv_has_l0_and_probe_statistics(done):
    runs = pd.read_csv(done["runs"])
    assert (runs["l0"] == 7.0).all() and (runs.loc[runs["diverged"], "effective_loss"] == 7.0).all()
    for col in ("uses", "early_step", "early_attn_logit", "log_z_divergence", "late_grad_rms", "peak/curv",
                "spikes/curv", "spikes_near/curv", "near_steps/curv", "n_params_non_embedding"):
        assert col in runs, col
    assert "spikes/gates" not in runs  # only families with a threshold are matched against spikes


def test_leaderboard_and_claims_files(done):
    lb = pd.read_csv(done["lb"])
    assert list(lb["method"]) == ["qkln", "base", "broken"] and lb["rank"].tolist() == [1, 2, 3]
    assert lb.set_index("method").loc["broken", "status"] == "never learned at s1, s2"
    assert lb.set_index("method").loc["broken", "diverged"] == 18
    claims = pd.read_csv(done["claims"])
    qk = claims[claims["claim_id"] == "qk_layernorm_lowers_lr_sensitivity"]
    assert set(qk["verdict"]) == {"supported"} and list(qk["scope"]) == ["s1", "s2", "across sizes"]  # 3 seeds: no per-size verdict


def test_every_figure_and_table_written(done):
    for name in catalog.FIGURES:
        assert (done["fig"] / catalog.figure_file(name)).read_bytes()[:4] == b"\x89PNG"
    for name in catalog.TABLES:
        assert (done["fig"] / catalog.table_file(name)).exists()


def test_report_reads_like_a_paper(done):
    text = done["out"].read_text()
    claims, board = text.index('id="claims"'), text.index('id="leaderboard"')
    assert claims < board < text.index("How to read this")
    assert "<b>qk-layernorm lowers LR sensitivity</b>" in text and "v-supported" in text
    table = text[board:text.index("</table>", board)]
    pos = [table.index(f">{m}") for m in ("qkln", "base", "broken")]
    assert pos == sorted(pos) and "never learned at s1, s2" in table and "rescales LR" in table
    assert "<td>18 / 18</td>" in table  # diverged / runs of the method that never learned
    assert "l0 = 7.000 nats" in text and "paired" in text
    assert text.count("data:image/png;base64,") == len(catalog.FIGURES)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text) and "<script" not in text
    assert "Doc of base: &lt;b&gt;not bold&lt;/b&gt; &amp; escaped." in text and "abc123" in text


def test_captions_are_written_once_and_used_by_both_reports(done):
    """Every catalogued figure has one caption file, used by the HTML report and by the
    Snakemake rule's report(caption=...); no caption text lives in the analysis code."""
    assert sorted(p.stem for p in CAPTIONS.glob("*.rst")) == sorted(catalog.FIGURES)
    text = " ".join(done["out"].read_text().split())
    for name in catalog.FIGURES:
        first = " ".join((CAPTIONS / f"{name}.rst").read_text().split())[:60]
        assert first.replace("``", "").split(" (")[0][:40] in text, name
    smk = (REPO / "workflow" / "rules" / "analysis.smk").read_text()
    assert 'caption=f"../report/figures/{name}.rst"' in smk and "for name in FIGURES" in smk


def test_one_seed_says_there_is_no_uncertainty(tmp_path):
    f = pipeline(tmp_path, seeds=(0,), families={}, figures=False)
    text = f["out"].read_text()
    assert "One seed: the ranking carries no uncertainty estimate" in text
    lb = pd.read_csv(f["lb"])
    assert lb["lr_sensitivity_lo"].isna().all() and not lb["rank_shared"].any()
    claims = pd.read_csv(f["claims"])
    assert (claims.loc[claims["claim_id"] == "qk_layernorm_lowers_lr_sensitivity", "detail"]
            == "needs >= 2 seeds (this grid has 1)").all()


def test_empty_grid_still_writes_every_output(tmp_path):
    """Snakemake needs every declared output even before any run exists."""
    c = lambda n: str(tmp_path / n)  # noqa: E731
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(benchmark(["a"]) | {"name": "empty"}))
    b = ["--benchmark-yaml", c("b.yaml")]
    main(["aggregate", "--metrics", "--runs-csv", c("runs.csv"), *b])
    main(["score", "--runs-csv", c("runs.csv"), "--scores-csv", c("scores.csv"), "--leaderboard-csv", c("lb.csv"), *b])
    main(["claims", "--runs-csv", c("runs.csv"), "--claims-dir", str(REPO / "claims"), "--claims-csv", c("cl.csv"), *b])
    main(["figures", "--runs-csv", c("runs.csv"), "--scores-csv", c("scores.csv"), "--outdir", c("fig"), *b])
    main(["report", "--leaderboard-csv", c("lb.csv"), "--runs-csv", c("runs.csv"), "--claims-csv", c("cl.csv"),
          "--figures-dir", c("fig"), "--out", c("r.html"), *b])
    assert len(list((tmp_path / "fig").glob("*.png"))) == len(catalog.FIGURES)
    assert "stabench report: empty" in (tmp_path / "r.html").read_text()


@pytest.mark.slow  # a Snakemake dry run: ~15 s each
@pytest.mark.parametrize("field, value, words", [
    ("reference", "baselin", "reference: got 'baselin'; allowed: one of the benchmark's methods (baseline, "),
    ("analysis", {"claims": ["qk_layernorm_lowers_lr_sensitivty"]},
     "analysis.claims: unknown claim id(s) qk_layernorm_lowers_lr_sensitivty; known: "),
])
def test_workflow_rejects_an_analysis_typo_before_training(tmp_path, field, value, words):
    """A typo in `reference` or in a claim id fails the dry run with one line naming what is
    known, before any training (not at the end of the sweep)."""
    import subprocess
    import sys
    bench = yaml.safe_load((REPO / "benchmarks" / "smoke.yaml").read_text())
    bench[field] = value
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(bench))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
                           "-n", "--config", f"benchmark={path}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert words in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()
