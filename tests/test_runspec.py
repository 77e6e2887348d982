"""stabench.runspec: one resolved config and one identity per run (what Snakemake's params and
the checkpoints use), exact LR folder labels. Adding a smaller size to a benchmark changes the
identity of exactly the runs of width-relative methods (they derive a base width from it)."""

from __future__ import annotations

import copy

import pytest

from stabench.config import ConfigError, validate
from stabench.methods import MethodError, base_width, known_methods, load_module
from stabench.paths import lr_label, lr_labels
from stabench.runspec import NOT_IDENTITY, resolve_run, run_identity

from conftest import resolve

WIDTH_RELATIVE = {"sp_per_layer_lr", "everett_mup", "eps_width_scaled", "mup_simple", "mup_full"}


def with_sizes(benchmark: dict, **sizes) -> dict:
    bench = copy.deepcopy(benchmark)
    bench["sizes"].update(sizes)
    return validate(bench)


# ---- LR labels ----------------------------------------------------------------------------

@pytest.mark.parametrize("lr, label", [(1e-3, "0.001"), (1.0e-2, "0.01"), (0.3, "0.3"), (1e4, "10000"),
                                       (3e-4, "0.0003"), (1.0000001e-3, "0.0010000001"),
                                       (3.16227766e-3, "0.00316227766"), (1 / 3, repr(1 / 3))])
def test_lr_label_reads_back_as_the_exact_float(lr, label):
    assert lr_label(lr) == label
    assert float(label) == lr


def test_lr_labels_of_a_grid_are_exact_and_distinct():
    grid = [1e-3, 1.0000001e-3, 3.16227766e-3]
    labels = lr_labels(grid)
    assert len(labels) == 3 and list(labels.values()) == grid
    assert all(float(label) == lr for label, lr in labels.items())
    assert "0.00316228" not in labels  # the old lossy '%g' label


def test_duplicate_lrs_are_a_one_line_error_naming_both():
    with pytest.raises(ConfigError) as err:
        lr_labels([1e-3, 3e-3, 0.0010])
    msg = str(err.value)
    assert "\n" not in msg and "learning_rates" in msg
    assert "0.001 and 0.001" in msg and "lr0.001" in msg


# ---- the resolved config --------------------------------------------------------------------

def test_resolved_config_holds_everything_the_run_computes_from(engine_bench):
    run = resolve(engine_bench.benchmark, "qk_layernorm+z_loss", lr=3e-3, seed=2)
    c = run.config
    assert (c["benchmark"], c["method"], c["size"], c["lr"], c["seed"]) == ("enginetest", "qk_layernorm+z_loss",
                                                                            "tiny", 3e-3, 2)
    assert c["model"] == {**engine_bench.benchmark["model"], "d_model": 32, "n_layers": 2, "n_heads": 2,
                          "seq_len": 32, "vocab_size": 512}
    assert c["train"]["world_size"] == 1 and c["train"]["steps"] == 40
    assert run.to_dict()["methods"] == [{"name": "qk_layernorm", "args": {}, "version": "1", "changes_lr_meaning": False},
                            {"name": "z_loss", "args": {"coef": 1e-4}, "version": "1", "changes_lr_meaning": False}]
    assert "benchmark_sizes" not in c  # visible to configure hooks only
    assert run.identity == run_identity(c) and len(run.identity) == 16
    assert run.stack.names == ["qk_layernorm", "z_loss"]


def test_configure_hooks_run_at_resolution(engine_bench):
    c = resolve(engine_bench.benchmark, "coupled_weight_decay+warmup_length").config
    assert c["optimizer"]["decay_mode"] == "coupled" and c["optimizer"]["weight_decay"] == 0.1
    assert c["train"]["warmup_steps"] == 8  # 0.2 x 40 steps
    assert engine_bench.benchmark["optimizer"]["decay_mode"] == "independent"  # the benchmark is untouched


def test_identity_is_stable_and_follows_what_the_run_computes(engine_bench, monkeypatch):
    bench = engine_bench.benchmark
    ident = resolve(bench).identity
    assert resolve(bench).identity == ident == resolve(copy.deepcopy(bench)).identity
    changed = {
        "lr": resolve(bench, lr=3e-2).identity,
        "seed": resolve(bench, seed=1).identity,
        "method": resolve(bench, "z_loss").identity,
        "steps": resolve(engine_bench.load(["train.steps=41"])).identity,
        "eps": resolve(engine_bench.load(["optimizer.eps=1e-9"])).identity,
        "data": resolve(engine_bench.load(["data.max_documents=401"])).identity,
        "world": resolve_run(bench, method="baseline", size="tiny", lr=1e-2, seed=0, world_size=2).identity,
    }
    assert len(set(changed.values()) | {ident}) == len(changed) + 1, changed
    # where and how often it is stored is not what it computes
    assert resolve(engine_bench.load(["train.checkpoint_every=7"])).identity == ident
    assert resolve(engine_bench.load(["train.device=cpu"])).identity == ident
    renamed = copy.deepcopy(bench)
    renamed["name"] = "other"
    assert resolve(renamed).identity == ident
    labelled = engine_bench.with_methods(["baseline", {"label": "plain", "use": "baseline"}])
    assert resolve(labelled, "plain").identity == ident
    assert set(NOT_IDENTITY) == {"benchmark", "method", "train.checkpoint_every", "train.device", "train.trackers"}
    # a method's version is part of it
    monkeypatch.setattr(load_module("z_loss"), "VERSION", "99")
    assert resolve(bench, "z_loss").identity != changed["method"]


def test_world_size_must_split_the_batch(engine_bench):
    with pytest.raises(ConfigError, match="batch_size 8 cannot be split over 3"):
        resolve_run(engine_bench.benchmark, method="baseline", size="tiny", lr=1e-2, seed=0, world_size=3)


# ---- width-relative methods and a new size ----------------------------------------------------

def test_width_relative_methods_record_their_base_width(engine_bench):
    bench = with_sizes(engine_bench.benchmark, small={"d_model": 16, "n_layers": 1, "n_heads": 1},
                       big={"d_model": 64, "n_layers": 2, "n_heads": 2})
    for method in sorted(WIDTH_RELATIVE):
        for size in ("tiny", "big"):
            (desc,) = resolve(bench, method, size=size).config["methods"]
            assert desc["args"]["base_width"] == 16, (method, size)
    override = engine_bench.with_methods([{"label": "m", "use": "mup_simple", "args": {"mup_simple": {"base_width": 8}}}])
    assert resolve(override, "m").config["methods"][0]["args"]["base_width"] == 8


def test_base_width_outside_configure_is_an_error():
    with pytest.raises(MethodError, match="only visible in configure hooks"):
        base_width({"model": {"d_model": 32}})
    assert base_width({"benchmark_sizes": {"a": {"d_model": 64}, "b": {"d_model": 16}}}) == 16
    with pytest.raises(MethodError, match="positive integer"):
        base_width({}, 0)


def test_adding_a_smaller_size_changes_exactly_the_width_relative_runs(engine_bench):
    methods = known_methods() + ["mup_simple+qk_layernorm+z_loss", "qk_layernorm+z_loss"]
    before = engine_bench.benchmark
    smaller = with_sizes(before, small={"d_model": 16, "n_layers": 1, "n_heads": 1})
    larger = with_sizes(before, big={"d_model": 64, "n_layers": 2, "n_heads": 2})
    changed = {m for m in methods if resolve(before, m).identity != resolve(smaller, m).identity}
    assert changed == WIDTH_RELATIVE | {"mup_simple+qk_layernorm+z_loss"}
    # a larger size moves no base width: no run of the old sizes changes
    assert {m for m in methods if resolve(before, m).identity != resolve(larger, m).identity} == set()


# ---- the run spec as a file: run.json -------------------------------------------------------

def test_run_json_reads_back_as_the_same_frozen_run(engine_bench, tmp_path):
    import dataclasses
    import json

    from stabench.runspec import read_spec, write_spec

    run = resolve(engine_bench.benchmark, "everett_mup+z_loss", lr=1 / 3, seed=2)
    write_spec(tmp_path, run, owner="cli")
    back, owner = read_spec(tmp_path)
    assert owner == "cli" and back == run and back.identity == run.identity
    assert back.lr == 1 / 3 and back["train"]["steps"] == back.train.steps  # by attribute and by key
    assert json.loads((tmp_path / "run.json").read_text())["identity"] == run.identity
    with pytest.raises(dataclasses.FrozenInstanceError):
        back.train.steps = 3  # nothing changes a resolved run
    with pytest.raises(TypeError):
        back.methods[1].args["coef"] = 1.0


@pytest.mark.parametrize("section, key", [("train", "stepz"), ("model", "d_modle"), (None, "sizes")])
def test_unknown_key_in_run_json_is_a_one_line_error_naming_file_and_key(engine_bench, tmp_path, section, key):
    import json

    from stabench.runspec import read_spec_file, write_spec

    path = write_spec(tmp_path, resolve(engine_bench.benchmark), owner="workflow")
    record = json.loads(path.read_text())
    (record["spec"][section] if section else record["spec"])[key] = 1
    path.write_text(json.dumps(record))
    with pytest.raises(ConfigError) as err:
        read_spec_file(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and f"unknown key {key!r}" in message and "valid:" in message


def test_a_hand_edited_run_json_is_a_new_run(engine_bench, tmp_path):
    import json

    from stabench.runspec import read_spec_file, write_spec

    run = resolve(engine_bench.benchmark)
    path = write_spec(tmp_path, run, owner="workflow")
    record = json.loads(path.read_text())
    record["spec"]["train"]["steps"] += 1
    path.write_text(json.dumps(record))
    assert read_spec_file(path)[0].identity != run.identity  # recomputed from the spec, not trusted


def test_train_from_the_spec_equals_train_by_name(engine_bench, tmp_path, capsys, torch_one_thread):
    """`stabench train --spec DIR/run.json` (the workflow's way) trains exactly the run that
    `stabench train BENCHMARK --method ... --out DIR` resolved and wrote there."""
    import json
    import shutil

    from stabench import cli

    by_name = tmp_path / "by_name"
    argv = ["train", str(engine_bench.path), "--method", "z_loss", "--size", "tiny", "--lr", "0.01", "--seed", "1",
            "--out", str(by_name), "--data", str(engine_bench.data_dir), "--no-progress", "--threads", "1"]
    assert cli.main(argv) == 0
    by_spec = tmp_path / "by_spec"
    by_spec.mkdir()
    shutil.copy(by_name / "run.json", by_spec / "run.json")
    assert cli.main(["train", "--spec", str(by_spec / "run.json"), "--data", str(engine_bench.data_dir),
                     "--no-progress", "--threads", "1"]) == 0
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (by_name, by_spec))
    assert a["identity"] == b["identity"] and a["final_val_loss"] == b["final_val_loss"]
    assert (by_name / "losses.csv").read_text() == (by_spec / "losses.csv").read_text()
    capsys.readouterr()
    assert cli.main(["train", "--spec", str(by_spec / "run.json"), "--method", "baseline", "--no-progress"]) == 2
    assert "drop method" in capsys.readouterr().err
