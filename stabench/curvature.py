"""Preconditioned curvature probe (Ramasinghe et al. 2026, "Taming Curvature").

Measures lambda_max, the top eigenvalue of the Adam-preconditioned Hessian
P^-1/2 H P^-1/2 with P = diag(sqrt(v_hat) + eps) read from the optimizer's state
(``exp_avg_sq`` with bias correction 1 - beta2^step, the group's ``eps``), by power iteration
on Hessian-vector products. Adam at peak-schedule LR eta_t is stable on a quadratic while
eta_t * lambda_max < (2 + 2 beta1) / (1 - beta1) = 38 for beta1 = 0.9 (Cohen et al. 2022);
the probe writes ``lr_lambda_max`` = eta_t * lambda_max beside that threshold.

Choices:
- Per-layer LR multipliers (``lr_mult`` of a group) are folded into P (P / lr_mult), so
  eta_t * lambda_max is the quantity Adam's update actually sees; with lr_mult = 1 this is the
  plain P above. An optimizer group without ``eps`` uses eps = 0.
- Only trainable parameters that already have Adam state enter (a parameter without state,
  e.g. one just unlocked, is held fixed); no state at all: no measurement.
- Warm start (the paper's estimator): the eigenvector of the previous measurement is kept on
  the model object (``model._stabench_probe_state['curvature_v']``, keyed by parameter name,
  never in module globals) and seeds the next power iteration. The first measurement runs up
  to ``FIRST_ITERS`` = 20 products, later ones ``probes.curvature_iters`` (default 5); both
  stop early, after at least ``MIN_ITERS`` = 3 products, once the Rayleigh quotient changes by
  less than ``TOL`` = 1e-3 (relative).
- lambda_max is the largest (most positive) eigenvalue, the one that limits stability. Power
  iteration finds the one of largest magnitude; when that estimate comes out negative (a
  negative direction dominates, as happens early in training), a second power iteration
  from the same start runs on A - lam * I, whose dominant eigenvalue is the top one shifted,
  and ``curvature_hvps`` counts the products of both passes.
- The HVPs use their own autograd graph (torch.autograd.grad, create_graph=True) on this
  probe step's batch with the trainer's autocast; ``p.grad`` is not touched, the global RNG is
  not used (the random start vector has its own generator) and attention-logit capture is
  paused so other probes' columns are unchanged. The forward uses the math SDPA kernel: the
  fused (flash) kernels, on CPU as on CUDA, have no double backward.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .probes import ProbeContext, register_probe

ADAM_THRESHOLD = 38.0   # (2 + 2 beta1) / (1 - beta1) at beta1 = 0.9
FIRST_ITERS = 20
MIN_ITERS = 3   # two equal Rayleigh quotients in a row can still be far from converged
TOL = 1e-3
STATE_ATTRIBUTE = "_stabench_probe_state"

Vector = list[torch.Tensor]


def adam_threshold(beta1: float) -> float:
    """Stability threshold of eta * lambda_max for Adam with momentum beta1 (Cohen et al. 2022)."""
    return (2.0 + 2.0 * beta1) / (1.0 - beta1)


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum((x.double() * y.double()).sum() for x, y in zip(a, b))


def _norm(a: Sequence[torch.Tensor]) -> torch.Tensor:
    return _dot(a, a).sqrt()


def top_eigenvalue(hvp_fn: Callable[[Vector], Vector], v0: Sequence[torch.Tensor], iters: int,
                   tol: float = TOL, shift: float = 0.0) -> tuple[float, Vector, int]:
    """Power iteration: (Rayleigh quotient, next unit vector, products used).

    ``hvp_fn(v)`` returns A v for a symmetric operator A, ``v`` a list of tensors; the
    iteration runs on A - shift * I and the returned estimate is of A (shift added back).
    Stops after ``iters`` products or when the estimate changes by less than ``tol`` relative.
    """
    norm = _norm(v0)
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError("start vector is zero or not finite")
    v = [x / norm.to(x.dtype) for x in v0]
    lam, previous, products = float("nan"), None, 0
    for _ in range(max(int(iters), 1)):
        w = hvp_fn(v)
        products += 1
        if shift:
            w = [x - shift * y for x, y in zip(w, v)]
        lam = float(_dot(v, w)) + shift
        w_norm = _norm(w)
        if not torch.isfinite(w_norm) or w_norm == 0:
            break
        v = [x / w_norm.to(x.dtype) for x in w]
        if previous is not None and products >= MIN_ITERS and abs(lam - previous) <= tol * abs(lam):
            break
        previous = lam
    return lam, v, products


def preconditioned_hvp(loss: torch.Tensor, params: Sequence[torch.Tensor],
                       inv_sqrt_p: Sequence[torch.Tensor]) -> Callable[[Vector], Vector]:
    """v -> P^-1/2 H P^-1/2 v for the Hessian H of ``loss`` w.r.t. ``params``.

    ``inv_sqrt_p`` holds P^-1/2 per parameter (same shapes). The gradient graph is built once
    (create_graph=True) and reused by every product; ``p.grad`` is left alone.
    """
    grads = torch.autograd.grad(loss, list(params), create_graph=True)

    def hvp(v: Vector) -> Vector:
        u = [x * s for x, s in zip(v, inv_sqrt_p)]
        hu = torch.autograd.grad(grads, list(params), grad_outputs=u, retain_graph=True, allow_unused=True)
        return [(torch.zeros_like(s) if h is None else h.detach()) * s for h, s in zip(hu, inv_sqrt_p)]

    return hvp


def adam_preconditioner(optimizer: torch.optim.Optimizer, params: Sequence[nn.Parameter]
                        ) -> tuple[list[nn.Parameter], list[torch.Tensor], float]:
    """(params with Adam state, P^-1/2 for each, beta1) from an Adam-like optimizer.

    P = (sqrt(exp_avg_sq / (1 - beta2^step)) + eps) / lr_mult for each parameter's group.
    """
    wanted = {id(p) for p in params}
    kept, inv_sqrt, beta1 = [], [], 0.9
    for group in optimizer.param_groups:
        betas = group.get("betas", (0.9, 0.999))
        beta1 = float(betas[0])
        eps = float(group.get("eps", 0.0) or 0.0)
        lr_mult = float(group.get("lr_mult", 1.0))
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if id(p) not in wanted or "exp_avg_sq" not in state:
                continue
            step = float(state.get("step", 1))
            correction = 1.0 - float(betas[1]) ** max(step, 1.0)
            with torch.no_grad():
                precond = (state["exp_avg_sq"].float() / correction).sqrt() + eps
                precond = (precond / lr_mult).clamp_min(torch.finfo(torch.float32).tiny)
                inv_sqrt.append(precond.rsqrt().to(p.dtype))
            kept.append(p)
    return kept, inv_sqrt, beta1


def math_attention():
    """The math SDPA kernel: the fused kernels (flash on CPU and CUDA) have no double backward."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel(SDPBackend.MATH)


def _start_vector(names: list[str], params: list[nn.Parameter], stored: dict, seed: int) -> Vector:
    generator = torch.Generator().manual_seed(seed)
    v0 = []
    for name, p in zip(names, params):
        previous = stored.get(name)
        if previous is not None and previous.shape == p.shape:
            v0.append(previous.to(p.device, p.dtype))
        else:
            v0.append(torch.randn(p.shape, generator=generator).to(p.device, p.dtype))
    return v0


def measure(ctx: ProbeContext, iters: int | None = None) -> dict[str, float] | None:
    """One warm-started lambda_max estimate on ``ctx``'s model, optimizer and batch (or None)."""
    model = ctx.model
    names_of = {id(p): n for n, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    params, inv_sqrt_p, beta1 = adam_preconditioner(ctx.optimizer, trainable)
    if not params or ctx.batch is None:
        return None
    names = [names_of[id(p)] for p in params]
    state = model.__dict__.setdefault(STATE_ATTRIBUTE, {})
    stored = state.get("curvature_v")
    first = stored is None
    if iters is None:
        iters = FIRST_ITERS if first else int(ctx.config.get("probes", {}).get("curvature_iters", 5))
    v0 = _start_vector(names, params, stored or {}, seed=int(ctx.config.get("seed", 0)) + ctx.step)

    capturing = [(m, m.capturing) for m in model.modules() if hasattr(m, "capturing")]
    for m, _ in capturing:
        m.capturing = False
    try:
        with torch.enable_grad(), math_attention():
            loss = ctx.lm_loss(model, ctx.batch)
            hvp = preconditioned_hvp(loss, params, inv_sqrt_p)
            lam, v, products = top_eigenvalue(hvp, v0, iters, TOL)
            if lam < 0:  # a negative eigenvalue dominates: find the top one of A - lam * I
                lam, v, more = top_eigenvalue(hvp, v0, iters, TOL, shift=lam)
                products += more
    finally:
        for m, flag in capturing:
            m.capturing = flag
    state["curvature_v"] = {n: x.detach() for n, x in zip(names, v)}
    return {"lambda_max": lam, "lr_lambda_max": ctx.lr * lam, "curvature_hvps": products,
            "adam_threshold": adam_threshold(beta1)}


@register_probe("curvature")
def _curvature(ctx: ProbeContext) -> dict[str, float]:
    """lambda_max of the Adam-preconditioned Hessian every ``probes.curvature_every`` steps."""
    every = int(ctx.config.get("probes", {}).get("curvature_every", 0) or 0)
    if every <= 0 or ctx.step % every:
        return {}
    return measure(ctx) or {}
