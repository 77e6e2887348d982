"""Probes: diagnostics recorded to history.csv every ``probe_every`` steps, for every member.

A probe is a ``stabench.contract.Probe``: ``fn(ctx) -> {column: value}`` with values of shape
() or (K,), and the ``ProbeFamily`` the report draws its columns as. The recorder moves every
value to the host in one transfer (one sync per probe step, none on other steps) and splits
it into one row per member. Which probe wrote which column, and the families, go into
metrics.json, so the report draws probe panels from these declarations alone.

The engine's probes are the one explicit list ``ENGINE_PROBES`` at the end of this file
(defined here or in the module it imports, ``stabench.curvature``); adding one is a function
and a line there (docs/architecture.md). A method adds its own through its ``probes`` hook
(``stabench.methods.MethodStack.probes``). Probe names are unique: registering a name twice,
or a method's probe under an engine probe's or another method's name, raises and names both.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from . import curvature
from .contract import Context, Probe, ProbeFamily
from .model import parameter_roles

PROBES: dict[str, Probe] = {}  # name -> probe: ENGINE_PROBES, registered at the end of this file
MATRIX_ROLES = ("embedding", "hidden", "readout")


class ProbeNameError(ValueError):
    """Two probes under one name; the message is one line naming both places."""


def place(fn: Callable) -> str:
    """'module.function' of a probe function, for messages."""
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def register_probe(name: str, family: ProbeFamily | None = None) -> Callable:
    """Decorator: add ``fn`` to ``PROBES`` as probe ``name``. A name already taken by another
    function raises ``ProbeNameError`` naming both (module and function); the same function
    registered again (its module imported again) replaces itself."""
    def decorate(fn: Callable[[Context], dict[str, Any]]) -> Callable:
        taken = PROBES.get(name)
        if taken is not None and place(taken.fn) != place(fn):
            raise ProbeNameError(f"probe {name!r} of {place(fn)} is already registered by {place(taken.fn)}; "
                                 "rename one of them")
        PROBES[name] = Probe(fn, family)
        return fn
    return decorate


def per_member(t: torch.Tensor) -> torch.Tensor:
    """RMS over every dimension but the member one: (K, ...) -> (K,), in float32."""
    flat = t.reshape(t.shape[0], -1)
    return torch.linalg.vector_norm(flat, dim=1, dtype=torch.float32) / flat.shape[1] ** 0.5


def _train_state(ctx: Context) -> dict[str, Any]:
    row = {"loss": ctx.loss, "lr": ctx.lr}
    if ctx.grad_norm is not None:
        row["grad_norm"] = ctx.grad_norm
    return row


def _attention_logits(ctx: Context) -> dict[str, Any]:
    """Max attention logit per layer: Wortsman et al. see divergence once it passes ~1e4."""
    maxima = ctx.cache.get("attn_logit_max")  # (active layers, K), from the probe step's forward
    if maxima is None:
        return {}
    row = {f"attn_logit_max_l{i}": m for i, m in enumerate(maxima)}
    row["attn_logit_max"] = maxima.amax(dim=0)
    return row


def _output_logits(ctx: Context) -> dict[str, Any]:
    """Output-logit divergence (Chowdhery et al.; Wortsman et al. 3.1.2): log Z drifting far from 0,
    and the spread of the output logits (their std over the vocabulary, mean over positions)."""
    log_z = ctx.log_z.reshape(ctx.members, -1)
    logits = [x.detach().float() for x in ctx.member_logits]
    return {"log_z_mean": log_z.mean(dim=1), "log_z_std": log_z.std(dim=1),
            "logit_mean": torch.stack([x.mean() for x in logits]),
            "logit_spread": torch.stack([x.std(dim=-1).mean() for x in logits])}


def matrices(ctx: Context) -> list[str]:
    """Names of every weight matrix (embedding, hidden, readout), once per probe step."""
    if "matrices" not in ctx.cache:
        roles = parameter_roles(ctx.model)
        ctx.cache["matrices"] = [n for n in roles if roles[n] in MATRIX_ROLES]
    return ctx.cache["matrices"]


def _grad_rms(ctx: Context) -> dict[str, Any]:
    """Gradient RMS per weight matrix, ``grad_rms/<param>``, and their mean ``grad_rms_mean``.

    Wortsman et al. (section 3.4) see the gradient RMS fall with model size toward Adam's eps,
    which then shrinks the update. These are this step's gradients after clipping; locked
    parameters (no gradient this step) are skipped.
    """
    params = dict(ctx.model.named_parameters())
    row = {f"grad_rms/{n}": per_member(params[n].grad) for n in matrices(ctx) if params[n].requires_grad}
    if row:
        row["grad_rms_mean"] = torch.stack(list(row.values())).mean(dim=0)
    return row


def _update_rms(ctx: Context) -> dict[str, Any]:
    """RMS of the update rule's unscaled step per weight matrix (for AdamW m_hat / (sqrt(v_hat)
    + eps), near 1 while |g| >> eps, below 1 once eps dominates sqrt(v_hat)); columns
    ``update_rms/<param>`` and ``update_rms_mean``. Rules without a ``direction`` give none."""
    if ctx.optimizer is None:
        return {}
    row = {}
    with_state = set(ctx.optimizer.params())
    for name in matrices(ctx):
        if name in with_state:
            view = ctx.optimizer.param(name)
            direction = ctx.optimizer.rule.direction(view.state, view.hyper)
            if direction is None:
                return {}
            row[f"update_rms/{name}"] = per_member(direction)
    if row:
        row["update_rms_mean"] = torch.stack(list(row.values())).mean(dim=0)
    return row


def _adam_second_moment(ctx: Context) -> dict[str, Any]:
    """Max and global L2 norm of the second moment v (``exp_avg_sq``) over all parameters: the
    instability signal of Li, Zhang and He (2022). Rules without ``exp_avg_sq`` give none."""
    if ctx.optimizer is None or "exp_avg_sq" not in ctx.optimizer.state_names:
        return {}
    names = ctx.optimizer.params()
    if not names:
        return {}
    moments = [ctx.optimizer.param(n).state["exp_avg_sq"].reshape(ctx.members, -1) for n in names]
    maxes = torch.stack([v.amax(dim=1) for v in moments]).amax(dim=0)
    norms = torch.stack([torch.linalg.vector_norm(v, dim=1, dtype=torch.float32) for v in moments])
    return {"adam_v_max": maxes, "adam_v_norm": torch.linalg.vector_norm(norms, dim=0)}


def run_probes(ctx: Context, probes: dict[str, Probe]) -> tuple[list[dict[str, float]], dict[str, str]]:
    """Every probe -> (one row of plain floats per member, column -> probe name).

    One device-to-host copy for all tensor values; a () value is the same for every member.
    """
    values: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for name, probe in probes.items():
        for column, value in probe.fn(ctx).items():
            values[column] = value
            owner[column] = name
    k = ctx.members
    tensors = [c for c, v in values.items() if isinstance(v, torch.Tensor)]
    on_device = [c for c in tensors if values[c].device.type != "cpu"]
    if on_device:  # one transfer for all of them
        stacked = torch.stack([values[c].detach().float().reshape(-1).expand(k) for c in on_device]).cpu()
        values.update(zip(on_device, stacked.tolist()))
    for column in tensors:
        if column not in on_device:
            values[column] = values[column].detach().double().reshape(-1).expand(k).tolist()
    rows = [{"step": ctx.step, "tokens": ctx.tokens} for _ in range(k)]
    for column, value in values.items():
        for i, row in enumerate(rows):
            row[column] = value[i] if isinstance(value, list) else value
    return rows, owner


def all_probes(extra: dict[str, Probe]) -> dict[str, Probe]:
    """The engine's probes, then the methods' (``MethodStack.probes``, whose names are checked
    when the methods load; a name taken by an engine probe raises here as well)."""
    for name, probe in extra.items():
        if name in PROBES:
            raise ProbeNameError(f"probe {name!r} of {place(probe.fn)} is taken by the engine's probe "
                                 f"{place(PROBES[name].fn)}; rename it")
    return {**PROBES, **extra}


def families(probes: dict[str, Probe], owner: dict[str, str]) -> dict[str, dict]:
    """{family id: {title, log_y, headline, threshold, columns}} for metrics.json."""
    out: dict[str, dict] = {}
    for column, probe_name in owner.items():
        family = probes[probe_name].family
        if family is None:
            continue
        entry = out.setdefault(probe_name, {"title": family.title, "log_y": family.log_y,
                                            "headline": family.headline, "threshold": family.threshold,
                                            "columns": []})
        if column not in entry["columns"]:
            entry["columns"].append(column)
    return out


# ---- the engine's probes: one explicit list, in the order their columns appear ---------------

ENGINE_PROBES: tuple[tuple[str, Callable[[Context], dict[str, Any]], ProbeFamily], ...] = (
    ("train", _train_state, ProbeFamily("gradient norm (before clipping)", log_y=True, headline="grad_norm")),
    ("attention_logits", _attention_logits, ProbeFamily("max attention logit", log_y=True,
                                                        headline="attn_logit_max")),
    ("output_logits", _output_logits, ProbeFamily("output log Z (mean over positions)", headline="log_z_mean")),
    ("grad_rms", _grad_rms, ProbeFamily("gradient RMS (mean over matrices)", log_y=True, headline="grad_rms_mean")),
    ("update_rms", _update_rms, ProbeFamily("update RMS (the step the LR multiplies)", log_y=True,
                                            headline="update_rms_mean")),
    ("adam_second_moment", _adam_second_moment, ProbeFamily("Adam second moment: max", log_y=True,
                                                            headline="adam_v_max")),
    ("curvature", curvature.curvature_probe, curvature.FAMILY),
)

for _name, _fn, _family in ENGINE_PROBES:
    register_probe(_name, _family)(_fn)
