"""muP for Adam in the abc-parameterization of Everett et al. (ICML 2024, arXiv:2407.05872).

Everett et al. write every layer l as W_l = n^-a_l * w_l with w_l ~ N(0, n^-2b_l) and Adam
LR eta_l proportional to n^-c_l (n = width). Their Table 1 muP, for Adam, full alignment:

    layer       multiplier a   init b   Adam LR c
    embedding   -1/2           1/2      1/2
    hidden       0             1/2      1
    readout      1/2           1/2      1/2

(``EXPONENTS`` below). Constants are fixed at a base width n0 and the exponents carry them to
width n = d_model: with r = n / n0, each layer gets multiplier r^-a, raw-weight std
std0 * r^-b and LR multiplier r^-c, where std0 is the baseline recipe's std at the base
width (embedding 1/sqrt(n0), hidden 1/sqrt(fan_in at n0), readout 1/sqrt(n0)). So at the base
width the method is exactly the baseline, and at width n the effective embedding std stays
1/sqrt(n0), the effective readout std is sqrt(n0)/n (Wortsman's full-muP readout), hidden
LRs fall as 1/r, embedding and readout LRs as 1/sqrt(r).

Base width n0: arg ``base_width``, else the smallest d_model of the benchmark's sizes (found
by ``configure`` and recorded in the args).
Choices: multipliers are constant ``torch.nn.utils.parametrize`` factors on tok_emb, pos_emb
(the learned positions count as an embedding) and head, registered only where r^-a != 1;
raw weights are rescaled from the engine's draw (factor 1 with the table above); norm gains
and other vectors keep LR multiplier 1; the attention scale stays 1/sqrt(d_head) (the head
dimension is fixed across widths in this benchmark, so 1/d_head would only change a
constant); queries are not zero-initialized (that is Wortsman's "full" muP, not Everett's).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from stabench.model import Embedding, Linear, parameter_roles
from stabench.methods import base_width as shared_base_width

VERSION = "1"
CHANGES_LR_MEANING = True
ARGS = {"base_width": None}
ARG_TYPES = {"base_width": (int, None)}
ARG_ALLOWED = {"base_width": ">= 1"}
EXPONENTS = {
    "embedding": {"a": -0.5, "b": 0.5, "c": 0.5},
    "hidden": {"a": 0.0, "b": 0.5, "c": 1.0},
    "readout": {"a": 0.5, "b": 0.5, "c": 0.5},
}


def configure(config, args):
    """Record the base width (arg, else the benchmark's smallest d_model) in the args, so it is
    part of the run's identity: adding a smaller size to the benchmark retrains this run."""
    args["base_width"] = shared_base_width(config, args.get("base_width"))


def base_width(config: dict, args: dict) -> int:
    return args["base_width"]


class Multiplier(nn.Module):
    """A constant (not trained) multiplier on a weight."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = float(factor)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor:g}"


def layer_modules(model) -> list[tuple[str, nn.Module, str]]:
    """(module name, module, layer type) for every module whose weight has an Everett layer type."""
    roles = parameter_roles(model)
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, (Linear, Embedding)):
            continue
        key = f"{name}.parametrizations.weight.original" if parametrize.is_parametrized(module, "weight") \
            else f"{name}.weight"
        role = roles.get(key)
        if role in EXPONENTS:
            out.append((name, module, role))
    return out


def weight_name(name: str, module: nn.Module) -> str:
    if parametrize.is_parametrized(module, "weight"):
        return f"{name}.parametrizations.weight.original"
    return f"{name}.weight"


def _std_at_base(module: nn.Module, role: str, n0: int, n: int) -> tuple[float, float]:
    """(baseline std at the base width, baseline std at this width) of a module's weight."""
    if role == "embedding":
        return 1 / math.sqrt(n0), 1 / math.sqrt(n)
    fan_in = module.in_features
    return 1 / math.sqrt(fan_in * n0 / n), 1 / math.sqrt(fan_in)


@torch.no_grad()
def transform_model(model, config, args):
    n, n0 = int(config["model"]["d_model"]), base_width(config, args)
    r = n / n0
    for name, module, role in layer_modules(model):
        exp = EXPONENTS[role]
        std0, std_now = _std_at_base(module, role, n0, n)
        scale = std0 * r ** -exp["b"] / std_now
        if scale != 1.0:
            weight = module.parametrizations.weight.original if parametrize.is_parametrized(module, "weight") \
                else module.weight
            weight.mul_(scale)
        multiplier = r ** -exp["a"]
        if multiplier != 1.0:
            parametrize.register_parametrization(module, "weight", Multiplier(multiplier))


def param_options(model, config, args):
    n, n0 = int(config["model"]["d_model"]), base_width(config, args)
    r = n / n0
    return {weight_name(name, module): {"lr_mult": r ** -EXPONENTS[role]["c"]}
            for name, module, role in layer_modules(model)}
