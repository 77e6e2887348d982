"""Adam epsilon scaled per layer with width (Everett et al., ICML 2024, section on epsilon).

As width n grows, per-coordinate gradients of hidden and readout matrices shrink (about 1/n
under full alignment), so a fixed eps eventually dominates sqrt(v) and Adam degrades into
SGD with a tiny step ("gradient underflow"). Everett et al. scale eps per layer with the
layer's gradient scale, with the constant tuned at a base width n0:

    eps_l = eps_base * base_fan_in_l / fan_in_l = eps_base * n0 / n    (hidden, readout)
    eps_l = eps_base                                                   (embeddings, norms, vectors)

Choices: the ratio is each layer's fan-in at the base width over its fan-in now (for the MLP
down projection 4 n0 / 4n), so the method equals the baseline at the base width and only
the width scaling changes; eps_base is the run's optimizer.eps (arg ``eps_base`` overrides).
Base width n0: arg ``base_width``, else the smallest d_model of the benchmark's sizes (found
by ``configure`` and recorded in the args). Applied through param_options ``eps`` (works with AdamW and any
optimizer that reads a group's eps). LR meaning is unchanged.
"""

from __future__ import annotations

from stabench.model import parameter_roles
from stabench.methods import base_width as shared_base_width

VERSION = "1"
ARGS = {"base_width": None, "eps_base": None}
ARG_TYPES = {"base_width": (int, None), "eps_base": (float, None)}
ARG_ALLOWED = {"base_width": ">= 1", "eps_base": ">= 0"}
SCALED_ROLES = ("hidden", "readout")


def configure(config, args):
    """Record the base width (arg, else the benchmark's smallest d_model) in the args, so it is
    part of the run's identity: adding a smaller size to the benchmark retrains this run."""
    args["base_width"] = shared_base_width(config, args.get("base_width"))


def base_width(config: dict, args: dict) -> int:
    return args["base_width"]


def layer_eps(config: dict, args: dict) -> dict[str, float]:
    eps = float(args["eps_base"] if args.get("eps_base") is not None else config["optimizer"]["eps"])
    ratio = base_width(config, args) / int(config["model"]["d_model"])
    return {role: eps * ratio for role in SCALED_ROLES}


def param_options(model, config, args):
    per_role = layer_eps(config, args)
    return {name: {"eps": per_role[role]} for name, role in parameter_roles(model).items() if role in per_role}
