"""WeSaR: weight scaling as reparameterization (Nishida et al., EMNLP 2024, arXiv:2410.05052).

Every weight matrix W of a block (attention q, k, v, out; MLP up, down) and the readout head
is used as W_eff = alpha * W with one trainable scalar gate alpha per matrix. All W start
from one shared N(0, sigma^2), sigma^2 = 4e-5, so their norms are uniform across layers
(the paper's cure for loss spikes: small-norm matrices are the most update-sensitive); the
gate carries the scale the backbone's init needs: alpha_0 = sigma_target / sigma with

    q, k, v, MLP up, head:   sigma_target = sqrt(1 / d)
    attention out:           sigma_target = sqrt(1 / (2 N d))
    MLP down (fan-in 4d):    sigma_target = sqrt(2 / (8 N d))   (in general 2 / (2 N fan_in))

d = d_model, N = n_layers. The token and position embeddings have alpha = 1 (no gate) and
are drawn from the same N(0, sigma^2) (arg ``embedding_init: backbone`` keeps the engine's
N(0, 1/d) instead).

Choices the paper leaves open:
- Gate LR: ``gate_lr_mult`` = 1, the gates train with the weights' LR. Under Adam a scalar
  moves by about lr per step, i.e. a relative change lr / alpha with alpha = 10 to 100 here,
  so gates adapt slowly and need no extra damping; a separate factor is an arg for sweeps.
- Gates are tagged with role "gate": no weight decay on them; W keeps its decay.
- Raw W are plain (untruncated) normal; the implementation is a
  ``torch.nn.utils.parametrize`` parametrization holding alpha (one per member: shape
  (members, 1, 1)), so checkpoints store W and alpha separately and other methods see a
  plain parametrized Linear.
Probe ``wesar_gates``: the gate value of every matrix, columns ``gate/<module>``.

It changes what the peak LR means: Adam moves each raw W by about lr per step, so the
effective weight alpha * W moves by about alpha * lr, 10 to 100 times the baseline's step at
the same peak LR. Its LR sensitivity is therefore flagged as not comparable with the
baseline's (its good LRs sit lower on the grid).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from stabench.contract import Probe, ProbeFamily
from stabench.model import ROLE_ATTRIBUTE

VERSION = "1"
CHANGES_LR_MEANING = True
ARGS = {"sigma2": 4e-5, "gate_lr_mult": 1.0, "embedding_init": "sigma"}
ARG_ALLOWED = {"sigma2": "> 0", "gate_lr_mult": ">= 0", "embedding_init": ("sigma", "backbone")}


class Gate(nn.Module):
    """W -> alpha * W with one trainable scalar alpha per member: alpha (members, 1, 1)."""

    def __init__(self, value: float, members: int = 1, device=None):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((members, 1, 1), float(value), device=device))
        setattr(self.alpha, ROLE_ATTRIBUTE, "gate")

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return self.alpha * weight


def target_stds(model) -> dict[str, float]:
    """module name -> the backbone's init std of its weight (the gates' sigma_target)."""
    d, n_layers = model.tok_emb.embedding_dim, len(model.blocks)
    targets = {"head": math.sqrt(1.0 / d)}
    for i, block in enumerate(model.blocks):
        for name in ("q", "k", "v"):
            targets[f"blocks.{i}.attn.{name}"] = math.sqrt(1.0 / d)
        targets[f"blocks.{i}.mlp.up"] = math.sqrt(1.0 / d)
        targets[f"blocks.{i}.attn.out"] = math.sqrt(1.0 / (2 * n_layers * block.attn.out.in_features))
        targets[f"blocks.{i}.mlp.down"] = math.sqrt(2.0 / (2 * n_layers * block.mlp.down.in_features))
    return targets


def gated_modules(model) -> dict[str, nn.Module]:
    return {name: module for name, module in model.named_modules()
            if parametrize.is_parametrized(module, "weight")
            and any(isinstance(p, Gate) for p in module.parametrizations.weight)}


def _gate(module: nn.Module) -> Gate:
    return next(p for p in module.parametrizations.weight if isinstance(p, Gate))


def configure(config, args):
    if args["embedding_init"] not in ("sigma", "backbone"):
        raise ValueError(f"wesar: embedding_init {args['embedding_init']!r}; valid: 'sigma', 'backbone'")
    if args["sigma2"] <= 0:
        raise ValueError(f"wesar: sigma2 must be > 0, got {args['sigma2']}")


@torch.no_grad()
def transform_model(model, config, args):
    sigma = math.sqrt(args["sigma2"])
    modules = dict(model.named_modules())
    for name, target in target_stds(model).items():
        module = modules[name]
        if parametrize.is_parametrized(module, "weight"):
            raise ValueError(f"wesar: {name}.weight is already parametrized by another method; list wesar first")
        nn.init.normal_(module.weight, std=sigma)
        parametrize.register_parametrization(module, "weight",
                                             Gate(target / sigma, model.members, device=module.weight.device))
    if args["embedding_init"] == "sigma":
        nn.init.normal_(model.tok_emb.weight, std=sigma)
        nn.init.normal_(model.pos_emb.weight, std=sigma)


def param_options(model, config, args):
    if args["gate_lr_mult"] == 1.0:
        return {}
    gates = {id(_gate(module).alpha) for module in gated_modules(model).values()}
    return {name: {"lr_mult": args["gate_lr_mult"]} for name, p in model.named_parameters() if id(p) in gates}


def probes(args):
    def wesar_gates(ctx):
        return {f"gate/{name}": _gate(module).alpha.detach().reshape(-1)
                for name, module in gated_modules(ctx.model).items()}
    return {"wesar_gates": Probe(wesar_gates, ProbeFamily("WeSaR gates alpha (mean over matrices)"))}
