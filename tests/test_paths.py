"""One definition of each layout fact (issue 19): the run folders (stabench.paths, used by the
CLI, the workflow and the lm-eval adapter), the workflow's localrules (one list) and the
benchmark's validation (once, by stabench)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stabench import paths
from stabench.config import ConfigError

REPO = Path(__file__).resolve().parent.parent
RULES = sorted((REPO / "workflow" / "rules").glob("*.smk")) + [REPO / "Snakefile"]


def test_run_dir_and_its_inverse(tmp_path):
    results = tmp_path / "results" / "bench"
    run = paths.run_dir(results, "baseline", "d64", paths.lr_label(0.01), 3)
    assert run == results / "runs" / "baseline" / "d64" / "lr0.01-s3"
    assert paths.results_of_run(run) == results.resolve()
    assert paths.data_dir(results) == results / "data" and paths.tasks_dir(results) == results / "eval_tasks"
    assert paths.run_name("{method}", "{size}", "{lr}", "{seed}") == "{method}/{size}/lr{lr}-s{seed}"
    assert paths.results_of_run(Path("/a/b")) is None


def test_results_dir_is_a_checked_slug():
    assert paths.results_dir({"name": "cpu"}) == Path("results") / "cpu"
    with pytest.raises(ConfigError, match="name: got '..'"):
        paths.results_dir({"name": ".."})


def test_the_lm_eval_adapter_finds_a_runs_data_through_paths(tmp_path):
    pytest.importorskip("lm_eval")
    from stabench.evaluation.adapter import default_data_dir

    results = tmp_path / "results" / "bench"
    run = paths.run_dir(results, "m", "s", "0.01", 0)
    with pytest.raises(ValueError, match="no data folder found"):
        default_data_dir(run)
    paths.data_dir(results).mkdir(parents=True)
    (paths.data_dir(results) / "manifest.json").write_text("{}")
    assert default_data_dir(run) == paths.data_dir(results.resolve())


def test_the_workflow_spells_no_run_folder_itself():
    """The rules take run folders from common.smk's run_dir / RUN_DIR / RUN_NAME (stabench.paths)."""
    for path in RULES:
        text = path.read_text()
        assert not re.search(r"lr\{+lr\}+-s\{+seed\}+", text), f"{path.name} spells the run folder; use stabench.paths"
        assert "/runs/" not in text, f"{path.name} spells runs/; use stabench.paths"


def test_localrules_are_one_list_naming_every_cheap_rule():
    lists = [(p.name, m) for p in RULES for m in re.finditer(r"^localrules:\s*((?:\s*\w+,?)+)", p.read_text(), re.M)]
    assert len(lists) == 1, f"localrules declared in {[name for name, _ in lists]}; keep one list"
    names = set(re.findall(r"\w+", lists[0][1].group(1)))
    analysis_rules = set(re.findall(r"^rule (\w+):", (REPO / "workflow" / "rules" / "analysis.smk").read_text(), re.M))
    assert analysis_rules <= names, f"analysis rules missing from localrules: {sorted(analysis_rules - names)}"
    assert {"prepare_data", "build_eval_tasks"} <= names


def test_the_workflow_validates_the_benchmark_once_through_stabench():
    text = "\n".join(p.read_text() for p in RULES)
    assert "snakemake.utils import validate" not in text and "validate(" not in text
    assert text.count("load_for_use(") == 1
