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
from optimizer.betas; eps is ignored. It is an element-wise update rule (the engine applies
it to every member's parameters at once and skips locked ones, like AdamW). Because
a = 1.27 scales every step, the peak LR means something else than for AdamW:
CHANGES_LR_MEANING.

Its preconditioner, for the curvature probe: the update is lr_t * lr_mult * a * atan2(m_hat,
b sqrt(v_hat)); linearized in m_hat around 0, atan2(m, c) = m / c + O(m^3) for c > 0, so the
update is m_hat / P with P = b sqrt(v_hat) / a (the engine divides by lr_mult). The slope of
atan2 is largest at m = 0, so this P gives the largest effective step, an upper bound of the
curvature the update sees. Where v_hat = 0, P = 0 (atan2(m, 0) = +-pi/2 is a bounded sign
step): the probe leaves those never-updated elements out, as it does for AdamW.
"""

from __future__ import annotations

import torch

VERSION = "1"
CHANGES_LR_MEANING = True
ARGS = {"a": 1.27, "b": 1.0}
ARG_ALLOWED = {"a": "> 0", "b": "> 0"}


class AdamAtan2:
    """The atan2 update on stacked tensors (``stabench.contract.UpdateRule``)."""

    state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, a: float = 1.27, b: float = 1.0):
        if a <= 0 or b <= 0:
            raise ValueError(f"adam_atan2: a and b must be > 0, got a={a}, b={b}")
        self.a, self.b = float(a), float(b)

    def _scale(self, state, h):
        beta1, beta2 = h.betas
        m_hat = state["exp_avg"] / (1 - beta1 ** h.step)
        s = (state["exp_avg_sq"] / (1 - beta2 ** h.step)).sqrt()
        return m_hat, s

    def update(self, param, grad, state, h) -> None:
        beta1, beta2 = h.betas
        if not (isinstance(h.weight_decay, float) and h.weight_decay == 0.0):
            param.mul_(1 - h.lr * h.weight_decay)
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        m_hat, s = self._scale(state, h)
        param.sub_(torch.atan2(m_hat, s.mul_(self.b)) * (h.lr * self.a))

    def direction(self, state, h) -> torch.Tensor:
        m_hat, s = self._scale(state, h)
        return self.a * torch.atan2(m_hat, self.b * s)

    def preconditioner(self, state, h) -> torch.Tensor:
        return self.b * self._scale(state, h)[1] / self.a


def update_rule(config, args):
    return AdamAtan2(float(args["a"]), float(args["b"]))
