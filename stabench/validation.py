"""Validation of an ensemble: mean loss, log Z and attention maxima on fixed windows.

Every run of a benchmark is scored on the same evenly spaced validation windows
(``stabench.data.val_windows``), at its initialization, every ``eval_every`` steps, when it
diverges and at its end. All members are evaluated at once, through the logits (these steps
are rare, so the plain path is fine), in batches of ``eval_batch_size`` windows.
"""

from __future__ import annotations

import torch

from .contract import Context
from .step import member_cross_entropy


@torch.no_grad()
def validate(model, windows: torch.Tensor, batch_size: int, device: torch.device, autocast) -> list[dict]:
    """Per member: mean validation loss, mean log Z, and the largest attention logit of every
    layer (and of all) over ``windows`` (n, T + 1)."""
    losses, log_z, layer_max = 0.0, 0.0, None
    for start in range(0, len(windows), batch_size):
        batch = windows[start:start + batch_size][None].to(device)
        with autocast():
            hidden, maxima = model.features(batch[..., :-1], capture=True)
            logits = model.readout(hidden)
        n = batch.shape[1]
        losses = losses + member_cross_entropy(logits, batch[..., 1:]) * n
        log_z = log_z + Context.member_mean(torch.logsumexp(logits.float(), dim=-1)) * n
        layer_max = maxima if layer_max is None else torch.maximum(layer_max, maxima)
    n = len(windows)
    values = torch.stack([losses / n, log_z / n]).cpu().tolist()
    per_layer = layer_max.cpu().T.tolist()
    return [{"loss": values[0][k], "log_z": values[1][k], "attn_logit_max_per_layer": per_layer[k],
             "attn_logit_max": max(per_layer[k])} for k in range(len(per_layer))]
