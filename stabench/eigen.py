"""Top eigenpair of the optimizer-preconditioned Hessian P^-1/2 H P^-1/2 (Lanczos).

Pure numerics on tensors: nothing here knows the model, the optimizer classes or the probe
context. The integrator builds the operator from a loss with graph, the parameter tensors and
per-element optimizer state, and keeps the returned Ritz vector for the next warm start.

Eigen solver (``top_eigenpair``, ``top_eigenpairs``)
    Lanczos with full reorthogonalization (classical Gram-Schmidt, twice, against every basis
    vector) and thick restart (Wu and Simon 2000: at ``max_basis`` vectors keep the top
    ``keep`` Ritz vectors plus the residual direction), started from the caller's vector (the
    previous reading's Ritz vector). It returns the *algebraically largest* eigenvalue: the
    Ritz values of the projected matrix are sorted and the top one taken, so a dominant
    negative eigenvalue (|lambda_min| >> lambda_max, usual early in training and at high LR)
    does not capture the estimate as it captures power iteration.

    Convergence is judged by a residual bound, never by successive estimates agreeing: for the
    top Ritz pair (theta, x) the Lanczos relation gives ||A x - theta x|| = |beta_j y_j| (y the
    eigenvector of the projected matrix, beta_j the last off-diagonal), and for a symmetric A
    some eigenvalue lies within that distance of theta. A reading is converged once
    ||A x - theta x|| <= tol * |theta| (or <= atol), so its relative error to that eigenvalue is
    at most ``tol``; ``residual`` reports ||A x - theta x|| / |theta|. Ritz values never exceed
    lambda_max (Courant-Fischer), so a converged reading that is not the top eigenvalue can
    only be one whose eigenvector the start vector does not reach at all (a Krylov method sees
    only the part of the spectrum the start vector touches; a random start and any warm start
    with a generic overlap reach the top one). A reading that does not converge within
    ``max_products`` operator products returns ``value`` NaN, ``converged`` False, the products
    spent and its residual; it is never a number that looks like a measurement. The Ritz
    vector is returned either way (a fine warm start for the next reading).

    The basis is kept in float64 by default (``dtype``); the operator is called with vectors in
    the start vector's dtype. Memory: (max_basis + 1) vectors of the operator's length.

Operator (``PreconditionedHessian``)
    v -> S H S v with S = diag(P^-1/2), H the Hessian of a scalar loss with respect to the
    given parameter tensors, by double backward on a gradient graph built once
    (create_graph=True) and reused for every product; ``p.grad`` is never touched. An optional
    element mask restricts the operator to the kept elements (S is zero elsewhere) and
    ``restrict`` zeroes start vectors there, so the solver works on exactly the restricted
    operator. With ``members=K`` every parameter has a leading ensemble dimension K, vectors
    are (K, n) and, the loss being the *sum* of the members' losses, H is block diagonal, so
    ``top_eigenpairs`` solves every member in lockstep on one Hessian-vector product per step.

Preconditioners
    P comes from the run's update rule (``stabench.contract.UpdateRule.preconditioner``): for
    AdamW the update is lr_t * lr_mult * m_hat / (sqrt(v_hat) + eps), so P = (sqrt(v_hat) +
    eps) / lr_mult, v_hat = exp_avg_sq / (1 - beta2^t), and Adam is stable on the local
    quadratic while lr_t * lambda_max(P^-1/2 H P^-1/2) < (2 + 2 beta1) / (1 - beta1) = 38 at
    beta1 = 0.9 (Cohen et al. 2022). Decoupled weight decay adds lr_t * wd to the update's
    Jacobian (1e-4 here) and is ignored. A rule whose P is 0 where v_hat = 0 (no eps) gives an
    infinite P^-1/2 there: such elements must be masked (see below).

Elements the optimizer has never updated (``updated_mask``): left out of the operator
    An element whose second moment is exactly zero (v_hat = 0: every gradient it ever had was
    zero, e.g. the embedding row of a token never seen in training, or a position beyond every
    sequence length trained so far) has never been moved by the loss. With Adam its P is eps,
    so P^-1/2 = eps^-1/2 = 1e4 at eps = 1e-8, and on a batch where such a token occurs its
    rows of P^-1/2 H P^-1/2 are scaled by 1e8: they dominate the top eigenvector and
    lambda_max jumps by orders of magnitude between readings, as tokens first occur.
    This is not the curvature the stability threshold is about: the threshold bounds the step
    that Adam takes along directions it moves, with the preconditioner it uses for them; the
    first time such an element gets a gradient g, Adam's own v becomes (1 - beta2) g^2 before
    the step, so the step it takes is bounded by lr * (1 - beta1) / sqrt(1 - beta2) per
    element, not lr * g / eps. Its curvature in the reading with P = eps is an artefact of the
    linearization, and for a rule without eps the linearization does not exist there (P = 0).
    Decision: the probe's operator is restricted to elements with v_hat > 0 (the mask from
    ``updated_mask``; zero rows and columns of S elsewhere, start vectors restricted with
    ``PreconditionedHessian.restrict``). On a training batch seen by the step just taken the
    reading is unchanged by the mask (an element with zero gradient on that batch contributes
    zero Hessian rows there: a token not in the batch has zero embedding rows of H), so the mask
    only removes the artefact where it arises: a probe batch other than the step's (fixed or
    held-out probe batch with tokens never trained on), and state that is zero for structural
    reasons (sequence-length warm-up positions, locked blocks brought into the operator).
    Measured (Adam, LR 1e-2, 200 steps, float64 operator, readings every 20 steps) on the
    project's d32 2-layer GPT (vocab 512, Zipf-distributed training ids 0-447, ids 448-511
    never trained): on the step's own batch the masked and unmasked readings are identical
    (168-1029); on a fixed batch of uniformly drawn ids the unmasked reading is 2.5e5-6.1e5 with
    100 % of the top eigenvector's mass on never-updated elements, the masked one 952-8100.
    The same on a toy LM (vocab 64, 8 ids never trained): unmasked 3e5-5e7, masked 75-500.
    Caveat not handled by the mask: an element updated long ago and never since (a rare token)
    has v decayed by beta2^t and a large P^-1/2 as well; it is kept (the optimizer did move it).
    On a batch other than the step's such rows still inflate the reading (the masked fixed-batch
    readings above are 5-30 x the step-batch ones, their eigenvectors on rare-token rows), so
    the probe should read the curvature on the batch of the step just taken, with the state
    after that step, where every element with a nonzero Hessian row has a fresh v.

Precision: build the operator in float64 on small models
    A float32 Hessian-vector product can be wrong as a whole, not just noisy: on the d32 GPT at
    LR 0.3 (Adam, steps 130-200, max attention logits 1e5-2e5: saturated softmax) the float32
    operator differed from the float64 one by 2-160 % in norm (the plain Hessian too, by up to
    210 %, in the embeddings, the first block and the saturated q/k weights; P^-1/2 up to 9e3
    amplifies it), and float32 readings were off by up to 200 % while converged on their own
    operator (before step 130 they agreed to 3e-4); with a float64 operator every reading agreed with a
    tight float64 reference to 1e-6. No solver can see this from inside (the float32 operator is
    consistent with itself); ``verify`` recomputes the residual of a reading with a second
    (float64) operator at the cost of one product and flags the reading if it fails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

Matvec = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EigenResult:
    """One reading of the algebraically largest eigenpair.

    ``value``: the top Ritz value, NaN unless ``converged``. ``vector``: the unit Ritz vector
    (also when not converged: the warm start for the next reading), in the start vector's
    dtype. ``products``: operator (Hessian-vector) products spent on this reading.
    ``residual``: ||A x - theta x|| / |theta| of the returned pair (NaN if the operator gave a
    non-finite result).
    """

    value: float
    vector: torch.Tensor = field(repr=False)
    products: int
    converged: bool
    residual: float


# ---- flat layout ---------------------------------------------------------------------------

def flatten(tensors: Sequence[torch.Tensor], members: int | None = None) -> torch.Tensor:
    """Concatenate tensors into one vector (n,), or, with ``members=K``, into (K, n) keeping
    each tensor's leading (ensemble) dimension."""
    if members is None:
        return torch.cat([t.reshape(-1) for t in tensors])
    return torch.cat([t.reshape(members, -1) for t in tensors], dim=1)


def unflatten(flat: torch.Tensor, like: Sequence[torch.Tensor | torch.Size]) -> list[torch.Tensor]:
    """Split a vector from ``flatten`` back into tensors shaped like ``like`` (views)."""
    shapes = [torch.Size(x.shape if isinstance(x, torch.Tensor) else x) for x in like]
    if flat.dim() == 1:
        sizes = [s.numel() for s in shapes]
        return [part.view(s) for part, s in zip(torch.split(flat, sizes), shapes)]
    members = flat.shape[0]
    sizes = [s.numel() // members for s in shapes]
    return [part.reshape(s) for part, s in zip(torch.split(flat, sizes, dim=1), shapes)]


# ---- Lanczos ---------------------------------------------------------------------------------

def top_eigenpair(matvec: Matvec, v0: torch.Tensor, *, max_products: int = 100, tol: float = 1e-3,
                  atol: float = 0.0, max_basis: int = 30, keep: int | None = None,
                  min_products: int = 1, dtype: torch.dtype = torch.float64) -> EigenResult:
    """Algebraically largest eigenpair of the symmetric operator ``matvec`` on 1-D tensors.

    ``v0``: start vector (the previous Ritz vector for a warm start, or random), not zero.
    Stops when the top Ritz pair's residual ||A x - theta x|| <= max(tol * |theta|, atol) after
    at least ``min_products`` products, or after ``max_products`` (then NaN, not converged).
    ``max_basis``: Krylov basis size before a thick restart that keeps the top ``keep``
    (default max_basis // 2) Ritz vectors. ``dtype``: of the basis and the projected matrix.
    """
    if v0.dim() != 1:
        raise ValueError(f"v0 must be 1-D, got shape {tuple(v0.shape)}")
    (result,) = top_eigenpairs(lambda x: matvec(x[0]).reshape(1, -1), v0[None], max_products=max_products,
                               tol=tol, atol=atol, max_basis=max_basis, keep=keep, min_products=min_products,
                               dtype=dtype)
    return result


def top_eigenpairs(matvec: Matvec, v0: torch.Tensor, *, max_products: int = 100, tol: float = 1e-3,
                   atol: float = 0.0, max_basis: int = 30, keep: int | None = None,
                   min_products: int = 1, dtype: torch.dtype = torch.float64) -> list[EigenResult]:
    """``top_eigenpair`` for K independent symmetric operators applied together.

    ``matvec`` maps (K, n) to (K, n), row k by operator k (an ensemble's block-diagonal
    Hessian); ``v0`` is (K, n). The K Lanczos runs advance in lockstep, one call of ``matvec``
    per step; a member that has converged is fed zeros from then on and keeps the product count
    at which it converged. Returns one ``EigenResult`` per member (vectors 1-D).
    """
    if v0.dim() != 2:
        raise ValueError(f"v0 must be (members, n), got shape {tuple(v0.shape)}")
    if max_products < 1:
        raise ValueError("max_products must be at least 1")
    members, n = v0.shape
    work_dtype, device = v0.dtype, v0.device
    size = max(1, min(int(max_basis), n))
    kept = size // 2 if keep is None else int(keep)
    kept = max(0, min(kept, size - 1))
    if size > 1:
        kept = max(kept, 1)

    start = v0.detach().to(dtype)
    norms = start.norm(dim=1)
    if not bool(torch.isfinite(norms).all()) or bool((norms == 0).any()):
        raise ValueError("start vector is zero or not finite")
    basis = torch.zeros(members, size + 1, n, dtype=dtype, device=device)
    basis[:, 0] = start / norms[:, None]
    projected = torch.zeros(members, size, size, dtype=torch.float64)   # T, on the CPU
    tiny = torch.finfo(dtype).tiny

    results: list[EigenResult | None] = [None] * members
    active = [True] * members
    j, products = 0, 0
    while True:
        w = matvec(basis[:, j].to(work_dtype))
        products += 1
        w = w.detach().reshape(members, n).to(dtype)
        finite = torch.isfinite(w).all(dim=1).tolist()
        for k in range(members):
            if active[k] and not finite[k]:
                vec = basis[k, j].to(work_dtype).clone()
                results[k] = EigenResult(math.nan, vec, products, False, math.nan)
                active[k] = False
        if not all(finite):
            bad = ~torch.tensor(finite, device=device)
            w[bad] = 0.0
            basis[bad] = 0.0
        # Full reorthogonalization: classical Gram-Schmidt against the whole basis, twice.
        block = basis[:, :j + 1]
        coeff = torch.einsum("kin,kn->ki", block, w)
        w = w - torch.einsum("ki,kin->kn", coeff, block)
        again = torch.einsum("kin,kn->ki", block, w)
        w = w - torch.einsum("ki,kin->kn", again, block)
        alpha = (coeff + again)[:, j]
        beta = w.norm(dim=1)
        projected[:, j, j] = alpha.double().cpu()
        j += 1

        theta, ritz = torch.linalg.eigh(projected[:, :j, :j])   # ascending
        top, y = theta[:, -1], ritz[:, :, -1]
        beta_cpu = beta.double().cpu()
        residual = (beta_cpu * y[:, j - 1]).abs()
        spread = theta.abs().amax(dim=1)
        # invariant subspace (or the whole space) reached: the Ritz values are eigenvalues
        breakdown = beta_cpu <= 64 * torch.finfo(dtype).eps * spread.clamp_min(tiny)
        relative = torch.where(top != 0, residual / top.abs(), torch.where(residual == 0, 0.0, math.inf))
        ok = (residual <= tol * top.abs()) | (residual <= atol) | breakdown
        vectors = None

        def ritz_vector(k: int) -> torch.Tensor:
            nonlocal vectors
            if vectors is None:
                vectors = torch.einsum("kin,ki->kn", basis[:, :j], y.to(device, dtype))
                vectors = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(tiny)
            return vectors[k].to(work_dtype).clone()

        finished = []
        for k in range(members):
            if active[k] and bool(ok[k]) and products >= min_products:
                rel = 0.0 if bool(breakdown[k]) and residual[k] == 0 else float(relative[k])
                results[k] = EigenResult(float(top[k]), ritz_vector(k), products, True, rel)
                active[k] = False
                finished.append(k)
        if not any(active):
            break
        if products >= max_products:
            for k in range(members):
                if active[k]:
                    results[k] = EigenResult(math.nan, ritz_vector(k), products, False, float(relative[k]))
            break
        if finished:   # feed zeros to finished members from now on
            basis[finished] = 0.0
            w[finished] = 0.0
            beta[finished] = 0.0
            beta_cpu[finished] = 0.0

        safe = beta > tiny
        following = torch.where(safe[:, None], w / torch.where(safe, beta, 1.0)[:, None], 0.0)
        if j == size:   # thick restart: keep the top Ritz vectors and the residual direction
            top_ritz = ritz[:, :, size - kept:].to(device, dtype)   # (K, j, kept)
            basis[:, :kept] = torch.einsum("kin,kic->kcn", basis[:, :j], top_ritz)
            basis[:, kept] = following
            basis[:, kept + 1:] = 0.0
            coupling = beta_cpu[:, None] * ritz[:, j - 1, size - kept:]
            projected.zero_()
            projected[:, :kept, :kept] = torch.diag_embed(theta[:, size - kept:])
            projected[:, :kept, kept] = coupling
            projected[:, kept, :kept] = coupling
            j = kept
        else:
            basis[:, j] = following
            projected[:, j - 1, j] = beta_cpu
            projected[:, j, j - 1] = beta_cpu
    return results  # type: ignore[return-value]


def verify(matvec: Matvec, result: EigenResult, *, tol: float = 1e-3) -> EigenResult:
    """``result`` checked against another operator (e.g. the float64 one), one product.

    The residual ||B x - theta x|| / |theta| of the reading's pair under ``matvec`` replaces the
    reported one; the reading stays converged only if that is <= ``tol`` (else value NaN,
    converged False). Not-converged readings are returned unchanged.
    """
    if not result.converged:
        return result
    x = result.vector
    bx = matvec(x).detach().double().reshape(x.shape)
    xd = x.double()
    theta = result.value
    residual = float((bx - theta * xd).norm() / xd.norm()) / abs(theta) if theta else float((bx).norm())
    ok = math.isfinite(residual) and residual <= tol
    return EigenResult(theta if ok else math.nan, x, result.products + 1, ok, residual)


# ---- the preconditioned Hessian operator ---------------------------------------------------

class PreconditionedHessian:
    """The operator v -> S H S v, S = diag(P^-1/2) (zero on masked-out elements).

    ``loss``: a scalar with its autograd graph; ``params``: the tensors H is taken with respect
    to (leaf tensors that require grad); ``inv_sqrt_p``: P^-1/2 per element, one tensor per
    parameter, same shapes; ``mask``: optional bool tensors (True = the element enters), e.g.
    ``updated_mask(v_hat)``. An element kept by the mask must have a finite P^-1/2 (a rule
    without eps has an infinite one where v_hat = 0: mask those). With ``members=K`` every tensor has a leading
    ensemble dimension K, vectors are (K, n), and ``loss`` must be the sum of the members' losses
    (so H is block diagonal). The gradient graph is built here, once; each call is one
    Hessian-vector product (double backward); ``p.grad`` is never read or written.
    """

    def __init__(self, loss: torch.Tensor, params: Sequence[torch.Tensor], inv_sqrt_p: Sequence[torch.Tensor],
                 mask: Sequence[torch.Tensor] | None = None, *, members: int | None = None):
        self.params = list(params)
        if len(inv_sqrt_p) != len(self.params) or (mask is not None and len(mask) != len(self.params)):
            raise ValueError("params, inv_sqrt_p and mask must have one tensor per parameter")
        self.members = members
        scales = []
        for i, (p, s) in enumerate(zip(self.params, inv_sqrt_p)):
            if s.shape != p.shape:
                raise ValueError(f"P^-1/2 of parameter {i} has shape {tuple(s.shape)}, not {tuple(p.shape)}")
            s = s.detach().to(p.device, p.dtype)
            if mask is not None:
                s = torch.where(mask[i].to(p.device, torch.bool), s, torch.zeros((), dtype=s.dtype, device=s.device))
            if not bool(torch.isfinite(s).all()):
                raise ValueError(f"P^-1/2 of parameter {i} is not finite on a kept element: mask it")
            scales.append(s)
        self.scales = scales
        self.numel = sum(p.numel() for p in self.params) // (members or 1)
        grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        # gradients with no graph are constant in the parameters: zero Hessian rows
        self._linked = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        self._grads = [grads[i] for i in self._linked]
        self.products = 0

    def flatten(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-parameter tensors -> the operator's vector layout."""
        return flatten(tensors, self.members)

    def unflatten(self, vector: torch.Tensor) -> list[torch.Tensor]:
        """The operator's vector layout -> per-parameter tensors."""
        return unflatten(vector, self.params)

    def restrict(self, vector: torch.Tensor) -> torch.Tensor:
        """``vector`` with masked-out elements (and elements with P^-1/2 = 0) set to zero."""
        keep = self.flatten([s != 0 for s in self.scales])
        return torch.where(keep, vector, torch.zeros((), dtype=vector.dtype, device=vector.device))

    def __call__(self, vector: torch.Tensor) -> torch.Tensor:
        parts = self.unflatten(vector)
        out = [torch.zeros_like(p) for p in self.params]
        if self._linked:
            tangents = [parts[i].to(self.params[i].dtype) * self.scales[i] for i in self._linked]
            hv = torch.autograd.grad(self._grads, [self.params[i] for i in self._linked], grad_outputs=tangents,
                                     retain_graph=True, allow_unused=True)
            for i, h in zip(self._linked, hv):
                if h is not None:
                    out[i] = h.detach() * self.scales[i]
        self.products += 1
        return self.flatten(out)


# ---- which elements enter ------------------------------------------------------------------

def updated_mask(second_moment: torch.Tensor) -> torch.Tensor:
    """True where the optimizer has updated the element from a nonzero gradient (v > 0)."""
    return second_moment > 0
