"""Probes of gradient RMS, Adam's update RMS and second moment (stabench.probes), and the loss
spike count (stabench.spikes), each against a hand computation on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from stabench.model import GPT
from stabench.probes import PROBES, ProbeContext, run_probes
from stabench.spikes import count_loss_spikes, history_spikes, spike_steps

B1, B2 = 0.9, 0.95
MATRICES = {"tok_emb.weight", "pos_emb.weight", "head.weight"} | {
    f"blocks.0.{s}.weight" for s in ("attn.q", "attn.k", "attn.v", "attn.out", "mlp.up", "mlp.down")}


def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(vocab_size=64, seq_len=8, d_model=16, n_layers=1, n_heads=2)


def make_optimizer(model: GPT, impl: str) -> torch.optim.Optimizer:
    """AdamW with two groups: matrices (eps 1e-8) and the rest (eps 1e-2, so eps matters)."""
    named = dict(model.named_parameters())
    groups = [{"params": [named[n] for n in sorted(MATRICES)], "eps": 1e-8},
              {"params": [p for n, p in named.items() if n not in MATRICES], "eps": 1e-2}]
    kwargs = {"fused": True} if impl == "fused" else {"foreach": False}
    try:
        return torch.optim.AdamW(groups, lr=1e-3, betas=(B1, B2), weight_decay=0.1, **kwargs)
    except (RuntimeError, ValueError) as exc:  # pragma: no cover - fused AdamW not on this build
        pytest.skip(f"AdamW {impl}: {exc}")


def set_grads(model: GPT, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    grads = {}
    for name, p in model.named_parameters():
        grads[name] = torch.randn(p.shape, generator=g) * 1e-2  # ~eps of the second group
        p.grad = grads[name].clone()
    return grads


def context(model, optimizer, step=2) -> ProbeContext:
    logits = torch.zeros(1, 8, 64)
    return ProbeContext(step=step, tokens=0, lr=1e-3, loss=torch.tensor(4.0), grad_norm=None, model=model,
                        optimizer=optimizer, logits=logits, config={})


@pytest.fixture(params=["fused", "for-loop"])
def stepped(request):
    """A tiny model after two AdamW steps with known gradients g1, g2; p.grad holds g2."""
    model = tiny_model()
    optimizer = make_optimizer(model, request.param)
    g1 = set_grads(model, 1)
    optimizer.step()
    g2 = set_grads(model, 2)
    optimizer.step()
    return model, optimizer, g1, g2


def rms(t: torch.Tensor) -> float:
    return t.double().pow(2).mean().sqrt().item()


def test_grad_rms_per_matrix(stepped):
    model, optimizer, _, g2 = stepped
    row = PROBES["grad_rms"](context(model, optimizer))
    per_layer = {k.removeprefix("grad_rms/"): v.item() for k, v in row.items() if k.startswith("grad_rms/")}
    assert set(per_layer) == MATRICES  # LayerNorm gains are not matrices
    for name, value in per_layer.items():
        assert value == pytest.approx(rms(g2[name]), rel=1e-5)
    assert row["grad_rms_mean"].item() == pytest.approx(sum(rms(g2[n]) for n in MATRICES) / len(MATRICES), rel=1e-5)


def test_grad_rms_skips_missing_grads(stepped):
    model, optimizer, *_ = stepped
    model.head.weight.grad = None
    row = PROBES["grad_rms"](context(model, optimizer))
    assert "grad_rms/head.weight" not in row and "grad_rms/blocks.0.mlp.up.weight" in row
    for p in model.parameters():
        p.grad = None
    assert PROBES["grad_rms"](context(model, optimizer)) == {}


def manual_adam(g1, g2, eps):
    """Adam's unscaled update after steps 1 and 2, with bias correction, in float64."""
    g1, g2 = g1.double(), g2.double()
    m = B1 * (1 - B1) * g1 + (1 - B1) * g2
    v = B2 * (1 - B2) * g1 ** 2 + (1 - B2) * g2 ** 2
    m_hat, v_hat = m / (1 - B1 ** 2), v / (1 - B2 ** 2)
    return m_hat / (v_hat.sqrt() + eps), v


def test_update_rms_matches_manual_adam(stepped):
    model, optimizer, g1, g2 = stepped
    row = PROBES["update_rms"](context(model, optimizer))
    per_layer = {k.removeprefix("update_rms/"): v.item() for k, v in row.items() if k.startswith("update_rms/")}
    assert set(per_layer) == MATRICES
    want = {n: rms(manual_adam(g1[n], g2[n], 1e-8)[0]) for n in MATRICES}
    for name in MATRICES:
        assert per_layer[name] == pytest.approx(want[name], rel=1e-5)
        assert per_layer[name] != pytest.approx(rms(g2[name] / (g2[name].abs() + 1e-8)), rel=1e-3)  # not 1 step
    assert row["update_rms_mean"].item() == pytest.approx(sum(want.values()) / len(want), rel=1e-5)


def test_update_rms_uses_group_eps(stepped):
    model, optimizer, g1, g2 = stepped
    for group in optimizer.param_groups:
        group["eps"] = 1e-2
    row = PROBES["update_rms"](context(model, optimizer))
    name = "blocks.0.attn.v.weight"
    want = rms(manual_adam(g1[name], g2[name], 1e-2)[0])
    assert row[f"update_rms/{name}"].item() == pytest.approx(want, rel=1e-5)
    assert want < 0.7 * rms(manual_adam(g1[name], g2[name], 1e-8)[0])


def test_adam_second_moment_max_and_norm(stepped):
    model, optimizer, g1, g2 = stepped
    vs = [manual_adam(g1[n], g2[n], 0.0)[1] for n, _ in model.named_parameters()]  # every parameter
    row = PROBES["adam_second_moment"](context(model, optimizer))
    assert row["adam_v_max"].item() == pytest.approx(max(v.max().item() for v in vs), rel=1e-5)
    assert row["adam_v_norm"].item() == pytest.approx(math.sqrt(sum(v.pow(2).sum().item() for v in vs)), rel=1e-5)


def test_run_probes_returns_floats(stepped):
    model, optimizer, *_ = stepped
    row = run_probes(context(model, optimizer))
    for key in ("grad_rms_mean", "update_rms_mean", "adam_v_max", "adam_v_norm",
                "grad_rms/blocks.0.attn.q.weight", "update_rms/head.weight"):
        assert isinstance(row[key], float) and math.isfinite(row[key]) and row[key] > 0, key


class Wrapped:
    """Like Accelerate's AcceleratedOptimizer: the real optimizer is ``.optimizer``."""

    def __init__(self, optimizer):
        self.optimizer = optimizer


def test_probes_see_through_a_wrapper(stepped):
    model, optimizer, *_ = stepped
    direct = PROBES["update_rms"](context(model, optimizer))
    wrapped = PROBES["update_rms"](context(model, Wrapped(optimizer)))
    assert direct.keys() == wrapped.keys() and len(direct) == len(MATRICES) + 1
    assert "adam_v_max" in PROBES["adam_second_moment"](context(model, Wrapped(optimizer)))


def test_other_optimizers_are_skipped():
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    set_grads(model, 1)
    optimizer.step()
    ctx = context(model, optimizer, step=1)
    assert PROBES["update_rms"](ctx) == {}
    assert PROBES["adam_second_moment"](ctx) == {}
    assert "grad_rms_mean" in PROBES["grad_rms"](ctx)
    # before the first step Adam has no state: no columns, no error
    fresh = torch.optim.AdamW(model.parameters())
    assert PROBES["update_rms"](context(model, fresh)) == {}
    assert PROBES["adam_second_moment"](context(model, fresh)) == {}


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


def test_history_spikes_reads_loss_rows():
    history = [{"step": 0, "val_loss": 6.0}] + [{"step": 10 * (i + 1), "loss": x} for i, x in enumerate(LOSSES)]
    got = history_spikes(history, {"spike_window": 2, "spike_factor": 1.5})
    assert got == {"loss_spikes": 3, "loss_spike_steps": [40, 60, 80]}
