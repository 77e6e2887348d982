"""The interventions of Wortsman et al. (2023) as methods: weight decay forms, warm-up length,
muParam (simple and full), AdamW eps; each checked against hand-computed values."""

from __future__ import annotations

import copy
import csv
import math

import pytest
import torch

from stabench.config import run_config, validate
from stabench.methods import MethodError, load_module, load_stack
from stabench.model import GPT, parameter_roles
from stabench.optim import build_optimizer, learning_rate, param_groups
from stabench.trainer import prepare_config

PEAK = 1e-2
HIDDEN = ("attn.q.weight", "attn.k.weight", "attn.v.weight", "attn.out.weight", "mlp.up.weight", "mlp.down.weight")


def bench_with_sizes(engine_bench, **extra_sizes) -> dict:
    bench = copy.deepcopy(engine_bench.benchmark)
    bench["sizes"].update(extra_sizes)
    return validate(bench)


def setup(bench, use, args=None, size="tiny", lr=PEAK, vocab=512, drop_sizes=False):
    """(config after configure hooks, model after transform_model hooks, stack)."""
    config = run_config(bench, method="x", size=size, lr=lr, seed=0)
    config["method_spec"] = {"use": use, "args": args or {}}
    if drop_sizes:
        config.pop("benchmark_sizes", None)
    stack = load_stack(use, args)
    config = prepare_config(config, stack, vocab)
    torch.manual_seed(0)
    model = GPT(**config["model"])
    for hook, hook_args in stack.composed("transform_model"):
        hook(model, config, hook_args)
    return config, model, stack


def lr_mults(model, config, stack) -> dict[str, float]:
    return {name: g["lr_mult"] for g in param_groups(model, config, stack) for name in g["names"]}


# ---- muParam (simple) ---------------------------------------------------------------------

@pytest.mark.parametrize("size, d_model, n_heads", [("wide", 64, 4), ("wider", 96, 6)])
def test_mup_simple_hidden_lr_is_base_fan_in_over_fan_in(engine_bench, size, d_model, n_heads):
    bench = bench_with_sizes(engine_bench, **{size: {"d_model": d_model, "n_layers": 2, "n_heads": n_heads}})
    config, model, stack = setup(bench, "mup_simple", size=size)
    assert config["mup"] == {"base_width": 32, "d_model": d_model}  # tiny (d=32) is the smallest
    mults = lr_mults(model, config, stack)
    fan_in = {"attn.q.weight": d_model, "attn.out.weight": d_model, "mlp.up.weight": d_model,
              "mlp.down.weight": 4 * d_model}
    base_fan_in = {"attn.q.weight": 32, "attn.out.weight": 32, "mlp.up.weight": 32, "mlp.down.weight": 128}
    for layer in range(2):
        for suffix in fan_in:
            assert mults[f"blocks.{layer}.{suffix}"] == pytest.approx(base_fan_in[suffix] / fan_in[suffix])
        for suffix in HIDDEN:
            assert mults[f"blocks.{layer}.{suffix}"] == pytest.approx(32 / d_model)
    roles = parameter_roles(model)
    for name, mult in mults.items():
        if roles[name] != "hidden":
            assert mult == 1.0, name  # tok_emb, pos_emb, head, LayerNorm gains
    assert {roles[n] for n, m in mults.items() if m == 1.0} == {"embedding", "readout", "norm"}
    # the groups reach the optimizer with their multipliers
    optimizer = build_optimizer(model, config, stack, torch.device("cpu"))
    by_param = {id(p): g["lr_mult"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert by_param[id(named["blocks.1.mlp.down.weight"])] == pytest.approx(32 / d_model)
    assert by_param[id(named["head.weight"])] == 1.0


def test_mup_simple_base_width_arg_and_fallback(engine_bench):
    config, model, stack = setup(engine_bench.benchmark, "mup_simple", {"mup_simple": {"base_width": 16}})
    assert lr_mults(model, config, stack)["blocks.0.attn.k.weight"] == pytest.approx(0.5)
    # the smallest size is the run's own: no change
    config, model, stack = setup(engine_bench.benchmark, "mup_simple")
    assert set(lr_mults(model, config, stack).values()) == {1.0}
    # without benchmark_sizes in the config, the run's own width is the base
    bench = bench_with_sizes(engine_bench, small={"d_model": 16, "n_layers": 1, "n_heads": 1})
    config, model, stack = setup(bench, "mup_simple", drop_sizes=True)
    assert config["mup"]["base_width"] == 32
    assert set(lr_mults(model, config, stack).values()) == {1.0}
    with pytest.raises(MethodError, match="base_width"):
        setup(engine_bench.benchmark, "mup_simple", {"mup_simple": {"base_width": 0}})


def test_mup_changes_lr_meaning_and_others_do_not():
    assert load_module("mup_simple").CHANGES_LR_MEANING is True
    assert load_module("mup_full").CHANGES_LR_MEANING is True
    for name in ("coupled_weight_decay", "independent_weight_decay", "no_weight_decay", "warmup_length", "adam_eps"):
        assert not getattr(load_module(name), "CHANGES_LR_MEANING", False), name


# ---- muParam (full) -----------------------------------------------------------------------

def test_mup_full_init_scale_and_lr(engine_bench):
    bench = bench_with_sizes(engine_bench, wide={"d_model": 64, "n_layers": 2, "n_heads": 4})
    config, model, stack = setup(bench, "mup_full+qk_layernorm", size="wide")
    want_std = math.sqrt(32) / 64  # sqrt(base_fan_in) / fan_in = 0.0884; baseline would be 1/8
    assert model.head.weight.std().item() == pytest.approx(want_std, rel=0.03)
    for block in model.blocks:
        assert torch.count_nonzero(block.attn.q.weight) == 0
        assert torch.count_nonzero(block.attn.k.weight) > 0
        assert block.attn.scale == pytest.approx(1 / 16)  # 1 / d_head, d_head = 64 / 4
    mults = lr_mults(model, config, stack)
    assert mults["blocks.0.mlp.down.weight"] == pytest.approx(0.5)
    assert mults["head.weight"] == 1.0
    # zero queries: every attention row starts uniform; the model runs and trains
    idx = torch.randint(0, 512, (2, 8))
    logits = model(idx)
    assert torch.isfinite(logits).all()
    logits.logsumexp(-1).mean().backward()
    assert model.blocks[0].attn.q.weight.grad.abs().sum() > 0


def test_mup_full_at_base_width_keeps_baseline_head_std(engine_bench):
    config, model, _ = setup(engine_bench.benchmark, "mup_full")
    assert model.head.weight.std().item() == pytest.approx(1 / math.sqrt(32), rel=0.03)


# ---- weight decay -------------------------------------------------------------------------

def _decays(model, config, stack) -> tuple[set, set]:
    optimizer = build_optimizer(model, config, stack, torch.device("cpu"))
    roles = parameter_roles(model)
    named = {id(p): n for n, p in model.named_parameters()}
    matrix, other = set(), set()
    for g in optimizer.param_groups:
        for p in g["params"]:
            (matrix if roles[named[id(p)]] in ("embedding", "hidden", "readout") else other).add(g["weight_decay"])
    return matrix, other


@pytest.mark.parametrize("args, wd", [(None, 0.1), ({"coupled_weight_decay": {"weight_decay": 1e-3}}, 1e-3)])
def test_coupled_weight_decay_reaches_optimizer(engine_bench, args, wd):
    config, model, stack = setup(engine_bench.benchmark, "coupled_weight_decay+qk_layernorm", args)
    assert config["optimizer"]["decay_mode"] == "coupled"
    matrix, other = _decays(model, config, stack)
    assert len(matrix) == 1 and matrix.pop() == pytest.approx(wd) and other == {0.0}  # AdamW's own coefficient


@pytest.mark.parametrize("args, wd", [(None, 1e-4), ({"independent_weight_decay": {"weight_decay": 1e-3}}, 1e-3)])
def test_independent_weight_decay_reaches_optimizer(engine_bench, args, wd):
    bench = engine_bench.load(["optimizer.decay_mode=coupled", "optimizer.weight_decay=0.5"])
    config, model, stack = setup(bench, "independent_weight_decay", args)
    assert config["optimizer"] == {**config["optimizer"], "decay_mode": "independent", "weight_decay": wd}
    matrix, other = _decays(model, config, stack)
    # AdamW decays by lr * coefficient, so the coefficient wd / peak gives (lr / peak) * wd
    assert len(matrix) == 1 and matrix.pop() == pytest.approx(wd / PEAK) and other == {0.0}


def test_no_weight_decay_is_zero_everywhere(engine_bench):
    for mode in ("independent", "coupled"):
        bench = engine_bench.load([f"optimizer.decay_mode={mode}", "optimizer.weight_decay=0.1"])
        config, model, stack = setup(bench, "no_weight_decay+qk_layernorm+z_loss")
        matrix, other = _decays(model, config, stack)
        assert matrix == {0.0} and other == {0.0}


# ---- AdamW eps ----------------------------------------------------------------------------

@pytest.mark.parametrize("args, eps", [(None, 1e-15), ({"adam_eps": {"eps": 1e-6}}, 1e-6)])
def test_adam_eps_reaches_every_group(engine_bench, args, eps):
    bench = bench_with_sizes(engine_bench, small={"d_model": 16, "n_layers": 1, "n_heads": 1})
    config, model, stack = setup(bench, "adam_eps+mup_simple", args)  # several lr_mult groups
    optimizer = build_optimizer(model, config, stack, torch.device("cpu"))
    assert len(optimizer.param_groups) > 1
    assert [g["eps"] for g in optimizer.param_groups] == [eps] * len(optimizer.param_groups)
    assert optimizer.defaults["eps"] == eps


# ---- warm-up length -----------------------------------------------------------------------

@pytest.mark.parametrize("args, warmup", [(None, 8), ({"steps": 7}, 7), ({"fraction": 0.25}, 10),
                                          ({"steps": 0, "fraction": 0.5}, 0)])
def test_warmup_length(engine_bench, args, warmup):
    config, _, stack = setup(engine_bench.benchmark, "warmup_length", {"warmup_length": args} if args else None)
    assert config["train"]["steps"] == 40
    assert config["train"]["warmup_steps"] == warmup
    if warmup:
        assert learning_rate(warmup, 0, config, stack) == pytest.approx(PEAK)
        assert learning_rate(1, 0, config, stack) == pytest.approx(PEAK / warmup)


@pytest.mark.parametrize("args, needle", [({"steps": 41}, "exceed"), ({"fraction": 1.5}, "fraction"),
                                          ({"steps": 2.5}, "steps")])
def test_warmup_length_bad_args(engine_bench, args, needle):
    with pytest.raises(MethodError, match=needle):
        setup(engine_bench.benchmark, "warmup_length", {"warmup_length": args})


# ---- end to end ---------------------------------------------------------------------------

def test_mup_simple_qk_layernorm_z_loss_trains(engine_bench, run_training, tmp_path):
    bench = bench_with_sizes(engine_bench, small={"d_model": 16, "n_layers": 2, "n_heads": 1})
    metrics = run_training(tmp_path, benchmark=bench, method="mup_simple+qk_layernorm+z_loss", lr=1e-2)
    assert not metrics["diverged"] and metrics["steps"] == 40
    assert math.isfinite(metrics["final_val_loss"]) and metrics["final_val_loss"] < metrics["init_loss"]
    assert metrics["config"]["mup"] == {"base_width": 16, "d_model": 32}
    assert [m["name"] for m in metrics["methods"]] == ["mup_simple", "qk_layernorm", "z_loss"]
    assert metrics["methods"][0]["changes_lr_meaning"] is True
    # the Wortsman probes are in every probe row of the history
    with open(tmp_path / "history.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["loss"]]
    assert [int(r["step"]) for r in rows] == [10, 20, 30, 40]
    for row in rows:
        for key in ("grad_rms_mean", "update_rms_mean", "adam_v_max", "adam_v_norm",
                    "grad_rms/blocks.0.attn.q.weight", "update_rms/blocks.1.mlp.down.weight"):
            assert 0 < float(row[key]) < math.inf, key
