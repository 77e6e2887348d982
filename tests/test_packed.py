"""Packs: runs that differ only in peak LR and seed trained as one ensemble (K > 1) by the same
loop as a separate run (K = 1) must give each member the result of its own separate run (up to
float reduction order), with the same output files. Every method in methods/ packs; diverged
members leave the ensemble without disturbing the others; a method may declare itself
unpackable and then trains run by run; packs resume exactly. Tiny (2-layer d=32 GPT, 20
steps) and one torch thread."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

import stabench.loop as loop
from stabench.checkpoint import CHECKPOINT_NAME
from stabench.config import ConfigError
from stabench.ensemble import Ensemble
from stabench.loop import train
from stabench.methods import known_methods, load_module
from stabench.runs import load_run_model

from conftest import crash_at_step, resolve

OVERRIDES = ["train.steps=20", "train.probe_every=5", "train.eval_every=10", "train.checkpoint_every=10"]
COMPARED = ("loss", "lr", "grad_norm", "val_loss", "attn_logit_max", "log_z_mean")
RTOL = 1e-5


@pytest.fixture(scope="module")
def bench(engine_bench):
    return engine_bench.load(OVERRIDES)


@pytest.fixture(scope="module")
def separate(engine_bench, bench, tmp_path_factory):
    """``separate(method, lr, seed, benchmark=None) -> (out_dir, metrics)`` of a K = 1 run, cached."""
    cache = {}

    def run(method: str, lr: float, seed: int = 0, benchmark: dict | None = None):
        key = (method, lr, seed, id(benchmark))
        if key not in cache:
            out = tmp_path_factory.mktemp("separate")
            run_ = resolve(benchmark or bench, method, lr=lr, seed=seed)
            cache[key] = out, train([run_], [out], engine_bench.data_dir, progress=False)[0]
        return cache[key]

    return run


def pack(engine_bench, bench, method, members, outs, **kw) -> list[dict]:
    runs = [resolve(bench, method, lr=lr, seed=seed) for lr, seed in members]
    return train(runs, outs, engine_bench.data_dir, progress=False, **kw)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def step_losses(out: Path) -> list[tuple[int, float, float]]:
    return [(int(r["step"]), float(r["loss"]), float(r["loss_total"])) for r in read_csv(out / "losses.csv")]


def assert_same_losses(out: Path, ref_out: Path, rtol: float = RTOL) -> None:
    got, want = step_losses(out), step_losses(ref_out)
    assert [s for s, *_ in got] == [s for s, *_ in want]
    for (step, lm, total), (_, lm_ref, total_ref) in zip(got, want):
        assert lm == pytest.approx(lm_ref, rel=rtol, nan_ok=True), step
        assert total == pytest.approx(total_ref, rel=rtol, nan_ok=True), step


def assert_same_run(packed_out: Path, packed: dict, single_out: Path, single: dict) -> None:
    rows, ref_rows = read_csv(packed_out / "history.csv"), read_csv(single_out / "history.csv")
    assert list(rows[-1]) == list(ref_rows[-1])  # the same columns, in the same order
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows]
    for row, ref in zip(rows, ref_rows):
        for col in COMPARED:
            if ref.get(col):
                assert float(row[col]) == pytest.approx(float(ref[col]), rel=1e-4), (row["step"], col)
            else:
                assert not row.get(col), (row["step"], col)
    assert_same_losses(packed_out, single_out)
    for key in ("final_val_loss", "init_loss", "final_train_loss"):
        assert packed[key] == pytest.approx(single[key], rel=RTOL), key
    for key in ("max_attn_logit", "final_log_z"):
        assert packed[key] == pytest.approx(single[key], rel=1e-4, abs=1e-5), key
    for key in ("diverged", "diverged_at_step", "steps", "tokens", "n_params", "config", "methods", "lr", "seed",
                "identity", "benchmark", "method", "size"):
        assert packed[key] == single[key], key


# ---- equivalence with separate runs -------------------------------------------------------

@pytest.mark.parametrize("method", ["baseline", "qk_layernorm+z_loss"])
def test_pack_of_lrs_matches_separate_runs(engine_bench, bench, separate, tmp_path, method):
    lrs = [1e-3, 3e-3, 1e-2]
    outs = [tmp_path / f"lr{lr:g}" for lr in lrs]
    metrics = pack(engine_bench, bench, method, [(lr, 0) for lr in lrs], outs)
    for lr, out, m in zip(lrs, outs, metrics):
        single_out, single = separate(method, lr)
        assert m["packed_with"] == 3 and single["packed_with"] == 1 and not m["diverged"]
        assert_same_run(out, m, single_out, single)
        on_disk = json.loads((out / "metrics.json").read_text())
        assert set(on_disk) == set(single)
        assert on_disk["final_val_loss"] == m["final_val_loss"]
        # the checkpoint is a separate run's: the run's model loads from it, and it is finished
        model, _ = load_run_model(out)
        ref_model, _ = load_run_model(single_out)
        assert model.state_dict().keys() == ref_model.state_dict().keys()
        for name, tensor in model.state_dict().items():
            assert tensor.shape[0] == 1, name
            torch.testing.assert_close(tensor, ref_model.state_dict()[name], rtol=1e-3, atol=1e-5)
        state = torch.load(out / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
        ref_state = torch.load(single_out / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
        assert state["finished"] is True and state["step"] == 20
        assert state["optimizer"]["counts"] == ref_state["optimizer"]["counts"]
        assert state["identity"] == ref_state["identity"] and state["slot"] == ref_state["slot"]


def test_pack_of_seeds_matches_separate_runs(engine_bench, bench, separate, tmp_path):
    members = [(1e-2, 0), (1e-2, 1), (3e-3, 1)]
    outs = [tmp_path / f"lr{lr:g}-s{seed}" for lr, seed in members]
    metrics = pack(engine_bench, bench, "baseline", members, outs)
    assert metrics[0]["init_loss"] != metrics[1]["init_loss"]  # its own init per seed
    for (lr, seed), out, m in zip(members, outs, metrics):
        assert_same_run(out, m, *separate("baseline", lr, seed))


def test_pack_false_trains_one_at_a_time_through_the_same_loop(engine_bench, bench, separate, tmp_path, monkeypatch):
    sizes = []
    real = loop.EnsembleRun.__init__

    def spy(self, members, *args, **kw):
        sizes.append(len(members))
        real(self, members, *args, **kw)

    monkeypatch.setattr(loop.EnsembleRun, "__init__", spy)
    lrs = [1e-3, 1e-2]
    metrics = pack(engine_bench, bench, "baseline", [(lr, 0) for lr in lrs], [tmp_path / "a", tmp_path / "b"],
                   pack=False)
    assert sizes == [1, 1] and [m["packed_with"] for m in metrics] == [1, 1]
    for lr, out, m in zip(lrs, [tmp_path / "a", tmp_path / "b"], metrics):
        single_out, single = separate("baseline", lr)
        assert m["final_val_loss"] == single["final_val_loss"]  # the same computation, bit for bit
        assert step_losses(out) == step_losses(single_out)


# ---- every method in methods/ packs ---------------------------------------------------------

# Peak LRs where each method is stable on this benchmark (it counts one run of the pair
# diverging only if both ways agree; near instability float noise grows chaotically).
PACK_LRS = {"default": (1e-3, 3e-3)}


@pytest.fixture(scope="module")
def two_size_bench(engine_bench):
    """The pack benchmark with a smaller size, so width-relative methods differ from the
    baseline at the size trained (tiny, d=32, twice the base width 16)."""
    return engine_bench.load(OVERRIDES + ["sizes.base={d_model: 16, n_layers: 1, n_heads: 1}"])


def test_every_shipped_method_is_packable():
    methods = known_methods()
    assert len(methods) >= 18 and "_template" not in methods
    for name in methods:
        assert getattr(load_module(name), "PACKABLE", True) is True, name


@pytest.mark.parametrize("method", known_methods())
def test_every_method_packs_to_the_result_of_separate_runs(engine_bench, two_size_bench, tmp_path, method):
    lrs = PACK_LRS.get(method, PACK_LRS["default"])
    runs = [resolve(two_size_bench, method, lr=lr) for lr in lrs]
    packed = train(runs, [tmp_path / f"p{i}" for i in range(2)], engine_bench.data_dir, progress=False)
    single = train(runs, [tmp_path / f"s{i}" for i in range(2)], engine_bench.data_dir, progress=False, pack=False)
    assert [m["packed_with"] for m in packed] == [2, 2] and [m["packed_with"] for m in single] == [1, 1]
    for i, (p, s) in enumerate(zip(packed, single)):
        assert p["diverged"] == s["diverged"] and p["diverged_at_step"] == s["diverged_at_step"]
        assert p["steps"] == s["steps"] and p["tokens"] == s["tokens"]
        if not s["diverged"]:
            assert p["final_val_loss"] == pytest.approx(s["final_val_loss"], rel=RTOL)
            assert_same_losses(tmp_path / f"p{i}", tmp_path / f"s{i}")
        history = read_csv(tmp_path / f"p{i}" / "history.csv")
        assert list(history[-1]) == list(read_csv(tmp_path / f"s{i}" / "history.csv")[-1])  # its probes too
    assert not all(m["diverged"] for m in single), "choose LRs where the method trains"


# ---- divergence ---------------------------------------------------------------------------

def test_diverged_member_leaves_and_the_others_are_unaffected(engine_bench, bench, separate, tmp_path, monkeypatch):
    kept = []
    real_keep = Ensemble.keep

    def spy(self, rows):
        kept.append(list(rows))
        real_keep(self, rows)

    monkeypatch.setattr(Ensemble, "keep", spy)
    lrs = [1e-3, 1e4, 1e-2]
    outs = [tmp_path / f"lr{lr:g}" for lr in lrs]
    metrics = pack(engine_bench, bench, "baseline", [(lr, 0) for lr in lrs], outs)
    bad = metrics[1]
    single_out, single = separate("baseline", 1e4)
    assert bad["diverged"] is True and single["diverged"] is True
    assert bad["diverged_at_step"] == single["diverged_at_step"] == bad["steps"] < 20
    assert kept == [[0, 2]]  # it left the ensemble once, at its divergence
    rows = read_csv(outs[1] / "history.csv")
    assert int(rows[-1]["step"]) == bad["diverged_at_step"]
    last = float(rows[-1]["loss"])
    assert not math.isfinite(last) or last > 1.5 * bad["init_loss"]
    assert [s for s, *_ in step_losses(outs[1])] == list(range(1, bad["steps"] + 1))
    assert json.loads((outs[1] / "metrics.json").read_text())["diverged"] is True
    assert torch.load(outs[1] / CHECKPOINT_NAME, weights_only=True)["finished"] is True
    for lr, out, m in zip([lrs[0], lrs[2]], [outs[0], outs[2]], [metrics[0], metrics[2]]):
        assert m["steps"] == 20 and not m["diverged"]
        assert_same_run(out, m, *separate("baseline", lr))


def test_all_members_diverging_ends_the_pack(engine_bench, bench, tmp_path):
    metrics = pack(engine_bench, bench, "baseline", [(1e4, 0), (3e4, 0)], [tmp_path / "a", tmp_path / "b"])
    assert all(m["diverged"] and m["steps"] < 20 for m in metrics)
    assert all((tmp_path / d / "metrics.json").is_file() for d in "ab")


# ---- what trains run by run -------------------------------------------------------------------

UNPACKABLE = '''
"""A method that declares it cannot train in a pack (a test method)."""
VERSION = "1"
PACKABLE = False
UNPACKABLE_REASON = "its transform draws from the LR (for the test)"
'''


def test_unpackable_method_trains_run_by_run(engine_bench, tmp_methods, tmp_path, monkeypatch):
    name = tmp_methods(UNPACKABLE, stem="alone")
    bench = engine_bench.with_methods(["baseline", name])
    bench["train"].update(steps=6, probe_every=3, eval_every=6)
    sizes = []
    real = loop.EnsembleRun.__init__
    monkeypatch.setattr(loop.EnsembleRun, "__init__",
                        lambda self, members, *a, **k: sizes.append(len(members)) or real(self, members, *a, **k))
    runs = [resolve(bench, name, lr=lr) for lr in (1e-2, 3e-2)]
    assert runs[0].stack.unpackable_reason() == f"{name}: its transform draws from the LR (for the test)"
    outs = [tmp_path / "a", tmp_path / "b"]
    metrics = train(runs, outs, engine_bench.data_dir, progress=False)
    assert sizes == [1, 1]
    for out, m in zip(outs, metrics):
        assert m["packed_with"] == 1 and m["steps"] == 6
        assert (out / "metrics.json").is_file() and (out / "history.csv").is_file()


def test_runs_differing_in_more_than_lr_and_seed_are_an_error(engine_bench, bench, tmp_path):
    other = engine_bench.load(OVERRIDES + ["train.steps=30"])
    for runs, needle in (([resolve(bench, "baseline", lr=1e-3), resolve(bench, "z_loss", lr=1e-2)], "method"),
                         ([resolve(bench, lr=1e-3), resolve(other, lr=1e-2)], "train"),
                         ([resolve(bench, lr=1e-3), resolve(bench, lr=1e-3)], "appears twice")):
        with pytest.raises(ConfigError, match=needle):
            train(runs, [tmp_path / "a", tmp_path / "b"], engine_bench.data_dir, progress=False)
    assert not (tmp_path / "a").exists()


# ---- resume -------------------------------------------------------------------------------

def test_killed_pack_resumes_exactly(engine_bench, bench, tmp_path, monkeypatch):
    members = [(1e-3, 0), (1e-2, 1)]
    ref_outs = [tmp_path / "ref" / str(i) for i in range(2)]
    ref = pack(engine_bench, bench, "baseline", members, ref_outs)
    outs = [tmp_path / "killed" / str(i) for i in range(2)]
    with crash_at_step(15):
        pack(engine_bench, bench, "baseline", members, outs)
    for out in outs:
        state = torch.load(out / CHECKPOINT_NAME, weights_only=True)
        assert state["step"] == 10 and state["finished"] is False
        assert not (out / "metrics.json").exists()
    resumed = pack(engine_bench, bench, "baseline", members, outs)
    for out, ref_out, m, r in zip(outs, ref_outs, resumed, ref):
        assert m["resumed_from_step"] == 10 and m["packed_with"] == 2
        assert m["final_val_loss"] == r["final_val_loss"]  # on CPU the resumed pack is exact
        assert step_losses(out) == step_losses(ref_out)
        assert [row["loss"] for row in read_csv(out / "history.csv")] == \
            [row["loss"] for row in read_csv(ref_out / "history.csv")]
    # finished: a rerun reports the metrics without training
    monkeypatch.setattr(loop, "build_member", None)
    again = pack(engine_bench, bench, "baseline", members, outs)
    assert [a["finished_at"] for a in again] == [m["finished_at"] for m in resumed]


def test_a_separate_run_resumes_a_pack_members_checkpoint(engine_bench, bench, separate, tmp_path):
    """A member's mid-run checkpoint is a separate run's: a K = 1 run resumes it."""
    lrs = [1e-3, 1e-2]
    outs = [tmp_path / str(lr) for lr in lrs]
    with crash_at_step(15):
        pack(engine_bench, bench, "baseline", [(lr, 0) for lr in lrs], outs)
    (resumed,) = train([resolve(bench, lr=lrs[1])], [outs[1]], engine_bench.data_dir, progress=False)
    assert resumed["resumed_from_step"] == 10 and resumed["packed_with"] == 1
    single_out, single = separate("baseline", lrs[1])
    assert resumed["final_val_loss"] == pytest.approx(single["final_val_loss"], rel=RTOL)
    assert_same_losses(outs[1], single_out)


def test_members_at_different_steps_resume_as_separate_ensembles(engine_bench, bench, separate, tmp_path, monkeypatch):
    """One run stopped at step 10, one never started, one finished: the first two train as two
    ensembles (one resumed, one fresh), the finished one only reports."""
    outs = [tmp_path / name for name in ("resumed", "fresh", "done")]
    with crash_at_step(15):
        pack(engine_bench, bench, "baseline", [(1e-3, 0)], [outs[0]])
    pack(engine_bench, bench, "baseline", [(1e-2, 1)], [outs[2]])
    groups = []
    real = loop.EnsembleRun.__init__
    monkeypatch.setattr(loop.EnsembleRun, "__init__",
                        lambda self, members, *a, **k: groups.append([m.resume_step for m in members])
                        or real(self, members, *a, **k))
    members = [(1e-3, 0), (3e-3, 0), (1e-2, 1)]
    metrics = pack(engine_bench, bench, "baseline", members, outs)
    assert sorted(groups) == [[0], [10]]
    assert [m["resumed_from_step"] for m in metrics] == [10, None, None]
    for (lr, seed), out, m in zip(members, outs, metrics):
        single_out, single = separate("baseline", lr, seed)
        assert m["final_val_loss"] == pytest.approx(single["final_val_loss"], rel=RTOL)
        assert_same_losses(out, single_out)
