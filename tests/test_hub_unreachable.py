"""Without the Hugging Face hub, what needs it fails at once, in one line (issue 21).

- an ``eval.tasks`` entry that is no offline task is refused where the benchmark is loaded
  (``stabench.benchmark.load_for_use``), not reported as skipped after training;
- an ``hf:`` dataset or a hub tokenizer is looked for in the local cache once, instead of
  half a minute of connection retries.

"Unreachable" is made certain on any machine: HF_ENDPOINT names a host under ``.invalid``
(a name that never resolves), or HF_HUB_OFFLINE is set.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stabench.benchmark import hub_needs, load_for_use
from stabench.config import ConfigError
from stabench.evaluation.tasks import LOCAL_NAMES

REPO = Path(__file__).resolve().parent.parent
SMOKE = yaml.safe_load((REPO / "benchmarks" / "smoke.yaml").read_text())
NOWHERE = "https://stabench-test.invalid"
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE", "TRANSFORMERS_OFFLINE")


def bench_file(tmp_path: Path, **edits) -> Path:
    bench = yaml.safe_load(yaml.safe_dump(SMOKE))
    for dotted, value in edits.items():
        section, key = dotted.split("__")
        bench.setdefault(section, {})[key] = value
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(bench, sort_keys=False))
    return path


@pytest.fixture
def hub_unreachable(monkeypatch):
    """No offline mode asked for, and a hub endpoint that never resolves."""
    for name in OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", NOWHERE)


@pytest.mark.parametrize("task, hint", [("hellaswg", None), ("cloze", "stabench_cloze"),
                                        ("stabench_continuaton", "stabench_continuation")])
def test_a_task_that_is_no_offline_task_is_refused_at_load_when_the_hub_is_unreachable(tmp_path, hub_unreachable,
                                                                                        task, hint):
    path = bench_file(tmp_path, eval__tasks=["stabench_cloze", task])
    with pytest.raises(ConfigError) as exc:
        load_for_use(path)
    text = str(exc.value)
    assert "\n" not in text and text.startswith(f"{path}: eval.tasks: got {task!r}"), text
    assert f"the offline tasks are {', '.join(LOCAL_NAMES)}" in text, text
    assert ("hub is unreachable" in text) != task.startswith("stabench"), text  # a typo of one: offline or not
    assert (f"did you mean {hint!r}?" in text) if hint else ("did you mean" not in text), text


def test_offline_mode_asked_for_refuses_a_hub_task_too(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"eval.tasks: got 'lambada_openai', which is no offline task"):
        load_for_use(bench_file(tmp_path, eval__tasks=["lambada_openai"]))


def test_hub_tasks_are_accepted_when_the_hub_answers_or_nothing_is_evaluated(tmp_path, hub_unreachable, monkeypatch):
    nothing = load_for_use(bench_file(tmp_path, eval__tasks=["hellaswg"], eval__runs="none"))
    assert hub_needs(nothing) == []
    monkeypatch.setattr("stabench.offline.hub_reachable", lambda timeout=3.0: True)
    online = load_for_use(bench_file(tmp_path, eval__tasks=["stabench_cloze", "lambada_openai"]))
    assert hub_needs(online) == ["eval task 'lambada_openai'"]


def test_offline_tasks_never_ask_the_network(tmp_path, monkeypatch):
    def no_probe(timeout=3.0):
        raise AssertionError("the hub was probed for a benchmark that needs no hub")
    monkeypatch.setattr("stabench.offline.hub_reachable", no_probe)
    load_for_use(bench_file(tmp_path, eval__tasks=["stabench_cloze", "stabench_continuation", "stabench"]))


PREPARE = """
import sys, time
from stabench.cli import main
start = time.perf_counter()
code = main(["prepare", sys.argv[1], "--out", sys.argv[2], "--no-progress"])
print(f"{code} {time.perf_counter() - start:.2f}")
"""


@pytest.mark.parametrize("edits, words", [
    ({"data__source": "hf:nonexistent-org/no-such-dataset"},
     ["data.source 'hf:nonexistent-org/no-such-dataset': cannot load dataset (the Hugging Face hub is unreachable"]),
    ({"data__tokenizer": "nonexistent-org/no-such-tokenizer"},
     ["data.tokenizer 'nonexistent-org/no-such-tokenizer': cannot load tokenizer (the Hugging Face hub is unreachable"]),
], ids=["hf dataset", "hub tokenizer"])
def test_what_only_the_hub_has_fails_fast_in_one_line_when_it_is_unreachable(tmp_path, edits, words):
    """Before: 'Retrying in 8s [Retry 5/5]' lines for 26 s, then the error."""
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_VARIABLES}
    env.update(HF_ENDPOINT=NOWHERE, HF_HOME=str(tmp_path / "hf_home"), PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", PREPARE, str(bench_file(tmp_path, **edits)), str(tmp_path / "data")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    code, seconds = proc.stdout.split()
    err = proc.stderr.strip().splitlines()
    assert code == "2" and len(err) == 1, proc.stderr
    assert err[0].startswith("stabench: error: ") and "Retry" not in proc.stderr
    for word in words:
        assert word in err[0], err[0]
    assert float(seconds) < 6, seconds  # one TCP probe (no name resolution) and one look in the cache
    if "data__source" in edits:
        assert not (tmp_path / "data").exists()  # the corpus is read before any folder is made
