"""Methods from the papers: WeSaR, Small Init, Everett et al. parameterizations, eps scaling
and Adam-atan2, sequence-length warm-up and depth warm-up. Unit checks of each method's
formulas on tiny models with the member dimension, then every method in a short end-to-end
run."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from stabench.config import validate
from stabench.contract import Context, StepHyper
from stabench.ensemble import Ensemble, build_member
from stabench.methods import load_method, param_options, stack_of
from stabench.model import GPT, MATRIX_NDIM, parameter_roles
from stabench.runspec import resolve_run
from stabench.schedule import learning_rates, tokens_before, warmup_cosine
from stabench.update import AdamW, Optimizer

from conftest import TINY_BENCHMARK, crash_at_step, per_param

PAPER_METHODS = ["wesar", "small_init", "everett_mup", "sp_per_layer_lr", "adam_atan2", "eps_width_scaled",
                 "seq_len_warmup", "depth_warmup"]


def make_config(method: str = "baseline", d_model: int = 32, n_layers: int = 2, n_heads: int = 2,
                train: dict | None = None, sizes: dict | None = None, vocab: int = 64, lr: float = 1e-2,
                args: dict | None = None) -> dict:
    """A resolved run config (no data needed) of size 's'; ``sizes`` are further sizes of the
    benchmark (width-relative methods take their base width from them)."""
    bench = copy.deepcopy(TINY_BENCHMARK)
    bench["sizes"] = {"s": {"d_model": d_model, "n_layers": n_layers, "n_heads": n_heads}, **(sizes or {})}
    bench["train"].update(train or {})
    bench["data"]["vocab_size"] = max(vocab, 260)
    bench["methods"] = [{"label": "m", "use": method, "args": args or {}}]
    config = resolve_run(validate(bench), method="m", size="s", lr=lr, seed=0).to_dict()  # a plain dict to vary
    config["model"]["vocab_size"] = vocab
    return config


def build(config: dict, seed: int | None = None):
    """(model, stack) after transform_model hooks, as the loop builds a member (K = 1)."""
    if seed is not None:
        config = {**config, "seed": seed}
    stack = stack_of(config)
    return build_member(config, stack), stack


def optimizer_of(model, config, stack, rule=None) -> Optimizer:
    options = param_options(model, config, stack)
    return Optimizer(Ensemble([model]), rule or AdamW(), [config], [options])


def batch_of(config: dict, rows: int = 4, seed: int = 0) -> torch.Tensor:
    """(1, rows, seq_len + 1) token ids: one batch every member reads."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, config["model"]["vocab_size"], (1, rows, config["train"]["seq_len"] + 1), generator=g)


def lm_loss(model, batch):
    """Sum over members of each member's mean cross entropy."""
    logits = model(batch[..., :-1])
    targets = batch[..., 1:].expand(logits.shape[0], -1, -1)
    return sum(F.cross_entropy(x.flatten(0, 1), t.flatten()) for x, t in zip(logits, targets))


def test_paper_methods_load_with_docs_and_versions():
    for name in PAPER_METHODS:
        method = load_method(name)
        assert method.version == {"seq_len_warmup": "3", "depth_warmup": "2"}.get(name, "1") and len(method.doc) > 200, name
    lr_meaning = {name for name in PAPER_METHODS if load_method(name).changes_lr_meaning}
    assert lr_meaning == {"everett_mup", "sp_per_layer_lr", "adam_atan2", "wesar"}  # wesar: alpha x lr steps


# ---- WeSaR ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wesar_model():
    config = make_config("wesar", d_model=64, n_layers=3, n_heads=4, vocab=256)
    model, stack = build(config)
    return model, stack, config


def test_wesar_effective_weights_have_backbone_stds(wesar_model):
    model, _, _ = wesar_model
    wesar = load_method("wesar").module
    d, n = 64, 3
    expected = {"head": math.sqrt(1 / d)}
    for i in range(n):
        expected.update({f"blocks.{i}.attn.q": math.sqrt(1 / d), f"blocks.{i}.attn.k": math.sqrt(1 / d),
                         f"blocks.{i}.attn.v": math.sqrt(1 / d), f"blocks.{i}.mlp.up": math.sqrt(1 / d),
                         f"blocks.{i}.attn.out": math.sqrt(1 / (2 * n * d)),
                         f"blocks.{i}.mlp.down": math.sqrt(2 / (8 * n * d))})
    modules = dict(model.named_modules())
    assert set(wesar.gated_modules(model)) == set(expected)
    sigma = math.sqrt(4e-5)
    for name, std in expected.items():
        module = modules[name]
        raw = module.parametrizations.weight.original
        assert raw.std().item() == pytest.approx(sigma, rel=0.05), name
        assert module.weight.std().item() == pytest.approx(std, rel=0.05), name
        alpha = wesar._gate(module).alpha
        assert alpha.shape == (1, 1, 1)  # one gate per member
        assert alpha.item() == pytest.approx(std / sigma, rel=1e-6), name
    # embeddings: no gate (alpha = 1), drawn from the shared N(0, sigma^2)
    assert not parametrize.is_parametrized(model.tok_emb)
    assert model.tok_emb.weight.std().item() == pytest.approx(sigma, rel=0.05)


def test_wesar_gates_are_trainable_undecayed_and_get_gradients(wesar_model):
    _, stack, config = wesar_model
    model, _ = build(config)  # a fresh member (the module's is shared by other tests)
    roles = parameter_roles(model)
    gates = {n for n, _ in model.named_parameters() if n.endswith(".alpha")}
    assert len(gates) == 3 * 6 + 1 and all(roles[n] == "gate" for n in gates)
    assert all(roles[n.replace(".0.alpha", ".original")] in ("hidden", "readout") for n in gates)
    optimizer = optimizer_of(model, config, stack)
    decay, mult = per_param(optimizer, "weight_decay"), per_param(optimizer, "lr_mult")
    for name in gates:
        assert decay[name] == 0.0 and mult[name] == 1.0
    assert decay["blocks.0.attn.q.parametrizations.weight.original"] > 0  # W keeps its decay
    ensemble = optimizer.ensemble
    ensemble.zero_grad()
    lm_loss(ensemble.model, batch_of(config)).backward()
    params = dict(ensemble.model.named_parameters())
    assert all(params[n].requires_grad and params[n].grad.abs().item() > 0 for n in gates)


def test_wesar_gate_lr_mult_and_probe(wesar_model):
    model, _, config = wesar_model
    method = load_method("wesar", {"gate_lr_mult": 10.0})
    options = method.hook("param_options")(model, config, method.args)
    assert len(options) == 19 and all(o == {"lr_mult": 10.0} for o in options.values())
    probe = method.hook("probes")(method.args)["wesar_gates"]
    assert probe.family is not None
    row = probe.fn(Context(step=1, tokens=0, config=config, model=model, peak_lrs=(1e-2,), seeds=(0,)))
    assert len(row) == 19 and all(k.startswith("gate/") for k in row)
    assert row["gate/head"].shape == (1,)  # one value per member
    assert row["gate/head"].item() == pytest.approx(math.sqrt(1 / 64) / math.sqrt(4e-5))


def test_wesar_gates_stack_per_member():
    members = [build(make_config("wesar", lr=lr))[0] for lr in (1e-3, 1e-2)]
    ensemble = Ensemble(members)
    alpha = ensemble.model.head.parametrizations.weight[0].alpha
    assert alpha.shape == (2, 1, 1) and torch.equal(alpha[0], alpha[1])
    with torch.no_grad():
        alpha[1].mul_(2)  # member 1's gate moves alone
        torch.testing.assert_close(ensemble.model.head.weight[1], 2 * ensemble.model.head.weight[0] *
                                   (ensemble.model.head.parametrizations.weight.original[1] /
                                    ensemble.model.head.parametrizations.weight.original[0]))


# ---- Small Init -------------------------------------------------------------------------------

def test_small_init_std_everywhere():
    config = make_config("small_init", d_model=64, n_layers=2, n_heads=4, vocab=256)
    model, _ = build(config)
    std = math.sqrt(2 / (5 * 64))
    checked = 0
    for name, p in model.named_parameters():
        if p.ndim == MATRIX_NDIM and p.numel() >= 4096:
            assert p.std().item() == pytest.approx(std, rel=0.05), name
            checked += 1
    assert checked == 1 + 2 * 6 + 1  # tok_emb, the blocks' matrices, head (pos_emb is 32 x 64)
    assert torch.all(model.ln_f.weight == 1)


# ---- Everett et al.: muP, SP + per-layer LR, eps ------------------------------------------------

SIZES = {"small": {"d_model": 32, "n_layers": 2, "n_heads": 2}, "big": {"d_model": 128, "n_layers": 2, "n_heads": 8}}


def test_mup_at_base_width_is_the_baseline():
    config = make_config("everett_mup", d_model=32, sizes=SIZES)
    model, stack = build(config)
    base, _ = build(make_config("baseline", d_model=32))
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert set(per_param(optimizer_of(model, config, stack), "lr_mult").values()) == {1.0}
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), base.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_mup_exponents_at_4x_width():
    config = make_config("everett_mup", d_model=128, n_heads=8, sizes=SIZES, vocab=512)
    assert config["methods"][0]["args"]["base_width"] == 32
    model, stack = build(config)
    r = 4.0
    optimizer = optimizer_of(model, config, stack)
    mults = per_param(optimizer, "lr_mult")
    model = optimizer.ensemble.model
    assert mults["tok_emb.parametrizations.weight.original"] == pytest.approx(r ** -0.5)
    assert mults["head.parametrizations.weight.original"] == pytest.approx(r ** -0.5)
    assert mults["blocks.0.attn.q.weight"] == pytest.approx(1 / r)
    assert mults["blocks.1.mlp.down.weight"] == pytest.approx(1 / r)
    assert mults["ln_f.weight"] == 1.0
    # effective init: embedding std constant in width (1/sqrt(n0)), readout std sqrt(n0)/n
    assert model.tok_emb.weight.std().item() == pytest.approx(1 / math.sqrt(32), rel=0.05)
    assert model.head.weight.std().item() == pytest.approx(math.sqrt(32) / 128, rel=0.05)
    assert model.blocks[0].attn.q.weight.std().item() == pytest.approx(1 / math.sqrt(128), rel=0.05)
    # the raw tensors keep the baseline draw; the multipliers carry the width exponents
    assert model.tok_emb.parametrizations.weight[0].factor == pytest.approx(r ** 0.5)
    assert model.head.parametrizations.weight[0].factor == pytest.approx(r ** -0.5)
    assert model(batch_of(config)[..., :-1]).shape == (1, 4, 32, 512)


def test_base_width_sources():
    """The benchmark's smallest d_model, else the run's own, unless the arg names one."""
    assert make_config("everett_mup", d_model=128, n_heads=8, sizes=SIZES)["methods"][0]["args"]["base_width"] == 32
    assert make_config("everett_mup", d_model=128, n_heads=8)["methods"][0]["args"]["base_width"] == 128
    config = make_config("everett_mup", d_model=128, n_heads=8, sizes=SIZES, args={"everett_mup": {"base_width": 64}})
    assert config["methods"][0]["args"]["base_width"] == 64
    assert load_method("everett_mup").module.base_width(config, config["methods"][0]["args"]) == 64


def test_sp_per_layer_lr_exponents():
    config = make_config("sp_per_layer_lr", d_model=128, n_heads=8, sizes=SIZES)
    model, stack = build(config)
    mults = per_param(optimizer_of(model, config, stack), "lr_mult")
    assert mults["tok_emb.weight"] == 1.0 and mults["pos_emb.weight"] == 1.0
    assert mults["blocks.0.attn.k.weight"] == pytest.approx(0.25)
    assert mults["blocks.0.mlp.up.weight"] == pytest.approx(0.25)
    assert mults["head.weight"] == pytest.approx(0.25)
    assert mults["blocks.0.ln1.weight"] == 1.0


def test_eps_width_scaled_and_tiny():
    config = make_config("eps_width_scaled", d_model=128, n_heads=8, sizes=SIZES)
    model, stack = build(config)
    eps = per_param(optimizer_of(model, config, stack), "eps")
    assert eps["tok_emb.weight"] == pytest.approx(1e-8) and eps["blocks.0.ln2.weight"] == pytest.approx(1e-8)
    assert eps["blocks.0.attn.v.weight"] == pytest.approx(1e-8 / 4)
    assert eps["blocks.1.mlp.down.weight"] == pytest.approx(1e-8 / 4)
    assert eps["head.weight"] == pytest.approx(1e-8 / 4)

    config = make_config("adam_eps")
    model, stack = build(config)
    assert config["optimizer"]["eps"] == 1e-15
    assert optimizer_of(model, config, stack).eps == pytest.approx(1e-15)
    # composed: the width-scaled eps takes the tiny eps as its base
    config = make_config("adam_eps+eps_width_scaled", d_model=128, n_heads=8, sizes=SIZES)
    model, stack = build(config)
    assert per_param(optimizer_of(model, config, stack), "eps")["head.weight"] == pytest.approx(1e-15 / 4)


# ---- Adam-atan2 --------------------------------------------------------------------------------

def atan2_rule(config, args=None):
    method = load_method("adam_atan2", args)
    return method.hook("update_rule")(config, method.args)


def _steps_with_grad_scale(config, scale, rule, steps=3):
    model, stack = build(config)
    optimizer = optimizer_of(model, config, stack, rule)
    ensemble = optimizer.ensemble
    for step in range(steps):
        ensemble.zero_grad()
        lm_loss(ensemble.model, batch_of(config, seed=step)).backward()
        ensemble.grad.mul_(scale)
        optimizer.step(torch.tensor([1e-2]))
    return ensemble.flat.clone()


def test_adam_atan2_is_invariant_to_gradient_scale_adamw_is_not():
    config = make_config("adam_atan2")
    torch.testing.assert_close(_steps_with_grad_scale(config, 1.0, atan2_rule(config)),
                               _steps_with_grad_scale(config, 1e-6, atan2_rule(config)), rtol=1e-5, atol=1e-7)
    plain, scaled = _steps_with_grad_scale(config, 1.0, AdamW()), _steps_with_grad_scale(config, 1e-6, AdamW())
    assert (plain - scaled).abs().max().item() > 1e-3


def test_adam_atan2_update_formula_on_stacked_members():
    rule = atan2_rule(make_config("adam_atan2"))
    assert (rule.a, rule.b) == (1.27, 1.0) and rule.state_names == ("exp_avg", "exp_avg_sq")
    p = torch.tensor([[1.0, -2.0, 0.5], [0.1, 0.2, 0.3]])
    lr = torch.tensor([[0.1], [0.01]])
    state = {s: torch.zeros_like(p) for s in rule.state_names}
    g1, g2 = torch.tensor([[0.3, -1e-9, 0.0], [1.0, 1.0, 1.0]]), torch.tensor([[0.1, 2.0, 0.0], [-1.0, 0.5, 0.0]])
    want = p.clone()
    m = v = torch.zeros_like(p)
    for t, g in enumerate([g1, g2], start=1):
        h = StepHyper(lr=lr, weight_decay=0.01, eps=1e-8, betas=(0.9, 0.95), step=t)
        rule.update(p, g, state, h)
        want = want * (1 - lr * 0.01)
        m, v = 0.9 * m + 0.1 * g, 0.95 * v + 0.05 * g * g
        want = want - lr * 1.27 * torch.atan2(m / (1 - 0.9 ** t), torch.sqrt(v / (1 - 0.95 ** t)))
    torch.testing.assert_close(p, want)
    assert torch.isfinite(p).all()  # 0/0 is atan2(0, 0) = 0: no eps needed
    torch.testing.assert_close(rule.direction(state, h), 1.27 * torch.atan2(m / (1 - 0.81), (v / (1 - 0.95 ** 2)).sqrt()))
    torch.testing.assert_close(rule.preconditioner(state, h), (v / (1 - 0.95 ** 2)).sqrt() / 1.27)


def test_adam_atan2_args_are_checked():
    config = make_config("adam_atan2")
    assert atan2_rule(config, {"a": 2.0, "b": 0.5}).a == 2.0
    with pytest.raises(ValueError, match="argument b: got 0.0; allowed: a number > 0"):
        atan2_rule(config, {"b": 0.0})  # refused when the method loads (ARG_ALLOWED)


def test_adam_atan2_state_round_trip():
    config = make_config("adam_atan2")

    def run(split: bool):
        model, stack = build(config)
        optimizer = optimizer_of(model, config, stack, atan2_rule(config))
        for step in range(4):
            if split and step == 2:  # "resume": a new member and optimizer from the saved states
                ensemble = optimizer.ensemble
                saved = ensemble.member_state(0), optimizer.member_state(0)
                model, stack = build(config)
                model.load_state_dict(saved[0])
                optimizer = optimizer_of(model, config, stack, atan2_rule(config))
                optimizer.load_member_states([saved[1]])
            ensemble = optimizer.ensemble
            ensemble.zero_grad()
            lm_loss(ensemble.model, batch_of(config, seed=step)).backward()
            optimizer.step(torch.tensor([1e-2]))
        return optimizer.ensemble.flat, optimizer

    (straight, _), (resumed, optimizer) = run(False), run(True)
    assert torch.equal(straight, resumed)
    assert set(optimizer.counts.values()) == {4}


# ---- sequence-length warm-up ----------------------------------------------------------------

@pytest.mark.parametrize("schedule", ["linear", "root"])
def test_seq_len_schedule_start_end_and_multiples_of_8(schedule):
    seq_len_at = load_method("seq_len_warmup").module.seq_len_at
    lengths = [seq_len_at(s, 256, 100, start=8, schedule=schedule, root=2) for s in range(0, 130)]
    assert lengths[0] == 8 and lengths[100] == lengths[-1] == 256
    assert lengths[1] == (8 if schedule == "linear" else 32)  # root: 8 + 248 * 0.01 ** 0.5 = 32.8
    assert all(n % 8 == 0 and 8 <= n <= 256 for n in lengths)
    assert lengths == sorted(lengths)
    assert seq_len_at(50, 256, 100, schedule=schedule) == (
        128 if schedule == "linear" else int((8 + 248 * 0.5 ** 0.5) // 8) * 8)
    assert seq_len_at(99, 100, 100, schedule=schedule) == 96 and seq_len_at(100, 100, 100) == 100


def test_root_schedule_grows_faster_early():
    seq_len_at = load_method("seq_len_warmup").module.seq_len_at
    assert seq_len_at(10, 512, 100, schedule="root", root=2) > seq_len_at(10, 512, 100, schedule="linear")


def resolved(config: dict):
    """The config's method with the arguments its configure hook resolved (as the engine uses it)."""
    return stack_of(config).methods[0]


def test_seq_len_transform_batch_shape():
    config = make_config("seq_len_warmup", train={"steps": 100, "seq_len": 32}, args={"seq_len_warmup": {"budget": "steps"}})
    method = resolved(config)
    batch = batch_of(config)
    hook = method.hook("transform_batch")
    assert hook(batch, 1, config, method.args).shape == (1, 4, 9)        # 8 inputs + 1
    assert hook(batch, 15, config, method.args).shape == (1, 4, 17)      # 8 + 24 * 15/30 = 20 -> 16
    assert hook(batch, 30, config, method.args).shape == (1, 4, 33)      # default steps: 0.3 * 100
    assert torch.equal(hook(batch, 1, config, method.args), batch[..., :9])
    per_member = torch.cat([batch, batch + 1])  # (K, B, T + 1): every member's batch is cut alike
    assert hook(per_member, 1, config, method.args).shape == (2, 4, 9)


def test_seq_len_lr_follows_tokens_and_is_absolute():
    train = {"steps": 100, "seq_len": 32, "batch_size": 8, "warmup_steps": 10}
    steps_budget = {"seq_len_warmup": {"budget": "steps"}}
    config = make_config("seq_len_warmup", train=train, args=steps_budget)
    method = resolved(config)
    peak = config["lr"]
    lr = lambda step, tokens, c=config: method.hook("lr_schedule")(step, tokens, c, method.args)  # noqa: E731
    per_full_step = 8 * 32
    # warm-up is linear in tokens (this step's 8 x 8 tokens included), over 10 full-length steps
    assert lr(1, 0) == pytest.approx(peak * 8 * 8 / (10 * per_full_step))
    assert lr(1, 1000) == pytest.approx(peak * (1000 + 64) / (10 * per_full_step))
    assert lr(7, 0) == lr(1, 0)   # the step number alone does not move it
    # the returned value is the LR itself: another peak scales it, no division left to the engine
    other = make_config("seq_len_warmup", train=train, lr=3e-3, args=steps_budget)
    assert lr(3, 1000, other) == pytest.approx(lr(3, 1000) * 0.3)  # in the warm-up: linear in the peak
    # the cosine ends at min_lr at the tokens this run reaches in train.steps steps
    run_tokens = 8 * method.module.run_tokens_per_row(config, method.args)
    assert run_tokens < 100 * per_full_step
    last = run_tokens - 8 * 32
    assert lr(100, last) == pytest.approx(config["train"]["min_lr"])
    middle = lr(60, run_tokens // 2)
    want = warmup_cosine(run_tokens // 2 + 8 * 32, 10 * per_full_step, run_tokens, peak, config["train"]["min_lr"])
    assert middle == pytest.approx(want)
    # the engine's table: tokens from the transformed batch shapes, LR straight from the hook
    stack = stack_of(config)
    tokens = tokens_before(config, stack)
    table = learning_rates(config, stack, tokens)
    assert tokens[2] == 8 * 8 and table[1] == pytest.approx(lr(1, 0))
    assert table[100] == pytest.approx(config["train"]["min_lr"])


def test_seq_len_warmup_trains_the_benchmarks_tokens_by_default():
    """Li et al. compare at equal tokens: by default the run takes the fewest steps that see the
    tokens of the benchmark's full-length runs (train.steps x seq_len per row), its warm-up
    length fixed from the benchmark's steps, and its LR decays to min_lr over those tokens."""
    train = {"steps": 100, "seq_len": 32, "batch_size": 8, "warmup_steps": 10}
    config = make_config("seq_len_warmup", train=train)
    method = resolved(config)
    assert method.args["budget"] == "tokens" and method.args["steps"] == 30  # 0.3 x the benchmark's 100
    steps = config["train"]["steps"]
    tokens = tokens_before(config, stack_of(config))
    assert tokens[-1] >= 100 * 8 * 32 > tokens[-2]  # the fewest steps that reach the tokens
    assert steps > 100
    table = learning_rates(config, stack_of(config), tokens)
    assert table[steps] == pytest.approx(config["train"]["min_lr"])
    fewer = make_config("seq_len_warmup", train=train, args={"seq_len_warmup": {"budget": "steps"}})
    assert fewer["train"]["steps"] == 100 and tokens_before(fewer, stack_of(fewer))[-1] < 100 * 8 * 32


@pytest.mark.parametrize("train", [
    {"steps": 200, "seq_len": 128, "batch_size": 16, "warmup_steps": 20},  # benchmarks/cpu.yaml
    {"steps": 40, "seq_len": 32, "batch_size": 8, "warmup_steps": 5},      # benchmarks/smoke.yaml
    {"steps": 1500, "seq_len": 64, "batch_size": 4, "warmup_steps": 0},    # benchmarks/cpu_spikes.yaml
    {"steps": 100, "seq_len": 100, "batch_size": 8, "warmup_steps": 10},   # seq_len no multiple of 8
])
def test_seq_len_warmup_trains_exactly_the_baselines_tokens(train):
    """Rounding to whole steps used to add up to one full step (+0.47 % on cpu, +1.9 % on
    smoke); the overshoot now comes off the end of the warm-up: the engine's token count equals
    the baseline's, the lengths stay non-decreasing, and only a few steps change."""
    baseline = make_config("baseline", train=train)
    config = make_config("seq_len_warmup", train=train)
    method = resolved(config)
    want = tokens_before(baseline, stack_of(baseline))[-1]
    assert want == train["steps"] * train["batch_size"] * train["seq_len"]
    assert tokens_before(config, stack_of(config))[-1] == want
    lengths = method.module.lengths_of(config, method.args)
    assert list(lengths) == sorted(lengths) and lengths[-1] == train["seq_len"] and min(lengths) >= 8
    plain = [method.module.seq_len_at(s, train["seq_len"], method.args["steps"]) for s in range(1, len(lengths) + 1)]
    changed = [(a, b) for a, b in zip(plain, lengths) if a != b]
    assert 0 < len(changed) <= train["seq_len"] // 8 and all(0 < a - b <= 8 for a, b in changed)
    table = learning_rates(config, stack_of(config), tokens_before(config, stack_of(config)))
    assert table[config["train"]["steps"]] == pytest.approx(config["train"]["min_lr"])


# ---- depth warm-up -----------------------------------------------------------------------------

def test_depth_schedule_defaults():
    module = load_method("depth_warmup").module
    config = make_config("depth_warmup", n_layers=8, train={"steps": 1000, "warmup_steps": 100})
    plan = module.schedule(config, load_method("depth_warmup").args)
    assert plan["initial"] == 4 and plan["start"] == 100 and plan["group_size"] == 1
    active = [module.active_blocks_at(s, 8, plan["initial"], plan["start"], plan["every"]) for s in range(1, 1001)]
    assert active[:100] == [4] * 100 and active[100] == 5       # step 101: the first group joins
    assert active.index(8) + 1 <= 500 and active[-1] == 8         # all unlocked by half of training
    assert active == sorted(active)
    assert module.active_blocks_at(10, 6, 2, 0, 5, group_size=2) == 6


def test_depth_warmup_has_its_own_start_not_the_lr_warmup():
    """The shallow phase lasts start_fraction (0.1) of train.steps, also with no LR warm-up
    (benchmarks/cpu_spikes.yaml: warmup_steps 0 used to give it no shallow phase)."""
    method = load_method("depth_warmup")
    config = make_config("depth_warmup", n_layers=4, train={"steps": 1500, "warmup_steps": 0})
    plan = method.module.schedule(config, method.args)
    assert plan["initial"] == 2 and plan["start"] == 150
    active = [method.module.active_blocks_at(s, 4, plan["initial"], plan["start"], plan["every"]) for s in (1, 150, 151)]
    assert active == [2, 2, 3]
    assert method.module.schedule(config, {**method.args, "start": 7})["start"] == 7
    assert method.module.schedule(config, {**method.args, "start_fraction": 0.2})["start"] == 300
    one = method.module.schedule(make_config("depth_warmup", n_layers=1), method.args)
    assert one["initial"] == one["n_layers"] == 1  # nothing to grow: the claim is not testable there


def _depth_setup(n_layers=4, lrs=(1e-2,)):
    """(optimizer, config) of a depth_warmup ensemble with one member per LR (seeds 0, 1, ...)."""
    configs = [make_config("depth_warmup", n_layers=n_layers, train={"steps": 40, "warmup_steps": 3}, lr=lr,
                           args={"depth_warmup": {"start": 3}})
               for lr in lrs]
    configs = [{**c, "seed": k} for k, c in enumerate(configs)]
    stack = stack_of(configs[0])
    models = [build_member(c, stack) for c in configs]
    options = [param_options(m, c, stack) for m, c in zip(models, configs)]
    return Optimizer(Ensemble(models), AdamW(), configs, options), configs[0]


def _on_step(optimizer, config, step, lrs=(1e-2,)):
    depth = stack_of(config).methods[0]  # with the run's args (start 3)
    ctx = Context(step=step, tokens=0, config=config, model=optimizer.ensemble.model, peak_lrs=tuple(lrs),
                  seeds=tuple(range(len(lrs))))
    depth.hook("on_step")(ctx, depth.args)


def test_locked_model_computes_the_shallow_model():
    optimizer, config = _depth_setup()
    model = optimizer.ensemble.model
    assert model.active_blocks == 2
    for block in model.blocks[2:]:
        for name, p in block.named_parameters():
            assert not p.requires_grad
            assert torch.all(p == 1) if ".ln" in f".{name}" else torch.all(p == 0), name
    shallow = GPT(**{**config["model"], "n_layers": 2})
    shallow.load_state_dict({k: v for k, v in model.state_dict().items()
                             if not k.startswith(("blocks.2.", "blocks.3.", "depth_warmup"))})
    tokens = batch_of(config)[..., :-1]
    with torch.no_grad():
        assert torch.equal(model(tokens), shallow(tokens))
        model.active_blocks = 4  # running the locked blocks changes nothing either: exact identities
        torch.testing.assert_close(model(tokens), shallow(tokens), rtol=0, atol=1e-6)
    model.active_blocks = 2


def test_unlocking_keeps_the_function_then_the_block_trains():
    optimizer, config = _depth_setup()
    ensemble = optimizer.ensemble
    model = ensemble.model
    batch = batch_of(config)
    init_q = model.get_buffer("depth_warmup_init__blocks__2__attn__q__weight").clone()
    block2 = [n for n in ensemble.names if n.startswith("blocks.2.")]

    def step(i):
        ensemble.zero_grad()
        lm_loss(model, batch).backward()
        optimizer.step(torch.tensor([1e-2]))
        _on_step(optimizer, config, i)

    for i in (1, 2):
        step(i)
        assert all(p.grad.abs().sum() == 0 for p in model.blocks[2].parameters())
        assert model.active_blocks == 2 and {optimizer.counts[n] for n in block2} == {0}
    with torch.no_grad():
        before = model(batch[..., :-1])
    step(3)  # the shallow phase (start 3) ends: block 2 joins for step 4
    assert model.active_blocks == 3 and model.depth_warmup_active.tolist() == [3]
    assert all(p.requires_grad for p in model.blocks[2].parameters())
    assert not any(p.requires_grad for p in model.blocks[3].parameters())
    assert torch.equal(model.blocks[2].attn.q.weight, init_q) and torch.all(model.blocks[2].attn.out.weight == 0)
    ensemble.zero_grad()
    lm_loss(model, batch).backward()  # identity at unlock: the same function as before
    after_unlock = {n: p.detach().clone() for n, p in model.blocks[2].named_parameters()}
    optimizer.step(torch.tensor([1e-2]))
    assert {optimizer.counts[n] for n in block2} == {1}  # fresh optimizer state: its first step
    with torch.no_grad():
        assert not torch.equal(model(batch[..., :-1]), before)
    changed = {n for n, p in model.blocks[2].named_parameters() if not torch.equal(p, after_unlock[n])}
    assert {"attn.out.weight", "mlp.down.weight"} <= changed
    assert all(p.abs().sum() == 0 for n, p in model.blocks[3].named_parameters() if "ln" not in n)


def test_unlocked_block_is_identity_at_the_moment_of_unlocking():
    optimizer, config = _depth_setup()
    model = optimizer.ensemble.model
    tokens = batch_of(config)[..., :-1]
    with torch.no_grad():
        before = model(tokens)
    _on_step(optimizer, config, 3)
    assert model.active_blocks == 3
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), before, rtol=0, atol=0)


def test_depth_warmup_unlocks_every_member_with_its_own_init():
    lrs = (1e-3, 1e-2)
    optimizer, config = _depth_setup(lrs=lrs)
    model = optimizer.ensemble.model
    init_q = model.get_buffer("depth_warmup_init__blocks__2__attn__q__weight")
    assert init_q.shape[0] == 2 and not torch.equal(init_q[0], init_q[1])  # seeds 0 and 1
    _on_step(optimizer, config, 3, lrs)
    assert model.active_blocks == 3 and model.depth_warmup_active.tolist() == [3, 3]
    assert torch.equal(model.blocks[2].attn.q.weight, init_q)
    assert optimizer.ensemble.params["blocks.2.attn.q.weight"].requires_grad


def test_depth_lock_state_survives_state_dict_round_trip():
    optimizer, config = _depth_setup()
    model = optimizer.ensemble.model
    for i in (3, 4, 5):
        _on_step(optimizer, config, i)
    assert model.active_blocks == 3
    with torch.no_grad():
        model.blocks[2].attn.q.weight.add_(1.0)  # "trained"
    fresh, _ = build(copy.deepcopy(config))
    assert fresh.active_blocks == 2
    fresh.load_state_dict(optimizer.ensemble.member_state(0))
    assert fresh.active_blocks == 3
    assert all(p.requires_grad for p in fresh.blocks[2].parameters())
    assert not any(p.requires_grad for p in fresh.blocks[3].parameters())
    assert torch.equal(fresh.blocks[2].attn.q.weight, model.blocks[2].attn.q.weight)  # not re-initialized
    ctx = Context(step=6, tokens=0, config=config, model=fresh, peak_lrs=(1e-2,), seeds=(0,))
    load_method("depth_warmup").hook("on_step")(ctx, load_method("depth_warmup").args)
    assert fresh.active_blocks == 3


# ---- end to end ----------------------------------------------------------------------------------

@pytest.mark.parametrize("method", PAPER_METHODS + ["wesar+depth_warmup", "everett_mup+seq_len_warmup"])
def test_paper_method_trains_end_to_end(engine_bench, tmp_path, run_training, method):
    bench = engine_bench.load(["train.steps=12", "train.warmup_steps=3", "train.probe_every=4",
                               "train.eval_every=12", "train.checkpoint_every=100"])
    metrics = run_training(tmp_path, benchmark=bench, method=method, lr=3e-3)
    assert not metrics["diverged"]
    assert metrics["steps"] == 12 or ("seq_len_warmup" in method and metrics["steps"] > 12)  # equal tokens
    assert math.isfinite(metrics["final_val_loss"]) and metrics["final_val_loss"] < metrics["init_loss"]
    assert [m["name"] for m in metrics["methods"]] == method.split("+")
    if "seq_len_warmup" in method:
        assert metrics["tokens"] == 12 * 8 * 32  # exactly the baseline's tokens
    header = (tmp_path / "history.csv").read_text().splitlines()[0].split(",")
    if method == "wesar":
        assert "gate/blocks.0.attn.q" in header and "gate/head" in header
        assert "wesar_gates" in metrics["probe_families"]
    if "seq_len_warmup" in method:  # each method is recorded with its probe
        assert "seq_len" in header
    if "depth_warmup" in method:
        assert "active_blocks" in header
    if method == "adam_atan2":
        assert "update_rms_mean" in header and "adam_v_max" in header  # its own rule's direction and state


def test_adam_atan2_run_resumes(engine_bench, tmp_path, run_training):
    bench = engine_bench.load(["train.steps=12", "train.warmup_steps=3", "train.probe_every=4",
                               "train.eval_every=12", "train.checkpoint_every=4"])
    reference = run_training(tmp_path / "ref", benchmark=bench, method="adam_atan2", lr=3e-3)
    with crash_at_step(8):
        run_training(tmp_path / "run", benchmark=bench, method="adam_atan2", lr=3e-3)
    resumed = run_training(tmp_path / "run", benchmark=bench, method="adam_atan2", lr=3e-3)
    assert resumed["resumed_from_step"] == 4
    assert resumed["final_val_loss"] == reference["final_val_loss"]


def test_depth_warmup_run_resumes_after_an_unlock(engine_bench, tmp_path, run_training):
    bench = engine_bench.load(["train.steps=12", "train.warmup_steps=3", "train.probe_every=4",
                               "train.eval_every=12", "train.checkpoint_every=4"])
    reference = run_training(tmp_path / "ref", benchmark=bench, method="depth_warmup", lr=3e-3)
    with crash_at_step(12):
        run_training(tmp_path / "run", benchmark=bench, method="depth_warmup", lr=3e-3)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 8 and state["model"]["depth_warmup_active"].tolist() == [2]
    resumed = run_training(tmp_path / "run", benchmark=bench, method="depth_warmup", lr=3e-3)
    assert resumed["resumed_from_step"] == 8
    assert resumed["final_val_loss"] == reference["final_val_loss"]
