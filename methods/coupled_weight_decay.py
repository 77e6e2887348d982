"""Coupled weight decay: AdamW's own form, p -= lr_t * wd * p (decay grows with the peak LR).

Wortsman et al. (2023, section 3.2.2) contrast it with independent decay,
p -= (lr_t / peak_lr) * wd * p (the baseline here), and find that coupling decay to the LR
raises LR sensitivity: at a high peak LR the decay is strong, at a low one it nearly vanishes.

Choices: every matrix (embedding, hidden, readout) is decayed, norm gains are not (the
engine's rule). The coefficient is AdamW's ``weight_decay``; its default 0.1 is the common
AdamW setting for LLMs and equals the baseline's independent 1e-4 at a peak LR of 1e-3
(0.1 * lr_t = (lr_t / 1e-3) * 1e-4), the low end of Wortsman's grid, so the two forms agree
there and part ways as the LR grows. (A coupled 1e-4 would decay by lr_t * 1e-4 per step,
next to nothing at every LR of the grid; pass ``weight_decay: 1.0e-4`` to get it.)
"""

VERSION = "1"
ARGS = {"weight_decay": 0.1}
ARG_ALLOWED = {"weight_decay": ">= 0"}


def configure(config, args):
    config["optimizer"]["decay_mode"] = "coupled"
    config["optimizer"]["weight_decay"] = float(args["weight_decay"])
