"""Standard parameterization with per-layer learning rates (Everett et al., ICML 2024).

Everett et al. find that standard parameterization (SP) with a per-layer LR prescription
for Adam beats muP. In their abc notation (W = n^-a w, w ~ N(0, n^-2b), LR ~ n^-c), SP with
Adam under full alignment is

    layer       multiplier a   init b              Adam LR c
    embedding   0              (baseline, see below)  0
    hidden      0              1/2                 1
    readout     0              1/2                 1

(``EXPONENTS``). Per-layer constants are tuned once at a base width n0 and reused; here the
constants are 1 (the benchmark's peak-LR sweep tunes the one global constant), so with
r = d_model / n0 the LR multipliers are 1 (embeddings), 1/r (hidden matrices, including the
MLP down projection) and 1/r (readout). At the base width the method equals the baseline.

Choices: init is the engine's baseline (embedding N(0, 1/d), others 1/sqrt(fan_in)); only the
LR exponents change. Norm gains and other vectors keep multiplier 1. Base width n0: arg
``base_width``, else the smallest d_model of the benchmark's sizes (found by ``configure`` and
recorded in the args). Parameters added by other methods with role hidden get the hidden
exponent.
"""

from __future__ import annotations

from stabench.model import parameter_roles
from stabench.methods import base_width as shared_base_width

VERSION = "1"
CHANGES_LR_MEANING = True
ARGS = {"base_width": None}
ARG_TYPES = {"base_width": (int, None)}
ARG_ALLOWED = {"base_width": ">= 1"}
EXPONENTS = {
    "embedding": {"a": 0.0, "c": 0.0},
    "hidden": {"a": 0.0, "b": 0.5, "c": 1.0},
    "readout": {"a": 0.0, "b": 0.5, "c": 1.0},
}


def configure(config, args):
    """Record the base width (arg, else the benchmark's smallest d_model) in the args, so it is
    part of the run's identity: adding a smaller size to the benchmark retrains this run."""
    args["base_width"] = shared_base_width(config, args.get("base_width"))


def base_width(config: dict, args: dict) -> int:
    return args["base_width"]


def param_options(model, config, args):
    r = int(config["model"]["d_model"]) / base_width(config, args)
    options = {}
    for name, role in parameter_roles(model).items():
        if role in EXPONENTS and EXPONENTS[role]["c"]:
            options[name] = {"lr_mult": r ** -EXPONENTS[role]["c"]}
    return options
