"""Parameter groups, AdamW and the learning-rate schedule.

Every parameter group carries ``lr_mult``: the trainer sets ``lr = lr_mult * lr_t`` each step,
so per-layer LR rules (from methods' ``param_options``) compose with any schedule.

Weight decay, following Wortsman et al. (2023): ``coupled`` is AdamW's own form,
p -= lr_t * wd * p; ``independent`` is p -= (lr_t / peak_lr) * wd * p, so decay does not grow
with the peak LR. Both are AdamW with a per-group decay coefficient: the independent form
uses wd / (peak_lr * lr_mult), which makes AdamW's lr * coefficient equal (lr_t / peak) * wd.
Matrices (embedding, hidden, readout) decay by default; norm gains and other vectors do not.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .methods import MethodError, MethodStack
from .model import parameter_roles

DECAYED_ROLES = ("embedding", "hidden", "readout")


def _merge_options(merged: dict, name: str, opts: dict, method: str) -> None:
    for key, value in opts.items():
        if key == "lr_mult":
            merged["lr_mult"] = merged.get("lr_mult", 1.0) * float(value)
        elif key in merged and merged[key] != value:
            raise MethodError(f"method {method!r} sets {key}={value!r} for {name}, "
                              f"which another method set to {merged[key]!r}")
        else:
            merged[key] = value


def parameter_options(model: nn.Module, config: dict, stack: MethodStack) -> dict[str, dict]:
    """Per-parameter optimizer options after every method's ``param_options`` hook."""
    named = dict(model.named_parameters())
    options: dict[str, dict] = {name: {} for name in named}
    owners = [m.name for m in stack.methods if m.hook("param_options")]
    for (hook, args), owner in zip(stack.composed("param_options"), owners):
        for name, opts in hook(model, config, args).items():
            if name not in options:
                raise MethodError(f"method {owner!r}: param_options names unknown parameter {name!r}")
            _merge_options(options[name], name, opts, owner)
    return options


def param_groups(model: nn.Module, config: dict, stack: MethodStack) -> list[dict]:
    """Group parameters by (lr_mult, weight decay, eps) for the optimizer."""
    opt_cfg, peak = config["optimizer"], config["lr"]
    roles = parameter_roles(model)
    groups: dict[tuple, dict] = {}
    options = parameter_options(model, config, stack)
    for name, param in model.named_parameters():
        opts = options[name]
        if opts.get("trainable", True) is False:
            param.requires_grad_(False)
            continue
        lr_mult = float(opts.get("lr_mult", 1.0))
        wd = float(opts.get("weight_decay", opt_cfg["weight_decay"] if roles[name] in DECAYED_ROLES else 0.0))
        if opt_cfg["decay_mode"] == "independent" and wd:
            wd = wd / (peak * lr_mult)
        eps = float(opts.get("eps", opt_cfg["eps"]))
        group = groups.setdefault((lr_mult, wd, eps), {
            "params": [], "names": [], "lr_mult": lr_mult, "weight_decay": wd, "eps": eps})
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def build_adamw(groups: list[dict], config: dict, device: torch.device) -> torch.optim.Optimizer:
    """AdamW, fused where the device supports it (one kernel for all parameters)."""
    opt_cfg = config["optimizer"]
    kwargs = dict(lr=config["lr"], betas=tuple(opt_cfg["betas"]), eps=opt_cfg["eps"])
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(groups, foreach=device.type != "cpu", **kwargs)


def build_optimizer(model: nn.Module, config: dict, stack: MethodStack, device: torch.device):
    groups = param_groups(model, config, stack)
    custom = stack.exclusive("build_optimizer")
    if custom:
        hook, args = custom
        return hook(groups, config, args)
    return build_adamw(groups, config, device)


def warmup_cosine(progress: float, warmup: float, total: float, peak: float, min_lr: float) -> float:
    """LR at ``progress`` (steps or tokens): linear warmup to ``peak``, cosine to ``min_lr``."""
    min_lr = min(min_lr, peak)
    if warmup > 0 and progress < warmup:
        return peak * progress / warmup
    span = max(total - warmup, 1e-12)
    frac = min(max((progress - warmup) / span, 0.0), 1.0)
    return min_lr + 0.5 * (peak - min_lr) * (1 + math.cos(math.pi * frac))


def learning_rate(step: int, tokens: int, config: dict, stack: MethodStack) -> float:
    """Peak-LR schedule value for optimizer step ``step`` (1-based)."""
    custom = stack.exclusive("lr_schedule")
    if custom:
        hook, args = custom
        return config["lr"] * hook(step, tokens, config, args)
    train = config["train"]
    return warmup_cosine(step, train["warmup_steps"], train["steps"], config["lr"], train["min_lr"])
