"""Adam-atan2 (Everett et al., ICML 2024, arXiv:2407.05872): Adam without epsilon.

Adam's update m_hat / (sqrt(v_hat) + eps) becomes a * atan2(m_hat, b * sqrt(v_hat)). atan2 is
bounded and defined at 0/0, so no eps is needed, and the update is invariant to the scale of
the gradients (g and c * g give the same step for any c > 0): no gradient underflow at width.
For |m_hat| << b sqrt(v_hat) it is (a / b) * m_hat / sqrt(v_hat), Adam without eps.

Update per parameter p with gradient g, step t, group LR lr and decay wd (AdamW's decoupled
form; the engine puts the independent-decay coefficient into the group's weight_decay):

    p <- p * (1 - lr * wd)
    m <- beta1 m + (1 - beta1) g          v <- beta2 v + (1 - beta2) g^2
    p <- p - lr * a * atan2(m / (1 - beta1^t), b * sqrt(v / (1 - beta2^t)))

Choices: a = 1.27 (about 4/pi) and b = 1, the setting Everett et al. recommend (args); betas
from optimizer.betas; the groups' eps is ignored. Parameters without a gradient are skipped
(no decay, no step count), like torch's AdamW. The step count is per parameter (Python int,
so checkpoints load with weights_only). Because a = 1.27 scales every step, the peak LR
means something else than for AdamW: CHANGES_LR_MEANING.
"""

from __future__ import annotations

import torch

VERSION = "1"
CHANGES_LR_MEANING = True
ARGS = {"a": 1.27, "b": 1.0}


class AdamAtan2(torch.optim.Optimizer):
    """AdamW with the atan2 update; param groups may carry extra keys (lr_mult, names, eps)."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.95), weight_decay: float = 0.0,
                 a: float = 1.27, b: float = 1.0):
        if lr < 0 or weight_decay < 0 or a <= 0 or b <= 0:
            raise ValueError(f"invalid Adam-atan2 setting: lr={lr}, weight_decay={weight_decay}, a={a}, b={b}")
        if not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"invalid betas {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, a=a, b=b))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, a, b = group["lr"], group["weight_decay"], group["a"], group["b"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("Adam-atan2 does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] = int(state["step"]) + 1
                step = state["step"]
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                if wd:
                    p.mul_(1 - lr * wd)
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                m_hat = exp_avg / (1 - beta1 ** step)
                denom = exp_avg_sq.div(1 - beta2 ** step).sqrt_().mul_(b)
                p.add_(torch.atan2(m_hat, denom), alpha=-lr * a)
        return loss


def build_optimizer(param_groups, config, args):
    opt = config["optimizer"]
    return AdamAtan2(param_groups, lr=config["lr"], betas=tuple(opt["betas"]),
                     weight_decay=opt["weight_decay"], a=float(args["a"]), b=float(args["b"]))
