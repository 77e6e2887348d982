"""stabench.optim: parameter groups, independent vs coupled weight decay, the LR schedule."""

from __future__ import annotations

import math

import pytest
import torch

from stabench.config import run_config
from stabench.methods import MethodError, load_stack
from stabench.model import GPT, parameter_roles
from stabench.optim import build_adamw, build_optimizer, learning_rate, param_groups, warmup_cosine

PEAK, WD = 0.01, 1e-4


def make(engine_bench, decay_mode="independent", use="baseline", seed=0):
    bench = engine_bench.load([f"optimizer.decay_mode={decay_mode}", f"optimizer.weight_decay={WD}"])
    config = run_config(bench, method="baseline", size="tiny", lr=PEAK, seed=seed)
    config["model"].update(vocab_size=64, seq_len=config["train"]["seq_len"])
    torch.manual_seed(seed)
    model = GPT(**config["model"])
    stack = load_stack(use)
    for hook, args in stack.composed("transform_model"):
        hook(model, config, args)
    return config, model, stack


def _group_of(groups, name):
    (group,) = [g for g in groups if name in g["names"]]
    return group


@pytest.mark.parametrize("mode, matrix_wd", [("independent", WD / PEAK), ("coupled", WD)])
def test_group_weight_decay(engine_bench, mode, matrix_wd):
    config, model, stack = make(engine_bench, mode, use="qk_layernorm")
    groups = param_groups(model, config, stack)
    roles = parameter_roles(model)
    names = [n for g in groups for n in g["names"]]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())  # each once
    for name, role in roles.items():
        group = _group_of(groups, name)
        assert group["lr_mult"] == 1.0
        assert group["eps"] == config["optimizer"]["eps"]
        if role in ("embedding", "hidden", "readout"):
            assert group["weight_decay"] == pytest.approx(matrix_wd, rel=1e-12), name
        else:
            assert role == "norm"
            assert group["weight_decay"] == 0.0, name
    assert "blocks.0.attn.q_norm.weight" in roles  # qk-layernorm gains are not decayed


def _one_zero_grad_step(model, config, stack, lr_t):
    optimizer = build_optimizer(model, config, stack, torch.device("cpu"))
    for group in optimizer.param_groups:
        group["lr"] = lr_t * group["lr_mult"]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    return before, dict(model.named_parameters())


@pytest.mark.parametrize("mode", ["independent", "coupled"])
def test_zero_gradient_step_is_pure_decay(engine_bench, mode):
    config, model, stack = make(engine_bench, mode)
    lr_t = 0.3 * PEAK  # somewhere on the schedule, not the peak
    before, after = _one_zero_grad_step(model, config, stack, lr_t)
    factor = 1 - (lr_t * WD / PEAK if mode == "independent" else lr_t * WD)
    roles = parameter_roles(model)
    for name, p in after.items():
        expected = before[name] * (factor if roles[name] != "norm" else 1.0)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=0)
    w0, w1 = before["blocks.0.mlp.up.weight"], after["blocks.0.mlp.up.weight"].detach()
    ratio = (w1.double() / w0.double())[w0.abs() > 1e-3]
    assert ratio.mean().item() == pytest.approx(factor, abs=1e-7)


def test_independent_decay_does_not_depend_on_peak_lr(engine_bench):
    """p -= (lr_t / peak) * wd * p: at the same fraction of the peak, two peaks decay alike."""
    shrink = []
    for peak in (1e-3, 1e-1):
        config, model, stack = make(engine_bench)
        config["lr"] = peak
        before, after = _one_zero_grad_step(model, config, stack, 0.5 * peak)
        w = "blocks.1.attn.v.weight"
        shrink.append((after[w].detach().double() / before[w].double()).median().item())
    assert shrink[0] == pytest.approx(shrink[1], abs=1e-7)  # float32 weights
    assert shrink[0] == pytest.approx(1 - 0.5 * WD, abs=1e-7)


def test_lr_mult_composes_and_keeps_independent_decay(engine_bench, tmp_methods):
    src = '''"""Scale hidden LRs."""
VERSION = "1"
ARGS = {{"mult": {mult}}}
def param_options(model, config, args):
    return {{n: {{"lr_mult": args["mult"]}} for n, _ in model.named_parameters() if n.endswith("mlp.up.weight")}}
'''
    a, b = tmp_methods(src.format(mult=2.0), "lrm"), tmp_methods(src.format(mult=3.0), "lrm")
    config, model, _ = make(engine_bench)
    stack = load_stack(f"{a}+{b}")
    groups = param_groups(model, config, stack)
    up = _group_of(groups, "blocks.0.mlp.up.weight")
    assert up["lr_mult"] == pytest.approx(6.0)
    assert up["weight_decay"] == pytest.approx(WD / (PEAK * 6.0))
    assert _group_of(groups, "blocks.0.mlp.down.weight")["lr_mult"] == 1.0
    lr_t = 0.5 * PEAK
    before, after = _one_zero_grad_step(model, config, stack, lr_t)
    name = "blocks.0.mlp.up.weight"
    torch.testing.assert_close(after[name].detach(), before[name] * (1 - lr_t * WD / PEAK), rtol=1e-6, atol=0)


def test_param_options_conflict_and_unknown_parameter(engine_bench, tmp_methods):
    src = '''"""Set eps."""
VERSION = "1"
def param_options(model, config, args):
    return {{"{param}": {{"eps": {eps}}}}}
'''
    a = tmp_methods(src.format(param="head.weight", eps=1e-6), "epsa")
    b = tmp_methods(src.format(param="head.weight", eps=1e-15), "epsb")
    config, model, _ = make(engine_bench)
    with pytest.raises(MethodError, match="eps"):
        param_groups(model, config, load_stack(f"{a}+{b}"))
    assert _group_of(param_groups(model, config, load_stack(a)), "head.weight")["eps"] == 1e-6
    c = tmp_methods(src.format(param="head.nope", eps=1e-6), "epsc")
    with pytest.raises(MethodError, match="head.nope"):
        param_groups(model, config, load_stack(c))


def test_untrainable_parameters_stay_out_of_the_optimizer(engine_bench, tmp_methods):
    name = tmp_methods('''"""Freeze the embedding."""
VERSION = "1"
def param_options(model, config, args):
    return {"pos_emb.weight": {"trainable": False}}
''', "freeze")
    config, model, _ = make(engine_bench)
    groups = param_groups(model, config, load_stack(name))
    assert "pos_emb.weight" not in [n for g in groups for n in g["names"]]
    assert model.pos_emb.weight.requires_grad is False


def test_build_optimizer_hook_replaces_adamw(engine_bench, tmp_methods):
    name = tmp_methods('''"""SGD instead of AdamW."""
VERSION = "1"
import torch
def build_optimizer(param_groups, config, args):
    return torch.optim.SGD(param_groups, lr=config["lr"])
''', "sgd")
    config, model, _ = make(engine_bench)
    assert isinstance(build_optimizer(model, config, load_stack(name), torch.device("cpu")), torch.optim.SGD)
    adamw = build_optimizer(model, config, load_stack("baseline"), torch.device("cpu"))
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.defaults["betas"] == tuple(config["optimizer"]["betas"]) == (0.9, 0.95)
    assert adamw.defaults["eps"] == 1e-8


def test_build_adamw_matches_config(engine_bench):
    config, model, stack = make(engine_bench)
    opt = build_adamw(param_groups(model, config, stack), config, torch.device("cpu"))
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


# ---- schedule -----------------------------------------------------------------------------

@pytest.mark.parametrize("warmup, total, peak, min_lr", [(10, 100, 1e-2, 1e-5), (5, 40, 0.3, 1e-5),
                                                          (0, 50, 1e-3, 0.0)])
def test_warmup_cosine(warmup, total, peak, min_lr):
    lrs = [warmup_cosine(s, warmup, total, peak, min_lr) for s in range(total + 1)]
    if warmup:
        assert lrs[0] == 0.0
        assert all(b > a for a, b in zip(lrs[:warmup], lrs[1:warmup + 1]))  # linear rise
        assert lrs[warmup // 2] == pytest.approx(peak * (warmup // 2) / warmup)
    assert lrs[warmup] == pytest.approx(peak)
    assert max(lrs) == pytest.approx(peak)
    assert lrs[total] == pytest.approx(min_lr, abs=1e-15)
    after = lrs[warmup:]
    assert all(b <= a for a, b in zip(after, after[1:]))
    assert all(b < a for a, b in zip(after, after[1:]))  # strictly, since min_lr < peak
    mid = warmup + (total - warmup) / 2
    assert warmup_cosine(mid, warmup, total, peak, min_lr) == pytest.approx((peak + min_lr) / 2)
    assert warmup_cosine(total + 10, warmup, total, peak, min_lr) == pytest.approx(min_lr, abs=1e-15)


def test_min_lr_never_above_peak():
    lrs = [warmup_cosine(s, 2, 20, 1e-6, 1e-5) for s in range(21)]
    assert max(lrs) <= 1e-6 * (1 + 1e-12)


def test_learning_rate_uses_benchmark_schedule_and_hook(engine_bench, tmp_methods):
    config, _, _ = make(engine_bench)
    train = config["train"]
    stack = load_stack("baseline")
    assert learning_rate(train["warmup_steps"], 0, config, stack) == pytest.approx(PEAK)
    assert learning_rate(train["steps"], 0, config, stack) == pytest.approx(train["min_lr"])
    assert learning_rate(1, 0, config, stack) == pytest.approx(PEAK / train["warmup_steps"])
    name = tmp_methods('''"""Constant half LR."""
VERSION = "1"
def lr_schedule(step, tokens, config, args):
    return 0.5
''', "const")
    assert learning_rate(7, 123, config, load_stack(name)) == pytest.approx(0.5 * PEAK)
    assert not math.isclose(learning_rate(7, 123, config, stack), 0.5 * PEAK)
