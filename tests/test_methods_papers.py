"""Methods from the papers: WeSaR, Small Init, Everett et al. parameterizations, eps scaling
and Adam-atan2, sequence-length warm-up and depth warm-up. Unit checks of each method's
formulas on tiny models, then every method in a short end-to-end run."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from stabench.config import run_config, validate
from stabench.methods import load_method, load_stack
from stabench.model import GPT, parameter_roles
from stabench.optim import param_groups, warmup_cosine
from stabench.trainer import TrainState

from conftest import TINY_BENCHMARK, crash_at_step

PAPER_METHODS = ["wesar", "small_init", "everett_mup", "sp_per_layer_lr", "adam_atan2", "eps_width_scaled",
                 "seq_len_warmup", "depth_warmup"]



def make_config(method: str = "baseline", d_model: int = 32, n_layers: int = 2, n_heads: int = 2,
                train: dict | None = None, sizes: dict | None = None, vocab: int = 64) -> dict:
    """A resolved run config (no data needed) with the model's vocab and seq_len filled in."""
    bench = copy.deepcopy(TINY_BENCHMARK)
    bench["sizes"] = {"s": {"d_model": d_model, "n_layers": n_layers, "n_heads": n_heads}}
    bench["train"].update(train or {})
    bench = validate(bench)
    config = run_config(bench, method=method, size="s", lr=1e-2, seed=0)
    config["model"].update(vocab_size=vocab, seq_len=config["train"]["seq_len"])
    if sizes is not None:
        config["benchmark_sizes"] = sizes
    return config


def build(config: dict, use: str | None = None, args: dict | None = None, seed: int = 0):
    """(model, stack) after configure and transform_model hooks, as the trainer does."""
    stack = load_stack(use or config["method_spec"]["use"], args)
    for hook, hook_args in stack.composed("configure"):
        hook(config, hook_args)
    torch.manual_seed(seed)
    model = GPT(**config["model"])
    for hook, hook_args in stack.composed("transform_model"):
        hook(model, config, hook_args)
    return model, stack


def batch_of(config: dict, rows: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, config["model"]["vocab_size"], (rows, config["train"]["seq_len"] + 1), generator=g)


def lm_loss(model, batch):
    logits = model(batch[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())


def test_paper_methods_load_with_docs_and_versions():
    for name in PAPER_METHODS:
        method = load_method(name)
        assert method.version == "1" and len(method.doc) > 200, name
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
        assert wesar._gate(module).alpha.item() == pytest.approx(std / sigma, rel=1e-6), name
    # embeddings: no gate (alpha = 1), drawn from the shared N(0, sigma^2)
    assert not parametrize.is_parametrized(model.tok_emb)
    assert model.tok_emb.weight.std().item() == pytest.approx(sigma, rel=0.05)


def test_wesar_gates_are_trainable_undecayed_and_get_gradients(wesar_model):
    model, stack, config = wesar_model
    roles = parameter_roles(model)
    gates = {n: p for n, p in model.named_parameters() if n.endswith(".alpha")}
    assert len(gates) == 3 * 6 + 1 and all(roles[n] == "gate" for n in gates)
    assert all(roles[n.replace(".0.alpha", ".original")] in ("hidden", "readout") for n in gates)
    groups = param_groups(model, config, stack)
    for group in groups:
        for name in group["names"]:
            if name in gates:
                assert group["weight_decay"] == 0.0 and group["lr_mult"] == 1.0
    model.zero_grad()
    lm_loss(model, batch_of(config)).backward()
    assert all(p.requires_grad and p.grad is not None and p.grad.abs() > 0 for p in gates.values())
    model.zero_grad()


def test_wesar_gate_lr_mult_and_probe(wesar_model):
    model, _, config = wesar_model
    method = load_method("wesar", {"gate_lr_mult": 10.0})
    options = method.hook("param_options")(model, config, method.args)
    assert len(options) == 19 and all(o == {"lr_mult": 10.0} for o in options.values())
    probe = method.hook("probes")(method.args)["wesar_gates"]
    row = probe(type("Ctx", (), {"model": model})())
    assert len(row) == 19 and all(k.startswith("gate/") for k in row)
    assert row["gate/head"].item() == pytest.approx(math.sqrt(1 / 64) / math.sqrt(4e-5))


# ---- Small Init -------------------------------------------------------------------------------

def test_small_init_std_everywhere():
    config = make_config("small_init", d_model=64, n_layers=2, n_heads=4, vocab=256)
    model, _ = build(config)
    std = math.sqrt(2 / (5 * 64))
    for name, p in model.named_parameters():
        if p.ndim == 2 and p.numel() >= 4096:
            assert p.std().item() == pytest.approx(std, rel=0.05), name
    assert torch.all(model.ln_f.weight == 1)


# ---- Everett et al.: muP, SP + per-layer LR, eps ------------------------------------------------

SIZES = {"small": {"d_model": 32, "n_layers": 2, "n_heads": 2}, "big": {"d_model": 128, "n_layers": 2, "n_heads": 8}}


def _lr_mults(model, config, stack) -> dict[str, float]:
    return {name: g["lr_mult"] for g in param_groups(model, config, stack) for name in g["names"]}


def test_mup_at_base_width_is_the_baseline():
    config = make_config("everett_mup", d_model=32, sizes=SIZES)
    model, stack = build(config)
    base, _ = build(make_config("baseline", d_model=32))
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert all(v == 1.0 for v in _lr_mults(model, config, stack).values())
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), base.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_mup_exponents_at_4x_width():
    config = make_config("everett_mup", d_model=128, n_heads=8, sizes=SIZES, vocab=512)
    model, stack = build(config)
    r = 4.0
    mults = _lr_mults(model, config, stack)
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
    assert model(batch_of(config)[:, :-1]).shape == (4, 32, 512)


def test_base_width_sources():
    mup = load_method("everett_mup").module
    assert mup.base_width(make_config(d_model=128, n_heads=8, sizes=SIZES), {"base_width": None}) == 32
    assert mup.base_width(make_config(d_model=128, n_heads=8), {"base_width": None}) == 128
    assert mup.base_width(make_config(d_model=128, n_heads=8, sizes=SIZES), {"base_width": 64}) == 64


def test_sp_per_layer_lr_exponents():
    config = make_config("sp_per_layer_lr", d_model=128, n_heads=8, sizes=SIZES)
    model, stack = build(config)
    mults = _lr_mults(model, config, stack)
    assert mults["tok_emb.weight"] == 1.0 and mults["pos_emb.weight"] == 1.0
    assert mults["blocks.0.attn.k.weight"] == pytest.approx(0.25)
    assert mults["blocks.0.mlp.up.weight"] == pytest.approx(0.25)
    assert mults["head.weight"] == pytest.approx(0.25)
    assert mults["blocks.0.ln1.weight"] == 1.0


def _eps_by_name(model, config, stack) -> dict[str, float]:
    return {name: g["eps"] for g in param_groups(model, config, stack) for name in g["names"]}


def test_eps_width_scaled_and_tiny():
    config = make_config("eps_width_scaled", d_model=128, n_heads=8, sizes=SIZES)
    model, stack = build(config)
    eps = _eps_by_name(model, config, stack)
    assert eps["tok_emb.weight"] == 1e-8 and eps["blocks.0.ln2.weight"] == 1e-8
    assert eps["blocks.0.attn.v.weight"] == pytest.approx(1e-8 / 4)
    assert eps["blocks.1.mlp.down.weight"] == pytest.approx(1e-8 / 4)
    assert eps["head.weight"] == pytest.approx(1e-8 / 4)

    config = make_config("adam_eps")
    model, stack = build(config)
    assert config["optimizer"]["eps"] == 1e-15
    assert set(_eps_by_name(model, config, stack).values()) == {1e-15}
    # composed: the width-scaled eps takes the tiny eps as its base
    config = make_config("adam_eps+eps_width_scaled", d_model=128, n_heads=8, sizes=SIZES)
    model, stack = build(config)
    assert _eps_by_name(model, config, stack)["head.weight"] == pytest.approx(1e-15 / 4)


# ---- Adam-atan2 --------------------------------------------------------------------------------

def _atan2_optimizer(model, config, args=None):
    method = load_method("adam_atan2", args)
    stack = load_stack("adam_atan2")
    return method.hook("build_optimizer")(param_groups(model, config, stack), config, method.args)


def _steps_with_grad_scale(config, scale, make_opt, steps=3):
    torch.manual_seed(0)
    model = GPT(**config["model"])
    opt = make_opt(model)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = 1e-2 * group["lr_mult"] if "lr_mult" in group else 1e-2
        opt.zero_grad()
        lm_loss(model, batch_of(config, seed=step)).backward()
        for p in model.parameters():
            p.grad.mul_(scale)
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def test_adam_atan2_is_invariant_to_gradient_scale_adamw_is_not():
    config = make_config("adam_atan2")
    atan2 = lambda model: _atan2_optimizer(model, config)  # noqa: E731
    for a, b in zip(_steps_with_grad_scale(config, 1.0, atan2), _steps_with_grad_scale(config, 1e-6, atan2)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    adamw = lambda model: torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), eps=1e-8)  # noqa: E731
    plain, scaled = _steps_with_grad_scale(config, 1.0, adamw), _steps_with_grad_scale(config, 1e-6, adamw)
    assert max((a - b).abs().max().item() for a, b in zip(plain, scaled)) > 1e-3


def test_adam_atan2_update_formula():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = load_method("adam_atan2").module.AdamAtan2([p], lr=0.1, betas=(0.9, 0.95), weight_decay=0.01)
    g1, g2 = torch.tensor([0.3, -1e-9, 0.0]), torch.tensor([0.1, 2.0, 0.0])
    want = p.detach().clone()
    m = v = torch.zeros(3)
    for t, g in enumerate([g1, g2], start=1):
        p.grad = g.clone()
        opt.step()
        want = want * (1 - 0.1 * 0.01)
        m, v = 0.9 * m + 0.1 * g, 0.95 * v + 0.05 * g * g
        want = want - 0.1 * 1.27 * torch.atan2(m / (1 - 0.9 ** t), torch.sqrt(v / (1 - 0.95 ** t)))
    torch.testing.assert_close(p.detach(), want)
    assert torch.isfinite(p).all()  # 0/0 is atan2(0, 0) = 0: no eps needed


def test_adam_atan2_state_dict_round_trip():
    config = make_config("adam_atan2")

    def run(split: bool):
        torch.manual_seed(0)
        model = GPT(**config["model"])
        opt = _atan2_optimizer(model, config)
        for step in range(4):
            if split and step == 2:  # "resume": a new model and optimizer from the saved states
                state = {"model": copy.deepcopy(model.state_dict()), "opt": copy.deepcopy(opt.state_dict())}
                model = GPT(**config["model"])
                opt = _atan2_optimizer(model, config)
                model.load_state_dict(state["model"])
                opt.load_state_dict(state["opt"])
            for group in opt.param_groups:
                group["lr"] = 1e-2 * group["lr_mult"]
            opt.zero_grad()
            lm_loss(model, batch_of(config, seed=step)).backward()
            opt.step()
        return [p.detach() for p in model.parameters()], opt.state_dict()

    (straight, s1), (resumed, s2) = run(False), run(True)
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)
    assert all(s["step"] == 4 for s in s2["state"].values())


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


def test_seq_len_transform_batch_shape():
    config = make_config("seq_len_warmup", train={"steps": 100, "seq_len": 32})
    method = load_method("seq_len_warmup")
    batch = batch_of(config)
    hook = method.hook("transform_batch")
    assert hook(batch, 1, config, method.args).shape == (4, 9)        # 8 inputs + 1
    assert hook(batch, 15, config, method.args).shape == (4, 17)      # 8 + 24 * 15/30 = 20 -> 16
    assert hook(batch, 30, config, method.args).shape == (4, 33)      # default steps: 0.3 * 100
    assert torch.equal(hook(batch, 1, config, method.args), batch[:, :9])


def test_seq_len_lr_follows_tokens():
    config = make_config("seq_len_warmup", train={"steps": 100, "seq_len": 32, "batch_size": 8, "warmup_steps": 10})
    method = load_method("seq_len_warmup")
    lr = lambda step, tokens: method.hook("lr_schedule")(step, tokens, config, method.args)  # noqa: E731
    per_full_step = 8 * 32
    # warm-up is linear in tokens (this step's 8 x 8 tokens included), over 10 full-length steps
    assert lr(1, 0) == pytest.approx(8 * 8 / (10 * per_full_step))
    assert lr(1, 1000) == pytest.approx((1000 + 64) / (10 * per_full_step))
    assert lr(7, 0) == lr(1, 0)   # the step number alone does not move it
    # the cosine ends at min_lr at the tokens this run reaches in train.steps steps
    module = method.module
    run_tokens = 8 * module.run_tokens_per_row(config, method.args)
    assert run_tokens < 100 * per_full_step
    last = run_tokens - 8 * 32
    assert lr(100, last) == pytest.approx(config["train"]["min_lr"] / config["lr"])
    middle = lr(60, run_tokens // 2)
    want = warmup_cosine(run_tokens // 2 + 8 * 32, 10 * per_full_step, run_tokens, 1.0, 1e-3)
    assert middle == pytest.approx(want)


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


def _depth_setup(n_layers=4):
    config = make_config("depth_warmup", n_layers=n_layers, train={"steps": 40, "warmup_steps": 3})
    model, stack = build(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, stack, optimizer, config


def test_locked_model_computes_the_shallow_model():
    model, _, _, config = _depth_setup()
    assert model.active_blocks == 2
    for block in model.blocks[2:]:
        for name, p in block.named_parameters():
            assert not p.requires_grad
            assert torch.all(p == 1) if ".ln" in f".{name}" else torch.all(p == 0), name
    shallow = GPT(**{**config["model"], "n_layers": 2})
    shallow.load_state_dict({k: v for k, v in model.state_dict().items()
                             if not k.startswith(("blocks.2.", "blocks.3.", "depth_warmup"))})
    tokens = batch_of(config)[:, :-1]
    assert torch.equal(model(tokens), shallow(tokens))
    model.active_blocks = 4  # running the locked blocks changes nothing either: exact identities
    torch.testing.assert_close(model(tokens), shallow(tokens), rtol=0, atol=1e-6)
    model.active_blocks = 2


def test_unlocking_keeps_the_function_then_the_block_trains():
    model, stack, optimizer, config = _depth_setup()
    depth = load_method("depth_warmup")
    batch = batch_of(config)
    init_q = model.__dict__[depth.module.STATE]["snapshot"][2]["attn.q.weight"].clone()

    def step(i):
        optimizer.zero_grad()
        lm_loss(model, batch).backward()
        optimizer.step()
        depth.hook("on_step")(i, TrainState(i, 0, model, optimizer, config), depth.args)

    for i in (1, 2):
        step(i)
        assert all(p.grad is None for p in model.blocks[2].parameters())
        assert model.active_blocks == 2
    before = model(batch[:, :-1]).detach()
    step(3)  # the LR warm-up ends: block 2 joins for step 4
    assert model.active_blocks == 3 and model.depth_warmup_active.item() == 3
    assert all(p.requires_grad for p in model.blocks[2].parameters())
    assert not any(p.requires_grad for p in model.blocks[3].parameters())
    assert torch.equal(model.blocks[2].attn.q.weight, init_q) and torch.all(model.blocks[2].attn.out.weight == 0)
    optimizer.zero_grad()
    lm_loss(model, batch).backward()  # identity at unlock: the same function as before
    after_unlock = {n: p.detach().clone() for n, p in model.blocks[2].named_parameters()}
    optimizer.step()
    optimizer.zero_grad()
    with torch.no_grad():
        step_loss_model = model(batch[:, :-1])
    assert not torch.equal(step_loss_model, before)
    changed = {n for n, p in model.blocks[2].named_parameters() if not torch.equal(p, after_unlock[n])}
    assert {"attn.out.weight", "mlp.down.weight"} <= changed
    assert all(p.grad is None for p in model.blocks[3].parameters())


def test_unlocked_block_is_identity_at_the_moment_of_unlocking():
    model, _, optimizer, config = _depth_setup()
    depth = load_method("depth_warmup")
    tokens = batch_of(config)[:, :-1]
    before = model(tokens)
    depth.hook("on_step")(3, TrainState(3, 0, model, optimizer, config), depth.args)
    assert model.active_blocks == 3
    torch.testing.assert_close(model(tokens), before, rtol=0, atol=0)


def test_depth_lock_state_survives_state_dict_round_trip():
    model, _, optimizer, config = _depth_setup()
    depth = load_method("depth_warmup")
    for i in (3, 4, 5):
        depth.hook("on_step")(i, TrainState(i, 0, model, optimizer, config), depth.args)
    assert model.active_blocks == 3
    with torch.no_grad():
        model.blocks[2].attn.q.weight.add_(1.0)  # "trained"
    fresh, _ = build(copy.deepcopy(config))
    assert fresh.active_blocks == 2
    fresh.load_state_dict(model.state_dict())
    assert fresh.active_blocks == 3
    assert all(p.requires_grad for p in fresh.blocks[2].parameters())
    assert not any(p.requires_grad for p in fresh.blocks[3].parameters())
    assert torch.equal(fresh.blocks[2].attn.q.weight, model.blocks[2].attn.q.weight)  # not re-initialized
    depth.hook("on_step")(6, TrainState(6, 0, fresh, optimizer, config), depth.args)
    assert fresh.active_blocks == 3


# ---- end to end ----------------------------------------------------------------------------------

@pytest.mark.parametrize("method", PAPER_METHODS + ["wesar+depth_warmup", "everett_mup+seq_len_warmup"])
def test_paper_method_trains_end_to_end(engine_bench, tmp_path, run_training, method):
    bench = engine_bench.load(["train.steps=12", "train.warmup_steps=3", "train.probe_every=4",
                               "train.eval_every=12", "train.checkpoint_every=100"])
    metrics = run_training(tmp_path, benchmark=bench, method=method, lr=3e-3)
    assert metrics["steps"] == 12 and not metrics["diverged"]
    assert math.isfinite(metrics["final_val_loss"]) and metrics["final_val_loss"] < metrics["init_loss"]
    assert [m["name"] for m in metrics["methods"]] == method.split("+")
    if "seq_len_warmup" in method:
        assert metrics["tokens"] < 12 * 8 * 32
    header = (tmp_path / "history.csv").read_text().splitlines()[0].split(",")
    if method == "wesar":
        assert "gate/blocks.0.attn.q" in header and "gate/head" in header
    if "seq_len_warmup" in method:  # each method is recorded with its probe
        assert "seq_len" in header
    if "depth_warmup" in method:
        assert "active_blocks" in header


def test_adam_atan2_run_resumes(engine_bench, tmp_path, monkeypatch, run_training):
    import stabench.trainer as trainer

    bench = engine_bench.load(["train.steps=12", "train.warmup_steps=3", "train.probe_every=4",
                               "train.eval_every=12", "train.checkpoint_every=4"])
    reference = run_training(tmp_path / "ref", benchmark=bench, method="adam_atan2", lr=3e-3)
    with crash_at_step(trainer, 8):
        run_training(tmp_path / "run", benchmark=bench, method="adam_atan2", lr=3e-3)
    resumed = run_training(tmp_path / "run", benchmark=bench, method="adam_atan2", lr=3e-3)
    assert resumed["resumed_from_step"] == 4
    assert resumed["final_val_loss"] == reference["final_val_loss"]
