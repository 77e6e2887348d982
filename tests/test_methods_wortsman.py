"""The interventions of Wortsman et al. (2023) as methods: weight decay forms, warm-up length,
muParam (simple and full), AdamW eps; each checked against hand-computed values."""

from __future__ import annotations

import copy
import csv
import math

import pytest
import torch

from conftest import per_param
from stabench.config import validate
from stabench.ensemble import Ensemble, build_member
from stabench.methods import MethodError, load_module, param_options
from stabench.model import parameter_roles
from stabench.runspec import resolve_run
from stabench.schedule import learning_rates, tokens_before
from stabench.update import AdamW, Optimizer

PEAK = 1e-2
HIDDEN = ("attn.q.weight", "attn.k.weight", "attn.v.weight", "attn.out.weight", "mlp.up.weight", "mlp.down.weight")


def bench_with_sizes(engine_bench, **extra_sizes) -> dict:
    bench = copy.deepcopy(engine_bench.benchmark)
    bench["sizes"].update(extra_sizes)
    return validate(bench)


def setup(bench, use, args=None, size="tiny", lr=PEAK):
    """(resolved config, member model after transform_model hooks, stack, optimizer) of the run
    ``use`` (with method args ``args``) of ``bench``, as the loop builds them."""
    bench = copy.deepcopy(bench)
    bench["methods"] = [{"label": "x", "use": use, "args": args or {}}]
    run = resolve_run(validate(bench), method="x", size=size, lr=lr, seed=0)
    stack = run.stack
    model = build_member(run.config, stack)
    options = param_options(model, run.config, stack)
    optimizer = Optimizer(Ensemble([model]), AdamW(), [run.config], [options])
    return run.config, optimizer.ensemble.model, stack, optimizer


def lr_mults(optimizer) -> dict[str, float]:
    return per_param(optimizer, "lr_mult")


def base_width_of(config: dict, method: str) -> int:
    return next(m for m in config["methods"] if m["name"] == method)["args"]["base_width"]


# ---- muParam (simple) ---------------------------------------------------------------------

@pytest.mark.parametrize("size, d_model, n_heads", [("wide", 64, 4), ("wider", 96, 6)])
def test_mup_simple_hidden_lr_is_base_fan_in_over_fan_in(engine_bench, size, d_model, n_heads):
    bench = bench_with_sizes(engine_bench, **{size: {"d_model": d_model, "n_layers": 2, "n_heads": n_heads}})
    config, model, stack, optimizer = setup(bench, "mup_simple", size=size)
    assert base_width_of(config, "mup_simple") == 32  # tiny (d=32) is the smallest
    assert config["model"]["d_model"] == d_model
    mults = lr_mults(optimizer)
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
    # the multipliers reach the update: the step's LR of an element is lr_t * lr_mult
    view = optimizer.param("blocks.1.mlp.down.weight", torch.tensor([PEAK]))
    assert float(view.hyper.lr.flatten()[0]) == pytest.approx(PEAK * 32 / d_model)
    assert float(optimizer.param("head.weight", torch.tensor([PEAK])).hyper.lr.flatten()[0]) == pytest.approx(PEAK)


def test_mup_simple_base_width_arg_and_default(engine_bench):
    config, _, _, optimizer = setup(engine_bench.benchmark, "mup_simple", {"mup_simple": {"base_width": 16}})
    assert base_width_of(config, "mup_simple") == 16
    assert lr_mults(optimizer)["blocks.0.attn.k.weight"] == pytest.approx(0.5)
    # the smallest size is the run's own: no change
    config, _, _, optimizer = setup(engine_bench.benchmark, "mup_simple")
    assert base_width_of(config, "mup_simple") == 32
    assert set(lr_mults(optimizer).values()) == {1.0}
    # a smaller size in the benchmark is the base of the others
    bench = bench_with_sizes(engine_bench, small={"d_model": 16, "n_layers": 1, "n_heads": 1})
    config, _, _, optimizer = setup(bench, "mup_simple")
    assert base_width_of(config, "mup_simple") == 16
    assert lr_mults(optimizer)["blocks.0.attn.k.weight"] == pytest.approx(0.5)
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
    config, model, stack, optimizer = setup(bench, "mup_full+qk_layernorm", size="wide")
    assert base_width_of(config, "mup_full") == 32
    want_std = math.sqrt(32) / 64  # sqrt(base_fan_in) / fan_in = 0.0884; baseline would be 1/8
    assert model.head.weight.std().item() == pytest.approx(want_std, rel=0.03)
    for block in model.blocks:
        assert torch.count_nonzero(block.attn.q.weight) == 0
        assert torch.count_nonzero(block.attn.k.weight) > 0
        assert block.attn.scale == pytest.approx(1 / 16)  # 1 / d_head, d_head = 64 / 4
    mults = lr_mults(optimizer)
    assert mults["blocks.0.mlp.down.weight"] == pytest.approx(0.5)
    assert mults["head.weight"] == 1.0
    # zero queries: every attention row starts uniform; the model runs and trains
    idx = torch.randint(0, 512, (1, 2, 8))
    logits = model(idx)
    assert torch.isfinite(logits).all()
    logits.logsumexp(-1).mean().backward()
    assert model.blocks[0].attn.q.weight.grad.abs().sum() > 0


def test_mup_full_at_base_width_keeps_baseline_head_std(engine_bench):
    _, model, _, _ = setup(engine_bench.benchmark, "mup_full")
    assert model.head.weight.std().item() == pytest.approx(1 / math.sqrt(32), rel=0.03)


# ---- weight decay -------------------------------------------------------------------------

def _decays(model, optimizer) -> tuple[set, set]:
    """(AdamW-form decay coefficients of the matrices, of everything else)."""
    roles = parameter_roles(model)
    matrix, other = set(), set()
    for name, wd in per_param(optimizer, "weight_decay").items():
        (matrix if roles[name] in ("embedding", "hidden", "readout") else other).add(wd)
    return matrix, other


@pytest.mark.parametrize("args, wd", [(None, 0.1), ({"coupled_weight_decay": {"weight_decay": 1e-3}}, 1e-3)])
def test_coupled_weight_decay_reaches_the_update(engine_bench, args, wd):
    config, model, _, optimizer = setup(engine_bench.benchmark, "coupled_weight_decay+qk_layernorm", args)
    assert config["optimizer"]["decay_mode"] == "coupled"
    matrix, other = _decays(model, optimizer)
    assert len(matrix) == 1 and matrix.pop() == pytest.approx(wd) and other == {0.0}  # AdamW's own coefficient


@pytest.mark.parametrize("args, wd", [(None, 1e-4), ({"independent_weight_decay": {"weight_decay": 1e-3}}, 1e-3)])
def test_independent_weight_decay_reaches_the_update(engine_bench, args, wd):
    bench = engine_bench.load(["optimizer.decay_mode=coupled", "optimizer.weight_decay=0.5"])
    config, model, _, optimizer = setup(bench, "independent_weight_decay", args)
    assert config["optimizer"] == {**config["optimizer"], "decay_mode": "independent", "weight_decay": wd}
    matrix, other = _decays(model, optimizer)
    # AdamW decays by lr * coefficient, so the coefficient wd / peak gives (lr / peak) * wd
    assert len(matrix) == 1 and matrix.pop() == pytest.approx(wd / PEAK) and other == {0.0}


def test_no_weight_decay_is_zero_everywhere(engine_bench):
    for mode in ("independent", "coupled"):
        bench = engine_bench.load([f"optimizer.decay_mode={mode}", "optimizer.weight_decay=0.1"])
        _, model, _, optimizer = setup(bench, "no_weight_decay+qk_layernorm+z_loss")
        matrix, other = _decays(model, optimizer)
        assert matrix == {0.0} and other == {0.0}
        assert optimizer.weight_decay == 0.0  # one float: the update skips the decay


# ---- AdamW eps ----------------------------------------------------------------------------

@pytest.mark.parametrize("args, eps", [(None, 1e-15), ({"adam_eps": {"eps": 1e-6}}, 1e-6)])
def test_adam_eps_reaches_every_element(engine_bench, args, eps):
    bench = bench_with_sizes(engine_bench, small={"d_model": 16, "n_layers": 1, "n_heads": 1})
    config, _, _, optimizer = setup(bench, "adam_eps+mup_simple", args)  # several lr_mults
    assert len(set(lr_mults(optimizer).values())) > 1
    assert config["optimizer"]["eps"] == eps
    assert isinstance(optimizer.eps, float)  # one value for every element of the update
    assert optimizer.eps == pytest.approx(eps, rel=1e-6)


# ---- warm-up length -----------------------------------------------------------------------

@pytest.mark.parametrize("args, warmup", [(None, 8), ({"steps": 7}, 7), ({"fraction": 0.25}, 10),
                                          ({"steps": 0, "fraction": 0.5}, 0)])
def test_warmup_length(engine_bench, args, warmup):
    config, _, stack, _ = setup(engine_bench.benchmark, "warmup_length", {"warmup_length": args} if args else None)
    assert config["train"]["steps"] == 40
    assert config["train"]["warmup_steps"] == warmup
    lrs = learning_rates(config, stack, tokens_before(config, stack))
    if warmup:
        assert lrs[warmup] == pytest.approx(PEAK)
        assert lrs[1] == pytest.approx(PEAK / warmup)
    else:
        assert lrs[1] == pytest.approx(PEAK, rel=1e-2)


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
    assert metrics["methods"][0]["args"] == {"base_width": 16}
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
