"""Independent weight decay with a chosen coefficient: p -= (lr_t / peak_lr) * wd * p.

Wortsman et al. (2023, section 3.2.2): decoupling the decay from the peak LR (as Loshchilov
and Hutter proposed) lowers LR sensitivity; they use wd = 1e-4. The baseline already decays
this way with the benchmark's ``optimizer.weight_decay``; this method makes the form explicit
and lets a benchmark vary the coefficient per method (e.g. a label ``wd_1e-3`` with
``args: {independent_weight_decay: {weight_decay: 1.0e-3}}``).

Choices: matrices (embedding, hidden, readout) decay, norm gains do not (the engine's rule).
"""

VERSION = "1"
ARGS = {"weight_decay": 1e-4}
ARG_ALLOWED = {"weight_decay": ">= 0"}


def configure(config, args):
    config["optimizer"]["decay_mode"] = "independent"
    config["optimizer"]["weight_decay"] = float(args["weight_decay"])
