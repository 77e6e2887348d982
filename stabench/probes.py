"""Probes: diagnostics recorded to history.csv every ``probe_every`` steps.

A probe is a function ``fn(ctx: ProbeContext) -> {column: value}``; values may be tensors, so
the recorder moves all of them to the host in one transfer (one sync per probe step, none on
other steps). Adding a probe is one decorated function here, or a method's ``probes`` hook.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

ProbeFn = Callable[["ProbeContext"], dict[str, Any]]
PROBES: dict[str, ProbeFn] = {}


def register_probe(name: str) -> Callable[[ProbeFn], ProbeFn]:
    def decorate(fn: ProbeFn) -> ProbeFn:
        PROBES[name] = fn
        return fn
    return decorate


@dataclass
class ProbeContext:
    """What a probe step knows. ``logits`` are the probe step's detached output logits."""

    step: int
    tokens: int
    lr: float
    loss: torch.Tensor          # mean train loss since the previous probe step
    grad_norm: torch.Tensor | None
    model: nn.Module            # unwrapped model, capture was on during this step's forward
    optimizer: torch.optim.Optimizer
    logits: torch.Tensor
    config: dict
    batch: torch.Tensor | None = None   # this step's (B, T+1) token windows, after transform_batch
    autocast: Callable = nullcontext     # the trainer's autocast context, for probes that run forwards
    cache: dict = field(default_factory=dict)

    def lm_loss(self, model: nn.Module | None = None, batch: torch.Tensor | None = None) -> torch.Tensor:
        """Language-model loss of ``model`` on ``batch`` (defaults: this step's), with grad."""
        model, batch = model or self.model, self.batch if batch is None else batch
        with self.autocast():
            logits = model(batch[:, :-1])
        return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())

    @property
    def log_z(self) -> torch.Tensor:
        """logsumexp of the output logits at each position, computed once per probe step."""
        if "log_z" not in self.cache:
            self.cache["log_z"] = torch.logsumexp(self.logits.float(), dim=-1)
        return self.cache["log_z"]


@register_probe("train")
def _train_state(ctx: ProbeContext) -> dict[str, Any]:
    row = {"loss": ctx.loss, "lr": ctx.lr}
    if ctx.grad_norm is not None:
        row["grad_norm"] = ctx.grad_norm
    return row


@register_probe("attention_logits")
def _attention_logits(ctx: ProbeContext) -> dict[str, Any]:
    """Max attention logit per layer: Wortsman et al. see divergence once it passes ~1e4."""
    per_layer = [m for m in ctx.model.attention_max_logits() if m is not None]
    row = {f"attn_logit_max_l{i}": m for i, m in enumerate(per_layer)}
    if per_layer:
        row["attn_logit_max"] = torch.stack(per_layer).max()
    return row


@register_probe("output_logits")
def _output_logits(ctx: ProbeContext) -> dict[str, Any]:
    """Output-logit divergence (Chowdhery et al.; Wortsman et al. 3.2): log Z drifting from 0."""
    log_z = ctx.log_z
    return {"log_z_mean": log_z.mean(), "log_z_std": log_z.std(), "logit_mean": ctx.logits.float().mean()}


def run_probes(ctx: ProbeContext, extra: dict[str, ProbeFn] | None = None) -> dict[str, float]:
    """Run every probe and return plain floats (one device-to-host copy for all tensors)."""
    row: dict[str, Any] = {"step": ctx.step, "tokens": ctx.tokens}
    for fn in list(PROBES.values()) + list((extra or {}).values()):
        row.update(fn(ctx))
    tensor_keys = [k for k, v in row.items() if isinstance(v, torch.Tensor)]
    if tensor_keys:
        values = torch.stack([row[k].detach().float().reshape(()) for k in tensor_keys]).cpu().tolist()
        row.update(zip(tensor_keys, values))
    return row
