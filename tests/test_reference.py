"""Reference results (stabench.reference): which runs of a grid they stand for, and when not.

The workflow end to end (a copy of the smoke benchmark with one method added, ranked against a
reference made from the smoke run) is in tests/test_workflow.py."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from stabench.config import ConfigError, resolve_reference_dir, workflow_settings
from stabench.reference import load_reference, pairs_from_reference, write_rows

EVAL = {"runs": "best", "limit": 30}


def write_reference(folder: Path, rows: list[dict], provenance: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    columns = list(rows[0]) if rows else ["method", "identity"]
    with (folder / "runs.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    if provenance is not None:
        (folder / "provenance.json").write_text(json.dumps(provenance))
    return folder


def rows(*identities: str) -> list[dict]:
    return [{"method": "baseline", "size": "t16", "lr": "0.01", "seed": "0", "final_val_loss": "5.5",
             "run_dir": f"results/cpu/runs/x{i}", "identity": ident} for i, ident in enumerate(identities)]


GRID = {("base", "t16", "0.01", "0"): "a" * 16, ("base", "t16", "0.1", "0"): "b" * 16,
        ("base", "t32", "0.01", "0"): "c" * 16, ("base", "t32", "0.1", "0"): "d" * 16}


def test_a_method_size_is_taken_only_when_all_its_runs_are_in_the_reference(tmp_path):
    ref = load_reference(write_reference(tmp_path / "ref", rows("a" * 16, "b" * 16, "c" * 16),
                                         {"eval": EVAL, "git commit": "abc123", "machine": "2 CPUs"}))
    assert pairs_from_reference(ref, GRID, EVAL) == {("base", "t16")}  # t32 lacks d: it trains whole
    assert "abc123" in ref.describe() and "2 CPUs" in ref.describe()


def test_other_eval_settings_use_no_reference(tmp_path):
    ref = load_reference(write_reference(tmp_path / "ref", rows(*GRID.values()), {"eval": EVAL}))
    assert pairs_from_reference(ref, GRID, EVAL) == {("base", "t16"), ("base", "t32")}
    assert pairs_from_reference(ref, GRID, {**EVAL, "limit": 31}) == set()


def test_rows_are_relabelled_as_the_grid_names_them(tmp_path):
    ref = load_reference(write_reference(tmp_path / "ref", rows(*GRID.values())))
    taken = {run: ident for run, ident in GRID.items() if run[1] == "t16"}
    write_rows(tmp_path / "out.csv", ref, taken)
    with (tmp_path / "out.csv").open(newline="") as fh:
        out = list(csv.DictReader(fh))
    assert [r["identity"] for r in out] == ["a" * 16, "b" * 16]
    assert {r["method"] for r in out} == {"base"} and {r["source"] for r in out} == {"reference"}
    assert all(Path(r["run_dir"]).is_relative_to(tmp_path / "ref") for r in out)  # no folder of this machine's


def test_a_reference_without_identities_is_one_line(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "runs.csv").write_text("method,size\nbaseline,t16\n")
    with pytest.raises(ConfigError, match="no identity column") as err:
        load_reference(folder)
    assert "\n" not in str(err.value)


def test_the_reference_setting_names_a_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_reference(tmp_path / "reference" / "mine", rows("a" * 16))
    assert resolve_reference_dir("mine") == tmp_path / "reference" / "mine"
    assert workflow_settings({"reference": str(tmp_path / "reference" / "mine")})["reference"] == \
        str(tmp_path / "reference" / "mine")
    with pytest.raises(ConfigError, match="known: .*mine"):
        workflow_settings({"reference": "nope"})
