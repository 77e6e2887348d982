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

from .model import parameter_roles

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


MATRIX_ROLES = ("embedding", "hidden", "readout")


def _matrices(ctx: ProbeContext) -> list[tuple[str, torch.Tensor]]:
    """(name, parameter) of every weight matrix (embedding, hidden, readout), once per probe step."""
    if "matrices" not in ctx.cache:
        roles = parameter_roles(ctx.model)
        ctx.cache["matrices"] = [(n, p) for n, p in ctx.model.named_parameters() if roles[n] in MATRIX_ROLES]
    return ctx.cache["matrices"]


def _rms(t: torch.Tensor) -> torch.Tensor:
    """sqrt(mean(t^2)) in float32, without a float copy of ``t``."""
    return torch.linalg.vector_norm(t, dtype=torch.float32) / t.numel() ** 0.5


def _inner_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # Accelerate's AcceleratedOptimizer wraps it


@register_probe("grad_rms")
def _grad_rms(ctx: ProbeContext) -> dict[str, Any]:
    """Gradient RMS per weight matrix, ``grad_rms/<param>``, and their mean ``grad_rms_mean``.

    Wortsman et al. (section 3.4) see the gradient RMS fall with model size toward Adam's eps,
    which then shrinks the update. The trainer keeps this step's gradients (after clipping)
    until the probes have run; parameters without a gradient (frozen, locked) are skipped.
    """
    row = {f"grad_rms/{name}": _rms(p.grad) for name, p in _matrices(ctx) if p.grad is not None}
    if row:
        row["grad_rms_mean"] = torch.stack(list(row.values())).mean()
    return row


def _float(x: Any) -> Any:
    return x.item() if isinstance(x, torch.Tensor) and x.device.type == "cpu" else x


@register_probe("update_rms")
def _update_rms(ctx: ProbeContext) -> dict[str, Any]:
    """RMS of Adam's unscaled update m_hat / (sqrt(v_hat) + eps) per weight matrix.

    Columns ``update_rms/<param>`` and ``update_rms_mean``. This is the step the LR multiplies
    (weight decay and LR excluded), read from the optimizer state after this step, with the
    bias corrections m_hat = m / (1 - beta1^t), v_hat = v / (1 - beta2^t) and the group's eps.
    It is near 1 while |g| >> eps and falls below 1 once eps dominates sqrt(v_hat). Only for
    torch's Adam and AdamW (fused, foreach or not): other optimizers' updates follow other
    formulas, and a method that brings one can add its own probe.
    """
    inner = _inner_optimizer(ctx.optimizer)
    if type(inner) not in (torch.optim.Adam, torch.optim.AdamW):
        return {}
    group_of = {id(p): g for g in inner.param_groups for p in g["params"]}
    row = {}
    for name, p in _matrices(ctx):
        state, group = inner.state.get(p), group_of.get(id(p))
        if not state or group is None or not {"exp_avg", "exp_avg_sq", "step"} <= state.keys():
            continue
        step = _float(state["step"])  # a tensor in recent torch; on the device when fused
        beta1, beta2 = (_float(b) for b in group["betas"])
        m_hat = state["exp_avg"].float() / (1 - beta1 ** step)
        v_hat = state["exp_avg_sq"].float() / (1 - beta2 ** step)
        row[f"update_rms/{name}"] = _rms(m_hat / (v_hat.sqrt() + group["eps"]))
    if row:
        row["update_rms_mean"] = torch.stack(list(row.values())).mean()
    return row


@register_probe("adam_second_moment")
def _adam_second_moment(ctx: ProbeContext) -> dict[str, Any]:
    """Max and global L2 norm of Adam's second moment v (``exp_avg_sq``) over all parameters.

    The instability signal of Li, Zhang and He (2022): v spikes with (and before) loss spikes.
    Any optimizer that keeps ``exp_avg_sq`` in its state is measured; others give no columns.
    """
    inner = _inner_optimizer(ctx.optimizer)
    moments = [s["exp_avg_sq"] for s in getattr(inner, "state", {}).values()
               if isinstance(s, dict) and isinstance(s.get("exp_avg_sq"), torch.Tensor) and s["exp_avg_sq"].numel()]
    if not moments:
        return {}
    maxes = torch.stack([v.detach().amax().float() for v in moments])
    norms = torch.stack([torch.linalg.vector_norm(v.detach(), dtype=torch.float32) for v in moments])
    return {"adam_v_max": maxes.max(), "adam_v_norm": torch.linalg.vector_norm(norms)}


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
