"""stabench.eigen against dense eigendecompositions (torch.linalg.eigvalsh in float64).

Random symmetric operators (definite, strongly indefinite, clustered top eigenvalues, tiny
gaps), the Adam- and atan2-update-preconditioned Hessian of a self-contained toy LM (one
attention block + MLP, vocabulary 16, a few Adam steps at a low and a very high LR, dense
reference from torch.autograd.functional.hessian), warm starts, flagged non-convergence, the
mask of never-updated elements and the lockstep ensemble solve.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stabench.contract import StepHyper
from stabench.eigen import (
    EigenResult,
    PreconditionedHessian,
    flatten,
    top_eigenpair,
    top_eigenpairs,
    unflatten,
    updated_mask,
    verify,
)

TOL = 1e-3


def symmetric(eigenvalues, seed: int) -> torch.Tensor:
    """Q diag(eigenvalues) Q^T with a random orthogonal Q (float64)."""
    eig = torch.as_tensor(eigenvalues, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(len(eig), len(eig), generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64))
    return (q * eig) @ q.T


def rand(n: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=dtype)


N = 200
SPECTRA = {
    "definite": torch.logspace(-3, 0, N),
    "indefinite_8x": torch.cat([torch.linspace(-8.0, 0.9, N - 1), torch.tensor([1.0])]),
    "clustered_top": torch.cat([torch.linspace(-3.0, 0.9, N - 5), torch.tensor([0.9990, 0.9995, 0.9998, 0.9999, 1.0])]),
    "tiny_gap": torch.cat([torch.linspace(-8.0, 0.99, N - 2), torch.tensor([0.9999, 1.0])]),
}


# ---- random symmetric operators ------------------------------------------------------------

@pytest.mark.parametrize("name", list(SPECTRA))
def test_top_eigenvalue_of_random_symmetric_matrices(name):
    a64 = symmetric(SPECTRA[name], seed=1)
    exact = float(torch.linalg.eigvalsh(a64)[-1])
    a = a64.float()   # the operator in float32, as a model's Hessian-vector product
    r = top_eigenpair(lambda v: a @ v, rand(N, 2), max_products=200, tol=TOL)
    assert isinstance(r, EigenResult) and r.converged
    assert r.value == pytest.approx(exact, rel=TOL)
    assert r.residual <= TOL
    x = r.vector.double()
    assert float(x.norm()) == pytest.approx(1.0, abs=1e-6)
    true_residual = float((a64 @ x - r.value * x).norm()) / abs(r.value)   # the reported bound is the real one
    assert true_residual == pytest.approx(r.residual, rel=1e-2, abs=1e-6)
    assert r.products < 100


def test_strongly_indefinite_finds_the_top_not_the_largest_magnitude():
    eig = torch.tensor([-100.0, -50.0, -8.0, 0.5, 1.0, 2.0])
    a = symmetric(eig, seed=3)
    r = top_eigenpair(lambda v: a @ v, rand(6, 4, torch.float64), max_products=50)
    assert r.converged and r.value == pytest.approx(2.0, rel=1e-6)


def test_all_negative_spectrum():
    a = symmetric(torch.linspace(-5.0, -1.0, 40), seed=5)
    r = top_eigenpair(lambda v: a @ v, rand(40, 6, torch.float64), max_products=60)
    assert r.converged and r.value == pytest.approx(-1.0, rel=TOL)


def test_thick_restart_converges_with_a_small_basis():
    a = symmetric(SPECTRA["tiny_gap"], seed=1)
    r = top_eigenpair(lambda v: a @ v, rand(N, 2, torch.float64), max_products=400, max_basis=8)
    assert r.converged and r.value == pytest.approx(1.0, rel=TOL)
    assert r.products > 8   # it did restart


def test_whole_space_and_exact_eigenvector_starts():
    a = symmetric([3.0, -7.0, 1.0], seed=0)
    r = top_eigenpair(lambda v: a @ v, rand(3, 0, torch.float64), max_products=10, tol=1e-12)
    assert r.converged and r.value == pytest.approx(3.0, rel=1e-10) and r.products <= 3
    top = torch.linalg.eigh(a).eigenvectors[:, -1]
    r = top_eigenpair(lambda v: a @ v, top, max_products=10)
    assert r.converged and r.products == 1 and r.value == pytest.approx(3.0, rel=1e-10)


def test_non_convergence_is_flagged_never_a_number():
    a = symmetric(SPECTRA["definite"], seed=1)
    calls = []

    def op(v):
        calls.append(1)
        return a.float() @ v

    r = top_eigenpair(op, rand(N, 2), max_products=4, tol=TOL)
    assert math.isnan(r.value) and not r.converged
    assert r.products == 4 == len(calls)
    assert r.residual > TOL
    assert torch.isfinite(r.vector).all() and float(r.vector.norm()) == pytest.approx(1.0, abs=1e-5)


def test_non_finite_operator_is_flagged():
    r = top_eigenpair(lambda v: v * float("nan"), torch.ones(5), max_products=10)
    assert math.isnan(r.value) and not r.converged and r.products == 1
    with pytest.raises(ValueError):
        top_eigenpair(lambda v: v, torch.zeros(5))


def test_warm_start_after_a_small_change_takes_few_products():
    a = symmetric(SPECTRA["indefinite_8x"], seed=1)
    cold = top_eigenpair(lambda v: a @ v, rand(N, 2, torch.float64), max_products=200)
    noise = symmetric(torch.linspace(-1, 1, N), seed=9)
    b = a + 0.01 * noise   # a 1 % change of the operator
    exact = float(torch.linalg.eigvalsh(b)[-1])
    warm = top_eigenpair(lambda v: b @ v, cold.vector, max_products=200)
    assert warm.converged and warm.value == pytest.approx(exact, rel=TOL)
    assert warm.products <= 8 < cold.products


def test_verify_flags_a_reading_of_an_inexact_operator():
    a = symmetric(SPECTRA["indefinite_8x"], seed=1)
    wrong = a + 0.05 * symmetric(torch.linspace(-1, 1, N), seed=9)   # a consistently wrong operator
    r = top_eigenpair(lambda v: wrong @ v, rand(N, 2, torch.float64), max_products=200)
    assert r.converged
    bad = verify(lambda v: a @ v, r)
    assert math.isnan(bad.value) and not bad.converged and bad.products == r.products + 1 and bad.residual > TOL
    good = top_eigenpair(lambda v: a.float() @ v, rand(N, 2), max_products=200)
    checked = verify(lambda v: a @ v.double(), good)
    assert checked.converged and checked.value == good.value and checked.residual <= TOL


def test_lockstep_members_agree_with_separate_solves():
    mats = torch.stack([symmetric(SPECTRA[k], seed=1) for k in ("definite", "indefinite_8x", "tiny_gap")])
    v0 = torch.stack([rand(N, 2, torch.float64)] * 3)
    calls = []

    def op(v):
        calls.append(1)
        return torch.einsum("kij,kj->ki", mats, v)

    results = top_eigenpairs(op, v0, max_products=200)
    for k, r in enumerate(results):
        single = top_eigenpair(lambda v: mats[k] @ v, v0[k], max_products=200)
        assert r.converged and r.value == pytest.approx(float(torch.linalg.eigvalsh(mats[k])[-1]), rel=TOL)
        assert r.products == single.products and r.value == pytest.approx(single.value, rel=1e-9)
    assert len(calls) == max(r.products for r in results)   # one operator call per step for all


# ---- the toy LM: one attention block + MLP, vocabulary 16 ----------------------------------

VOCAB, T, D, HEADS = 16, 8, 8, 2
SHAPES = {"emb": (VOCAB, D), "pos": (T, D), "wq": (D, D), "wk": (D, D), "wv": (D, D), "wo": (D, D),
          "w1": (D, 2 * D), "w2": (2 * D, D), "head": (D, VOCAB)}   # 832 parameters


def init(seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(s, generator=g) * (1 / math.sqrt(D if k in ("emb", "pos") else s[0]))).requires_grad_()
            for k, s in SHAPES.items()}


def ln(x):
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


def loss_fn(p, batch):
    tok, targets = batch[:, :-1], batch[:, 1:]
    b, t = tok.shape
    x = p["emb"][tok] + p["pos"][:t]
    q, k, v = [(ln(x) @ p[w]).view(b, t, HEADS, D // HEADS).transpose(1, 2) for w in ("wq", "wk", "wv")]
    att = (q @ k.transpose(-1, -2)) / math.sqrt(D // HEADS)
    att = att.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
    x = x + (att @ v).transpose(1, 2).reshape(b, t, D) @ p["wo"]
    x = x + F.gelu(ln(x) @ p["w1"]) @ p["w2"]
    return F.cross_entropy((ln(x) @ p["head"]).flatten(0, 1), targets.flatten())


def tokens(seed, high=VOCAB, n=4):
    return torch.randint(0, high, (n, T + 1), generator=torch.Generator().manual_seed(seed))


def train(steps, lr, high=VOCAB, atan2=None, betas=(0.9, 0.95), eps=1e-8):
    """Adam(W) (or Adam-atan2 with (a, b)) on token ids < ``high``: (params, exp_avg_sq, step)."""
    p = init()
    m = {k: torch.zeros_like(x) for k, x in p.items()}
    v = {k: torch.zeros_like(x) for k, x in p.items()}
    for t in range(1, steps + 1):
        grads = torch.autograd.grad(loss_fn(p, tokens(100 + t, high)), list(p.values()))
        clip = min(1.0, 1.0 / (float(torch.sqrt(sum((g ** 2).sum() for g in grads))) + 1e-6))
        with torch.no_grad():
            for (k, x), g in zip(p.items(), grads):
                g = g * clip
                m[k].mul_(betas[0]).add_(g, alpha=1 - betas[0])
                v[k].mul_(betas[1]).addcmul_(g, g, value=1 - betas[1])
                mh, vh = m[k] / (1 - betas[0] ** t), v[k] / (1 - betas[1] ** t)
                update = mh / (vh.sqrt() + eps) if atan2 is None else atan2[0] * torch.atan2(mh, atan2[1] * vh.sqrt())
                x.sub_(lr * (update + 1e-4 * x))
    return p, v, steps


def dense_operator(p, batch, inv_sqrt_p, mask=None) -> torch.Tensor:
    """S H S in float64, H from torch.autograd.functional.hessian; restricted to ``mask``."""
    keys = list(p)
    flat = torch.cat([p[k].detach().double().flatten() for k in keys])

    def f(vector):
        return loss_fn(dict(zip(keys, unflatten(vector, [p[k] for k in keys]))), batch)

    hessian = torch.autograd.functional.hessian(f, flat, vectorize=True)
    s = flatten(inv_sqrt_p).double()
    matrix = s[:, None] * hessian * s[None, :]
    matrix = (matrix + matrix.T) / 2
    if mask is not None:
        keep = flatten(mask).bool()
        matrix = matrix[keep][:, keep]
    return matrix


def bias_corrected(exp_avg_sq, step, beta2=0.95):
    return exp_avg_sq.detach().float() / (1.0 - beta2 ** step)


def adam_inv_sqrt_p(v_hat, eps, lr_mult=1.0):
    """P^-1/2 of Adam(W), worked by hand: P = (sqrt(v_hat) + eps) / lr_mult."""
    return (lr_mult / (v_hat.sqrt() + eps)).sqrt()


def atan2_inv_sqrt_p(v_hat, a=1.27, b=1.0, lr_mult=1.0):
    """P^-1/2 of the atan2 update linearized at m = 0, by hand: P = b sqrt(v_hat) / (a lr_mult)."""
    return (a * lr_mult / (b * v_hat.sqrt())).sqrt()


def adam_scales(v, step, lr_mult=1.0):
    return [adam_inv_sqrt_p(bias_corrected(x, step, 0.95), 1e-8, lr_mult) for x in v.values()]


PROBE = tokens(7)


@pytest.fixture(scope="module", params=[1e-3, 3e-2, 1.0], ids=["lr1e-3", "lr3e-2", "lr1"])
def trained(request):
    """(5 Adam steps, 6 Adam steps) at one LR: a reading and the next one a step later."""
    return train(5, request.param), train(6, request.param)


def test_operator_is_the_dense_preconditioned_hessian_and_leaves_grads_alone(trained):
    p, v, step = trained[0]
    s = adam_scales(v, step)
    op = PreconditionedHessian(loss_fn(p, PROBE), list(p.values()), s)
    dense = dense_operator(p, PROBE, s)
    x = rand(op.numel, 11)
    torch.testing.assert_close(op(x).double(), dense @ x.double(), rtol=1e-4, atol=1e-4 * float(dense.abs().max()))
    torch.testing.assert_close(op(2 * x), 2 * op(x))
    assert all(t.grad is None for t in p.values()) and op.products == 3


def test_toy_lm_top_eigenvalue_within_tolerance_cold_and_warm(trained):
    vector = None
    for p, v, step in trained:   # cold, then warm-started one optimizer step later (P moves too)
        s = adam_scales(v, step)
        exact = float(torch.linalg.eigvalsh(dense_operator(p, PROBE, s))[-1])
        op = PreconditionedHessian(loss_fn(p, PROBE), list(p.values()), s)
        r = top_eigenpair(op, rand(op.numel, 3) if vector is None else vector, max_products=100, tol=TOL)
        assert r.converged and r.value == pytest.approx(exact, rel=TOL)
        assert r.products <= (20 if vector is None else 10)
        vector = r.vector


def test_toy_lm_is_strongly_indefinite_at_lr_3e_2():
    p, v, step = train(5, 3e-2)
    s = adam_scales(v, step)
    eig = torch.linalg.eigvalsh(dense_operator(p, PROBE, s))
    assert -eig[0] > 4 * eig[-1] > 0   # the case power iteration gets wrong
    op = PreconditionedHessian(loss_fn(p, PROBE), list(p.values()), s)
    r = top_eigenpair(op, rand(op.numel, 3), max_products=100)
    assert r.converged and r.value == pytest.approx(float(eig[-1]), rel=TOL)


def test_adam_atan2_preconditioner_at_high_lr():
    a, b = 1.27, 1.0
    p, v, step = train(5, 0.3, atan2=(a, b))
    vh = [bias_corrected(x, step, 0.95) for x in v.values()]
    s = [atan2_inv_sqrt_p(x, a, b) for x in vh]
    mask = [updated_mask(x) for x in vh]
    eig = torch.linalg.eigvalsh(dense_operator(p, PROBE, [torch.where(k, x, 0.0) for x, k in zip(s, mask)], mask))
    op = PreconditionedHessian(loss_fn(p, PROBE), list(p.values()), s, mask)
    r = top_eigenpair(op, op.restrict(rand(op.numel, 3)), max_products=100)
    assert r.converged and r.value == pytest.approx(float(eig[-1]), rel=TOL)


def test_update_rules_preconditioners_match_the_formulas():
    """AdamW's and the atan2 method's ``preconditioner`` against the formulas worked by hand;
    the atan2 linearization against the rule's own update for a small first moment."""
    from stabench.methods import load_module
    from stabench.update import AdamW
    exp_avg_sq = torch.tensor([[0.0, 1e-6, 4.0]])
    h = StepHyper(lr=torch.tensor([[1.0]]), weight_decay=0.0, eps=1e-8, betas=(0.9, 0.95), step=10)
    vh = bias_corrected(exp_avg_sq, 10, 0.95)
    state = {"exp_avg": torch.zeros_like(exp_avg_sq), "exp_avg_sq": exp_avg_sq}
    torch.testing.assert_close(AdamW().preconditioner(state, h).rsqrt(), adam_inv_sqrt_p(vh, 1e-8))
    assert float(AdamW().preconditioner(state, h)[0, 0].rsqrt()) == pytest.approx(1e4)   # never updated
    assert updated_mask(vh).tolist() == [[False, True, True]]
    rule = load_module("adam_atan2").AdamAtan2(a=1.27, b=2.0)
    torch.testing.assert_close(rule.preconditioner(state, h).rsqrt(), atan2_inv_sqrt_p(vh, 1.27, 2.0))
    assert math.isinf(float(rule.preconditioner(state, h)[0, 0].rsqrt()))
    m_hat = 1e-4 * vh[:, 1:].sqrt()   # linearized step m / P matches a * atan2(m, b sqrt(v)) for small m
    small = {"exp_avg": m_hat * (1 - 0.9 ** 10), "exp_avg_sq": exp_avg_sq[:, 1:]}
    torch.testing.assert_close(m_hat / rule.preconditioner(small, h), rule.direction(small, h), rtol=1e-6, atol=0.0)


def test_unmasked_infinite_preconditioner_is_refused():
    p, v, step = train(1, 1e-3, high=12)
    s = [atan2_inv_sqrt_p(bias_corrected(x, step, 0.95)) for x in v.values()]
    with pytest.raises(ValueError, match="mask"):
        PreconditionedHessian(loss_fn(p, PROBE), list(p.values()), s)


# ---- elements the optimizer never updated --------------------------------------------------

def test_never_updated_elements_dominate_unless_masked():
    """Ids 12-15 never occur in training: their embedding rows keep v = 0, P^-1/2 = 1e4."""
    p, v, step = train(5, 1e-2, high=12)
    vh = [bias_corrected(x, step, 0.95) for x in v.values()]
    s = [adam_inv_sqrt_p(x, 1e-8) for x in vh]
    mask = [updated_mask(x) for x in vh]
    never = ~flatten(mask)
    assert int(never.sum()) == 4 * D   # exactly the four unseen embedding rows
    unseen_batch, train_batch = tokens(7), tokens(105, high=12)   # probe batch with / without ids 12-15
    results = {}
    for name, batch in (("unseen", unseen_batch), ("train", train_batch)):
        for masked in (False, True):
            op = PreconditionedHessian(loss_fn(p, batch), list(p.values()), s, mask if masked else None)
            r = top_eigenpair(op, op.restrict(rand(op.numel, 3)), max_products=100)
            assert r.converged
            results[name, masked] = r
    # on a batch containing never-trained ids the unmasked top eigenvector lives on their rows
    bad = results["unseen", False]
    assert bad.value > 1e3 * results["unseen", True].value
    assert float((bad.vector[never] ** 2).sum()) > 0.99
    # masked: the eigenvalue of the restricted dense operator
    restricted = dense_operator(p, unseen_batch, [torch.where(k, x, 0.0) for x, k in zip(s, mask)], mask)
    assert results["unseen", True].value == pytest.approx(float(torch.linalg.eigvalsh(restricted)[-1]), rel=TOL)
    # on a batch of trained ids the never-updated rows have zero Hessian: the mask changes nothing
    assert results["train", True].value == pytest.approx(results["train", False].value, rel=TOL)


# ---- ensembles: a leading member dimension --------------------------------------------------

def test_ensemble_members_in_lockstep():
    members = [train(5, lr) for lr in (1e-3, 1e-2, 1.0)]
    stacked = {k: torch.stack([m[0][k].detach() for m in members]).requires_grad_() for k in SHAPES}
    loss = sum(loss_fn({k: x[i] for k, x in stacked.items()}, PROBE) for i in range(len(members)))   # a sum
    scales = [torch.stack([adam_scales(m[1], m[2])[j] for m in members]) for j in range(len(SHAPES))]
    op = PreconditionedHessian(loss, list(stacked.values()), scales, members=len(members))
    v0 = torch.stack([rand(op.numel, 3)] * len(members))
    results = top_eigenpairs(op, v0, max_products=100)
    for (p, v, step), r in zip(members, results):
        exact = float(torch.linalg.eigvalsh(dense_operator(p, PROBE, adam_scales(v, step)))[-1])
        assert r.converged and r.value == pytest.approx(exact, rel=TOL)
    assert op.products == max(r.products for r in results)
    parts = op.unflatten(torch.stack([r.vector for r in results]))
    assert [x.shape for x in parts] == [x.shape for x in stacked.values()]
