"""Bad inputs, as a careless or hostile user gives them: each is one line naming the field, the
value and what is allowed (no traceback, nothing written), or correct behaviour.

Issue 15, items 1 (names that become paths are slugs; writes stay under results/<name>/),
5 (non-finite and inconsistent numbers, method argument types, --config keys, YAML errors)
and 7 (a broken method file is reported while the others list).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from stabench.cli import main
from stabench.config import ConfigError, inside, load_benchmark, workflow_settings
from stabench.data import DataError, prepare_data
from stabench.paths import lr_labels

REPO = Path(__file__).resolve().parent.parent
SMOKE = yaml.safe_load((REPO / "benchmarks" / "smoke.yaml").read_text())


@pytest.fixture(autouse=True)
def stay_online_in_this_process(monkeypatch):
    """The CLI switches the HF libraries to offline mode process-wide; keep pytest's as it was."""
    monkeypatch.setattr("stabench.offline.go_offline", lambda: None)


def one_line_error(capsys, argv: list[str]) -> str:
    """Run the CLI in-process; it must fail with exactly one line on stderr, no traceback."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code not in (0, None), err
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


def bench_file(tmp_path: Path, edit=None, text: str | None = None) -> Path:
    bench = yaml.safe_load(yaml.safe_dump(SMOKE))
    if edit:
        edit(bench)
    path = tmp_path / "bench.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(bench, sort_keys=False))
    return path


def train_argv(path: Path, tmp_path: Path, *extra: str, method: str = "baseline", lr: str = "0.01") -> list[str]:
    return ["train", str(path), "--method", method, "--size", "t16", "--lr", lr, "--out", str(tmp_path / "out"),
            "--no-progress", *extra]


def _set(path: str, value):
    def edit(bench):
        *parents, leaf = path.split(".")
        node = bench
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return edit


# (what is wrong, edit of smoke.yaml, words the one line must contain)
BAD_BENCHMARKS = [
    ("name '..'", _set("name", ".."), ["name", "'..'", "allowed"]),
    ("name '.'", _set("name", "."), ["name", "'.'"]),
    ("hidden name", _set("name", ".hidden"), ["name", "'.hidden'"]),
    ("name with a separator", _set("name", "a/b"), ["name", "'a/b'"]),
    ("size '..'", _set("sizes", {"..": {"d_model": 16, "n_layers": 1, "n_heads": 1}}), ["sizes", "'..'"]),
    ("method label '../x'", _set("methods", [{"label": "../x", "use": "baseline"}]), ["label", "'../x'"]),
    ("LR NaN", _set("learning_rates", [float("nan")]), ["learning_rates[0]", "nan", "finite"]),
    ("LR inf", _set("learning_rates", [float("inf")]), ["learning_rates[0]", "inf", "finite"]),
    ("min_lr NaN", _set("train.min_lr", float("nan")), ["train.min_lr", "nan", "finite"]),
    ("weight_decay inf", _set("optimizer.weight_decay", float("inf")), ["optimizer.weight_decay", "inf"]),
    ("method argument NaN", _set("methods", [{"use": "z_loss", "args": {"z_loss": {"coef": float("nan")}}}]),
     ["coef", "nan", "finite"]),
    ("warmup longer than the run", _set("train.warmup_steps", 41), ["train.warmup_steps", "41", "train.steps (40)"]),
    ("min_lr above an LR", _set("train.min_lr", 0.005), ["learning_rates", "0.001", "train.min_lr"]),
    ("steps as a float", _set("train.steps", 40.5), ["train.steps", "40.5", "integer"]),
    ("integral float steps", _set("train.steps", 40.0), ["train.steps", "40.0", "integer"]),
    ("a seed twice", _set("seeds", [0, 0]), ["seeds", "each seed once"]),
    ("heads do not divide d_model", _set("sizes", {"t16": {"d_model": 30, "n_layers": 1, "n_heads": 4}}),
     ["d_model 30", "n_heads 4"]),
    ("tokenizer file that does not exist", _set("data.tokenizer", "my_tokenizer.json"),
     ["data.tokenizer", "my_tokenizer.json", "no such file"]),
    ("unknown field", _set("train.stpes", 10), ["stpes", "allowed"]),
    ("steps that would exhaust memory", _set("train.steps", 10**30), ["train.steps", "maximum of 10000000"]),
    ("seed that overflows", _set("seeds", [2**64]), ["seeds[0]", "maximum of 4294967295"]),
    ("an unknown method elsewhere in the benchmark", _set("methods", ["baseline", "qk_layrnorm"]),
     ["qk_layrnorm", "Did you mean 'qk_layernorm'"]),
    ("a method composed with itself", _set("methods", ["baseline", "z_loss+z_loss"]), ["z_loss listed twice"]),
    ("one LR spelt twice", _set("learning_rates", [0.001, 1.0e-3]), ["learning_rates", "the same run", "lr0.001"]),
    ("reference not a method", _set("reference", "z_loss"),
     ["reference", "'z_loss'", "one of the benchmark's methods (baseline, qk_layernorm+z_loss)"]),
    ("Adam eps 0", _set("optimizer.eps", 0.0), ["optimizer.eps", "0.0", "> 0"]),
    ("offline task typo", _set("eval.tasks", ["stabench_clozee"]), ["eval.tasks", "did you mean 'stabench_cloze'"]),
    ("a bound whose description spans lines", _set("analysis.l0", -1.0), ["analysis.l0", "-1.0", "uniform predictor)"]),
]


@pytest.mark.parametrize("what, edit, words", BAD_BENCHMARKS, ids=[c[0] for c in BAD_BENCHMARKS])
def test_bad_benchmark_is_one_line_naming_it(tmp_path, capsys, what, edit, words):
    line = one_line_error(capsys, train_argv(bench_file(tmp_path, edit), tmp_path))
    for word in words:
        assert word in line, line
    assert not (tmp_path / "out").exists() and not (tmp_path / "results").exists()


# (what is wrong, method spec of the benchmark, words)
BAD_METHOD_ARGS = [
    ("negative z-loss coefficient", {"use": "z_loss", "args": {"z_loss": {"coef": -1e-4}}}, ["coef", ">= 0"]),
    ("eps of the wrong type", {"use": "adam_eps", "args": {"adam_eps": {"eps": "abc"}}}, ["eps", "'abc'", "a number"]),
    ("bool for a number", {"use": "wesar", "args": {"wesar": {"sigma2": True}}}, ["sigma2", "True"]),
    ("float for an int", {"use": "mup_simple", "args": {"mup_simple": {"base_width": 16.5}}},
     ["base_width", "16.5", "integer"]),
    ("unknown choice", {"use": "seq_len_warmup", "args": {"seq_len_warmup": {"schedule": "cubic"}}},
     ["schedule", "'cubic'", "'linear', 'root'"]),
    ("fraction above 1", {"use": "warmup_length", "args": {"warmup_length": {"fraction": 2.0}}}, ["fraction", "<= 1"]),
    ("warm-up longer than the run", {"use": "warmup_length", "args": {"warmup_length": {"steps": 400}}},
     ["warmup_length", "400"]),
    ("unknown argument", {"use": "z_loss", "args": {"z_loss": {"coeff": 1.0}}}, ["coeff", "valid: coef"]),
]


@pytest.mark.parametrize("what, spec, words", BAD_METHOD_ARGS, ids=[c[0] for c in BAD_METHOD_ARGS])
def test_bad_method_argument_is_one_line(tmp_path, capsys, what, spec, words):
    path = bench_file(tmp_path, _set("methods", [{"label": "m", **spec}]))
    line = one_line_error(capsys, train_argv(path, tmp_path, method="m"))
    for word in words:
        assert word in line, line


# (what is wrong, extra argv, --lr, words)
BAD_FLAGS = [
    ("--lr nan", [], "nan", ["lr", "nan", "finite number > 0"]),
    ("--lr inf", [], "inf", ["lr", "inf"]),
    ("--lr 1e400", [], "1e400", ["lr", "inf"]),
    ("--lr 0", [], "0", ["lr", "0.0", "> 0"]),
    ("--lr -1", [], "-1", ["lr", "-1.0"]),
    ("--lr below min_lr", [], "1e-7", ["lr", "train.min_lr"]),
    ("--set NaN", ["--set", "train.min_lr=.nan"], "0.01", ["train.min_lr", "nan"]),
    ("--set 1e400", ["--set", "optimizer.eps=1e400"], "0.01", ["optimizer.eps", "inf"]),
    ("--set bad YAML", ["--set", "train.steps=[1"], "0.01", ["--set", "not valid YAML"]),
    ("--set bad key", ["--set", "train..steps=1"], "0.01", ["bad key"]),
    ("--set a name with '..'", ["--set", "name=.."], "0.01", ["name", "'..'"]),
]


@pytest.mark.parametrize("what, extra, lr, words", BAD_FLAGS, ids=[c[0] for c in BAD_FLAGS])
def test_bad_flag_is_one_line(tmp_path, capsys, what, extra, lr, words):
    line = one_line_error(capsys, train_argv(REPO / "benchmarks" / "smoke.yaml", tmp_path, *extra, lr=lr))
    for word in words:
        assert word in line, line


@pytest.mark.parametrize("extra, words", [
    (["--seed", "-1"], ["--seed", "'-1'", ">= 0"]),
    (["--threads", "abc"], ["--threads", "'abc'", ">= 1"]),
    (["--threads", "0"], ["--threads", ">= 1"]),
    (["--gpus", "-1"], ["--gpus", "'-1'"]),
])
def test_bad_integer_flag_is_one_usage_line(tmp_path, capsys, extra, words):
    line = one_line_error(capsys, train_argv(REPO / "benchmarks" / "smoke.yaml", tmp_path, *extra))
    for word in words:
        assert word in line, line
    assert line.startswith("stabench train: error:")


def test_data_prepared_with_other_settings_is_refused_not_overwritten(engine_bench, tmp_path, capsys):
    manifest = (engine_bench.data_dir / "manifest.json").read_text()
    line = one_line_error(capsys, ["train", str(engine_bench.path), "--method", "baseline", "--size", "tiny",
                                   "--lr", "0.01", "--out", str(tmp_path / "o"), "--data", str(engine_bench.data_dir),
                                   "--set", "data.vocab_size=600", "--no-progress"])
    assert "data.vocab_size: 512 there, 600 here" in line
    assert (engine_bench.data_dir / "manifest.json").read_text() == manifest


@pytest.mark.parametrize("argv, words", [
    (["speed", "smoke", "--shape", "16x1"], ["--shape '16x1'"]),
    (["train-pack", "smoke", "--method", "baseline", "--size", "t16", "--run", "0.01:0:a", "--run", "0.01:0:b"],
     ["the same (lr, seed) appears twice"]),
    (["train-pack", "smoke", "--method", "baseline", "--size", "t16", "--run", "0.01:0:a", "--run", "0.1:0:a"],
     ["share an output folder"]),
    (["eval", "smoke", "--runs", "nowhere", "--out", "e.json"], ["nowhere/metrics.json not found"]),
    (["train"], ["give --spec RUN_JSON, or a benchmark", "missing: benchmark, method, size, lr, out"]),
])
def test_other_bad_commands_are_one_line(tmp_path, capsys, monkeypatch, argv, words):
    monkeypatch.chdir(tmp_path)
    line = one_line_error(capsys, argv)
    for word in words:
        assert word in line, line


def test_pack_member_with_nan_lr(tmp_path, capsys):
    line = one_line_error(capsys, ["train-pack", str(REPO / "benchmarks" / "smoke.yaml"), "--method", "baseline",
                                   "--size", "t16", "--run", f"nan:0:{tmp_path / 'a'}", "--no-progress"])
    assert "lr: got nan" in line


def test_yaml_syntax_error_gives_file_and_line(tmp_path, capsys):
    text = "name: x\nsizes:\n  t16: {d_model: 16, n_layers: 1\nmethods: [baseline]\n"
    path = bench_file(tmp_path, text=text)
    line = one_line_error(capsys, train_argv(path, tmp_path))
    assert f"{path}:4:" in line and "not valid YAML" in line


def test_duplicate_yaml_key_is_named_with_its_line(tmp_path, capsys):
    text = (REPO / "benchmarks" / "smoke.yaml").read_text() + "seeds: [1]\n"
    path = bench_file(tmp_path, text=text)
    line = one_line_error(capsys, train_argv(path, tmp_path))
    assert "'seeds' appears twice" in line and str(path) in line


def test_duplicate_learning_rates_are_one_line():
    with pytest.raises(ConfigError, match="the same run"):
        lr_labels([0.01, 0.010])


def test_vocab_size_above_what_bpe_yields_says_what_it_yields(tmp_path):
    cfg = load_benchmark(bench_file(tmp_path, _set("data", {"source": "wiki-vital", "max_documents": 20,
                                                            "vocab_size": 100000})))["data"]
    with pytest.raises(DataError, match=r"data.vocab_size 100000: .* yields only \d+ tokens; valid: at most \d+"):
        prepare_data(cfg, tmp_path / "data", progress=False)
    assert not (tmp_path / "data" / "manifest.json").exists()


def test_tokenizer_typo_fails_fast_without_the_hub(tmp_path, monkeypatch):
    """A path-like tokenizer that does not exist never reaches the hub (which retries ~25 s)."""
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    from stabench.data.tokenizer import load_pretrained
    start = time.perf_counter()
    for value in ("my_tokenizer.json", "./tok", "../x/tokenizer.json", "/nonexistent/tokenizer.json"):
        with pytest.raises(DataError, match="no such file"):
            load_pretrained(value)
    assert time.perf_counter() - start < 5


# ---- the workflow's --config -------------------------------------------------------------------

@pytest.mark.parametrize("config, words", [
    ({"train_threads": "abc"}, ["train_threads='abc'", "integer >= 1"]),
    ({"train_threads": float("nan")}, ["train_threads=nan"]),
    ({"train_threads": 0}, ["train_threads=0"]),
    ({"trian_threads": 2}, ["trian_threads", "did you mean 'train_threads'"]),
    ({"gpus": 1.5}, ["gpus=1.5"]),
    ({"pack": 2}, ["pack=2", "0, 1, all or auto"]),
    ({"benchmark": None}, ["benchmark=None"]),
    ({"reference": "no_such_reference"}, ["reference=no_such_reference", "no such folder", "known: "]),
    ({"reference": ""}, ["reference=''"]),
    ({"max_job_minutes": 0}, ["max_job_minutes=0", "minutes > 0"]),
    ({"max_job_minutes": "1d"}, ["max_job_minutes='1d'"]),
    ({"max_job_minutes": True}, ["max_job_minutes=True"]),
])
def test_workflow_config_is_checked(config, words):
    with pytest.raises(ConfigError) as err:
        workflow_settings(config)
    for word in words:
        assert word in str(err.value)


def test_workflow_config_defaults_and_values():
    assert workflow_settings({}) == {"benchmark": "cpu", "train_threads": 1, "gpus": 0, "runs_per_gpu": 1,
                                     "pack": "auto", "max_job_minutes": 1440, "reference": None}
    assert workflow_settings({"max_job_minutes": 0.05})["max_job_minutes"] == 0.05
    assert workflow_settings({"pack": False, "train_threads": 2})["pack"] == 0


def snakemake_dry(workdir: Path, *config: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                           str(workdir), "-n", "--config", *config], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_workflow_refuses_a_benchmark_that_would_write_outside_results(tmp_path):
    workdir = tmp_path / "repo"
    workdir.mkdir()
    bench = bench_file(tmp_path, lambda b: (b.update(name=".."), b["sizes"].update({"..": b["sizes"]["t16"]})))
    proc = snakemake_dry(workdir, f"benchmark={bench}", "train_threads=abc")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "train_threads='abc'" in out and "Traceback" not in out
    proc = snakemake_dry(workdir, f"benchmark={bench}")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "got '..'; allowed: a folder name" in out and "Traceback" not in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.yaml", "repo"]
    assert not (workdir / "results").exists()


def test_paths_are_checked_to_lie_under_their_root(tmp_path):
    assert inside("results/x/runs/a/b", "results/x") == Path("results/x/runs/a/b")
    for bad in ("results/x/../y", "results/x/runs/../../..", "/etc/passwd"):
        with pytest.raises(ConfigError, match="outside"):
            inside(bad, "results/x")


# ---- item 7: the methods path ------------------------------------------------------------------

def test_broken_method_file_is_reported_while_the_others_list(tmp_path, monkeypatch):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "good_user_method.py").write_text('"""A fine method."""\nVERSION = "1"\n')
    (folder / "broken_syntax.py").write_text('"""Broken."""\nVERSION = "1"\ndef f(:\n')
    (folder / "broken_import.py").write_text(textwrap.dedent('''\
        """Raises at import."""
        VERSION = "1"
        import no_such_module_here
    '''))
    (folder / "bad_args.py").write_text('"""Bad declaration."""\nVERSION = "1"\nARGS = {"a": -1.0}\n'
                                        'ARG_ALLOWED = {"a": ">= 0"}\n')
    env = {**__import__("os").environ, "STABENCH_METHODS_PATH": str(folder), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "stabench", "methods"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 1
    listed = [line.split()[0] for line in proc.stdout.splitlines()]
    assert "good_user_method" in listed and "baseline" in listed and "z_loss" in listed
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 3 and "Traceback" not in proc.stderr
    assert any(f"{folder / 'broken_syntax.py'}:3" in e for e in errors)
    assert any(f"{folder / 'broken_import.py'}:3" in e and "no_such_module_here" in e for e in errors)
    assert any("bad_args" in e and "does not pass its own check" in e for e in errors)


def test_missing_methods_folder_is_named(tmp_path):
    env = {**__import__("os").environ, "STABENCH_METHODS_PATH": str(tmp_path / "nowhere"), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "stabench", "methods", "smoke"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)  # a fresh process: methods load once per process
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and str(tmp_path / "nowhere") in lines[0], proc.stderr
