"""The workflow end to end through the real Snakemake CLI, in temporary folders.

The smoke benchmark runs for real once per session (about a minute on 2 cores); the other
tests reuse its results, use dry runs, or train a few runs of a few steps, so the suite
stays fast. Packing is the default (one train_pack job per (method, size)); ``--config
pack=0`` trains run by run (one train job per run).
"""

from __future__ import annotations

import ast
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from test_offline import network_attempts, no_network_env

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]


_ENV: dict[str, str] = {}


def snakemake_env() -> dict[str, str]:
    """The environment of the Snakemake subprocesses. When loaded, the SLURM executor plugin
    asks ``scontrol show config`` for the cluster's settings; where SLURM's tools are installed
    but no controller answers, that waits 9 s in every Snakemake call. No test talks to a
    cluster (the SLURM profile is only dry-run), so an ``scontrol`` that fails at once goes
    first on the PATH."""
    if not _ENV:
        shim = Path(tempfile.mkdtemp(prefix="stabench-test-bin-"))
        (shim / "scontrol").write_text("#!/bin/sh\necho 'no SLURM controller in the tests' >&2\nexit 1\n")
        (shim / "scontrol").chmod(0o755)
        _ENV.update(os.environ, PATH=f"{shim}{os.pathsep}{os.environ.get('PATH', '')}")
    return _ENV


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), *args],
                          capture_output=True, text=True, timeout=900, env=snakemake_env())
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def job_counts(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """The dry run's job stats table: rule -> number of jobs."""
    return {line.split()[0]: int(line.split()[1]) for line in proc.stdout.splitlines()
            if len(line.split()) == 2 and line.split()[1].isdigit()}


def job_wildcards(proc: subprocess.CompletedProcess, rule: str) -> list[dict[str, str]]:
    """The wildcards of every job of ``rule`` that a dry run lists."""
    out = []
    for block in (proc.stdout + proc.stderr).split(f"rule {rule}:")[1:]:
        match = re.search(r"wildcards: (.*)", block)
        out.append(dict(part.split("=", 1) for part in match.group(1).split(", ")))
    return out


def smoke_bench() -> dict:
    return yaml.safe_load((REPO / "benchmarks" / "smoke.yaml").read_text())


def metadata(workdir: Path) -> dict[str, dict]:
    """Snakemake's record of every output it made: output path -> its metadata (rule, params)."""
    root = workdir / ".snakemake" / "metadata"
    records = {}
    for path in root.rglob("*"):
        if path.is_file():
            encoded = "".join(path.relative_to(root).parts)
            records[base64.urlsafe_b64decode(encoded).decode()] = json.loads(path.read_text())
    return records


def param_identities(record: dict) -> list[str]:
    """The run identities among a train or train_pack job's recorded params."""
    for text in record["params"]:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            continue
        values = value if isinstance(value, list) else [value]
        if values and all(isinstance(v, str) and re.fullmatch(r"[0-9a-f]{16}", v) for v in values):
            return values
    raise AssertionError(f"no identities in params {record['params']}")


SMOKE_NETLOG: list[Path] = []  # where the session's smoke run logged network attempts


@pytest.fixture(scope="session")
def smoke_results(tmp_path_factory) -> Path:
    """Run the smoke benchmark once, as a user would: `snakemake --cores 2 --config benchmark=smoke`,
    every process of it under the offline guard (tests/test_offline.py), which logs any network
    attempt: one run serves both."""
    workdir = tmp_path_factory.mktemp("smoke")
    netlog = tmp_path_factory.mktemp("smoke-net") / "net.log"
    env = {**no_network_env(netlog), "PATH": snakemake_env()["PATH"]}
    proc = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), "--cores", "2", "--config", "benchmark=smoke"],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    SMOKE_NETLOG.append(netlog)
    return workdir


def test_smoke_workflow_with_evaluation_runs_without_network(smoke_results):
    """The default path makes no network access at all, evaluation included, and every job's
    log is plain lines (no progress bar redrawn with carriage returns)."""
    assert network_attempts(SMOKE_NETLOG[0]) == ""
    results = smoke_results / "results" / "smoke"
    records = sorted((results / "eval").rglob("*.json"))
    bench = smoke_bench()
    assert len(records) == len(bench["methods"]) * len(bench["sizes"])
    for path in records:
        record = json.loads(path.read_text())
        if record["status"] == "evaluated":
            assert record["tasks"]["stabench_cloze"]["status"] == "ok"
            assert record["settings"]["hub"] is None  # no hub task asked for, none probed
    runs = pd.read_csv(results / "runs.csv")
    assert "eval/stabench_cloze/acc" in runs.columns
    logs = [path for path in (results / "logs").rglob("*") if path.is_file()]
    assert any("eval" in path.parts for path in logs) and (results / "logs" / "prepare_data.log") in logs
    redrawn = [str(path.relative_to(results)) for path in logs if b"\r" in path.read_bytes()]
    assert redrawn == [], redrawn
    assert "tokenize train: " in (results / "logs" / "prepare_data.log").read_text()


def test_smoke_benchmark_leaderboard_and_report(smoke_results):
    results = smoke_results / "results" / "smoke"
    bench = yaml.safe_load((REPO / "benchmarks" / "smoke.yaml").read_text())
    n_runs = len(bench["methods"]) * len(bench["sizes"]) * len(bench["learning_rates"])

    runs = pd.read_csv(results / "runs.csv")
    assert len(runs) == n_runs
    assert (runs["final_val_loss"] < runs["init_loss"]).any(), "no run learned anything"
    # packing is the default: each (method, size) trained its LRs as one ensemble
    for metrics_path in (results / "runs").rglob("metrics.json"):
        metrics = json.loads(metrics_path.read_text())
        assert metrics["packed_with"] == len(bench["learning_rates"]) or metrics["diverged"], metrics_path
        losses = pd.read_csv(metrics_path.parent / "losses.csv")
        assert list(losses["step"]) == list(range(1, metrics["steps"] + 1))
    assert len(list((results / "logs" / "train").rglob("s0.log"))) == len(bench["methods"]) * len(bench["sizes"])

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
    """Add a method to the benchmark (here: a ./benchmarks/smoke.yaml of the working folder, which
    is looked in before the shipped benchmarks): only the new method's runs train."""
    bench = yaml.safe_load((REPO / "benchmarks" / "smoke.yaml").read_text())
    bench["methods"].append("z_loss")
    path = smoke_results / "benchmarks" / "smoke.yaml"
    path.parent.mkdir()
    try:
        path.write_text(yaml.safe_dump(bench))
        proc = snakemake(smoke_results, "-n", "--cores", "2", "--config", "benchmark=smoke")
    finally:
        shutil.rmtree(path.parent)
    jobs = job_counts(proc)
    assert jobs["train_pack"] == len(bench["sizes"])  # one pack per size, of the new method only
    assert {w["method"] for w in job_wildcards(proc, "train_pack")} == {"z_loss"}
    assert "prepare_data" not in jobs and "train" not in jobs


def test_snakemake_report_works(smoke_results):
    snakemake(smoke_results, "--config", "benchmark=smoke", "--report", "smk_report.html")
    assert (smoke_results / "smk_report.html").stat().st_size > 10_000


def test_each_run_is_trained_from_its_run_json(smoke_results):
    """Every run folder holds the run.json the workflow resolved once (its run_spec job, whose
    params are the run's identity); the train job is handed those files and nothing else about
    the run (no LR or method in its command line), and the checkpoint and metrics it writes
    carry the same identity: one definition for all four."""
    results = smoke_results / "results" / "smoke"
    records = metadata(smoke_results)
    run_dirs = sorted(p.parent for p in (results / "runs").rglob("metrics.json"))
    assert len(run_dirs) == 2 * 2 * 3
    for run_dir in run_dirs:
        rel = run_dir.relative_to(smoke_results).as_posix()
        spec = json.loads((run_dir / "run.json").read_text())
        assert spec["owner"] == "workflow" and spec["spec"]["lr"] == float(rel.rsplit("/lr", 1)[1].split("-s")[0])
        assert records[f"{rel}/run.json"]["rule"] == "run_spec"
        identity = param_identities(records[f"{rel}/run.json"])[0]
        record = records[f"{rel}/metrics.json"]
        assert record["rule"] == "train_pack"
        assert f"--spec {rel}/run.json" in record["shellcmd"] and "--lr" not in record["shellcmd"]
        checkpoint = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert identity == spec["identity"] == checkpoint["identity"] == metrics["identity"]


def test_a_result_forced_into_a_workflow_folder_is_refused_by_the_analysis(smoke_results, tmp_path):
    """`stabench train --force` into a workflow's run folder with another setting: the next
    workflow run does not take that result into the tables without a word (one line naming both
    runs and what to delete)."""
    work = tmp_path / "forced"
    shutil.copytree(smoke_results / "results", work / "results", symlinks=True)
    run_dir = next((work / "results/smoke/runs").rglob("run.json")).parent
    spec = json.loads((run_dir / "run.json").read_text())["spec"]
    argv = [sys.executable, "-m", "stabench", "train", "smoke", "--method", spec["method"], "--size", spec["size"],
            "--lr", repr(spec["lr"]), "--seed", str(spec["seed"]), "--out", str(run_dir.relative_to(work)),
            "--set", "train.steps=7", "--no-progress"]
    refused = subprocess.run(argv, cwd=work, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "train.steps: 40 there, 7 here" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "--force" in refused.stderr
    forced = subprocess.run([*argv, "--force"], cwd=work, capture_output=True, text=True, timeout=600)
    assert forced.returncode == 0, forced.stderr
    shutil.copytree(smoke_results / ".snakemake", work / ".snakemake", ignore=shutil.ignore_patterns("locks", "incomplete"))
    proc = snakemake(work, "--cores", "2", "--config", "benchmark=smoke", "--forcerun", "aggregate", check=False)
    assert proc.returncode != 0 and "metrics.json holds run" in (work / "results/smoke/logs/aggregate.log").read_text()


# ---- reference results: rank a new method against runs trained elsewhere ---------------------

def make_reference(smoke_results: Path, out: Path) -> Path:
    """The smoke run's tables as reference results (stabench make-reference)."""
    proc = subprocess.run([sys.executable, "-m", "stabench", "make-reference", str(smoke_results / "results" / "smoke"),
                           "--out", str(out), "--note", "wall time=a test"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out


def copy_of_smoke(work: Path, name: str, smoke_results: Path, **changes) -> None:
    """A copy of the smoke benchmark under another name in ``work``/benchmarks, with ``changes``
    (section -> new value), and the smoke run's prepared data (the same data settings: the copy
    prepares nothing)."""
    bench = smoke_bench()
    bench.update(name=name, **changes)
    (work / "benchmarks").mkdir(parents=True)
    (work / "benchmarks" / f"{name}.yaml").write_text(yaml.safe_dump(bench))
    for folder in ("data", "eval_tasks"):
        shutil.copytree(smoke_results / "results" / "smoke" / folder, work / "results" / name / folder)


def test_reference_results_rank_a_new_method_without_training_the_reference(smoke_results, tmp_path):
    """Issue 23: a user adds one method to a copy of the benchmark (another name) and points
    --config reference= at shipped results: only the new method trains and is evaluated, and the
    leaderboard ranks it with the reference's methods, whose rows are the reference's."""
    reference = make_reference(smoke_results, tmp_path / "reference")
    assert {"runs.csv", "leaderboard.csv", "claims.csv", "provenance.json"} <= {p.name for p in reference.iterdir()}
    provenance = json.loads((reference / "provenance.json").read_text())
    assert provenance["benchmark"] == "smoke" and provenance["git commit"] and provenance["machine"]
    work = tmp_path / "user"
    bench = smoke_bench()
    copy_of_smoke(work, "mine", smoke_results, methods=[*bench["methods"], "z_loss"])
    config = ["--config", "benchmark=mine", f"reference={reference}"]

    dry = snakemake(work, "-n", "--cores", "2", *config)
    jobs = job_counts(dry)
    assert jobs["train_pack"] == len(bench["sizes"]) and jobs["evaluate"] == len(bench["sizes"])
    assert {w["method"] for w in job_wildcards(dry, "train_pack")} == {"z_loss"}
    assert {w["method"] for w in job_wildcards(dry, "evaluate")} == {"z_loss"}
    assert "prepare_data" not in jobs and "train" not in jobs and jobs["reference_rows"] == 1

    snakemake(work, "--cores", "2", *config)
    results = work / "results" / "mine"
    assert not (results / "runs" / "baseline").exists()  # nothing of the reference trained here
    runs = pd.read_csv(results / "runs.csv", dtype={"identity": str})
    shipped = pd.read_csv(reference / "runs.csv", dtype={"identity": str})
    assert len(runs) == len(shipped) + len(bench["sizes"]) * len(bench["learning_rates"])
    assert set(runs.loc[runs["source"] == "trained", "method"]) == {"z_loss"}
    from_ref = runs[runs["source"] == "reference"].set_index("identity")
    assert set(from_ref.index) == set(shipped["identity"])
    for column in ("final_val_loss", "eval/stabench_cloze/acc"):
        pd.testing.assert_series_equal(from_ref[column].sort_index(), shipped.set_index("identity")[column].sort_index(),
                                       check_names=False, rtol=1e-9)
    board = pd.read_csv(results / "leaderboard.csv")
    assert sorted(board["method"]) == sorted([*bench["methods"], "z_loss"])
    assert list(board["rank"]) == list(range(1, len(board) + 1))
    shipped_board = pd.read_csv(reference / "leaderboard.csv").set_index("method")
    for method in bench["methods"]:  # a reference method scores as it did where it was trained
        assert board.set_index("method").loc[method, "lr_sensitivity"] == \
            pytest.approx(shipped_board.loc[method, "lr_sensitivity"], rel=1e-9)
    html = (results / "report.html").read_text()
    assert 'id="reference"' in html and provenance["git commit"] in html and "b-ref" in html
    assert "could not be drawn" not in (results / "logs" / "figures.log").read_text()
    assert "Nothing to be done" in (lambda p: p.stdout + p.stderr)(snakemake(work, "-n", "--cores", "2", *config))


def test_a_reference_run_of_other_settings_is_not_used(smoke_results, tmp_path):
    """A run whose identity is not in the reference (here: train.steps changed) trains, whatever
    its name; a (method, size) with one such run trains whole."""
    reference = make_reference(smoke_results, tmp_path / "reference")
    work = tmp_path / "user"
    bench = smoke_bench()
    copy_of_smoke(work, "longer", smoke_results, train={**bench["train"], "steps": bench["train"]["steps"] + 1})
    dry = snakemake(work, "-n", "--cores", "2", "--config", "benchmark=longer", f"reference={reference}")
    jobs = job_counts(dry)
    assert jobs["train_pack"] == len(bench["methods"]) * len(bench["sizes"]) and "reference_rows" not in jobs
    # One reference row of another identity: that (method, size) trains, the rest come from the reference.
    shipped = pd.read_csv(reference / "runs.csv", dtype={"identity": str})
    shipped.loc[0, "identity"] = "0" * 16
    shipped.to_csv(reference / "runs.csv", index=False)
    copy_of_smoke(tmp_path / "same", "same", smoke_results)
    dry = snakemake(tmp_path / "same", "-n", "--cores", "2", "--config", "benchmark=same", f"reference={reference}")
    assert [(w["method"], w["size"]) for w in job_wildcards(dry, "train_pack")] == \
        [(shipped.loc[0, "method"], shipped.loc[0, "size"])]


def test_diverged_run_is_a_result_and_crash_fails_only_its_job(tmp_path):
    """A huge LR diverges (a row of the leaderboard); a crashing method fails only its jobs."""
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "crashes.py").write_text(
        '"""A method that raises, to test that one crash does not stop the grid."""\n'
        'VERSION = "0"\n'
        'def transform_model(model, config, args):\n'
        '    raise RuntimeError("deliberate crash for the test")\n')
    bench = smoke_bench()
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
    assert ok["packed_with"] == diverged["packed_with"] == 2  # it left the pack; the other finished
    assert not (runs / "crashes" / "t16" / "lr0.01-s0" / "metrics.json").exists()
    log = tmp_path / "results" / "crashy" / "logs" / "train" / "crashes" / "t16" / "s0.log"
    assert "deliberate crash for the test" in log.read_text()

    # Without the crashing method the same grid completes, and the diverged run is scored.
    bench["methods"] = ["baseline"]
    path.write_text(yaml.safe_dump(bench))
    done = snakemake(tmp_path, "--cores", "2", "--config", f"benchmark={path}")
    assert "left (estimated from the" in done.stderr  # the time left, after Snakemake's progress lines
    board = pd.read_csv(tmp_path / "results" / "crashy" / "leaderboard.csv")
    assert board.loc[0, "diverged"] == 1


def test_bad_benchmark_is_a_one_line_error(tmp_path):
    bench = smoke_bench()
    bench["learning_rates"] = ["abc"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bench))
    proc = snakemake(tmp_path, "-n", "--config", f"benchmark={path}", check=False)
    assert proc.returncode != 0
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "learning_rates" in line]
    assert lines and "'abc'" in lines[0] and "Traceback" not in proc.stderr


def test_duplicate_lrs_are_a_one_line_error_naming_both(tmp_path):
    bench = smoke_bench()
    bench["learning_rates"] = [1.0e-3, 1.0e-2, 0.001]
    path = tmp_path / "dup.yaml"
    path.write_text(yaml.safe_dump(bench))
    proc = snakemake(tmp_path, "-n", "--config", f"benchmark={path}", check=False)
    assert proc.returncode != 0
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "learning_rates" in line]
    assert len(lines) == 1 and "0.001 and 0.001" in lines[0] and "Traceback" not in proc.stderr


@pytest.mark.parametrize("pack", ["1", "0"])
def test_exact_lrs_make_distinct_runs_with_exact_floats(tmp_path, pack):
    bench = smoke_bench()
    bench["learning_rates"] = [1e-3, 1.0000001e-3, 3.16227766e-3]
    bench["methods"] = ["baseline"]
    path = tmp_path / "exact.yaml"
    path.write_text(yaml.safe_dump(bench))
    proc = snakemake(tmp_path, "-n", "-p", "--cores", "2", "--config", f"benchmark={path}", f"pack={pack}")
    out = proc.stdout + proc.stderr
    folders = set(re.findall(r"runs/baseline/t16/(lr[^/\s]+-s0)/metrics.json", out))
    assert folders == {"lr0.001-s0", "lr0.0010000001-s0", "lr0.00316227766-s0"}
    # the exact LR travels in the run's run.json (written by its run_spec job), never as text
    assert "--spec results/smoke/runs/baseline/t16/lr0.00316227766-s0/run.json" in out and "--lr" not in out
    assert job_counts(proc)["run_spec"] == 6
    assert job_counts(proc)["train_pack" if pack == "1" else "train"] == (2 if pack == "1" else 6)
    assert "0.00316228" not in out


def test_unknown_method_in_benchmark_names_it(tmp_path):
    bench = smoke_bench()
    bench["methods"] = ["baseline", "qk_layrnorm"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bench))
    proc = snakemake(tmp_path, "-n", "--config", f"benchmark={path}", check=False)
    assert proc.returncode != 0
    assert "Did you mean 'qk_layernorm'" in proc.stdout + proc.stderr


def test_cpu_benchmark_dry_run(tmp_path):
    bench = yaml.safe_load((REPO / "benchmarks" / "cpu.yaml").read_text())
    n_grid = len(bench["methods"]) * len(bench["sizes"]) * len(bench["learning_rates"]) * len(bench.get("seeds", [0]))
    proc = snakemake(tmp_path, "-n", "-p", "--cores", "2")  # the default benchmark is cpu, packed
    seeds = len(bench.get("seeds", [0]))
    assert job_counts(proc)["train_pack"] == len(bench["methods"]) * len(bench["sizes"]) * seeds  # a job per LR sweep
    assert "train" not in job_counts(proc)
    assert (proc.stdout + proc.stderr).count("--spec ") == n_grid
    proc = snakemake(tmp_path, "-n", "--cores", "2", "--config", "pack=all")  # every run of a (method, size)
    assert job_counts(proc)["train_pack"] == len(bench["methods"]) * len(bench["sizes"])
    proc = snakemake(tmp_path, "-n", "--cores", "2", "--config", "pack=0")
    assert job_counts(proc)["train"] == n_grid and "train_pack" not in job_counts(proc)


def test_pack_zero_trains_run_by_run(tmp_path):
    """--config pack=0: one train job per run, each `stabench train` with its exact LR."""
    bench = smoke_bench()
    n_runs = len(bench["methods"]) * len(bench["sizes"]) * len(bench["learning_rates"])
    proc = snakemake(tmp_path, "-n", "-p", "--cores", "2", "--config", "benchmark=smoke", "pack=0")
    assert job_counts(proc)["train"] == n_runs and "train_pack" not in job_counts(proc)
    out = proc.stdout + proc.stderr
    assert out.count("-m stabench train ") == n_runs and "train-pack" not in out
    assert {(w["method"], w["size"], w["lr"]) for w in job_wildcards(proc, "train")} == {
        (m, s, f"{lr:g}") for m in bench["methods"] for s in bench["sizes"] for lr in bench["learning_rates"]}


def test_workflow_profile_runs_run_rules_in_threads():
    """Snakemake spawns a whole new Snakemake (a re-parse of this workflow, seconds of CPU) for each
    job of a `run:` rule unless told to use threads; run_spec has one job per run (630 in
    claims_cpu). The workflow profile, which Snakemake reads for every run of this workflow and
    beside any --profile, must keep them in threads, and no rule that trains may be a `run:`."""
    profile = yaml.safe_load((REPO / "profiles" / "default" / "profile.yaml").read_text())
    assert profile["force-use-threads"] is True
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for block in re.split(r"\n(?=\s*rule )", smk.read_text()):
            if re.search(r"^\s+run:", block, re.M):
                assert "stabench train" not in block and "python" not in block.split("run:")[1][:300], smk


@pytest.mark.parametrize("pack, rule", [("1", "train_pack"), ("0", "train")])
def test_slurm_profile_dry_run_requests_gpus(tmp_path, pack, rule):
    """The SLURM profile turns each train job into a job asking for its size's GPUs, with the
    runtime and memory estimated from the benchmark (workflow/rules/resources.smk)."""
    proc = snakemake(tmp_path, "-n", "--profile", str(REPO / "profiles" / "slurm"),
                     "--config", "benchmark=smoke", "gpus=1", f"pack={pack}")
    out = proc.stdout + proc.stderr
    train_blocks = [b for b in out.split("\n\n") if f"rule {rule}:" in b]
    assert train_blocks and all("gpu=1" in b and "runtime=" in b and "mem_mb=" in b for b in train_blocks)
    assert "your_account" not in out  # no placeholder account: the plugin uses the user's default
    assert "--gpus 1" in out


def test_gpu_profile_dry_run_takes_pool_slots(tmp_path):
    proc = snakemake(tmp_path, "-n", "--profile", str(REPO / "profiles" / "gpu"),
                     "--config", "benchmark=smoke", "gpus=1", "runs_per_gpu=4")
    out = proc.stdout + proc.stderr
    assert "gpu_slots=1" in out and "--gpus 1 --runs-per-gpu 4" in out
    assert "--threads 2" in out


# ---- one run identity: a new size retrains exactly what it changes ----------------------------

WIDTH_RELATIVE = ["sp_per_layer_lr", "everett_mup", "eps_width_scaled", "mup_simple", "mup_full"]
GROW_METHODS = ["baseline", "z_loss", *WIDTH_RELATIVE]


def grow_targets(sizes: list[str]) -> list[str]:
    return [f"results/grow/runs/{m}/{s}/lr{lr}-s0/metrics.json"
            for m in GROW_METHODS for s in sizes for lr in ("0.001", "0.01")]


def test_adding_a_smaller_size_retrains_exactly_the_runs_it_changes(tmp_path):
    """Train a grid of one size (a few steps), add a smaller size: the dry run lists the new
    size's jobs and, of the old size, exactly the width-relative methods' jobs (their base
    width, hence their identity, changed); Snakemake's params are the runs' identities."""
    bench = {"name": "grow", "data": {"source": "wiki-vital", "max_documents": 400, "vocab_size": 512},
             "sizes": {"s32": {"d_model": 32, "n_layers": 1, "n_heads": 2}},
             "train": {"steps": 3, "batch_size": 4, "seq_len": 16, "warmup_steps": 1, "eval_every": 3,
                       "eval_windows": 4, "probe_every": 3, "checkpoint_every": 3},
             "methods": GROW_METHODS, "learning_rates": [1.0e-3, 1.0e-2], "eval": {"runs": "none"}}
    path = tmp_path / "grow.yaml"
    path.write_text(yaml.safe_dump(bench))
    snakemake(tmp_path, "--cores", "2", *grow_targets(["s32"]), "--config", f"benchmark={path}")
    records = metadata(tmp_path)
    for method in GROW_METHODS:
        record = records[f"results/grow/runs/{method}/s32/lr0.01-s0/run.json"]
        state = torch.load(tmp_path / f"results/grow/runs/{method}/s32/lr0.01-s0/checkpoint.pt", weights_only=True)
        assert param_identities(record)[0] == state["identity"], method
    assert snakemake(tmp_path, "-n", "--cores", "2", *grow_targets(["s32"]), "--config", f"benchmark={path}") \
        .stdout.count("rule train_pack:") == 0

    bench["sizes"]["s16"] = {"d_model": 16, "n_layers": 1, "n_heads": 1}
    path.write_text(yaml.safe_dump(bench))
    proc = snakemake(tmp_path, "-n", "--cores", "2", *grow_targets(["s32", "s16"]), "--config", f"benchmark={path}")
    jobs = {(w["method"], w["size"]) for w in job_wildcards(proc, "train_pack")}
    assert jobs == {(m, "s32") for m in WIDTH_RELATIVE} | {(m, "s16") for m in GROW_METHODS}
    assert job_counts(proc)["train_pack"] == len(jobs)
    assert "Params have changed" in proc.stdout + proc.stderr
