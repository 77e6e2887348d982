"""Probes (stabench.probes) on a two-member ensemble: gradient RMS, the update rule's update
RMS and Adam's second moment, attention and output logits, each per member against a hand
computation; run_probes' rows and the families the report draws from; the engine's probes as
one explicit list whose names are unique (a second registration of a name raises naming both);
and the loss spike count (stabench.spikes) on per-step losses."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stabench.contract import Context, Probe, ProbeFamily
from stabench.ensemble import Ensemble
from stabench.model import GPT
from stabench import curvature
from stabench.probes import ENGINE_PROBES, PROBES, ProbeNameError, all_probes, families, register_probe, run_probes
from stabench.spikes import count_loss_spikes, loss_spikes, spike_steps
from stabench.update import AdamW, Optimizer, OptimizerView

B1, B2 = 0.9, 0.95
K = 2
MATRICES = {"tok_emb.weight", "pos_emb.weight", "head.weight"} | {
    f"blocks.0.{s}.weight" for s in ("attn.q", "attn.k", "attn.v", "attn.out", "mlp.up", "mlp.down")}
LR = torch.tensor([1e-3, 3e-3])
CONFIG = {"lr": 1e-3, "optimizer": {"betas": [B1, B2], "eps": 1e-8, "weight_decay": 0.1, "decay_mode": "coupled"},
          "probes": {"curvature_every": 0}}


def tiny_ensemble() -> Ensemble:
    members = []
    for seed in range(K):
        torch.manual_seed(seed)
        members.append(GPT(vocab_size=64, seq_len=8, d_model=16, n_layers=1, n_heads=2))
    return Ensemble(members)


def make_optimizer(ensemble: Ensemble, rule=None) -> Optimizer:
    """Matrices with eps 1e-8, the rest (norm gains) with eps 1e-2, so eps matters there."""
    options = {n: {"eps": 1e-2} for n in ensemble.names if n not in MATRICES}
    configs = [{**CONFIG, "lr": float(lr)} for lr in LR]
    return Optimizer(ensemble, rule or AdamW(), configs, [options] * K)


def set_grads(ensemble: Ensemble, seed: int) -> dict[str, torch.Tensor]:
    """Random gradients (K, ...) of size ~1e-2 (the eps of the second group)."""
    g = torch.Generator().manual_seed(seed)
    grad = torch.randn(ensemble.grad.shape, generator=g) * 1e-2
    ensemble.grad.copy_(grad)
    return {n: ensemble.view(grad, n).clone() for n in ensemble.names}


def context(ensemble, optimizer, step=2, **kw) -> Context:
    logits = [torch.zeros(1, 8, 64) for _ in range(K)]
    return Context(step=step, tokens=0, config=CONFIG, model=ensemble.model, peak_lrs=tuple(LR.tolist()),
                   seeds=tuple(range(K)), lr=LR, loss=torch.tensor([4.0, 5.0]), grad_norm=torch.tensor([1.0, 2.0]),
                   optimizer=OptimizerView(optimizer, LR) if optimizer else None, cache={"member_logits": logits},
                   targets=torch.zeros(1, 1, 8, dtype=torch.long), **kw)


@pytest.fixture
def stepped():
    """A tiny two-member ensemble after two AdamW steps with known gradients g1, g2; the
    ensemble's gradients hold g2."""
    ensemble = tiny_ensemble()
    optimizer = make_optimizer(ensemble)
    g1 = set_grads(ensemble, 1)
    optimizer.step(LR)
    g2 = set_grads(ensemble, 2)
    optimizer.step(LR)
    return ensemble, optimizer, g1, g2


def rms(t: torch.Tensor) -> float:
    return t.double().pow(2).mean().sqrt().item()


def test_grad_rms_per_matrix_and_member(stepped):
    ensemble, optimizer, _, g2 = stepped
    row = PROBES["grad_rms"].fn(context(ensemble, optimizer))
    per_layer = {k.removeprefix("grad_rms/"): v for k, v in row.items() if k.startswith("grad_rms/")}
    assert set(per_layer) == MATRICES  # LayerNorm gains are not matrices
    for name, value in per_layer.items():
        assert value.shape == (K,)
        for k in range(K):
            assert value[k].item() == pytest.approx(rms(g2[name][k]), rel=1e-5)
    for k in range(K):
        want = sum(rms(g2[n][k]) for n in MATRICES) / len(MATRICES)
        assert row["grad_rms_mean"][k].item() == pytest.approx(want, rel=1e-5)


def test_grad_rms_skips_locked_parameters(stepped):
    ensemble, optimizer, *_ = stepped
    ensemble.params["head.weight"].requires_grad_(False)
    row = PROBES["grad_rms"].fn(context(ensemble, optimizer))
    assert "grad_rms/head.weight" not in row and "grad_rms/blocks.0.mlp.up.weight" in row
    for p in ensemble.params.values():
        p.requires_grad_(False)
    assert PROBES["grad_rms"].fn(context(ensemble, optimizer)) == {}


def manual_adam(g1, g2, eps):
    """Adam's unscaled update after steps 1 and 2, with bias correction, in float64."""
    g1, g2 = g1.double(), g2.double()
    m = B1 * (1 - B1) * g1 + (1 - B1) * g2
    v = B2 * (1 - B2) * g1 ** 2 + (1 - B2) * g2 ** 2
    m_hat, v_hat = m / (1 - B1 ** 2), v / (1 - B2 ** 2)
    return m_hat / (v_hat.sqrt() + eps), v


def test_update_rms_matches_manual_adam(stepped):
    ensemble, optimizer, g1, g2 = stepped
    row = PROBES["update_rms"].fn(context(ensemble, optimizer))
    per_layer = {k.removeprefix("update_rms/"): v for k, v in row.items() if k.startswith("update_rms/")}
    assert set(per_layer) == MATRICES
    for k in range(K):
        want = {n: rms(manual_adam(g1[n][k], g2[n][k], 1e-8)[0]) for n in MATRICES}
        for name in MATRICES:
            assert per_layer[name][k].item() == pytest.approx(want[name], rel=1e-5)
            not_one_step = rms(g2[name][k] / (g2[name][k].abs() + 1e-8))
            assert per_layer[name][k].item() != pytest.approx(not_one_step, rel=1e-3)
        assert row["update_rms_mean"][k].item() == pytest.approx(sum(want.values()) / len(want), rel=1e-5)


def test_update_rms_uses_each_elements_eps(stepped):
    ensemble, optimizer, g1, g2 = stepped
    optimizer.eps = torch.full_like(optimizer.eps, 1e-2) if isinstance(optimizer.eps, torch.Tensor) else 1e-2
    row = PROBES["update_rms"].fn(context(ensemble, optimizer))
    name = "blocks.0.attn.v.weight"
    for k in range(K):
        want = rms(manual_adam(g1[name][k], g2[name][k], 1e-2)[0])
        assert row[f"update_rms/{name}"][k].item() == pytest.approx(want, rel=1e-5)
        assert want < 0.7 * rms(manual_adam(g1[name][k], g2[name][k], 1e-8)[0])


def test_adam_second_moment_max_and_norm(stepped):
    ensemble, optimizer, g1, g2 = stepped
    row = PROBES["adam_second_moment"].fn(context(ensemble, optimizer))
    for k in range(K):
        vs = [manual_adam(g1[n][k], g2[n][k], 0.0)[1] for n in ensemble.names]  # every parameter
        assert row["adam_v_max"][k].item() == pytest.approx(max(v.max().item() for v in vs), rel=1e-5)
        assert row["adam_v_norm"][k].item() == pytest.approx(math.sqrt(sum(v.pow(2).sum().item() for v in vs)),
                                                             rel=1e-5)


def test_run_probes_returns_a_row_of_floats_per_member(stepped):
    ensemble, optimizer, *_ = stepped
    ctx = context(ensemble, optimizer)
    ctx.cache["attn_logit_max"] = torch.tensor([[3.0, 5.0]])  # (layers, K) from the step's forward
    rows, owner = run_probes(ctx, all_probes({}))
    assert len(rows) == K
    for k, row in enumerate(rows):
        assert row["step"] == 2 and row["tokens"] == 0
        for key in ("grad_rms_mean", "update_rms_mean", "adam_v_max", "adam_v_norm", "loss", "lr", "grad_norm",
                    "grad_rms/blocks.0.attn.q.weight", "update_rms/head.weight", "log_z_mean", "attn_logit_max"):
            assert isinstance(row[key], float) and math.isfinite(row[key]), key
        assert row["lr"] == pytest.approx(float(LR[k])) and row["loss"] == [4.0, 5.0][k]
        assert row["attn_logit_max_l0"] == row["attn_logit_max"] == [3.0, 5.0][k]
        assert row["log_z_mean"] == pytest.approx(math.log(64))  # zero logits: log Z = log V
    assert owner["grad_norm"] == "train" and owner["adam_v_max"] == "adam_second_moment"
    assert "lambda_max" not in rows[0]  # curvature is off (curvature_every 0)


def test_scalar_probe_values_go_to_every_member(stepped):
    ensemble, optimizer, *_ = stepped
    extra = {"const": Probe(lambda ctx: {"const": 7.0, "zero_dim": torch.tensor(2.5)})}
    rows, owner = run_probes(context(ensemble, optimizer), extra)
    assert [r["const"] for r in rows] == [7.0, 7.0] and [r["zero_dim"] for r in rows] == [2.5, 2.5]
    assert owner == {"const": "const", "zero_dim": "const"}


def test_families_come_from_the_declarations(stepped):
    ensemble, optimizer, *_ = stepped
    extra = {"mine": Probe(lambda ctx: {"a": 1.0, "b": 2.0}, ProbeFamily("my family", log_y=True, headline="a",
                                                                           threshold=3.0)),
             "plain": Probe(lambda ctx: {"c": 1.0})}
    probes = all_probes(extra)
    _, owner = run_probes(context(ensemble, optimizer), probes)
    fam = families(probes, owner)
    assert fam["mine"] == {"title": "my family", "log_y": True, "headline": "a", "threshold": 3.0, "columns": ["a", "b"]}
    assert "plain" not in fam and fam["train"]["columns"] == ["loss", "lr", "grad_norm"]
    assert fam["grad_rms"]["headline"] == "grad_rms_mean"
    assert "curvature" not in fam  # off: it wrote no column
    with pytest.raises(ValueError, match="taken by the engine"):
        all_probes({"grad_rms": Probe(lambda ctx: {})})


# ---- one explicit list, unique names ----------------------------------------------------------

def test_the_engine_probes_are_the_one_explicit_list():
    assert list(PROBES) == [name for name, _, _ in ENGINE_PROBES]
    for name, fn, family in ENGINE_PROBES:
        assert PROBES[name].fn is fn and PROBES[name].family == family
    assert PROBES["curvature"].fn is curvature.curvature_probe and PROBES["curvature"].family is curvature.FAMILY


def test_registering_a_taken_name_raises_naming_both_places():
    before = dict(PROBES)

    def my_grad_rms(ctx):
        return {}

    with pytest.raises(ProbeNameError) as err:
        register_probe("grad_rms")(my_grad_rms)
    message = str(err.value)
    assert "\n" not in message and "'grad_rms'" in message
    assert "test_probes.test_registering_a_taken_name_raises_naming_both_places.<locals>.my_grad_rms" in message
    assert "stabench.probes._grad_rms" in message
    with pytest.raises(ProbeNameError, match="stabench.curvature.curvature_probe"):
        register_probe("curvature")(my_grad_rms)
    assert PROBES == before
    register_probe("curvature", curvature.FAMILY)(curvature.curvature_probe)  # the same function again: no clash
    assert PROBES == before


def test_an_extra_probe_under_an_engine_name_raises_naming_both():
    def my_probe(ctx):
        return {}

    with pytest.raises(ProbeNameError, match=r"probe 'grad_rms' of .*my_probe is taken by the engine's probe "
                                             r"stabench\.probes\._grad_rms"):
        all_probes({"grad_rms": Probe(my_probe)})


@pytest.mark.parametrize("first", ["stabench.probes", "stabench.curvature", "stabench.loop"])
def test_probe_modules_import_alone_in_any_order(first):
    """No import cycle: each module imports in a fresh process, and importing curvature again
    (loop.py imports it too) registers nothing twice."""
    code = (f"import {first}, importlib, stabench.curvature, stabench.probes as p; "
            "importlib.reload(stabench.curvature); assert list(p.PROBES) == [n for n, _, _ in p.ENGINE_PROBES]; "
            "assert p.PROBES['curvature'].fn.__module__ == 'stabench.curvature'")
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr


class NoState:
    """An update rule without a direction or a second moment."""

    state_names = ("exp_avg",)

    def update(self, param, grad, state, h):
        state["exp_avg"].lerp_(grad, 1 - h.betas[0])
        param.sub_(h.lr * state["exp_avg"])

    def direction(self, state, h):
        return None

    def preconditioner(self, state, h):
        return None


def test_rules_without_direction_or_second_moment_are_skipped():
    ensemble = tiny_ensemble()
    optimizer = make_optimizer(ensemble, NoState())
    set_grads(ensemble, 1)
    optimizer.step(LR)
    ctx = context(ensemble, optimizer, step=1)
    assert PROBES["update_rms"].fn(ctx) == {}
    assert PROBES["adam_second_moment"].fn(ctx) == {}
    assert "grad_rms_mean" in PROBES["grad_rms"].fn(ctx)
    # before the first step a rule has no state: no columns, no error
    fresh = tiny_ensemble()
    ctx = context(fresh, make_optimizer(fresh))
    assert PROBES["update_rms"].fn(ctx) == {} and PROBES["adam_second_moment"].fn(ctx) == {}
    assert PROBES["update_rms"].fn(context(fresh, None)) == {}


def test_output_logits_probe_per_member():
    ensemble = tiny_ensemble()
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(2, 8, 64, generator=g) * (k + 1) for k in range(K)]
    ctx = Context(step=1, tokens=0, config=CONFIG, model=ensemble.model, peak_lrs=(1e-3, 3e-3), seeds=(0, 1),
                  cache={"member_logits": logits}, targets=torch.zeros(1, 2, 8, dtype=torch.long))
    row = PROBES["output_logits"].fn(ctx)
    for k, x in enumerate(logits):
        log_z = torch.logsumexp(x, -1)
        assert row["log_z_mean"][k].item() == pytest.approx(log_z.mean().item(), rel=1e-5)
        assert row["log_z_std"][k].item() == pytest.approx(log_z.std().item(), rel=1e-5)
        assert row["logit_spread"][k].item() == pytest.approx(x.std(dim=-1).mean().item(), rel=1e-5)
    assert PROBES["attention_logits"].fn(ctx) == {}  # no capture in this forward


# ---- loss spikes --------------------------------------------------------------------------

LOSSES = [5.0, 4.0, 4.0, 8.0, 4.0, float("nan"), 4.0, 6.5]


def test_count_loss_spikes_by_hand():
    # window 2, factor 1.5: 8 > 1.5 * mean(4, 4) = 6; nan always; 6.5 > 1.5 * mean(4, 4) = 6
    # (the nan is not in the window: the two finite losses before 6.5 are 4 and 4)
    assert spike_steps(LOSSES, window=2, factor=1.5) == [3, 5, 7]
    assert count_loss_spikes(LOSSES, window=2, factor=1.5) == 3
    # window 4: 8 > 1.5 * mean(5, 4, 4) = 6.5 yes; 6.5 > 1.5 * mean(4, 8, 4, 4) = 7.5 no
    assert spike_steps(LOSSES, window=4, factor=1.5) == [3, 5]
    # a higher factor: only the nan
    assert count_loss_spikes(LOSSES, window=2, factor=2.5) == 1
    assert spike_steps(LOSSES, 2, 1.5, steps=[10 * (i + 1) for i in range(8)]) == [40, 60, 80]


def test_count_loss_spikes_edges():
    assert count_loss_spikes([], 3, 1.1) == 0
    assert count_loss_spikes([100.0], 3, 1.1) == 0  # nothing before it
    assert count_loss_spikes([float("inf"), 3.0, 3.0], 3, 1.1) == 1
    assert count_loss_spikes([3.0, 2.0, 1.0], 1, 1.1) == 0  # falling loss: no spikes
    with pytest.raises(ValueError):
        count_loss_spikes([1.0], 0, 1.1)
    with pytest.raises(ValueError):
        spike_steps([1.0, 2.0], 2, 1.5, steps=[1])


def test_loss_spikes_are_named_by_step():
    steps = list(range(1, len(LOSSES) + 1))
    got = loss_spikes(steps, LOSSES, {"spike_window": 2, "spike_factor": 1.5})
    assert got == {"loss_spikes": 3, "loss_spike_steps": [4, 6, 8]}
