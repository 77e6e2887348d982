"""The fused readout + cross-entropy (stabench.readout) against the plain path through the
logits, in float64: the loss, log Z and every gradient, for any weighting of the two terms;
chunking does not change them; and the loop uses the fused path on training steps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stabench.readout import chunk_rows, fused_cross_entropy, fused_cross_entropy_and_log_z, logits_budget_bytes

K, B, T, D = 3, 2, 5, 8


def inputs(vocab: int, seed: int = 0, shared_targets: bool = True):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(K, B, T, D, generator=g, dtype=torch.float64).requires_grad_()
    weight = torch.randn(K, vocab, D, generator=g, dtype=torch.float64).requires_grad_()
    targets = torch.randint(0, vocab, (1 if shared_targets else K, B, T), generator=g)
    return hidden, weight, targets


def plain(hidden, weight, targets):
    """The reference: materialized logits, F.cross_entropy and logsumexp per member."""
    logits = torch.einsum("kbtd,kvd->kbtv", hidden, weight)
    targets = targets.expand(K, B, T)
    ce = torch.stack([F.cross_entropy(logits[k].flatten(0, 1), targets[k].flatten()) for k in range(K)])
    return ce, torch.logsumexp(logits, dim=-1)


def grads(fn, hidden, weight, targets, z_coef: float):
    hidden.grad = weight.grad = None
    ce, log_z = fn(hidden, weight, targets)
    (ce * torch.tensor([1.0, 2.0, 0.5], dtype=ce.dtype)).sum().add(z_coef * log_z.square().mean()).backward()
    return ce.detach(), log_z.detach(), hidden.grad.clone(), weight.grad.clone()


@pytest.mark.parametrize("vocab", [17, 3000])
@pytest.mark.parametrize("z_coef", [0.0, 0.3])
@pytest.mark.parametrize("shared", [True, False])
def test_fused_loss_log_z_and_gradients_equal_the_plain_path(vocab, z_coef, shared):
    hidden, weight, targets = inputs(vocab, shared_targets=shared)
    want = grads(plain, hidden, weight, targets, z_coef)
    got = grads(fused_cross_entropy_and_log_z, hidden, weight, targets, z_coef)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_cross_entropy_alone_equals_the_plain_path():
    hidden, weight, targets = inputs(300)
    want = grads(plain, hidden, weight, targets, 0.0)
    hidden.grad = weight.grad = None
    ce = fused_cross_entropy(hidden, weight, targets)
    (ce * torch.tensor([1.0, 2.0, 0.5], dtype=ce.dtype)).sum().backward()
    torch.testing.assert_close(ce.detach(), want[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hidden.grad, want[2], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(weight.grad, want[3], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fn", [fused_cross_entropy_and_log_z, fused_cross_entropy])
def test_chunks_do_not_change_the_result(monkeypatch, fn):
    import stabench.readout as readout
    hidden, weight, targets = inputs(50)
    pair = (lambda *a: (fn(*a), torch.zeros(K, B, T, dtype=torch.float64))) if fn is fused_cross_entropy else fn
    whole = grads(pair, hidden, weight, targets, 0.3)
    monkeypatch.setattr(readout, "chunk_rows", lambda members, vocab, device: 3)  # 10 rows in chunks of 3
    chunked = grads(pair, hidden, weight, targets, 0.3)
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_chunks_are_sized_by_the_device_memory_not_by_a_cache():
    """The logits of a GPU-shaped step (7 members x 64 x 256 rows x vocabulary 8192) fit in one
    or a few chunks, so the readout's kernels do not grow with rows or members."""
    cpu = torch.device("cpu")
    budget = logits_budget_bytes(cpu)
    assert budget >= 2 ** 28  # 256 MiB of float32 logits on any machine that trains
    rows = chunk_rows(7, 8192, cpu)
    assert rows == max(1, budget // (4 * 7 * 8192))
    assert -(-64 * 256 // rows) <= 8


def test_the_loop_takes_log_z_from_the_fused_pass():
    """A training step's context gives log Z and the loss from one fused pass; the logits are
    never materialized unless a term asks for them."""
    from stabench.contract import Context
    from stabench.model import GPT
    torch.manual_seed(0)
    model = GPT(vocab_size=11, seq_len=5, d_model=8, n_layers=1, n_heads=2)
    idx = torch.randint(0, 11, (1, 2, 6))
    hidden, _ = model.features(idx[..., :-1])
    ctx = Context(step=1, tokens=0, config={}, model=model, peak_lrs=(1e-3,), seeds=(0,), hidden=hidden,
                  targets=idx[..., 1:], fused_readout=True)
    log_z = ctx.log_z
    assert "member_logits" not in ctx.cache and "lm_loss" in ctx.cache
    ce, lz = plain(*[x.expand(K, *x.shape[1:]) if i < 2 else x for i, x in enumerate((hidden.double(),
                   model.head.weight.double(), idx[..., 1:]))])
    torch.testing.assert_close(log_z.double(), lz[:1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ctx.cache["lm_loss"].double(), ce[:1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_log_z", [False, True])
def test_bf16_autocast_products_stay_within_bf16_error_of_float64(with_log_z):
    """The GPU path (bf16 products, float32 logsumexp) on a CPU's bf16 autocast: loss and
    gradients within bf16 rounding (relative 1e-2) of the float64 plain path."""
    hidden, weight, targets = inputs(300)
    want = grads(plain, hidden, weight, targets, 0.3 if with_log_z else 0.0)
    h32, w32 = hidden.detach().float().requires_grad_(), weight.detach().float().requires_grad_()

    def fused(h, w, t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if with_log_z:
                return fused_cross_entropy_and_log_z(h, w, t)
            return fused_cross_entropy(h, w, t), torch.zeros(K, B, T)

    got = grads(fused, h32, w32, targets, 0.3 if with_log_z else 0.0)
    for a, b in zip((got[0], got[2], got[3]), (want[0], want[2], want[3])):
        assert torch.isfinite(a).all()
        assert float((a.double() - b).norm() / b.norm()) < 1e-2
