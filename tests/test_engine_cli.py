"""stabench.cli and stabench.config: bad input fails before any data or training work, with
exit code 2 and one line on stderr that names the field and what would be valid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import stabench.cli as cli
from stabench.config import ConfigError, load_benchmark, run_config
from stabench.methods import known_methods


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if the CLI gets as far as preparing data or training."""
    def forbidden(*args, **kwargs):
        raise AssertionError("reached data preparation or training")
    monkeypatch.setattr(cli, "prepare_data", forbidden)
    monkeypatch.setattr(cli, "train_run", forbidden)


def train_args(engine_bench, out: Path, *extra: str, benchmark: str | Path | None = None,
               method: str = "baseline", size: str = "tiny") -> list[str]:
    return ["train", str(benchmark or engine_bench.path), "--method", method, "--size", size, "--lr", "1e-2",
            "--out", str(out), "--data", str(engine_bench.data_dir), "--no-progress", *extra]


def run_cli(argv, capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("stabench: error:")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.mark.parametrize("override, needles", [
    ("learning_rates=[abc]", ["learning_rates", "abc"]),
    ("learning_rates=[]", ["learning_rates"]),
    ("learning_rates=[-0.1]", ["learning_rates"]),
    ("data.source=nowhere", ["data.source", "nowhere"]),
    ("train.steps=-1", ["train.steps", "-1"]),
    ("train.steps=abc", ["train.steps"]),
    ("train.stepz=5", ["train", "stepz", "steps"]),
    ("optimizer.decay_mode=sometimes", ["optimizer.decay_mode", "independent", "coupled"]),
    ("train.precision=fp8", ["train.precision", "bf16"]),
])
def test_bad_override_fails_fast(engine_bench, tmp_path, capsys, no_work, override, needles):
    code, out, err = run_cli(train_args(engine_bench, tmp_path / "run", "--set", override), capsys)
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "run").exists()


def test_bad_value_in_benchmark_file(engine_bench, tmp_path, capsys, no_work):
    bench = yaml.safe_load(engine_bench.path.read_text())
    bench["learning_rates"] = ["abc"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bench))
    code, _, err = run_cli(train_args(engine_bench, tmp_path / "run", benchmark=path), capsys)
    line = assert_one_line_error(code, err, "learning_rates", "abc")
    assert str(path) in line  # names the file


def test_unknown_size(engine_bench, tmp_path, capsys, no_work):
    code, _, err = run_cli(train_args(engine_bench, tmp_path / "run", size="huge"), capsys)
    assert_one_line_error(code, err, "'huge'", "known: tiny")


def test_unknown_method(engine_bench, tmp_path, capsys, no_work):
    code, _, err = run_cli(train_args(engine_bench, tmp_path / "run", method="qk_layrnorm"), capsys)
    line = assert_one_line_error(code, err, "'qk_layrnorm'", "Did you mean 'qk_layernorm'")
    assert all(name in line for name in known_methods())


def test_unknown_method_argument_in_benchmark(engine_bench, tmp_path, capsys, no_work):
    bench = yaml.safe_load(engine_bench.path.read_text())
    bench["methods"].append({"label": "zl", "use": "z_loss", "args": {"z_loss": {"coeff": 1}}})
    path = tmp_path / "args.yaml"
    path.write_text(yaml.safe_dump(bench))
    code, _, err = run_cli(train_args(engine_bench, tmp_path / "run", benchmark=path, method="zl"), capsys)
    assert_one_line_error(code, err, "coeff", "coef")


@pytest.mark.parametrize("text, needle", [("name: [unclosed", "not valid YAML"), ("- a\n- b\n", "mapping")])
def test_malformed_benchmark_file(engine_bench, tmp_path, capsys, no_work, text, needle):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    code, _, err = run_cli(train_args(engine_bench, tmp_path / "run", benchmark=path), capsys)
    assert_one_line_error(code, err, needle, str(path))


def test_missing_benchmark_lists_known(engine_bench, tmp_path, capsys, no_work):
    code, _, err = run_cli(train_args(engine_bench, tmp_path / "run", benchmark="no_such_bench"), capsys)
    assert_one_line_error(code, err, "no_such_bench", "known:", "cpu")


def test_set_without_equals(engine_bench, tmp_path, capsys, no_work):
    code, _, err = run_cli(train_args(engine_bench, tmp_path / "run", "--set", "train.steps"), capsys)
    assert_one_line_error(code, err, "key=value")


def test_duplicate_method_labels(engine_bench):
    bench = engine_bench.with_methods(["z_loss", {"use": "z_loss"}])
    with pytest.raises(ConfigError, match="twice"):
        run_config(bench, method="z_loss", size="tiny", lr=1e-3, seed=0)


def test_d_model_not_divisible_by_heads(engine_bench):
    bench = engine_bench.load(["sizes.odd={d_model: 30, n_layers: 1, n_heads: 4}"])
    with pytest.raises(ConfigError, match="sizes.odd"):
        run_config(bench, method="baseline", size="odd", lr=1e-3, seed=0)


def test_defaults_are_filled(engine_bench):
    bench = engine_bench.benchmark
    assert bench["seeds"] == [0]
    assert bench["optimizer"] == {"betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 1e-4,
                                  "decay_mode": "independent", "grad_clip": 1.0}
    assert bench["model"]["ln_eps"] == 1e-6 and bench["model"]["mlp_ratio"] == 4
    assert bench["train"]["min_lr"] == 1e-5


def test_overrides_apply(engine_bench):
    bench = load_benchmark(engine_bench.path, ["train.steps=7", "learning_rates=[0.5]", "optimizer.eps=1.0e-15"])
    assert bench["train"]["steps"] == 7 and bench["learning_rates"] == [0.5]
    assert bench["optimizer"]["eps"] == 1e-15
    config = run_config(bench, method="qk_layernorm+z_loss", size="tiny", lr=0.5, seed=3)
    assert config["method_spec"] == {"use": "qk_layernorm+z_loss", "args": {}}
    assert config["model"]["d_model"] == 32 and config["model"]["ln_eps"] == 1e-6
    assert config["train"]["steps"] == 7 and config["seed"] == 3


@pytest.mark.parametrize("override, key", [("optimizer.eps=1e-15", ("optimizer", "eps")),
                                           ("train.min_lr=1e-5", ("train", "min_lr"))])
def test_exponent_floats_without_a_dot_in_overrides(engine_bench, override, key):
    bench = load_benchmark(engine_bench.path, [override])
    assert bench[key[0]][key[1]] == float(override.split("=")[1])


def test_exponent_floats_without_a_dot_in_files(engine_bench, tmp_path):
    bench = yaml.safe_load(engine_bench.path.read_text())
    del bench["learning_rates"]
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(bench) + "learning_rates: [3e-4, 1e-3]\n")
    assert load_benchmark(path)["learning_rates"] == [3e-4, 1e-3]


def test_shipped_benchmarks_validate():
    from stabench.config import BENCHMARKS_DIR
    for path in BENCHMARKS_DIR.glob("*.yaml"):
        if path.stem != "schema":
            bench = load_benchmark(path)
            for label in [m if isinstance(m, str) else m.get("label", m["use"]) for m in bench["methods"]]:
                for size in bench["sizes"]:
                    run_config(bench, method=label, size=size, lr=bench["learning_rates"][0], seed=0)


def test_train_command_runs(engine_bench, tmp_path, capsys, torch_one_thread):
    import torch
    torch.set_num_threads(2)  # --threads 1 must take effect (torch_one_thread restores afterwards)
    out = tmp_path / "run"
    code, stdout, err = run_cli(train_args(engine_bench, out, "--set", "train.steps=5", "--threads", "1",
                                           method="qk_layernorm+z_loss"), capsys)
    assert code == 0, err
    assert "finished" in stdout and str(out) in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 5 and metrics["method"] == "qk_layernorm+z_loss"
    assert torch.get_num_threads() == 1 and metrics["device"].startswith("cpu (1 threads")
    assert (out / "history.csv").is_file()


def test_methods_command_lists_methods(engine_bench, capsys):
    code, out, _ = run_cli(["methods"], capsys)
    assert code == 0
    for name in known_methods():
        assert name in out
    code, out, _ = run_cli(["methods", str(engine_bench.path)], capsys)
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()}
    assert set(rows) == {"baseline", "qk_layernorm", "z_loss", "qk_layernorm+z_loss"}
    assert rows["qk_layernorm+z_loss"].split(None, 1)[1] == "qk_layernorm v1 + z_loss v1"
