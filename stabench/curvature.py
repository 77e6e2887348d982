"""Preconditioned curvature probe (Ramasinghe et al. 2026, "Taming Curvature").

Measures lambda_max, the top (algebraically largest) eigenvalue of P^-1/2 H P^-1/2 for every
member, every ``probes.curvature_every`` steps:

- H is the Hessian of the loss the run optimizes (method loss terms such as z-loss
  included) on the batch of the step just taken, with the weights after that step's update;
- P is the diagonal preconditioner of the run's own update rule (``UpdateRule
  .preconditioner``: sqrt(v_hat) + eps for AdamW; a method's own rule brings its own) divided
  by each element's lr_mult, so eta_t * lambda_max is the quantity the update sees. Adam at
  LR eta_t is stable on a quadratic while eta_t * lambda_max < (2 + 2 beta1) / (1 - beta1) =
  38 at beta1 = 0.9 (Cohen et al. 2022); the probe writes ``lr_lambda_max`` beside it;
- elements the optimizer has never updated (second moment exactly 0: the embedding row of a
  token not yet seen, a locked block) are left out of the operator: their P is eps, an
  artefact that would dominate the reading, not a direction the optimizer moves (the
  rationale and the measurements are in ``stabench.eigen``);
- the operator is built in float64 (a float32 Hessian-vector product can be wrong as a whole
  at saturated attention; ``stabench.eigen``), with the math SDPA kernel (the fused kernels
  have no double backward), no autocast, and ``p.grad`` untouched.

Solver: Lanczos (``stabench.eigen.top_eigenpairs``), all members in lockstep on one
Hessian-vector product per step (the members' losses are summed, so H is block diagonal),
warm-started from each member's previous eigenvector (kept on the model object, keyed by the
member's peak LR and seed; lost on resume, so the first reading after one starts cold). A
reading converges when its residual bound is below ``TOL`` relative; one that does not within
``probes.curvature_max_products`` products is written as NaN with ``curvature_converged`` 0 and the products it
used, never as a number.
"""

from __future__ import annotations

import math

import torch

from .contract import Context, ProbeFamily
from .eigen import PreconditionedHessian, top_eigenpairs, updated_mask

ADAM_THRESHOLD = 38.0   # (2 + 2 beta1) / (1 - beta1) at beta1 = 0.9
TOL = 1e-3
STATE_ATTRIBUTE = "_stabench_curvature"


def adam_threshold(beta1: float) -> float:
    """Stability threshold of eta * lambda_max for Adam with momentum beta1 (Cohen et al. 2022)."""
    return (2.0 + 2.0 * beta1) / (1.0 - beta1)


def math_attention():
    """The math SDPA kernel: the fused kernels (flash on CPU and CUDA) have no double backward."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel(SDPBackend.MATH)


def preconditioner(ctx: Context, names: list[str]) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
    """(P^-1/2, mask of updated elements) per parameter, in float64; None if the rule has no P."""
    inv_sqrt, masks = [], []
    for name in names:
        view = ctx.optimizer.param(name)
        p = ctx.optimizer.rule.preconditioner(view.state, view.hyper)
        if p is None:
            return None
        lr_mult = view.lr_mult if isinstance(view.lr_mult, float) else view.lr_mult.double()
        shape = ctx.model.get_parameter(name).shape
        effective = (p.double() / lr_mult).expand(shape)
        second = view.state.get("exp_avg_sq")
        mask = updated_mask(second).expand(shape) if second is not None else torch.isfinite(effective) & (effective > 0)
        inv_sqrt.append(torch.where(mask, effective.clamp_min(1e-300).rsqrt(), torch.zeros((), dtype=torch.float64,
                                                                                              device=p.device)))
        masks.append(mask)
    return inv_sqrt, masks


def measure(ctx: Context) -> dict | None:
    """One warm-started lambda_max reading per member (None without optimizer state)."""
    if ctx.optimizer is None or ctx.objective is None:
        return None
    params = dict(ctx.model.named_parameters())
    names = [n for n in ctx.optimizer.params() if params[n].requires_grad]
    if not names:
        return None
    built = preconditioner(ctx, names)
    if built is None:
        return None
    inv_sqrt, masks = built
    k = ctx.members
    exact = {n: params[n].detach().double().requires_grad_(True) for n in names}
    with torch.enable_grad(), math_attention():
        loss = ctx.objective(exact).sum()
        op = PreconditionedHessian(loss, [exact[n] for n in names], inv_sqrt, masks, members=k)
        store = ctx.model.__dict__.setdefault(STATE_ATTRIBUTE, {})
        keys = list(zip(ctx.peak_lrs, ctx.seeds))
        generator = torch.Generator().manual_seed(int(ctx.seeds[0]) * 100003 + ctx.step)
        rows = []
        for key in keys:
            stored = store.get(key)
            if stored is not None and stored.shape == (op.numel,) and bool(stored.abs().sum() > 0):
                rows.append(stored.to(loss.device, torch.float64))
            else:
                rows.append(torch.randn(op.numel, generator=generator, dtype=torch.float64).to(loss.device))
        v0 = op.restrict(torch.stack(rows))
        if bool((v0.norm(dim=1) == 0).any()):
            return None  # no element updated yet
        results = top_eigenpairs(op, v0, max_products=int(ctx.config["probes"]["curvature_max_products"]), tol=TOL)
    for key, result in zip(keys, results):
        store[key] = result.vector.detach()
    lam = torch.tensor([r.value for r in results], dtype=torch.float64)
    lr = ctx.lr.detach().double().cpu()
    beta1 = ctx.optimizer.param(names[0]).hyper.betas[0]
    return {"lambda_max": lam, "lr_lambda_max": lr * lam,
            "curvature_converged": torch.tensor([float(r.converged) for r in results]),
            "curvature_hvps": torch.tensor([float(r.products) for r in results]),
            "curvature_residual": torch.tensor([r.residual if math.isfinite(r.residual) else math.nan
                                                for r in results]),
            "adam_threshold": adam_threshold(beta1)}


FAMILY = ProbeFamily("lr x preconditioned curvature (Adam threshold 38)", log_y=True, headline="lr_lambda_max",
                     threshold=ADAM_THRESHOLD)


def curvature_probe(ctx: Context) -> dict:
    """lambda_max of the preconditioned Hessian every ``probes.curvature_every`` steps: the
    engine's probe 'curvature' (``stabench.probes.ENGINE_PROBES``, drawn as ``FAMILY``)."""
    every = int(ctx.config["probes"].get("curvature_every", 0) or 0)
    if every <= 0 or ctx.step % every:
        return {}
    return measure(ctx) or {}
