"""stabench.cli and stabench.config: bad input fails before any data or training work, with
exit code 2 and one line on stderr that names the field and what would be valid; ``train``
(one run) and ``train-pack`` (one ensemble) end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

import stabench.cli as cli
from stabench.config import ConfigError, load_benchmark
from stabench.methods import known_methods
from stabench.paths import lr_labels
from stabench.runspec import resolve_run


def run_config(benchmark: dict, **kw) -> dict:
    return resolve_run(benchmark, **kw).config


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if the CLI gets as far as preparing data or training."""
    def forbidden(*args, **kwargs):
        raise AssertionError("reached data preparation or training")
    monkeypatch.setattr(cli, "prepare_data", forbidden)
    monkeypatch.setattr(cli, "train", forbidden)


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
    with pytest.raises(ConfigError, match="methods: label 'z_loss' appears twice"):  # refused at load
        engine_bench.with_methods(["z_loss", {"use": "z_loss"}])


def test_d_model_not_divisible_by_heads(engine_bench):
    with pytest.raises(ConfigError, match="sizes.odd: d_model 30 is not divisible by n_heads 4"):
        engine_bench.load(["sizes.odd={d_model: 30, n_layers: 1, n_heads: 4}"])  # refused at load


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
    paths = [p for p in BENCHMARKS_DIR.glob("*.yaml") if p.stem != "schema"]
    assert len(paths) >= 5
    for path in paths:
        bench = load_benchmark(path)
        assert len(lr_labels(bench["learning_rates"])) == len(bench["learning_rates"]), path
        for label in [m if isinstance(m, str) else m.get("label", m["use"]) for m in bench["methods"]]:
            for size in bench["sizes"]:
                run = resolve_run(bench, method=label, size=size, lr=bench["learning_rates"][0], seed=0)
                assert "benchmark_sizes" not in run.config and len(run.identity) == 16


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


# ---- train-pack ---------------------------------------------------------------------------

def pack_args(engine_bench, members: list[tuple[str, int, Path]], *extra: str, method: str = "baseline") -> list[str]:
    runs = [arg for lr, seed, out in members for arg in ("--run", f"{lr}:{seed}:{out}")]
    return ["train-pack", str(engine_bench.path), "--method", method, "--size", "tiny", *runs,
            "--data", str(engine_bench.data_dir), "--no-progress", *extra]


def test_train_pack_command_runs(engine_bench, tmp_path, capsys):
    members = [("1e-3", 0, tmp_path / "a"), ("1e-2", 1, tmp_path / "b")]
    code, stdout, err = run_cli(pack_args(engine_bench, members, "--set", "train.steps=5", "--threads", "1",
                                          method="qk_layernorm+z_loss"), capsys)
    assert code == 0, err
    assert "qk_layernorm+z_loss tiny: 2 runs trained together as one ensemble" in err
    lines = stdout.strip().splitlines()
    assert len(lines) == 2 and all("finished" in line for line in lines)
    for (lr, seed, out), line in zip(members, lines):
        assert str(out) in line
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["steps"] == 5 and metrics["packed_with"] == 2
        assert (metrics["lr"], metrics["seed"]) == (float(lr), seed)
        assert (out / "losses.csv").is_file()


def test_train_pack_of_an_unpackable_method_says_why(engine_bench, tmp_path, capsys, tmp_methods):
    name = tmp_methods('"""Cannot pack (a test method)."""\nVERSION = "1"\nPACKABLE = False\n'
                       'UNPACKABLE_REASON = "it needs one LR at a time"\n', "alone")
    members = [("1e-3", 0, tmp_path / "a"), ("1e-2", 0, tmp_path / "b")]
    code, stdout, err = run_cli(pack_args(engine_bench, members, "--set", "train.steps=2", "--set", "train.warmup_steps=1", method=name), capsys)
    assert code == 0, err
    assert f"2 runs trained one at a time ({name}: it needs one LR at a time)" in err
    assert [json.loads((o / "metrics.json").read_text())["packed_with"] for *_, o in members] == [1, 1]


@pytest.mark.parametrize("run, needle", [("0.01", "LR:SEED:OUT_DIR"), ("abc:0:x", "LR:SEED:OUT_DIR"),
                                         ("0.01:zero:x", "LR:SEED:OUT_DIR")])
def test_bad_pack_member_is_a_one_line_error(engine_bench, tmp_path, capsys, no_work, run, needle):
    argv = ["train-pack", str(engine_bench.path), "--method", "baseline", "--size", "tiny", "--run", run,
            "--data", str(engine_bench.data_dir), "--no-progress"]
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, needle, repr(run))


def test_pack_members_differing_in_more_than_lr_and_seed_cannot_be_asked_for(engine_bench, tmp_path, capsys, no_work):
    members = [("1e-3", 0, tmp_path / "a"), ("1e-3", 0, tmp_path / "b")]
    code, _, err = run_cli(pack_args(engine_bench, members), capsys)
    assert_one_line_error(code, err, "(lr, seed) appears twice")


# ---- exact learning rates -------------------------------------------------------------------

EXACT_LRS = [1e-3, 1.0000001e-3, 3.16227766e-3]


def test_exact_lrs_train_through_the_cli(engine_bench, tmp_path, capsys):
    """The folder labels of a grid read back as the exact LRs; the engine trains those floats."""
    labels = lr_labels(EXACT_LRS)
    assert list(labels) == ["0.001", "0.0010000001", "0.00316227766"]
    assert list(labels.values()) == EXACT_LRS
    members = [(label, 0, tmp_path / f"lr{label}") for label in labels]
    code, _, err = run_cli(pack_args(engine_bench, members, "--set", "train.steps=6", "--set", "train.warmup_steps=2",
                                     "--set", "train.probe_every=2"), capsys)
    assert code == 0, err
    for (label, _, out), lr in zip(members, EXACT_LRS):
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["lr"] == lr and metrics["config"]["lr"] == lr  # not 0.00316228
        with open(out / "history.csv") as f:
            peak = [float(r["lr"]) for r in csv.DictReader(f) if r["step"] == "2"][0]
        assert peak == pytest.approx(lr, rel=1e-7)  # the step at the end of warm-up trains at the peak
    out = tmp_path / "single"
    argv = train_args(engine_bench, out, "--set", "train.steps=2", "--set", "train.warmup_steps=1")
    argv[argv.index("--lr") + 1] = "0.00316227766"
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    assert json.loads((out / "metrics.json").read_text())["lr"] == 3.16227766e-3
