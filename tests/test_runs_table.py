"""runs.csv carries a record of what it holds and what it was built from (runs.csv.json,
analysis/tables.py): truncated to valid text, it is rebuilt before any step reads it, by the
analysis CLI and by the workflow's repair (issue 21)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from analysis_synthetic import LRS, benchmark, noise, runs_table, write_results

from analysis.cli import main


def loss(m, si, li, seed):
    return [3.2, 2.8][li] + (0.3 if m == "a" else 0.0) + noise(seed)


@pytest.fixture
def aggregated(tmp_path) -> dict:
    runs = runs_table(loss, ["a", "b"], lrs=LRS[:2], seeds=(0, 1))
    metrics = write_results(tmp_path, runs)
    bench = tmp_path / "benchmark.yaml"
    bench.write_text(yaml.safe_dump(benchmark(["a", "b"], lrs=LRS[:2], seeds=(0, 1)) | {"name": "t"}))
    f = {k: tmp_path / v for k, v in (("runs", "runs.csv"), ("scores", "scores.csv"), ("lb", "lb.csv"))}
    assert main(["aggregate", "--metrics", *map(str, metrics), "--runs-csv", str(f["runs"]),
                 "--benchmark-yaml", str(bench)]) == 0
    return f | {"bench": bench, "metrics": metrics, "n": len(runs)}


def score(f) -> int:
    return main(["score", "--runs-csv", str(f["runs"]), "--scores-csv", str(f["scores"]),
                 "--leaderboard-csv", str(f["lb"]), "--benchmark-yaml", str(f["bench"])])


def truncate_to_rows(path: Path, rows: int) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:1 + rows]))  # still valid CSV


def test_runs_csv_carries_its_record(aggregated):
    record = json.loads(Path(f"{aggregated['runs']}.json").read_text())
    assert record["rows"] == aggregated["n"] == len(pd.read_csv(aggregated["runs"]))
    assert record["sources"]["metrics"] == list(map(str, aggregated["metrics"]))
    assert record["sources"]["benchmark_yaml"] == str(aggregated["bench"])


def test_truncated_runs_csv_is_rebuilt_before_it_is_read(aggregated, capsys):
    original = aggregated["runs"].read_bytes()
    truncate_to_rows(aggregated["runs"], 1)
    assert score(aggregated) == 0
    err = capsys.readouterr().err.strip()
    assert err == (f"analysis: {aggregated['runs']}: it holds 1 rows, {aggregated['n']} were written; "
                   f"rebuilt from its {aggregated['n']} metrics files")
    assert aggregated["runs"].read_bytes() == original
    lb = pd.read_csv(aggregated["lb"])
    assert list(lb["method"]) == ["b", "a"] and (lb["runs"] == aggregated["n"] // 2).all()


def test_a_changed_metrics_file_rebuilds_runs_csv(aggregated, capsys):
    path = aggregated["metrics"][0]
    m = json.loads(path.read_text())
    m["final_val_loss"] = 2.5
    path.write_text(json.dumps(m))
    assert score(aggregated) == 0
    assert "its metrics files changed since it was built" in capsys.readouterr().err
    assert 2.5 in set(pd.read_csv(aggregated["runs"])["final_val_loss"])


def test_runs_csv_without_its_record_is_refused_in_one_line(aggregated):
    Path(f"{aggregated['runs']}.json").unlink()
    with pytest.raises(SystemExit) as exc:
        score(aggregated)
    assert str(exc.value) == (f"analysis: error: {aggregated['runs']}: no readable runs.csv.json (the record of "
                              "what it holds); cannot rebuild it here: run the workflow (or python -m analysis "
                              "aggregate) again")


def test_the_workflow_repair_removes_a_truncated_runs_csv_with_the_other_outputs(aggregated):
    from stabench.repair import repair
    assert score(aggregated) == 0
    derived = [aggregated["runs"], Path(f"{aggregated['runs']}.json"), aggregated["scores"], aggregated["lb"]]
    assert repair({}, [], list(map(str, derived))) == []  # all as written: nothing to do
    truncate_to_rows(aggregated["runs"], 3)
    lines = repair({}, [], list(map(str, derived)))
    assert lines == [f"removed 4 analysis outputs (runs.csv, runs.csv.json, scores.csv, ...) so that they are "
                     f"rebuilt from every run (runs.csv: it holds 3 rows, {aggregated['n']} were written)"]
    assert not any(p.exists() for p in derived)
