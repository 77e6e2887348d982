"""The readout and its cross-entropy, fused: the training loss without materializing logits.

At the sizes this benchmark trains, the output logits (batch x time x vocabulary per member)
are the largest tensors of a step, and the plain path (logits, log-softmax, NLL, then their
backward) passes over them about ten times. Here each member's loss is computed in chunks of
rows: logits of a chunk, their logsumexp, the target logits, and at once the gradient of the
mean cross-entropy (softmax minus one-hot, over N), which two matrix products turn into the
gradients of the hidden states and of the head weight. Each chunk stays in cache; the
backward only scales the saved gradients. Forward and backward took 1.4x less time than the
plain path on one CPU thread (N = V = 2048, d = 32 and 64; ``scripts/bench_readout.py``
prints the figures and the largest gradient difference, about 1e-9).

A loss term on the output normalizer log Z (z-loss: ``Context.log_z``) gets it from
``fused_cross_entropy_and_log_z``: the same chunks give the logsumexp of every position, the
cross-entropy from it, and nothing else in the forward; the backward recomputes each chunk's
logits once and forms the gradient of both (softmax x (g_ce / N + g_logZ) - one-hot x
g_ce / N). One extra matrix product per chunk instead of materializing the logits. A term
that needs the logits themselves (``Context.member_logits``) computes them, and its gradient
adds to this one. Second derivatives (the curvature probe) use the plain path, which is also
the reference the tests compare these with.
"""

from __future__ import annotations

import torch


def _wide(x: torch.Tensor) -> torch.Tensor:
    """float32 for half-precision logits (bf16 autocast), else as they are (float32, float64)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def chunk_rows(vocab: int) -> int:
    """Rows per chunk: about a million logits (4 MB in float32), at least 64 rows."""
    return max(64, (1 << 20) // max(vocab, 1))


class _FusedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # hidden (N, d), weight (V, d), targets (N,) -> mean cross-entropy ()
        n = hidden.shape[0]
        chunk = chunk_rows(weight.shape[0])
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        total = torch.zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32), device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if need_grad else None
        grad_weight = torch.zeros_like(weight, dtype=torch.promote_types(weight.dtype, torch.float32)) if need_grad else None
        for start in range(0, n, chunk):
            rows = hidden[start:start + chunk]
            target = targets[start:start + chunk, None]
            logits = _wide(rows @ weight.T)
            lse = torch.logsumexp(logits, dim=-1, keepdim=True)
            total += (lse - logits.gather(1, target)).sum()
            if need_grad:
                probs = logits.sub_(lse).exp_()  # softmax, in place of the logits
                probs.scatter_add_(1, target, torch.full_like(lse, -1.0))
                probs = probs.to(rows.dtype)
                grad_hidden[start:start + chunk] = probs @ weight
                grad_weight.addmm_(_wide(probs.T), _wide(rows))
        if need_grad:
            ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        ctx.rows = n
        return total / n

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_output / ctx.rows
        return grad_hidden * scale, grad_weight * scale, None


class _FusedCrossEntropyAndLogZ(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor):
        # hidden (N, d), weight (V, d), targets (N,) -> (mean cross-entropy (), log Z (N,))
        n, chunk = hidden.shape[0], chunk_rows(weight.shape[0])
        wide = torch.promote_types(hidden.dtype, torch.float32)
        log_z = torch.empty(n, dtype=wide, device=hidden.device)
        target_logits = torch.empty(n, dtype=wide, device=hidden.device)
        for start in range(0, n, chunk):
            logits = _wide(hidden[start:start + chunk] @ weight.T)
            log_z[start:start + chunk] = torch.logsumexp(logits, dim=-1)
            target_logits[start:start + chunk] = logits.gather(1, targets[start:start + chunk, None])[:, 0]
        ctx.save_for_backward(hidden, weight, targets, log_z)
        device = hidden.device.type  # the backward recomputes the logits under the same autocast
        ctx.amp = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        return (log_z - target_logits).mean(), log_z

    @staticmethod
    def backward(ctx, grad_ce: torch.Tensor | None, grad_log_z: torch.Tensor | None):
        hidden, weight, targets, log_z = ctx.saved_tensors
        n, chunk = hidden.shape[0], chunk_rows(weight.shape[0])
        ce_scale = (grad_ce if grad_ce is not None else torch.zeros((), device=hidden.device)) / n
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=log_z.dtype)
        device, amp_on, amp_dtype = ctx.amp
        for start in range(0, n, chunk):
            rows, target = hidden[start:start + chunk], targets[start:start + chunk, None]
            with torch.autocast(device, dtype=amp_dtype, enabled=amp_on):
                logits = rows @ weight.T
            probs = _wide(logits).sub_(log_z[start:start + chunk, None]).exp_()  # softmax
            scale = ce_scale if grad_log_z is None else ce_scale + grad_log_z[start:start + chunk, None]
            probs.mul_(scale).scatter_add_(1, target, (-ce_scale).expand(target.shape).to(probs.dtype))
            probs = probs.to(rows.dtype)
            grad_hidden[start:start + chunk] = probs @ weight
            grad_weight.addmm_(_wide(probs.T), _wide(rows))
        return grad_hidden, grad_weight.to(weight.dtype), None


def fused_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss of each member: hidden (K, B, T, d), head weight (K, V, d),
    targets (K or 1, B, T) -> (K,), with gradients for hidden and weight."""
    k, d = hidden.shape[0], hidden.shape[-1]
    targets = targets.expand(k, *targets.shape[1:])
    return torch.stack([_FusedCrossEntropy.apply(h.reshape(-1, d), w, t.reshape(-1))
                        for h, w, t in zip(hidden.unbind(0), weight.unbind(0), targets.unbind(0))])


def fused_cross_entropy_and_log_z(hidden: torch.Tensor, weight: torch.Tensor,
                                  targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean next-token loss (K,), log Z (K, B, T)) of each member, both with gradients for
    hidden and weight, without materializing the logits (see the module docstring)."""
    k, d = hidden.shape[0], hidden.shape[-1]
    targets = targets.expand(k, *targets.shape[1:])
    pairs = [_FusedCrossEntropyAndLogZ.apply(h.reshape(-1, d), w, t.reshape(-1))
             for h, w, t in zip(hidden.unbind(0), weight.unbind(0), targets.unbind(0))]
    return torch.stack([ce for ce, _ in pairs]), torch.stack([lz for _, lz in pairs]).view(*hidden.shape[:-1])
