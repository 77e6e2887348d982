"""stabench.trainer.train_run on a tiny benchmark: outputs, loss terms, divergence,
determinism and in-process resume. Runs use one torch thread so losses compare bitwise."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import stabench.trainer as trainer
from stabench.checkpoint import CHECKPOINT_NAME
from stabench.config import run_config
from stabench.data import load_data, train_batch
from stabench.model import GPT
from stabench.trainer import DataMismatchError, train_run
from conftest import crash_at_step


METRIC_KEYS = {"final_val_loss", "init_loss", "diverged", "diverged_at_step", "steps", "tokens",
               "wall_seconds", "tokens_per_second", "max_attn_logit", "config", "methods", "versions",
               "device", "resumed_from_step"}
PROBE_COLUMNS = {"step", "loss", "lr", "grad_norm", "attn_logit_max_l0", "attn_logit_max_l1", "log_z_mean"}



@pytest.fixture(scope="module")
def reference(engine_bench, tmp_path_factory):
    """One uninterrupted baseline run (lr 1e-2, seed 0, 40 steps): (out_dir, metrics)."""
    out = tmp_path_factory.mktemp("reference")
    config = make_run_config(engine_bench.benchmark, "baseline", lr=1e-2, seed=0)
    return out, train_run(config, out, engine_bench.data_dir, progress=False)


def make_run_config(benchmark: dict, method: str = "baseline", lr: float = 1e-2, seed: int = 0) -> dict:
    return run_config(benchmark, method=method, size="tiny", lr=lr, seed=seed)


def read_history(out: Path) -> list[dict]:
    with open(out / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def losses(rows: list[dict]) -> list[tuple[int, str]]:
    return [(int(r["step"]), r["loss"]) for r in rows if r.get("loss")]


# ---- outputs of one run -------------------------------------------------------------------

def test_run_writes_metrics(reference, engine_bench):
    out, metrics = reference
    on_disk = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= set(on_disk)
    assert on_disk["final_val_loss"] == metrics["final_val_loss"]
    train = engine_bench.benchmark["train"]
    assert on_disk["steps"] == train["steps"] == 40
    assert on_disk["tokens"] == train["steps"] * train["batch_size"] * train["seq_len"]
    assert on_disk["diverged"] is False and on_disk["diverged_at_step"] is None
    assert on_disk["resumed_from_step"] is None
    assert on_disk["wall_seconds"] > 0 and on_disk["tokens_per_second"] > 0
    assert math.isfinite(on_disk["max_attn_logit"]) and on_disk["max_attn_logit"] > 0
    assert set(on_disk["versions"]) >= {"python", "torch", "stabench"}
    assert on_disk["versions"]["torch"] == torch.__version__
    assert on_disk["device"].startswith("cpu")
    assert on_disk["methods"] == [{"name": "baseline", "args": {}, "version": "1", "changes_lr_meaning": False}]
    assert on_disk["config"]["lr"] == 1e-2 and on_disk["config"]["size"] == "tiny"
    assert on_disk["config"]["model"]["vocab_size"] == load_data(engine_bench.data_dir).vocab_size
    # the loss at init is about ln(vocab), and training lowers it
    vocab = on_disk["config"]["model"]["vocab_size"]
    assert abs(on_disk["init_loss"] - math.log(vocab)) < 1.0
    assert on_disk["final_val_loss"] < on_disk["init_loss"] - 0.5


def test_run_writes_history_at_probe_steps_only(reference, engine_bench):
    out, metrics = reference
    rows = read_history(out)
    assert PROBE_COLUMNS <= set(rows[0])
    train = engine_bench.benchmark["train"]
    assert [int(r["step"]) for r in rows] == list(range(0, train["steps"] + 1, train["probe_every"]))
    assert rows[0]["val_loss"] and float(rows[0]["val_loss"]) == pytest.approx(metrics["init_loss"])
    probed = rows[1:]
    for r in probed:
        for col in PROBE_COLUMNS:
            assert r[col] != "" and math.isfinite(float(r[col])), (r["step"], col)
    # validation loss at eval steps only
    assert [int(r["step"]) for r in rows if r["val_loss"]] == [0, 20, 40]
    assert float(rows[-1]["val_loss"]) == pytest.approx(metrics["final_val_loss"])
    # the recorded lr follows the schedule: cosine end at min_lr
    assert float(rows[-1]["lr"]) == pytest.approx(train["min_lr"])
    assert float(rows[1]["lr"]) > float(rows[2]["lr"]) > float(rows[3]["lr"])
    # the train loss column falls too
    assert float(probed[-1]["loss"]) < float(probed[0]["loss"])


def test_checkpoint_loads_weights_only(reference):
    out, metrics = reference
    state = torch.load(out / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    assert state["finished"] is True and state["step"] == 40
    assert state["metrics"]["final_val_loss"] == metrics["final_val_loss"]
    config = metrics["config"]
    model = GPT(**config["model"])
    model.load_state_dict(state["model"])  # the weights of the trained model
    assert "state" in state["optimizer"] and state["optimizer"]["state"]


def test_finished_run_is_not_trained_again(engine_bench, tmp_path, monkeypatch, run_training):
    first = run_training(tmp_path, benchmark=engine_bench.load(["train.steps=10"]))
    (tmp_path / "metrics.json").unlink()
    monkeypatch.setattr(trainer, "GPT", None)  # any attempt to build a model would fail
    again = run_training(tmp_path, benchmark=engine_bench.load(["train.steps=10"]))
    assert again == first
    assert json.loads((tmp_path / "metrics.json").read_text())["finished_at"] == first["finished_at"]


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
        train_run(make_run_config(bench), tmp_path, engine_bench.data_dir, progress=False)


# ---- the loss -----------------------------------------------------------------------------

def _first_step_loss(engine_bench, config) -> tuple[float, float]:
    """(cross entropy, coef-free mean(log Z)^2) of the initial model on the step-1 batch."""
    data = load_data(engine_bench.data_dir)
    model_cfg = {**config["model"], "vocab_size": data.vocab_size, "seq_len": config["train"]["seq_len"]}
    torch.manual_seed(config["seed"])
    model = GPT(**model_cfg)
    train = config["train"]
    batch = torch.from_numpy(train_batch(data.train, 1, train["batch_size"], train["seq_len"], config["seed"])
                             .astype(np.int64))
    with torch.no_grad():
        logits = model(batch[:, :-1])
        ce = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        z = torch.logsumexp(logits, -1).square().mean()
    return ce.item(), z.item()


def test_training_loss_is_cross_entropy_plus_z_loss(engine_bench, tmp_path):
    coef = 0.05
    bench = engine_bench.with_methods(
        ["baseline", {"label": "zl", "use": "z_loss", "args": {"z_loss": {"coef": coef}}}])
    bench["train"].update(steps=1, probe_every=1)
    step1 = {}
    for method in ("baseline", "zl"):
        config = run_config(bench, method=method, size="tiny", lr=1e-3, seed=0)
        metrics = train_run(config, tmp_path / method, engine_bench.data_dir, progress=False)
        assert metrics["steps"] == 1
        (row,) = [r for r in read_history(tmp_path / method) if r["step"] == "1"]
        step1[method] = (float(row["loss"]), float(row.get("loss_total") or "nan"))
    ce, z = _first_step_loss(engine_bench, config)
    # 'loss' is the language-model loss for every method; 'loss_total' adds the method's terms.
    assert step1["baseline"][0] == pytest.approx(ce, rel=1e-5)
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


# ---- determinism --------------------------------------------------------------------------

def test_same_seed_same_losses(engine_bench, reference, tmp_path, run_training):
    ref_out, ref = reference
    again = run_training(tmp_path, lr=1e-2, seed=0)
    assert again["final_val_loss"] == ref["final_val_loss"]
    assert again["max_attn_logit"] == ref["max_attn_logit"]
    assert losses(read_history(tmp_path)) == losses(read_history(ref_out))
    other = run_training(tmp_path / "seed1", lr=1e-2, seed=1)
    assert other["init_loss"] != ref["init_loss"]
    assert other["final_val_loss"] != ref["final_val_loss"]
    assert losses(read_history(tmp_path / "seed1")) != losses(read_history(ref_out))


# ---- resume -------------------------------------------------------------------------------

def test_resume_in_process_matches_uninterrupted(engine_bench, reference, tmp_path, monkeypatch, run_training):
    ref_out, ref = reference
    with crash_at_step(trainer, 30):
        run_training(tmp_path, lr=1e-2, seed=0)
    assert not (tmp_path / "metrics.json").exists()
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert state["step"] == 20 and state["finished"] is False
    GPT(**ref["config"]["model"]).load_state_dict(state["model"])

    resumed = run_training(tmp_path, lr=1e-2, seed=0)
    assert resumed["resumed_from_step"] == 20
    assert resumed["steps"] == ref["steps"] and resumed["tokens"] == ref["tokens"]
    assert resumed["final_val_loss"] == ref["final_val_loss"]
    assert resumed["init_loss"] == ref["init_loss"]
    rows, ref_rows = read_history(tmp_path), read_history(ref_out)
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows]  # no duplicated rows
    assert losses(rows) == losses(ref_rows)
    assert [r["val_loss"] for r in rows] == [r["val_loss"] for r in ref_rows]


def test_checkpoint_of_another_config_is_not_resumed(tmp_path, monkeypatch, run_training):
    with crash_at_step(trainer, 30):
        run_training(tmp_path, lr=1e-2, seed=0)
    other = run_training(tmp_path, lr=1e-3, seed=0)
    assert other["resumed_from_step"] is None
    assert other["steps"] == 40
