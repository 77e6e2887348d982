"""stabench.update and stabench.schedule: the optimizer step written once on stacked member
tensors (per-element LR multiplier, coupled and independent weight decay, eps, trainable flags,
step counts, members leaving, checkpoints) and the LR schedule. Checked against torch's AdamW
and hand-computed decay factors."""

from __future__ import annotations

import math

import pytest
import torch

from stabench.contract import StepHyper
from stabench.ensemble import Ensemble, build_member
from stabench.methods import MethodError, load_stack, param_options
from stabench.model import parameter_roles
from stabench.runspec import resolve_run
from stabench.schedule import learning_rates, tokens_before, warmup_cosine
from stabench.update import AdamW, Optimizer, OptimizerView

PEAK, WD = 0.01, 1e-4


def resolved(engine_bench, decay_mode="independent", use="baseline", lr=PEAK, seed=0, overrides=()):
    bench = engine_bench.load([f"optimizer.decay_mode={decay_mode}", f"optimizer.weight_decay={WD}", *overrides])
    return resolve_run(bench, method=use, size="tiny", lr=lr, seed=seed)


def make(engine_bench, decay_mode="independent", use="baseline", lrs=(PEAK,), seeds=None, rule=None, overrides=()):
    """(ensemble, optimizer, configs) of members with peak LRs ``lrs``, as the loop builds them."""
    seeds = seeds or [0] * len(lrs)
    runs = [resolved(engine_bench, decay_mode, use, lr, seed, overrides) for lr, seed in zip(lrs, seeds)]
    stack = runs[0].stack
    models = [build_member(r.config, stack) for r in runs]
    options = [param_options(m, r.config, stack) for m, r in zip(models, runs)]
    ensemble = Ensemble(models)
    optimizer = Optimizer(ensemble, rule or AdamW(), [r.config for r in runs], options)
    return ensemble, optimizer, [r.config for r in runs]


def value(optimizer: Optimizer, attr: str, name: str, member: int = 0) -> float:
    """The value of a per-element option on one parameter of a member (uniform over its elements)."""
    option = getattr(optimizer, attr)
    if isinstance(option, float):
        return option
    cols = optimizer.ensemble.columns(name)
    distinct = option[min(member, option.shape[0] - 1), cols].unique().tolist()
    assert len(distinct) == 1, (attr, name, distinct)
    return distinct[0]


def snapshot(ensemble: Ensemble) -> dict[str, torch.Tensor]:
    return {n: ensemble.view(ensemble.flat, n).detach().clone() for n in ensemble.names}


def zero_grad_step(ensemble, optimizer, lr_t):
    before = snapshot(ensemble)
    ensemble.zero_grad()
    optimizer.step(torch.as_tensor(lr_t, dtype=torch.float32).reshape(-1))
    return before, snapshot(ensemble)


# ---- per-element options --------------------------------------------------------------------

@pytest.mark.parametrize("mode, matrix_wd", [("independent", WD / PEAK), ("coupled", WD)])
def test_weight_decay_per_element(engine_bench, mode, matrix_wd):
    ensemble, optimizer, configs = make(engine_bench, mode, use="qk_layernorm")
    roles = parameter_roles(ensemble.model)
    assert "blocks.0.attn.q_norm.weight" in roles  # qk-layernorm gains are norms: not decayed
    for name, role in roles.items():
        assert value(optimizer, "lr_mult", name) == 1.0
        assert value(optimizer, "eps", name) == pytest.approx(configs[0]["optimizer"]["eps"])
        wd = value(optimizer, "weight_decay", name)
        if role in ("embedding", "hidden", "readout"):
            assert wd == pytest.approx(matrix_wd, rel=1e-6), name
        else:
            assert role == "norm" and wd == 0.0, name


@pytest.mark.parametrize("mode", ["independent", "coupled"])
def test_zero_gradient_step_is_pure_decay(engine_bench, mode):
    ensemble, optimizer, _ = make(engine_bench, mode)
    lr_t = 0.3 * PEAK  # somewhere on the schedule, not the peak
    before, after = zero_grad_step(ensemble, optimizer, [lr_t])
    factor = 1 - (lr_t * WD / PEAK if mode == "independent" else lr_t * WD)
    roles = parameter_roles(ensemble.model)
    for name, p in after.items():
        expected = before[name] * (factor if roles[name] != "norm" else 1.0)
        torch.testing.assert_close(p, expected, rtol=1e-6, atol=0)
    w0, w1 = before["blocks.0.mlp.up.weight"], after["blocks.0.mlp.up.weight"]
    ratio = (w1.double() / w0.double())[w0.abs() > 1e-3]
    assert ratio.mean().item() == pytest.approx(factor, abs=1e-7)


def test_independent_decay_does_not_depend_on_peak_lr_members_of_one_pack(engine_bench):
    """p -= (lr_t / peak) * wd * p with each member's own peak: at the same fraction of their
    peaks, two members with peaks 100x apart decay alike in one step of one optimizer."""
    peaks = (1e-3, 1e-1)
    ensemble, optimizer, _ = make(engine_bench, lrs=peaks)
    assert not isinstance(optimizer.weight_decay, float) and optimizer.weight_decay.shape[0] == 2
    before, after = zero_grad_step(ensemble, optimizer, [0.5 * p for p in peaks])
    w = "blocks.1.attn.v.weight"
    shrink = [(after[w][k].double() / before[w][k].double()).median().item() for k in range(2)]
    assert shrink[0] == pytest.approx(shrink[1], abs=1e-7)  # float32 weights
    assert shrink[0] == pytest.approx(1 - 0.5 * WD, abs=1e-7)


LR_MULT = '''"""Scale the MLP up projections' LR."""
VERSION = "1"
ARGS = {{"mult": {mult}}}
def param_options(model, config, args):
    return {{n: {{"lr_mult": args["mult"]}} for n, _ in model.named_parameters() if n.endswith("mlp.up.weight")}}
'''


def test_lr_mult_composes_and_keeps_independent_decay(engine_bench, tmp_methods):
    a, b = tmp_methods(LR_MULT.format(mult=2.0), "lrm"), tmp_methods(LR_MULT.format(mult=3.0), "lrm")
    ensemble, optimizer, _ = make(engine_bench, use=f"{a}+{b}")
    up, down = "blocks.0.mlp.up.weight", "blocks.0.mlp.down.weight"
    assert value(optimizer, "lr_mult", up) == pytest.approx(6.0)
    assert value(optimizer, "weight_decay", up) == pytest.approx(WD / (PEAK * 6.0))
    assert value(optimizer, "lr_mult", down) == 1.0
    lr_t = 0.5 * PEAK
    before, after = zero_grad_step(ensemble, optimizer, [lr_t])
    # the step's LR is lr_t * 6 there, the decay still (lr_t / peak) * wd
    torch.testing.assert_close(after[up], before[up] * (1 - lr_t * WD / PEAK), rtol=1e-6, atol=0)
    view = optimizer.param(up, torch.tensor([lr_t]))
    assert float(view.hyper.lr.flatten()[0]) == pytest.approx(6 * lr_t)


EPS = '''"""Set eps."""
VERSION = "1"
def param_options(model, config, args):
    return {{"{param}": {{"eps": {eps}}}}}
'''


def test_param_options_conflict_and_unknown_parameter(engine_bench, tmp_methods):
    a = tmp_methods(EPS.format(param="head.weight", eps=1e-6), "epsa")
    b = tmp_methods(EPS.format(param="head.weight", eps=1e-15), "epsb")
    with pytest.raises(MethodError, match="eps") as err:
        make(engine_bench, use=f"{a}+{b}")
    assert b in str(err.value) and "head.weight" in str(err.value)
    _, optimizer, _ = make(engine_bench, use=a)
    assert value(optimizer, "eps", "head.weight") == pytest.approx(1e-6)
    assert value(optimizer, "eps", "blocks.0.mlp.up.weight") == pytest.approx(1e-8)
    c = tmp_methods(EPS.format(param="head.weigth", eps=1e-6), "epsc")
    with pytest.raises(MethodError) as err:
        make(engine_bench, use=c)
    msg = str(err.value)
    assert "'head.weigth'" in msg and "did you mean 'head.weight'" in msg and c in msg and "\n" not in msg


def test_unknown_param_options_key_is_a_one_line_error(engine_bench, tmp_methods):
    name = tmp_methods('''"""A typo in a key."""
VERSION = "1"
def param_options(model, config, args):
    return {"blocks.0.mlp.up.weight": {"weight_deacy": 0.0}}
''', "typo")
    with pytest.raises(MethodError) as err:
        make(engine_bench, use=name)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"method {name!r}" in msg and "blocks.0.mlp.up.weight" in msg and "'weight_deacy'" in msg
    assert "valid keys: lr_mult, weight_decay, eps, trainable" in msg


def test_untrainable_parameters_stay_out_of_the_update(engine_bench, tmp_methods):
    name = tmp_methods('''"""Freeze the position embedding."""
VERSION = "1"
def param_options(model, config, args):
    return {"pos_emb.weight": {"trainable": False}}
''', "freeze")
    ensemble, optimizer, _ = make(engine_bench, use=name)
    assert ensemble.params["pos_emb.weight"].requires_grad is False
    assert "pos_emb.weight" not in [n for _, names, _ in optimizer.slices() for n in names]
    before = snapshot(ensemble)
    ensemble.grad.normal_()  # even a stray gradient does not move it
    optimizer.step(torch.tensor([PEAK]))
    after = snapshot(ensemble)
    assert torch.equal(after["pos_emb.weight"], before["pos_emb.weight"])
    assert not torch.equal(after["tok_emb.weight"], before["tok_emb.weight"])
    assert optimizer.counts["pos_emb.weight"] == 0 and optimizer.counts["tok_emb.weight"] == 1
    assert "pos_emb.weight" not in OptimizerView(optimizer, torch.tensor([PEAK])).params()


# ---- AdamW against torch.optim.AdamW ------------------------------------------------------------

def test_adamw_matches_torch_adamw_for_every_member(engine_bench, tmp_methods):
    """Two members, their own peak LRs and seeds, lr_mult and eps on some parameters, coupled
    decay: three steps with random gradients equal torch's AdamW with matching groups."""
    lr_eps = tmp_methods('''"""Per-parameter LR and eps."""
VERSION = "1"
def param_options(model, config, args):
    return {"head.weight": {"eps": 1e-3}, "blocks.1.mlp.down.weight": {"lr_mult": 0.25}}
''', "opts")
    lrs, seeds = (1e-3, 3e-2), (0, 1)
    ensemble, optimizer, configs = make(engine_bench, "coupled", use=lr_eps, lrs=lrs, seeds=seeds)
    roles = parameter_roles(ensemble.model)
    refs = []
    for k, config in enumerate(configs):
        params = {n: torch.nn.Parameter(ensemble.view(ensemble.flat, n)[k].detach().clone()) for n in ensemble.names}
        groups = []
        for n, p in params.items():
            groups.append({"params": [p], "lr_mult": 0.25 if n == "blocks.1.mlp.down.weight" else 1.0,
                           "eps": 1e-3 if n == "head.weight" else 1e-8,
                           "weight_decay": WD if roles[n] in ("embedding", "hidden", "readout") else 0.0})
        refs.append((params, torch.optim.AdamW(groups, lr=1.0, betas=(0.9, 0.95), foreach=False)))
    g = torch.Generator().manual_seed(0)
    for step in range(1, 4):
        lr_t = torch.tensor([lr * step / 3 for lr in lrs])
        grad = torch.randn(ensemble.grad.shape, generator=g) * 1e-2
        ensemble.grad.copy_(grad)
        optimizer.step(lr_t)
        for k, (params, ref) in enumerate(refs):
            for n, p in params.items():
                p.grad = ensemble.view(grad, n)[k].clone()
            for group in ref.param_groups:
                group["lr"] = float(lr_t[k]) * group["lr_mult"]
            ref.step()
    for k, (params, _) in enumerate(refs):
        for n, p in params.items():
            torch.testing.assert_close(ensemble.view(ensemble.flat, n)[k], p.detach(), rtol=1e-6, atol=1e-7)


def test_adamw_update_formula_on_stacked_tensors():
    rule = AdamW()
    param = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.3, 0.3]])
    grad = torch.tensor([[0.3, -1e-9, 0.0], [1.0, 2.0, -3.0]])
    state = {s: torch.zeros_like(param) for s in rule.state_names}
    lr = torch.tensor([[0.1], [0.01]])
    h = StepHyper(lr=lr, weight_decay=0.01, eps=1e-8, betas=(0.9, 0.95), step=1)
    want = param * (1 - lr * 0.01)
    m, v = 0.1 * grad, 0.05 * grad ** 2
    want = want - lr * (m / 0.1) / ((v / 0.05).sqrt() + 1e-8)
    rule.update(param, grad, state, h)
    torch.testing.assert_close(param, want)
    torch.testing.assert_close(rule.direction(state, h), (m / 0.1) / ((v / 0.05).sqrt() + 1e-8))
    torch.testing.assert_close(rule.preconditioner(state, h), (v / 0.05).sqrt() + 1e-8)


# ---- a method's own update rule -----------------------------------------------------------------

SIGN_RULE = '''"""Sign descent with momentum, recording every call (a test method)."""
import torch
VERSION = "1"
CALLS = []

class SignRule:
    state_names = ("exp_avg",)

    def update(self, param, grad, state, h):
        CALLS.append((param.shape, h.step, h.lr.flatten()[0].item()))
        state["exp_avg"].lerp_(grad, 1 - h.betas[0])
        param.sub_(h.lr * state["exp_avg"].sign())

    def direction(self, state, h):
        return state["exp_avg"].sign()

    def preconditioner(self, state, h):
        return None

def update_rule(config, args):
    return SignRule()
'''


def test_update_rule_hook_replaces_adamw(engine_bench, tmp_methods, tmp_path, run_training):
    name = tmp_methods(SIGN_RULE, "sign")
    bench = engine_bench.load(["train.steps=3", "train.warmup_steps=1", "train.probe_every=3", "train.eval_every=3"])
    metrics = run_training(tmp_path, benchmark=bench, method=name, lr=1e-2)
    module = load_stack(name).methods[0].module
    n_params = metrics["n_params"]
    # one call per step for the whole model (one slice), step counts 1, 2, 3, the schedule's LR
    assert [c[0] for c in module.CALLS] == [(1, n_params)] * 3
    assert [c[1] for c in module.CALLS] == [1, 2, 3]
    schedule = [warmup_cosine(s, 1, 3, 1e-2, bench["train"]["min_lr"]) for s in (1, 2, 3)]
    assert [c[2] for c in module.CALLS] == pytest.approx(schedule, rel=1e-6)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["optimizer"]["state"]
    assert set(state["head.weight"]) == {"exp_avg"}  # the rule's own state is checkpointed
    assert not metrics["diverged"]


# ---- step counts and slices ----------------------------------------------------------------------

def test_locked_parameters_keep_their_count_and_start_fresh(engine_bench):
    ensemble, optimizer, _ = make(engine_bench)
    block1 = [n for n in ensemble.names if n.startswith("blocks.1.")]
    for n in block1:
        ensemble.params[n].requires_grad_(False)
    slices = optimizer.slices()
    assert len(slices) == 2 and not any(n in block1 for _, names, _ in slices for n in names)
    frozen_before = snapshot(ensemble)
    for _ in range(2):
        ensemble.grad.normal_()
        optimizer.step(torch.tensor([PEAK]))
    after = snapshot(ensemble)
    assert all(torch.equal(after[n], frozen_before[n]) for n in block1)  # neither moved nor decayed
    assert {optimizer.counts[n] for n in block1} == {0}
    assert optimizer.counts["head.weight"] == 2
    for n in block1:
        ensemble.params[n].requires_grad_(True)
    slices = optimizer.slices()
    assert [count for _, _, count in slices] == [2, 0, 2]  # consecutive columns with equal counts
    assert slices[1][1] == block1
    ensemble.grad.normal_()
    optimizer.step(torch.tensor([PEAK]))
    assert {optimizer.counts[n] for n in block1} == {1} and optimizer.counts["head.weight"] == 3
    # a fresh element's first step is Adam's first step: |update| = lr (bias-corrected m / sqrt(v))
    n = "blocks.1.mlp.up.weight"
    moved = (snapshot(ensemble)[n] - after[n] * (1 - PEAK * WD / PEAK)).abs()
    torch.testing.assert_close(moved, torch.full_like(moved, PEAK), rtol=1e-3, atol=1e-6)


def test_optimizer_view_shapes(engine_bench):
    ensemble, optimizer, _ = make(engine_bench, lrs=(1e-3, 1e-2))
    view = OptimizerView(optimizer, torch.tensor([1e-3, 1e-2]))
    assert view.params() == [] and view.state_names == ("exp_avg", "exp_avg_sq")
    ensemble.grad.normal_()
    optimizer.step(torch.tensor([1e-3, 1e-2]))
    assert view.params() == ensemble.names
    p = view.param("blocks.0.mlp.up.weight")
    assert p.state["exp_avg_sq"].shape == (2, 128, 32)
    assert p.hyper.lr.shape == (2, 1, 1) and p.hyper.step == 1
    assert p.hyper.lr.flatten().tolist() == pytest.approx([1e-3, 1e-2])
    assert isinstance(view.rule, AdamW)


# ---- members leaving, checkpoints -------------------------------------------------------------

def steps(ensemble, optimizer, lrs, n, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        grad = torch.randn(ensemble.grad.shape[1:], generator=g)
        ensemble.grad.copy_(grad.expand_as(ensemble.grad) * torch.arange(1, ensemble.members + 1)[:, None])
        optimizer.step(torch.tensor(lrs, dtype=torch.float32))


def test_members_left_behind_are_untouched(engine_bench):
    """K = 3 with per-member decay; member 1 leaves after two steps; the others then step on as
    they would have: rows never mix."""
    lrs = [1e-3, 1e-1, 1e-2]
    ensemble, optimizer, _ = make(engine_bench, lrs=lrs, seeds=[0, 1, 2])
    ref_e, ref_o, _ = make(engine_bench, lrs=lrs, seeds=[0, 1, 2])
    steps(ensemble, optimizer, lrs, 2, seed=0)
    steps(ref_e, ref_o, lrs, 2, seed=0)
    ensemble.keep([0, 2])
    optimizer.keep([0, 2])
    assert ensemble.members == 2 and ensemble.model.members == 2
    assert ensemble.params["head.weight"].shape[0] == 2 and ensemble.params["head.weight"].grad.shape[0] == 2
    assert optimizer.weight_decay.shape[0] == 2
    g = torch.Generator().manual_seed(5)
    for _ in range(2):
        grad = torch.randn(ensemble.grad.shape[1:], generator=g)
        ensemble.grad.copy_(torch.stack([grad, 3 * grad]))
        optimizer.step(torch.tensor([lrs[0], lrs[2]]))
        ref_e.grad.copy_(torch.stack([grad, 2 * grad, 3 * grad]))
        ref_o.step(torch.tensor(lrs))
    torch.testing.assert_close(ensemble.flat, ref_e.flat[[0, 2]], rtol=0, atol=0)
    for s in optimizer.state:
        torch.testing.assert_close(optimizer.state[s], ref_o.state[s][[0, 2]], rtol=0, atol=0)
    with torch.no_grad():  # the model's forward reads the kept rows
        idx = torch.zeros(1, 1, 4, dtype=torch.long)
        torch.testing.assert_close(ensemble.model(idx), ref_e.model(idx)[[0, 2]])


def test_member_states_round_trip_exactly(engine_bench):
    lrs = [1e-3, 1e-2]
    ensemble, optimizer, _ = make(engine_bench, lrs=lrs)
    steps(ensemble, optimizer, lrs, 2, seed=0)
    saved = [(ensemble.member_state(k), optimizer.member_state(k)) for k in range(2)]
    assert saved[1][0]["head.weight"].shape == (1, 512, 32)
    assert saved[1][1]["counts"]["head.weight"] == 2 and saved[1][1]["state"]["head.weight"]["exp_avg"].shape[0] == 1
    steps(ensemble, optimizer, lrs, 2, seed=1)

    # resume: fresh members, their saved weights, the saved optimizer state
    configs = [resolved(engine_bench, lr=lr).config for lr in lrs]
    models = [build_member(c) for c in configs]
    for model, (state, _) in zip(models, saved):
        model.load_state_dict(state)
    resumed = Ensemble(models)
    resumed_opt = Optimizer(resumed, AdamW(), configs, [{}, {}])
    resumed_opt.load_member_states([s for _, s in saved])
    steps(resumed, resumed_opt, lrs, 2, seed=1)
    assert torch.equal(resumed.flat, ensemble.flat)
    assert all(torch.equal(resumed_opt.state[s], optimizer.state[s]) for s in optimizer.state)
    # a pack member's state is a K = 1 run's state
    single, single_opt, _ = make(engine_bench, lrs=[lrs[1]])
    single.model.load_state_dict(saved[1][0])
    single_opt.load_member_states([saved[1][1]])
    assert single_opt.counts == saved[1][1]["counts"]
    with pytest.raises(ValueError, match="same optimizer steps"):
        other = dict(saved[0][1], counts={**saved[0][1]["counts"], "head.weight": 7})
        resumed_opt.load_member_states([other, saved[1][1]])


# ---- the schedule ------------------------------------------------------------------------------

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
    assert all(b < a for a, b in zip(after, after[1:]))  # strictly, since min_lr < peak
    mid = warmup + (total - warmup) / 2
    assert warmup_cosine(mid, warmup, total, peak, min_lr) == pytest.approx((peak + min_lr) / 2)
    assert warmup_cosine(total + 10, warmup, total, peak, min_lr) == pytest.approx(min_lr, abs=1e-15)


def test_min_lr_never_above_peak():
    lrs = [warmup_cosine(s, 2, 20, 1e-6, 1e-5) for s in range(21)]
    assert max(lrs) <= 1e-6 * (1 + 1e-12)


def test_learning_rates_use_the_benchmark_schedule_or_the_hook(engine_bench, tmp_methods):
    config = resolved(engine_bench).config
    train = config["train"]
    stack = load_stack("baseline")
    lrs = learning_rates(config, stack, tokens_before(config, stack))
    assert len(lrs) == train["steps"] + 1 and lrs[0] == 0.0
    assert lrs[train["warmup_steps"]] == pytest.approx(PEAK)
    assert lrs[train["steps"]] == pytest.approx(train["min_lr"])
    assert lrs[1] == pytest.approx(PEAK / train["warmup_steps"])
    name = tmp_methods('''"""Half the peak LR, constant; the tokens seen passed through."""
VERSION = "1"
SEEN = []
def lr_schedule(step, tokens, config, args):
    SEEN.append((step, tokens))
    return 0.5 * config["lr"]
''', "const")
    hooked = load_stack(name)
    lrs = learning_rates(config, hooked, tokens_before(config, hooked))
    assert lrs[1:] == [pytest.approx(0.5 * PEAK)] * train["steps"]  # the hook's value is the LR itself
    per_step = train["batch_size"] * train["seq_len"]
    assert hooked.methods[0].module.SEEN[:3] == [(1, 0), (2, per_step), (3, 2 * per_step)]


def test_tokens_before_follow_transform_batch(engine_bench, tmp_methods):
    config = resolved(engine_bench).config
    train = config["train"]
    b, t = train["batch_size"], train["seq_len"]
    assert tokens_before(config, load_stack("baseline"))[:4] == [0, 0, b * t, 2 * b * t]
    name = tmp_methods('''"""Half the sequence on odd steps."""
VERSION = "1"
def transform_batch(batch, step, config, args):
    return batch[..., : batch.shape[-1] // 2 + 1] if step % 2 else batch
''', "half")
    tokens = tokens_before(config, load_stack(name))
    assert len(tokens) == train["steps"] + 2
    assert tokens[1:5] == [0, b * t // 2, b * t // 2 + b * t, b * t + b * t]
