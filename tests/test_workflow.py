"""The workflow end to end through the real Snakemake CLI, in temporary folders.

The smoke benchmark runs for real once per session (about a minute on 2 cores); the other
tests reuse its results or use dry runs, so the suite stays fast.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), *args],
                          capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def smoke_results(tmp_path_factory) -> Path:
    """Run the smoke benchmark once, as a user would: `snakemake --cores 2 --config benchmark=smoke`."""
    workdir = tmp_path_factory.mktemp("smoke")
    snakemake(workdir, "--cores", "2", "--config", "benchmark=smoke")
    return workdir


def test_smoke_benchmark_leaderboard_and_report(smoke_results):
    results = smoke_results / "results" / "smoke"
    bench = yaml.safe_load((REPO / "benchmarks" / "smoke.yaml").read_text())
    n_runs = len(bench["methods"]) * len(bench["sizes"]) * len(bench["learning_rates"])

    runs = pd.read_csv(results / "runs.csv")
    assert len(runs) == n_runs
    assert (runs["final_val_loss"] < runs["init_loss"]).any(), "no run learned anything"

    board = pd.read_csv(results / "leaderboard.csv")
    for column in ("rank", "method", "lr_sensitivity", "best_loss", "best_lr", "diverged"):
        assert column in board.columns
    assert sorted(board["method"]) == sorted(bench["methods"])
    assert list(board["rank"]) == list(range(1, len(board) + 1))
    assert (board["lr_sensitivity"] >= 0).all() and board["lr_sensitivity"].is_monotonic_increasing
    # The leaderboard's number is the mean of the per-size sensitivities in scores.csv.
    scores = pd.read_csv(results / "scores.csv")
    top = board.iloc[0]
    assert top["lr_sensitivity"] == pytest.approx(scores[scores["method"] == top["method"]]["lr_sensitivity"].mean())

    html = (results / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5
    assert "http://" not in html and "https://" not in html.replace('xmlns="http', "")
    table = html[html.index('<table id="leaderboard"'):]  # claims above it name methods too
    positions = [table.index(m) for m in board["method"]]
    assert positions == sorted(positions), "leaderboard in the report is not in rank order"
    assert "Wortsman" in html  # the methods' docstrings are in the report
    assert "git commit" in html.lower()


def test_smoke_benchmark_zero_shot_eval(smoke_results):
    """eval.runs: best -> one eval record per (method, size), joined into runs.csv, leaderboard, report."""
    results = smoke_results / "results" / "smoke"
    bench = yaml.safe_load((REPO / "benchmarks" / "smoke.yaml").read_text())
    assert len(list((results / "eval").glob("*/*.json"))) == len(bench["methods"]) * len(bench["sizes"])
    runs = pd.read_csv(results / "runs.csv")
    assert (runs["eval_status"] == "evaluated").sum() == len(bench["methods"]) * len(bench["sizes"])
    assert runs["eval/stabench_cloze/ll"].notna().any() and "eval/stabench_cloze/init_ll" in runs
    assert {"eval/stabench_cloze/acc", "eval/stabench_continuation/acc_norm"} <= set(pd.read_csv(results / "leaderboard.csv"))
    assert "Zero-shot evaluation" in (results / "report.html").read_text()


def test_second_run_does_nothing(smoke_results):
    proc = snakemake(smoke_results, "-n", "--cores", "2", "--config", "benchmark=smoke")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_adding_a_method_trains_only_its_runs(smoke_results, tmp_path):
    bench = yaml.safe_load((REPO / "benchmarks" / "smoke.yaml").read_text())
    bench["methods"].append("z_loss")
    path = smoke_results / "smoke_plus.yaml"
    path.write_text(yaml.safe_dump(bench))
    proc = snakemake(smoke_results, "-n", "--cores", "2", "--config", f"benchmark={path}")
    jobs = dict(line.split()[:2] for line in proc.stdout.splitlines()
                if len(line.split()) == 2 and line.split()[1].isdigit())
    assert int(jobs["train"]) == len(bench["sizes"]) * len(bench["learning_rates"])
    assert "prepare_data" not in jobs


def test_snakemake_report_works(smoke_results):
    snakemake(smoke_results, "--config", "benchmark=smoke", "--report", "smk_report.html")
    assert (smoke_results / "smk_report.html").stat().st_size > 10_000


def test_diverged_run_is_a_result_and_crash_fails_only_its_job(tmp_path):
    """A huge LR diverges (a row of the leaderboard); a crashing method fails only its jobs."""
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "crashes.py").write_text(
        '"""A method that raises, to test that one crash does not stop the grid."""\n'
        'VERSION = "0"\n'
        'def transform_model(model, config, args):\n'
        '    raise RuntimeError("deliberate crash for the test")\n')
    bench = yaml.safe_load((REPO / "benchmarks" / "smoke.yaml").read_text())
    bench.update(name="crashy", methods=["baseline", "crashes"], learning_rates=[1e-2, 1e4],
                 sizes={"t16": bench["sizes"]["t16"]})
    bench["train"].update(steps=20)
    path = tmp_path / "crashy.yaml"
    path.write_text(yaml.safe_dump(bench))

    proc = snakemake(tmp_path, "--cores", "2", "--keep-going", "--config", f"benchmark={path}", check=False)
    assert proc.returncode != 0
    runs = tmp_path / "results" / "crashy" / "runs"
    ok = json.loads((runs / "baseline" / "t16" / "lr0.01-s0" / "metrics.json").read_text())
    diverged = json.loads((runs / "baseline" / "t16" / "lr10000-s0" / "metrics.json").read_text())
    assert not ok["diverged"] and diverged["diverged"]
    assert not (runs / "crashes" / "t16" / "lr0.01-s0" / "metrics.json").exists()
    log = tmp_path / "results" / "crashy" / "logs" / "train" / "crashes" / "t16" / "lr0.01-s0.log"
    assert "deliberate crash for the test" in log.read_text()

    # Without the crashing method the same grid completes, and the diverged run is scored.
    bench["methods"] = ["baseline"]
    path.write_text(yaml.safe_dump(bench))
    snakemake(tmp_path, "--cores", "2", "--config", f"benchmark={path}")
    board = pd.read_csv(tmp_path / "results" / "crashy" / "leaderboard.csv")
    assert board.loc[0, "diverged"] == 1


def test_bad_benchmark_is_a_one_line_error(tmp_path):
    bench = yaml.safe_load((REPO / "benchmarks" / "smoke.yaml").read_text())
    bench["learning_rates"] = ["abc"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bench))
    proc = snakemake(tmp_path, "-n", "--config", f"benchmark={path}", check=False)
    assert proc.returncode != 0
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "learning_rates" in line]
    assert lines and "'abc'" in lines[0] and "Traceback" not in proc.stderr


def test_unknown_method_in_benchmark_names_it(tmp_path):
    bench = yaml.safe_load((REPO / "benchmarks" / "smoke.yaml").read_text())
    bench["methods"] = ["baseline", "qk_layrnorm"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bench))
    proc = snakemake(tmp_path, "-n", "--config", f"benchmark={path}", check=False)
    assert proc.returncode != 0
    assert "Did you mean 'qk_layernorm'" in proc.stdout + proc.stderr


def test_cpu_benchmark_dry_run(tmp_path):
    bench = yaml.safe_load((REPO / "benchmarks" / "cpu.yaml").read_text())
    proc = snakemake(tmp_path, "-n", "--cores", "2")  # the default benchmark is cpu
    jobs = dict(line.split()[:2] for line in proc.stdout.splitlines()
                if len(line.split()) == 2 and line.split()[1].isdigit())
    n_grid = len(bench["methods"]) * len(bench["sizes"]) * len(bench["learning_rates"]) * len(bench.get("seeds", [0]))
    assert int(jobs["train"]) == n_grid


def test_slurm_profile_dry_run_requests_gpus(tmp_path):
    """The SLURM profile turns each train run into a job asking for its size's GPUs."""
    proc = snakemake(tmp_path, "-n", "--profile", str(REPO / "profiles" / "slurm"),
                     "--config", "benchmark=smoke", "gpus=1")
    out = proc.stdout + proc.stderr
    train_blocks = [b for b in out.split("\n\n") if "rule train:" in b]
    assert train_blocks and all("gpu=1" in b for b in train_blocks)
    assert "--gpus 1" in out


def test_gpu_profile_dry_run_takes_pool_slots(tmp_path):
    proc = snakemake(tmp_path, "-n", "--profile", str(REPO / "profiles" / "gpu"),
                     "--config", "benchmark=smoke", "gpus=1", "runs_per_gpu=4")
    out = proc.stdout + proc.stderr
    assert "gpu_slots=1" in out and "--gpus 1 --runs-per-gpu 4" in out


def test_pack_mode_trains_each_method_and_size_in_one_job(tmp_path):
    """--config pack=1: one train_pack job per (method, size), holding all its LRs and seeds."""
    bench = yaml.safe_load((REPO / "benchmarks" / "smoke.yaml").read_text())
    proc = snakemake(tmp_path, "-n", "-p", "--cores", "2", "--config", "benchmark=smoke", "pack=1")
    jobs = dict(line.split()[:2] for line in proc.stdout.splitlines()
                if len(line.split()) == 2 and line.split()[1].isdigit())
    assert int(jobs["train_pack"]) == len(bench["methods"]) * len(bench["sizes"])
    assert "train" not in jobs
    assert (proc.stdout + proc.stderr).count("--run ") == len(bench["methods"]) * len(bench["sizes"]) * len(bench["learning_rates"])
