"""The workflow follows Snakemake's own conventions: `snakemake --lint` finds nothing, and every
train and eval job writes a benchmark file (wall time, peak memory) that the report reads."""

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def copy_workflow(dest: Path) -> Path:
    for name in ("Snakefile", "workflow", "benchmarks", "methods", "claims", "profiles"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, dest / name)
    return dest


@pytest.mark.parametrize("pack", ["1", "0"])
def test_lint_is_clean(tmp_path, pack):
    work = copy_workflow(tmp_path)
    done = subprocess.run([*SNAKEMAKE, "--lint", "--config", "benchmark=smoke", f"pack={pack}"], cwd=work,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Congratulations" in done.stdout + done.stderr


def test_train_and_eval_jobs_have_benchmark_files(tmp_path):
    work = copy_workflow(tmp_path)
    done = subprocess.run([*SNAKEMAKE, "-n", "--config", "benchmark=smoke", "--printshellcmds", "--verbose"], cwd=work,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    for rule in ("train_pack", "evaluate"):
        assert f"rule {rule}" in done.stdout
    assert "benchmarks/train/baseline/t16/s0.tsv" in done.stdout
    assert "benchmarks/eval/baseline/t16.tsv" in done.stdout


def test_job_costs_sum_per_method(tmp_path):
    from analysis.jobs import job_costs
    header = "s\th:m:s\tmax_rss\tmax_vms\n"
    files = {"train/base/s1/pack.tsv": "10.5\t0:00:10\t300.0\t900\n", "train/base/s2/pack.tsv": "20.0\t0:00:20\t500.0\t900\n",
             "eval/base/s1.tsv": "3.0\t0:00:03\t400.0\t900\n", "train/other/s1/lr0.01-s0.tsv": "5.0\t0:00:05\t200.0\t900\n"}
    paths = []
    for name, row in files.items():
        path = tmp_path / "benchmarks" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + row)
        paths.append(path)
    costs = job_costs(paths).set_index("method")
    assert costs.loc["base", "train_seconds"] == pytest.approx(30.5)
    assert costs.loc["base", "train_jobs"] == 2 and costs.loc["base", "train_peak_mb"] == 500.0
    assert costs.loc["base", "eval_seconds"] == 3.0 and costs.loc["base", "eval_peak_mb"] == 400.0
    assert costs.loc["other", "train_seconds"] == 5.0 and pd.isna(costs.loc["other", "eval_seconds"])
