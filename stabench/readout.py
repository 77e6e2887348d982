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

It computes only the mean cross-entropy and its gradient: a loss term that needs the logits
(a method's ``loss`` hook) computes them itself (``Context.member_logits``), and its gradient
adds to this one. Second derivatives (the curvature probe) use the plain path, which is
also the reference the tests compare this one with.
"""

from __future__ import annotations

import torch


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
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if need_grad else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_grad else None
        for start in range(0, n, chunk):
            rows = hidden[start:start + chunk]
            target = targets[start:start + chunk, None]
            logits = (rows @ weight.T).float()
            lse = torch.logsumexp(logits, dim=-1, keepdim=True)
            total += (lse - logits.gather(1, target)).sum()
            if need_grad:
                probs = logits.sub_(lse).exp_()  # softmax, in place of the logits
                probs.scatter_add_(1, target, torch.full_like(lse, -1.0))
                probs = probs.to(rows.dtype)
                grad_hidden[start:start + chunk] = probs @ weight
                grad_weight.addmm_(probs.T.float(), rows.float())
        if need_grad:
            ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        ctx.rows = n
        return total / n

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_output / ctx.rows
        return grad_hidden * scale, grad_weight * scale, None


def fused_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss of each member: hidden (K, B, T, d), head weight (K, V, d),
    targets (K or 1, B, T) -> (K,), with gradients for hidden and weight."""
    k, d = hidden.shape[0], hidden.shape[-1]
    targets = targets.expand(k, *targets.shape[1:])
    return torch.stack([_FusedCrossEntropy.apply(h.reshape(-1, d), w, t.reshape(-1))
                        for h, w, t in zip(hidden.unbind(0), weight.unbind(0), targets.unbind(0))])
