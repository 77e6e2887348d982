"""The readout and its cross-entropy, fused: the training loss of every member in a few kernels.

At the sizes this benchmark trains, the output logits (members x rows x vocabulary) are the
largest tensors of a step, and the plain path (logits, log-softmax, NLL, then their backward)
passes over them about ten times. Here the loss of all K members is computed at once, in
chunks of rows: one batched product gives the chunk's logits (K, rows, V), then their
log-softmax (one row-wise pass), the target's log-probability, and at once the gradient of
the mean cross-entropy (softmax minus one-hot, over N), which two batched products turn into the gradients of the hidden
states and of the head weights. The backward only scales the saved gradients.

Chunks are sized by a memory budget of the device (``logits_budget_bytes``: an eighth of the
free memory of a GPU, a sixteenth of a CPU's RAM), not by a cache: on a GPU the logits of a
whole step usually fit, so a step's readout is about ten kernels whatever K and the batch.
The number of kernels does not grow with the members, only with the chunks that memory
forces. Under bf16 autocast the products run in bf16 with float32 accumulation (as any
autocast matmul) and the logsumexp in float32.

Why not a library: cut-cross-entropy and Liger-Kernel's fused linear cross-entropy take one
classifier matrix (V, d) and Triton kernels for CUDA only; a pack has K of them, so each would
be called K times (launches growing with K), and the CPU path, which CI runs, would still need
this code. Their idea is the same: never keep the logits, form the gradient in the forward.

A loss term on the output normalizer log Z (z-loss: ``Context.log_z``) gets it from
``fused_cross_entropy_and_log_z``: the same chunks give the logsumexp of every position, the
cross-entropy from it, and nothing else in the forward; the backward recomputes each chunk's
logits once and forms the gradient of both (softmax x (g_ce / N + g_logZ) - one-hot x
g_ce / N). One extra product per chunk instead of keeping the logits. A term that needs the
logits themselves (``Context.member_logits``) computes them, and its gradient adds to this
one. Second derivatives (the curvature probe) use the plain path, which is also the reference
the tests compare these with (float64).
"""

from __future__ import annotations

import os

import torch

CPU_RAM_FRACTION = 16   # a chunk's float32 logits may take 1/16 of the RAM of a CPU ...
GPU_FREE_FRACTION = 8   # ... or 1/8 of the memory a GPU has free when training starts


def _wide(x: torch.Tensor) -> torch.Tensor:
    """float32 for half-precision logits (bf16 autocast), else as they are (float32, float64)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


_BUDGETS: dict[tuple[str, int | None], int] = {}


def logits_budget_bytes(device: torch.device) -> int:
    """Bytes one chunk's float32 logits may take on ``device``, read once per device and process
    (the free memory of a GPU before training allocates), so no query runs on the hot path and
    a compiled step sees a constant (the trainer reads it before compiling)."""
    key = (device.type, device.index)
    if key not in _BUDGETS:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            _BUDGETS[key] = free // GPU_FREE_FRACTION
        else:
            _BUDGETS[key] = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // CPU_RAM_FRACTION
    return _BUDGETS[key]


def chunk_rows(members: int, vocab: int, device: torch.device) -> int:
    """Rows per chunk so that the chunk's logits of all members fit the device's budget."""
    return max(1, logits_budget_bytes(device) // (4 * members * vocab))


def _product_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the products take under the current autocast (bf16 on a GPU), else x's: the
    softmax is cast once for both of its products, not once in each."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def _chunks(n: int, rows: int) -> list[slice]:
    return [slice(start, min(start + rows, n)) for start in range(0, n, rows)]


def _flat(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor):
    """(K, B, T, d), (K, V, d), (K or 1, B, T) -> hidden (K, N, d), targets (K, N, 1)."""
    k, d = hidden.shape[0], hidden.shape[-1]
    return hidden.reshape(k, -1, d), targets.expand(k, *targets.shape[1:]).reshape(k, -1, 1)


class _FusedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # hidden (K, N, d), weight (K, V, d), targets (K, N, 1) -> mean cross-entropy of each member (K,)
        k, n, _ = hidden.shape
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        wide = torch.promote_types(hidden.dtype, torch.float32)
        total = torch.zeros(k, dtype=wide, device=hidden.device)
        grad_hidden, grad_weight = [], None
        for rows in _chunks(n, chunk_rows(k, weight.shape[1], hidden.device)):
            h, target = hidden[:, rows], targets[:, rows]
            logits = _wide(torch.bmm(h, weight.transpose(1, 2)))            # (K, c, V)
            log_probs = torch.log_softmax(logits, dim=-1)  # one row-wise pass: fewer than logsumexp, sub, exp
            del logits
            total = total - log_probs.gather(2, target).sum(dim=(1, 2))
            if need_grad:
                probs = log_probs.exp_()  # softmax, in place
                probs.scatter_add_(2, target, torch.full(target.shape, -1.0, dtype=probs.dtype, device=probs.device))
                probs = probs.to(_product_dtype(h))
                grad_hidden.append(torch.bmm(probs, weight))                    # (K, c, d)
                part = torch.bmm(probs.transpose(1, 2), h)                       # (K, V, d)
                grad_weight = _wide(part) if grad_weight is None else grad_weight + _wide(part)
        if need_grad:
            grad_hidden = grad_hidden[0] if len(grad_hidden) == 1 else torch.cat(grad_hidden, dim=1)
            ctx.save_for_backward(grad_hidden.to(hidden.dtype), grad_weight.to(weight.dtype))
        ctx.rows = n
        return total / n

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_output / ctx.rows                                           # (K,)
        return grad_hidden * scale[:, None, None], grad_weight * scale[:, None, None], None


class _FusedCrossEntropyAndLogZ(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor):
        # hidden (K, N, d), weight (K, V, d), targets (K, N, 1) -> (mean cross-entropy (K,), log Z (K, N))
        k, n, _ = hidden.shape
        log_z, target_logits = [], []
        for rows in _chunks(n, chunk_rows(k, weight.shape[1], hidden.device)):
            logits = _wide(torch.bmm(hidden[:, rows], weight.transpose(1, 2)))
            log_z.append(torch.logsumexp(logits, dim=-1))
            target_logits.append(logits.gather(2, targets[:, rows])[..., 0])
        log_z = log_z[0] if len(log_z) == 1 else torch.cat(log_z, dim=1)
        target_logits = target_logits[0] if len(target_logits) == 1 else torch.cat(target_logits, dim=1)
        ctx.save_for_backward(hidden, weight, targets, log_z)
        device = hidden.device.type  # the backward recomputes the logits under the same autocast
        ctx.amp = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        return (log_z - target_logits).mean(dim=1), log_z

    @staticmethod
    def backward(ctx, grad_ce: torch.Tensor | None, grad_log_z: torch.Tensor | None):
        hidden, weight, targets, log_z = ctx.saved_tensors
        k, n, _ = hidden.shape
        ce_scale = (grad_ce if grad_ce is not None else torch.zeros(k, dtype=log_z.dtype, device=hidden.device))
        ce_scale = (ce_scale / n)[:, None, None]                                 # (K, 1, 1)
        device, amp_on, amp_dtype = ctx.amp
        grad_hidden, grad_weight = [], None
        for rows in _chunks(n, chunk_rows(k, weight.shape[1], hidden.device)):
            h, target = hidden[:, rows], targets[:, rows]
            with torch.autocast(device, dtype=amp_dtype, enabled=amp_on):
                logits = torch.bmm(h, weight.transpose(1, 2))
            probs = _wide(logits).sub_(log_z[:, rows, None]).exp_()  # softmax
            scale = ce_scale if grad_log_z is None else ce_scale + grad_log_z[:, rows, None]
            probs.mul_(scale).scatter_add_(2, target, (-ce_scale).expand(target.shape).to(probs.dtype))
            probs = probs.to(amp_dtype if amp_on else h.dtype)
            with torch.autocast(device, dtype=amp_dtype, enabled=amp_on):
                grad_hidden.append(torch.bmm(probs, weight))
                part = torch.bmm(probs.transpose(1, 2), h)
            grad_weight = _wide(part) if grad_weight is None else grad_weight + _wide(part)
        grad_hidden = grad_hidden[0] if len(grad_hidden) == 1 else torch.cat(grad_hidden, dim=1)
        return grad_hidden.to(hidden.dtype), grad_weight.to(weight.dtype), None


def fused_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss of each member: hidden (K, B, T, d), head weight (K, V, d),
    targets (K or 1, B, T) -> (K,), with gradients for hidden and weight."""
    rows, target = _flat(hidden, weight, targets)
    return _FusedCrossEntropy.apply(rows, weight, target)


def fused_cross_entropy_and_log_z(hidden: torch.Tensor, weight: torch.Tensor,
                                  targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean next-token loss (K,), log Z (K, B, T)) of each member, both with gradients for
    hidden and weight, without keeping the logits (see the module docstring)."""
    rows, target = _flat(hidden, weight, targets)
    ce, log_z = _FusedCrossEntropyAndLogZ.apply(rows, weight, target)
    return ce, log_z.view(*hidden.shape[:-1])
