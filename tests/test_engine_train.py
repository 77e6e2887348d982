"""stabench.loop.train on a tiny benchmark, one run (K = 1): outputs (metrics.json, history.csv,
losses.csv, checkpoint), loss terms, divergence, determinism, in-process resume, damaged
checkpoints, run folders. Runs use one torch thread so losses compare bitwise. Packs (K > 1)
are in test_packed.py."""

from __future__ import annotations

import csv
import fcntl
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import stabench.loop as loop
from stabench.checkpoint import CHECKPOINT_NAME, PREVIOUS_NAME
from stabench.config import ConfigError
from stabench.data import load_data, train_batch
from stabench.ensemble import build_member
from stabench.loop import DataMismatchError, train
from stabench.model import GPT
from stabench.runspec import resolve_run
from stabench.spikes import spike_steps

from conftest import crash_at_step, resolve

METRIC_KEYS = {"final_val_loss", "init_loss", "diverged", "diverged_at_step", "steps", "tokens",
               "wall_seconds", "tokens_per_second", "max_attn_logit", "config", "methods", "versions",
               "device", "resumed_from_step", "identity", "packed_with", "loss_spikes", "loss_spike_steps",
               "probe_families", "benchmark", "method", "size", "lr", "seed"}
PROBE_COLUMNS = {"step", "loss", "lr", "grad_norm", "attn_logit_max_l0", "attn_logit_max_l1", "log_z_mean"}


@pytest.fixture(scope="module")
def reference(engine_bench, tmp_path_factory):
    """One uninterrupted baseline run (lr 1e-2, seed 0, 40 steps): (out_dir, metrics)."""
    out = tmp_path_factory.mktemp("reference")
    run = resolve(engine_bench.benchmark, "baseline", lr=1e-2, seed=0)
    return out, train([run], [out], engine_bench.data_dir, progress=False)[0]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_history(out: Path) -> list[dict]:
    return read_csv(out / "history.csv")


def read_losses(out: Path) -> list[dict]:
    return read_csv(out / "losses.csv")


def losses(rows: list[dict]) -> list[tuple[int, str]]:
    return [(int(r["step"]), r["loss"]) for r in rows if r.get("loss")]


# ---- outputs of one run -------------------------------------------------------------------

def test_run_writes_metrics(reference, engine_bench):
    out, metrics = reference
    on_disk = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= set(on_disk)
    assert on_disk["final_val_loss"] == metrics["final_val_loss"]
    train_cfg = engine_bench.benchmark["train"]
    assert on_disk["steps"] == train_cfg["steps"] == 40
    assert on_disk["tokens"] == train_cfg["steps"] * train_cfg["batch_size"] * train_cfg["seq_len"]
    assert on_disk["diverged"] is False and on_disk["diverged_at_step"] is None
    assert on_disk["resumed_from_step"] is None and on_disk["packed_with"] == 1
    assert on_disk["wall_seconds"] > 0 and on_disk["tokens_per_second"] > 0
    assert math.isfinite(on_disk["max_attn_logit"]) and on_disk["max_attn_logit"] > 0
    assert len(on_disk["max_attn_logit_per_layer"]) == 2
    assert set(on_disk["versions"]) >= {"python", "torch", "stabench"}
    assert on_disk["versions"]["torch"] == torch.__version__
    assert on_disk["device"].startswith("cpu")
    assert on_disk["methods"] == [{"name": "baseline", "args": {}, "version": "1", "changes_lr_meaning": False}]
    assert on_disk["config"]["lr"] == 1e-2 and on_disk["config"]["size"] == "tiny"
    assert on_disk["config"]["model"]["vocab_size"] == load_data(engine_bench.data_dir).vocab_size
    assert (on_disk["benchmark"], on_disk["method"], on_disk["size"], on_disk["lr"], on_disk["seed"]) == \
        ("enginetest", "baseline", "tiny", 1e-2, 0)
    assert on_disk["identity"] == resolve(engine_bench.benchmark, "baseline", lr=1e-2).identity
    assert {"train", "grad_rms", "update_rms"} <= set(on_disk["probe_families"])
    assert "grad_norm" in on_disk["probe_families"]["train"]["columns"]
    # the loss at init is about ln(vocab), and training lowers it
    vocab = on_disk["config"]["model"]["vocab_size"]
    assert abs(on_disk["init_loss"] - math.log(vocab)) < 1.0
    assert on_disk["final_val_loss"] < on_disk["init_loss"] - 0.5


def test_run_writes_history_at_probe_steps_only(reference, engine_bench):
    out, metrics = reference
    rows = read_history(out)
    assert PROBE_COLUMNS <= set(rows[0])
    train_cfg = engine_bench.benchmark["train"]
    assert [int(r["step"]) for r in rows] == list(range(0, train_cfg["steps"] + 1, train_cfg["probe_every"]))
    assert rows[0]["val_loss"] and float(rows[0]["val_loss"]) == pytest.approx(metrics["init_loss"])
    probed = rows[1:]
    for r in probed:
        for col in PROBE_COLUMNS:
            assert r[col] != "" and math.isfinite(float(r[col])), (r["step"], col)
    # validation loss at eval steps only
    assert [int(r["step"]) for r in rows if r["val_loss"]] == [0, 20, 40]
    assert float(rows[-1]["val_loss"]) == pytest.approx(metrics["final_val_loss"])
    # the recorded lr follows the schedule: cosine end at min_lr
    assert float(rows[-1]["lr"]) == pytest.approx(train_cfg["min_lr"])
    assert float(rows[1]["lr"]) > float(rows[2]["lr"]) > float(rows[3]["lr"])
    # the train loss column falls too
    assert float(probed[-1]["loss"]) < float(probed[0]["loss"])
    assert metrics["final_train_loss"] == pytest.approx(float(probed[-1]["loss"]))


def test_every_steps_loss_is_kept(reference, engine_bench):
    """losses.csv has one row per optimizer step; a history row's loss is the mean of the steps
    since the previous probe row."""
    out, metrics = reference
    rows = read_losses(out)
    assert list(rows[0]) == ["step", "loss", "loss_total"]
    assert [int(r["step"]) for r in rows] == list(range(1, 41))
    per_step = [float(r["loss"]) for r in rows]
    assert all(math.isfinite(x) for x in per_step)
    assert all(r["loss"] == r["loss_total"] for r in rows)  # the baseline adds no loss term
    every = engine_bench.benchmark["train"]["probe_every"]
    for row in read_history(out)[1:]:
        step = int(row["step"])
        assert float(row["loss"]) == pytest.approx(np.mean(per_step[step - every:step]), rel=1e-6)
    state = torch.load(out / CHECKPOINT_NAME, weights_only=True)
    assert [s for s, *_ in state["losses"]] == list(range(1, 41))


def test_loss_spikes_are_counted_on_steps(engine_bench, tmp_path, run_training):
    """A tight spike rule finds spikes between probe steps: they are counted on per-step losses."""
    bench = engine_bench.load(["probes.spike_factor=1.02", "probes.spike_window=3"])
    metrics = run_training(tmp_path, benchmark=bench, lr=3e-2)
    rows = read_losses(tmp_path)
    want = spike_steps([float(r["loss"]) for r in rows], 3, 1.02, steps=[int(r["step"]) for r in rows])
    assert metrics["loss_spike_steps"] == want and metrics["loss_spikes"] == len(want) > 0
    every = bench["train"]["probe_every"]
    assert any(step % every for step in want), "every spike fell on a probe step; the rule saw means"


def test_checkpoint_loads_weights_only(reference):
    out, metrics = reference
    state = torch.load(out / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    assert state["finished"] is True and state["step"] == 40 and state["tokens"] == metrics["tokens"]
    assert state["metrics"]["final_val_loss"] == metrics["final_val_loss"]
    assert state["identity"] == metrics["identity"]
    assert state["slot"] == {"benchmark": "enginetest", "method": "baseline", "size": "tiny", "lr": 1e-2, "seed": 0}
    model = build_member(metrics["config"])
    model.load_state_dict(state["model"])  # the weights of the trained model, K = 1
    assert model.head.weight.shape[0] == 1
    assert state["optimizer"]["counts"]["head.weight"] == 40
    assert set(state["optimizer"]["state"]["head.weight"]) == {"exp_avg", "exp_avg_sq"}


def test_finished_run_is_not_trained_again(engine_bench, tmp_path, monkeypatch, run_training):
    first = run_training(tmp_path, benchmark=engine_bench.load(["train.steps=10"]))
    (tmp_path / "metrics.json").unlink()
    (tmp_path / "losses.csv").unlink()
    monkeypatch.setattr(loop, "build_member", None)  # any attempt to build a model would fail
    again = run_training(tmp_path, benchmark=engine_bench.load(["train.steps=10"]))
    assert again == first
    assert json.loads((tmp_path / "metrics.json").read_text())["finished_at"] == first["finished_at"]
    assert len(read_losses(tmp_path)) == 10  # rewritten from the checkpoint


@pytest.mark.parametrize("method", ["baseline", "qk_layernorm", "z_loss", "qk_layernorm+z_loss"])
def test_every_benchmark_method_trains(engine_bench, tmp_path, run_training, method):
    metrics = run_training(tmp_path, benchmark=engine_bench.load(["train.steps=10"]), method=method, lr=1e-2)
    assert metrics["steps"] == 10 and not metrics["diverged"]
    assert [m["name"] for m in metrics["methods"]] == method.split("+")
    assert all(m["version"] for m in metrics["methods"])
    config = metrics["config"]
    plain = sum(p.numel() for p in GPT(**config["model"]).parameters())
    head_dim = config["model"]["d_model"] // config["model"]["n_heads"]
    qk_gains = 2 * config["model"]["n_layers"] * head_dim if "qk_layernorm" in method else 0
    assert metrics["n_params"] == plain + qk_gains


def test_wrong_data_folder_is_an_error(engine_bench, tmp_path):
    bench = engine_bench.load(["data.vocab_size=600"])
    with pytest.raises(DataMismatchError, match="vocab_size"):
        train([resolve(bench)], [tmp_path], engine_bench.data_dir, progress=False)


# ---- the loss -----------------------------------------------------------------------------

def _first_step_loss(engine_bench, config) -> tuple[float, float]:
    """(cross entropy, coef-free mean(log Z)^2) of the initial model on the step-1 batch."""
    data = load_data(engine_bench.data_dir)
    model = build_member({**config, "methods": [{"name": "baseline", "args": {}, "version": "1"}]})
    train_cfg = config["train"]
    batch = torch.from_numpy(train_batch(data.train, 1, train_cfg["batch_size"], train_cfg["seq_len"], config["seed"])
                             .astype(np.int64))[None]
    with torch.no_grad():
        logits = model(batch[..., :-1])[0]
        ce = F.cross_entropy(logits.flatten(0, 1), batch[0, :, 1:].flatten())
        z = torch.logsumexp(logits, -1).square().mean()
    return ce.item(), z.item()


def test_training_loss_is_cross_entropy_plus_z_loss(engine_bench, tmp_path):
    coef = 0.05
    bench = engine_bench.with_methods(
        ["baseline", {"label": "zl", "use": "z_loss", "args": {"z_loss": {"coef": coef}}}])
    bench["train"].update(steps=1, probe_every=1)
    step1 = {}
    for method in ("baseline", "zl"):
        run = resolve_run(bench, method=method, size="tiny", lr=1e-3, seed=0)
        (metrics,) = train([run], [tmp_path / method], engine_bench.data_dir, progress=False)
        assert metrics["steps"] == 1
        (row,) = read_losses(tmp_path / method)
        step1[method] = (float(row["loss"]), float(row["loss_total"]))
        (hist,) = [r for r in read_history(tmp_path / method) if r["step"] == "1"]
        assert float(hist["loss"]) == pytest.approx(step1[method][0])
    ce, z = _first_step_loss(engine_bench, run.config)
    # 'loss' is the language-model loss for every method; 'loss_total' adds the method's terms.
    assert step1["baseline"][0] == pytest.approx(ce, rel=1e-5)
    assert step1["baseline"][1] == step1["baseline"][0]
    assert step1["zl"][0] == pytest.approx(ce, rel=1e-5)
    assert step1["zl"][1] == pytest.approx(ce + coef * z, rel=1e-5)
    assert coef * z > 1.0  # the term is large enough for the check above to mean something


# ---- divergence ---------------------------------------------------------------------------

def test_huge_lr_diverges_without_raising(engine_bench, tmp_path, run_training):
    metrics = run_training(tmp_path, lr=1e4)
    total = engine_bench.benchmark["train"]["steps"]
    assert metrics["diverged"] is True
    assert metrics["diverged_at_step"] is not None
    assert metrics["steps"] == metrics["diverged_at_step"] < total
    assert metrics["diverged_at_step"] % engine_bench.benchmark["train"]["probe_every"] == 0
    on_disk = json.loads((tmp_path / "metrics.json").read_text())  # valid JSON even with NaN/inf
    assert on_disk["diverged"] is True and on_disk["steps"] < total
    rows = read_history(tmp_path)
    assert int(rows[-1]["step"]) == metrics["diverged_at_step"]
    last = float(rows[-1]["loss"])
    assert not math.isfinite(last) or last > 1.5 * metrics["init_loss"]
    assert [int(r["step"]) for r in read_losses(tmp_path)] == list(range(1, metrics["steps"] + 1))
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)["finished"] is True


# ---- determinism --------------------------------------------------------------------------

def test_same_seed_same_losses(engine_bench, reference, tmp_path, run_training):
    ref_out, ref = reference
    again = run_training(tmp_path, lr=1e-2, seed=0)
    assert again["final_val_loss"] == ref["final_val_loss"]
    assert again["max_attn_logit"] == ref["max_attn_logit"]
    assert read_losses(tmp_path) == read_losses(ref_out)
    assert losses(read_history(tmp_path)) == losses(read_history(ref_out))
    other = run_training(tmp_path / "seed1", lr=1e-2, seed=1)
    assert other["init_loss"] != ref["init_loss"]
    assert other["final_val_loss"] != ref["final_val_loss"]
    assert read_losses(tmp_path / "seed1") != read_losses(ref_out)


# ---- resume -------------------------------------------------------------------------------

def assert_resumed_exactly(out: Path, resumed: dict, ref_out: Path, ref: dict) -> None:
    assert resumed["steps"] == ref["steps"] and resumed["tokens"] == ref["tokens"]
    assert resumed["final_val_loss"] == ref["final_val_loss"]
    assert resumed["init_loss"] == ref["init_loss"]
    rows, ref_rows = read_history(out), read_history(ref_out)
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows]  # no duplicated rows
    assert losses(rows) == losses(ref_rows)
    assert [r["val_loss"] for r in rows] == [r["val_loss"] for r in ref_rows]
    assert read_losses(out) == read_losses(ref_out)
    assert resumed["loss_spike_steps"] == ref["loss_spike_steps"]


def test_resume_in_process_matches_uninterrupted(engine_bench, reference, tmp_path, run_training):
    ref_out, ref = reference
    with crash_at_step(30):
        run_training(tmp_path, lr=1e-2, seed=0)
    assert not (tmp_path / "metrics.json").exists()
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert state["step"] == 20 and state["finished"] is False
    assert [s for s, *_ in state["losses"]] == list(range(1, 21))
    build_member(ref["config"]).load_state_dict(state["model"])

    resumed = run_training(tmp_path, lr=1e-2, seed=0)
    assert resumed["resumed_from_step"] == 20
    assert_resumed_exactly(tmp_path, resumed, ref_out, ref)


def test_damaged_checkpoint_falls_back_to_the_previous_one(engine_bench, tmp_path, run_training, capfd):
    bench = engine_bench.load(["train.checkpoint_every=10"])
    ref_out = tmp_path / "ref"
    ref = run_training(ref_out, benchmark=bench)
    out = tmp_path / "run"
    with crash_at_step(40):
        run_training(out, benchmark=bench)
    assert torch.load(out / CHECKPOINT_NAME, weights_only=True)["step"] == 30
    assert torch.load(out / PREVIOUS_NAME, weights_only=True)["step"] == 20
    data = (out / CHECKPOINT_NAME).read_bytes()
    (out / CHECKPOINT_NAME).write_bytes(data[: len(data) // 2])  # torn
    capfd.readouterr()
    resumed = run_training(out, benchmark=bench)
    err = capfd.readouterr().err
    assert "damaged" in err and CHECKPOINT_NAME in err and len(err.strip().splitlines()) == 1
    assert resumed["resumed_from_step"] == 20
    assert_resumed_exactly(out, resumed, ref_out, ref)


def test_both_checkpoints_damaged_trains_from_scratch(engine_bench, tmp_path, run_training):
    bench = engine_bench.load(["train.steps=10", "train.checkpoint_every=5"])
    with crash_at_step(10):
        run_training(tmp_path, benchmark=bench)
    for name in (CHECKPOINT_NAME, PREVIOUS_NAME):
        if (tmp_path / name).exists():
            (tmp_path / name).write_bytes(b"not a checkpoint")
    metrics = run_training(tmp_path, benchmark=bench)
    assert metrics["resumed_from_step"] is None and metrics["steps"] == 10


def test_folder_of_another_run_is_refused(engine_bench, tmp_path, run_training):
    with crash_at_step(30):
        run_training(tmp_path, lr=1e-2, seed=0)
    with pytest.raises(ConfigError) as err:
        run_training(tmp_path, lr=1e-3, seed=0)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path) in msg and "0.01" in msg and "0.001" in msg
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)["step"] == 20  # untouched


def test_checkpoint_of_a_changed_config_is_not_resumed(engine_bench, tmp_path, run_training):
    """The same slot with another identity (the benchmark changed the run) trains afresh."""
    with crash_at_step(30):
        run_training(tmp_path, lr=1e-2, seed=0)
    bench = engine_bench.load(["optimizer.weight_decay=0.001"])
    assert resolve(bench).identity != resolve(engine_bench.benchmark).identity
    other = run_training(tmp_path, benchmark=bench, lr=1e-2, seed=0)
    assert other["resumed_from_step"] is None
    assert other["steps"] == 40 and other["identity"] == resolve(bench).identity


def test_a_folder_being_trained_is_locked(engine_bench, tmp_path, run_training):
    tmp_path.mkdir(exist_ok=True)
    with open(tmp_path / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as another process training it would
        with pytest.raises(ConfigError, match="being trained by another process"):
            run_training(tmp_path)
    assert not (tmp_path / CHECKPOINT_NAME).exists()
    assert run_training(tmp_path, benchmark=engine_bench.load(["train.steps=2", "train.warmup_steps=1"]))["steps"] == 2


def test_runs_trained_together_need_their_own_folders(engine_bench, tmp_path):
    runs = [resolve(engine_bench.benchmark, lr=lr) for lr in (1e-3, 1e-2)]
    with pytest.raises(ConfigError, match="share an output folder"):
        train(runs, [tmp_path / "a", tmp_path / "a"], engine_bench.data_dir, progress=False)
    with pytest.raises(ValueError, match="2 runs for 1 output"):
        train(runs, [tmp_path / "a"], engine_bench.data_dir, progress=False)
