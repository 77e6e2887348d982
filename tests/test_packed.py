"""stabench.packed: runs that differ only in lr/seed trained as one vmapped pack must give
each member the result of its own train_run (up to float reduction order), with the same
output files; diverged members freeze without touching the others; unpackable methods fall
back to separate runs. Tiny (2-layer d=32 GPT, 20 steps) and one torch thread."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

import stabench.packed as packed
from stabench.checkpoint import CHECKPOINT_NAME
from stabench.config import run_config

from conftest import crash_at_step
from stabench.packed import can_pack, pack_groups, train_packed
from stabench.runs import load_run_model
from stabench.trainer import train_run

OVERRIDES = ["train.steps=20", "train.probe_every=5", "train.eval_every=10", "train.checkpoint_every=10"]
COMPARED = ("loss", "loss_total", "lr", "grad_norm", "val_loss", "attn_logit_max", "log_z_mean")
RTOL = 1e-4



@pytest.fixture(scope="module")
def bench(engine_bench):
    return engine_bench.load(OVERRIDES)


@pytest.fixture(scope="module")
def separate(engine_bench, bench, tmp_path_factory):
    """``separate(method, lr, seed) -> (out_dir, metrics)`` of a plain train_run, cached."""
    cache = {}

    def run(method: str, lr: float, seed: int = 0):
        key = (method, lr, seed)
        if key not in cache:
            out = tmp_path_factory.mktemp("separate")
            cache[key] = out, train_run(config(bench, method, lr, seed), out, engine_bench.data_dir, progress=False)
        return cache[key]

    return run


def config(bench: dict, method: str, lr: float, seed: int = 0) -> dict:
    return run_config(bench, method=method, size="tiny", lr=lr, seed=seed)


def read_history(out: Path) -> list[dict]:
    with open(out / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def assert_same_run(packed_out: Path, packed_metrics: dict, single_out: Path, single: dict) -> None:
    rows, ref_rows = read_history(packed_out), read_history(single_out)
    assert list(rows[-1]) == list(ref_rows[-1])  # the same columns, in the same order
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows]
    for row, ref in zip(rows, ref_rows):
        for col in COMPARED:
            if ref.get(col):
                assert float(row[col]) == pytest.approx(float(ref[col]), rel=RTOL), (row["step"], col)
            else:
                assert not row.get(col), (row["step"], col)
    for key in ("final_val_loss", "init_loss", "max_attn_logit", "final_log_z", "final_train_loss"):
        assert packed_metrics[key] == pytest.approx(single[key], rel=RTOL), key
    for key in ("diverged", "diverged_at_step", "steps", "tokens", "n_params", "config", "methods", "lr", "seed"):
        assert packed_metrics[key] == single[key], key


# ---- equivalence with separate runs -------------------------------------------------------

@pytest.mark.parametrize("method", ["baseline", "qk_layernorm+z_loss"])
def test_pack_of_lrs_matches_separate_runs(engine_bench, bench, separate, tmp_path, method):
    lrs = [1e-3, 3e-3, 1e-2]
    outs = [tmp_path / f"lr{lr:g}" for lr in lrs]
    metrics = train_packed([config(bench, method, lr) for lr in lrs], outs, engine_bench.data_dir, progress=False)
    for lr, out, m in zip(lrs, outs, metrics):
        single_out, single = separate(method, lr)
        assert m["packed_with"] == 3 and not m["diverged"]
        assert_same_run(out, m, single_out, single)
        on_disk = json.loads((out / "metrics.json").read_text())
        assert set(on_disk) == set(single) | {"packed_with"}
        assert on_disk["final_val_loss"] == m["final_val_loss"]
        # the checkpoint is train_run's format: the run's model loads from it, and it is finished
        model, _ = load_run_model(out)
        ref_model, _ = load_run_model(single_out)
        assert model.state_dict().keys() == ref_model.state_dict().keys()
        for name, tensor in model.state_dict().items():
            torch.testing.assert_close(tensor, ref_model.state_dict()[name], rtol=1e-3, atol=1e-5)
        state = torch.load(out / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
        assert state["finished"] is True and state["step"] == 20
        assert state["optimizer"]["state"]  # torch AdamW format: exp_avg, exp_avg_sq, step


def test_pack_of_seeds_matches_separate_runs(engine_bench, bench, separate, tmp_path):
    members = [(1e-2, 0), (1e-2, 1), (3e-3, 1)]
    outs = [tmp_path / f"lr{lr:g}-s{seed}" for lr, seed in members]
    metrics = train_packed([config(bench, "baseline", lr, seed) for lr, seed in members], outs,
                           engine_bench.data_dir, progress=False)
    assert metrics[0]["init_loss"] != metrics[1]["init_loss"]  # its own init per seed
    for (lr, seed), out, m in zip(members, outs, metrics):
        assert_same_run(out, m, *separate("baseline", lr, seed))


def test_diverged_member_is_frozen_and_others_unaffected(engine_bench, bench, separate, tmp_path):
    lrs = [1e-3, 1e4, 1e-2]
    outs = [tmp_path / f"lr{lr:g}" for lr in lrs]
    metrics = train_packed([config(bench, "baseline", lr) for lr in lrs], outs, engine_bench.data_dir, progress=False)
    bad = metrics[1]
    single_out, single = separate("baseline", 1e4)
    assert bad["diverged"] is True and single["diverged"] is True
    assert bad["diverged_at_step"] == single["diverged_at_step"] == bad["steps"] < 20
    rows = read_history(outs[1])
    assert int(rows[-1]["step"]) == bad["diverged_at_step"]
    last = float(rows[-1]["loss"])
    assert not math.isfinite(last) or last > 1.5 * bad["init_loss"]
    assert json.loads((outs[1] / "metrics.json").read_text())["diverged"] is True
    assert torch.load(outs[1] / CHECKPOINT_NAME, weights_only=True)["finished"] is True
    for lr, out, m in zip([lrs[0], lrs[2]], [outs[0], outs[2]], [metrics[0], metrics[2]]):
        assert_same_run(out, m, *separate("baseline", lr))


# ---- what cannot be packed ----------------------------------------------------------------

CUSTOM_OPTIMIZER = '''
"""SGD instead of AdamW (a test method with an exclusive hook)."""
import torch
VERSION = "1"

def build_optimizer(groups, config, args):
    return torch.optim.SGD(groups, lr=config["lr"])
'''


def test_exclusive_hook_falls_back_to_separate_runs(engine_bench, bench, tmp_methods, tmp_path, monkeypatch):
    name = tmp_methods(CUSTOM_OPTIMIZER, stem="sgd")
    bench = engine_bench.with_methods(["baseline", name])
    bench["train"].update(steps=6, probe_every=3, eval_every=6)
    configs = [config(bench, name, lr) for lr in (1e-2, 3e-2)]
    ok, why = can_pack(configs)
    assert not ok and "build_optimizer" in why
    calls = []
    real = packed.train_run
    monkeypatch.setattr(packed, "train_run", lambda c, o, d, **kw: calls.append(o) or real(c, o, d, **kw))
    outs = [tmp_path / "a", tmp_path / "b"]
    metrics = train_packed(configs, outs, engine_bench.data_dir, progress=False)
    assert calls == outs
    for out, m in zip(outs, metrics):
        assert "packed_with" not in m and m["steps"] == 6
        assert (out / "metrics.json").is_file() and (out / "history.csv").is_file()


def test_configs_differing_in_more_than_lr_and_seed_are_an_error(engine_bench, bench, tmp_path):
    other = engine_bench.load(OVERRIDES + ["train.steps=30"])
    for configs in ([config(bench, "baseline", 1e-3), config(bench, "z_loss", 1e-2)],
                    [config(bench, "baseline", 1e-3), config(other, "baseline", 1e-2)],
                    [config(bench, "baseline", 1e-3), config(bench, "baseline", 1e-3)]):
        with pytest.raises(ValueError, match="train_packed"):
            train_packed(configs, [tmp_path / "a", tmp_path / "b"], engine_bench.data_dir, progress=False)
    assert can_pack([config(bench, "baseline", 1e-3), config(bench, "baseline", 1e-2, seed=3)]) == (True, "")
    assert can_pack([config(bench, "baseline", 1e-3)])[0] is False


def test_pack_groups():
    specs = [{"method": m, "size": s, "lr": lr, "seed": seed, "out": f"{m}{s}{lr}{seed}"}
             for m in ("a", "b") for s in ("S", "M") for lr in (1, 2, 3, 4, 5) for seed in (0, 1)]
    groups = pack_groups(specs, max_size=4)
    for group in groups:
        assert len({(g["method"], g["size"]) for g in group}) == 1 and len(group) <= 4
    assert sorted(len(g) for g in groups) == [3] * 8 + [4] * 4  # 10 per (method, size): 4 + 3 + 3
    assert sorted(map(str, (s for g in groups for s in g))) == sorted(map(str, specs))
    assert [len(g) for g in pack_groups(specs[:10], max_size=8)] == [5, 5]
    with pytest.raises(ValueError):
        pack_groups(specs, max_size=0)


# ---- resume -------------------------------------------------------------------------------

def test_killed_pack_resumes_and_matches(engine_bench, bench, tmp_path, monkeypatch):
    lrs = [1e-3, 1e-2]
    configs = [config(bench, "baseline", lr) for lr in lrs]
    ref_outs = [tmp_path / "ref" / str(lr) for lr in lrs]
    ref = train_packed(configs, ref_outs, engine_bench.data_dir, progress=False)
    outs = [tmp_path / "killed" / str(lr) for lr in lrs]
    with crash_at_step(packed, 15):
        train_packed(configs, outs, engine_bench.data_dir, progress=False)
    for out in outs:
        state = torch.load(out / CHECKPOINT_NAME, weights_only=True)
        assert state["step"] == 10 and state["finished"] is False
    resumed = train_packed(configs, outs, engine_bench.data_dir, progress=False)
    for out, ref_out, m, r in zip(outs, ref_outs, resumed, ref):
        assert m["resumed_from_step"] == 10
        assert m["final_val_loss"] == r["final_val_loss"]  # on CPU the resumed pack is exact
        assert [row["loss"] for row in read_history(out)] == [row["loss"] for row in read_history(ref_out)]
    # finished: a rerun reports the metrics without training
    monkeypatch.setattr(packed, "GPT", None)
    again = train_packed(configs, outs, engine_bench.data_dir, progress=False)
    assert [a["finished_at"] for a in again] == [m["finished_at"] for m in resumed]


def test_train_run_resumes_a_packed_members_checkpoint(engine_bench, bench, separate, tmp_path, monkeypatch):
    """A member's mid-run checkpoint is train_run's format: a group of one resumes with train_run."""
    lrs = [1e-3, 1e-2]
    outs = [tmp_path / str(lr) for lr in lrs]
    with crash_at_step(packed, 15):
        train_packed([config(bench, "baseline", lr) for lr in lrs], outs, engine_bench.data_dir, progress=False)
    resumed = train_run(config(bench, "baseline", lrs[1]), outs[1], engine_bench.data_dir, progress=False)
    assert resumed["resumed_from_step"] == 10
    single_out, single = separate("baseline", lrs[1])
    assert resumed["final_val_loss"] == pytest.approx(single["final_val_loss"], rel=RTOL)
    for row, ref in zip(read_history(outs[1]), read_history(single_out)):
        assert float(row["loss"] or "nan") == pytest.approx(float(ref["loss"] or "nan"), rel=RTOL, nan_ok=True)


def test_reparameterizing_methods_are_not_packed(engine_bench):
    """Weights wrapped by torch.nn.utils.parametrize (WeSaR's gates) fall back to separate runs."""
    from stabench.packed import can_pack
    bench = engine_bench.with_methods(["wesar", "qk_layernorm"])
    wesar = [run_config(bench, method="wesar", size="tiny", lr=lr, seed=0) for lr in (1e-3, 1e-2)]
    ok, why = can_pack(wesar)
    assert not ok and "parametrize" in why
    assert can_pack([run_config(bench, method="qk_layernorm", size="tiny", lr=lr, seed=0) for lr in (1e-3, 1e-2)])[0]
