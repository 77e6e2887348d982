"""The preconditioned curvature probe (stabench.curvature, Ramasinghe et al.): power iteration
against a dense eigendecomposition on a tiny GPT, the warm start, the probe's gating, and a
training run that records it."""

from __future__ import annotations

import csv

import pytest
import torch
import torch.nn.functional as F

from stabench import curvature
from stabench.curvature import (
    ADAM_THRESHOLD,
    adam_preconditioner,
    adam_threshold,
    math_attention,
    measure,
    preconditioned_hvp,
    top_eigenvalue,
)
from stabench.model import GPT
from stabench.probes import PROBES, ProbeContext

CONFIG = {"seed": 0, "probes": {"curvature_every": 1, "curvature_iters": 5}}



def tiny_setup(steps: int = 3, lr: float = 1e-2):
    """A 1-layer d=8 GPT (vocab 16, seq 8) after a few AdamW steps: (model, optimizer, batch)."""
    torch.manual_seed(0)
    model = GPT(vocab_size=16, seq_len=8, d_model=8, n_layers=1, n_heads=2)
    batch = torch.randint(0, 16, (4, 9), generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), eps=1e-8)
    for _ in range(steps):
        train_step(model, optimizer, batch)
    return model, optimizer, batch


def train_step(model, optimizer, batch):
    optimizer.zero_grad()
    loss_of(model, batch).backward()
    optimizer.step()
    optimizer.zero_grad()


def loss_of(model, batch):
    logits = model(batch[:, :-1])
    return F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())


def exact_top_eigenvalue(model, optimizer, batch) -> tuple[float, torch.Tensor]:
    """Dense P^-1/2 H P^-1/2 (reverse-over-reverse Hessian) -> (top eigenvalue, P^-1/2)."""
    params, inv_sqrt_p, _ = adam_preconditioner(optimizer, list(model.parameters()))
    names = {id(p): n for n, p in model.named_parameters()}
    keys, shapes = [names[id(p)] for p in params], [p.shape for p in params]
    flat = torch.cat([p.detach().flatten() for p in params])

    def loss(vector):
        weights, offset = {}, 0
        for key, shape in zip(keys, shapes):
            weights[key] = vector[offset:offset + shape.numel()].view(shape)
            offset += shape.numel()
        logits = torch.func.functional_call(model, weights, (batch[:, :-1],))
        return F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())

    with math_attention():
        hessian = torch.autograd.functional.hessian(loss, flat, vectorize=True).double()
    d = torch.cat([s.flatten() for s in inv_sqrt_p]).double()
    matrix = d[:, None] * hessian * d[None, :]
    eig = torch.linalg.eigvalsh((matrix + matrix.T) / 2)
    assert eig[-1] > eig[0].abs()  # the top eigenvalue dominates: plain power iteration applies
    return float(eig[-1]), d


def probe_context(model, optimizer, batch, step=1, lr=1e-2, config=CONFIG):
    return ProbeContext(step=step, tokens=0, lr=lr, loss=torch.tensor(0.0), grad_norm=None, model=model,
                        optimizer=optimizer, logits=torch.zeros(1, 1, 16), config=config, batch=batch)


# ---- power iteration ----------------------------------------------------------------------

def test_top_eigenvalue_of_a_diagonal_operator():
    diag = [torch.tensor([1.0, 3.0, -0.5]), torch.tensor([[10.0, 2.0]])]
    lam, v, products = top_eigenvalue(lambda v: [d * x for d, x in zip(diag, v)],
                                      [torch.ones(3), torch.ones(1, 2)], iters=50, tol=1e-8)
    assert lam == pytest.approx(10.0, rel=1e-6)
    assert abs(float(v[1][0, 0])) == pytest.approx(1.0, abs=1e-4)
    assert products < 50  # stopped on tolerance


def test_shifted_iteration_finds_the_top_eigenvalue_under_a_dominant_negative_one():
    diag = torch.tensor([-8.0, 5.0, 1.0, -2.0])
    op = lambda v: [diag * v[0]]  # noqa: E731
    start = [torch.ones(4)]
    lam, _, _ = top_eigenvalue(op, start, iters=200, tol=1e-10)
    assert lam == pytest.approx(-8.0, rel=1e-4)
    lam, v, _ = top_eigenvalue(op, start, iters=200, tol=1e-10, shift=lam)
    assert lam == pytest.approx(5.0, rel=1e-4)
    assert abs(float(v[0][1])) == pytest.approx(1.0, abs=1e-3)


def test_measure_reports_the_top_not_a_dominant_negative_eigenvalue(monkeypatch):
    model, optimizer, batch = tiny_setup(steps=2)
    monkeypatch.setattr(curvature, "preconditioned_hvp",
                        lambda loss, params, inv: lambda v: [(-3.0 if i == 0 else 1.0) * x for i, x in enumerate(v)])
    row = measure(probe_context(model, optimizer, batch), iters=100)
    assert row["lambda_max"] == pytest.approx(1.0, rel=1e-2)


def test_top_eigenvalue_counts_products_and_respects_iters():
    calls = []

    def op(v):
        calls.append(1)
        return [2 * v[0]]

    lam, _, products = top_eigenvalue(op, [torch.ones(4)], iters=1)
    assert (lam, products, len(calls)) == (pytest.approx(2.0), 1, 1)


def test_threshold_is_38_for_beta1_0_9():
    assert ADAM_THRESHOLD == 38
    assert adam_threshold(0.9) == pytest.approx(38.0)


# ---- against the dense preconditioned Hessian -----------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    return tiny_setup()


def test_preconditioner_is_nontrivial(tiny):
    model, optimizer, _ = tiny
    _, inv_sqrt_p, _ = adam_preconditioner(optimizer, list(model.parameters()))
    flat = torch.cat([s.flatten() for s in inv_sqrt_p])
    assert flat.max() / flat.min() > 10


def test_hvp_is_linear_and_leaves_grads_alone(tiny):
    model, optimizer, batch = tiny
    params, inv_sqrt_p, _ = adam_preconditioner(optimizer, list(model.parameters()))
    with math_attention():
        hvp = preconditioned_hvp(loss_of(model, batch), params, inv_sqrt_p)
        v = [torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) for i, p in enumerate(params)]
        w1 = hvp(v)
        w2 = hvp([2 * x for x in v])
    for a, b in zip(w1, w2):
        torch.testing.assert_close(2 * a, b, rtol=1e-4, atol=1e-5)
    assert all(p.grad is None for p in params)  # the probe never writes .grad


def test_probe_estimate_within_5_percent_and_warm_start_needs_at_most_5_products():
    model, optimizer, batch = tiny_setup(steps=10)
    exact, _ = exact_top_eigenvalue(model, optimizer, batch)
    rng_before = torch.get_rng_state()
    first = measure(probe_context(model, optimizer, batch))
    assert torch.equal(torch.get_rng_state(), rng_before)  # own generator: training RNG untouched
    assert first["curvature_hvps"] <= curvature.FIRST_ITERS
    assert first["lambda_max"] == pytest.approx(exact, rel=0.05)
    assert first["lr_lambda_max"] == pytest.approx(1e-2 * first["lambda_max"])
    assert first["adam_threshold"] == pytest.approx(38.0)
    assert set(model.__dict__[curvature.STATE_ATTRIBUTE]["curvature_v"]) == {n for n, _ in model.named_parameters()}

    train_step(model, optimizer, batch)  # one more AdamW step (lr 1e-2): parameters and P move
    exact_next, _ = exact_top_eigenvalue(model, optimizer, batch)
    second = measure(probe_context(model, optimizer, batch, step=2))
    assert second["curvature_hvps"] <= 5
    assert second["lambda_max"] == pytest.approx(exact_next, rel=0.05)


def test_warm_start_is_per_model_object():
    a, opt_a, batch = tiny_setup(steps=2)
    b, opt_b, _ = tiny_setup(steps=2)
    measure(probe_context(a, opt_a, batch))
    assert curvature.STATE_ATTRIBUTE not in b.__dict__
    assert measure(probe_context(b, opt_b, batch))["curvature_hvps"] > 5  # cold start on b


def test_probe_runs_only_on_its_steps_and_with_adam_state():
    assert "curvature" in PROBES
    model, optimizer, batch = tiny_setup(steps=0)
    assert PROBES["curvature"](probe_context(model, optimizer, batch)) == {}  # no Adam state yet
    model, optimizer, batch = tiny_setup(steps=1)
    off = {"seed": 0, "probes": {"curvature_every": 0, "curvature_iters": 5}}
    every_2 = {"seed": 0, "probes": {"curvature_every": 2, "curvature_iters": 3}}
    assert PROBES["curvature"](probe_context(model, optimizer, batch, config=off)) == {}
    assert PROBES["curvature"](probe_context(model, optimizer, batch, step=3, config=every_2)) == {}
    row = PROBES["curvature"](probe_context(model, optimizer, batch, step=4, config=every_2))
    assert {"lambda_max", "lr_lambda_max", "curvature_hvps", "adam_threshold"} <= set(row)


def test_frozen_parameters_are_left_out():
    model, optimizer, batch = tiny_setup(steps=2)
    model.tok_emb.weight.requires_grad_(False)
    measure(probe_context(model, optimizer, batch))
    assert "tok_emb.weight" not in model.__dict__[curvature.STATE_ATTRIBUTE]["curvature_v"]


def test_training_run_records_curvature(engine_bench, tmp_path, run_training):
    bench = engine_bench.load(["train.steps=10", "train.probe_every=5", "probes.curvature_every=5"])
    metrics = run_training(tmp_path, benchmark=bench, lr=1e-2)
    assert not metrics["diverged"]
    with open(tmp_path / "history.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("lambda_max")]
    assert [int(r["step"]) for r in rows] == [5, 10]
    assert all(float(r["lambda_max"]) > 0 for r in rows)
    assert int(rows[0]["curvature_hvps"]) <= 2 * curvature.FIRST_ITERS  # two passes if negative dominates
    assert int(rows[1]["curvature_hvps"]) <= 2 * 5
