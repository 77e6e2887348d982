"""muParam (simple): scale each hidden layer's learning rate by base_fan_in / fan_in.

Wortsman et al. (2023, section 3.3), after Yang et al. (2022, muP for Adam): as width grows,
a hidden matrix's Adam update changes its output by ~ lr * fan_in, so its LR is scaled by
base_fan_in / fan_in to keep that change width-independent. They find it lowers LR
sensitivity across sizes (and the optimal LR transfers), while it changes what the peak LR
means, so compare it by best loss as well.

Choices:
- Hidden layers are the Transformer blocks' matrices (q, k, v, attention out, MLP up and
  down: role ``hidden``); embeddings, the readout (head) and norm gains keep lr_mult 1.
- fan_in is each layer's ``in_features``; the base layer is the same layer at the base width,
  so base_fan_in = base_width * in_features / d_model (4 * base_width for the MLP down
  projection). The multiplier is therefore base_width / d_model for every hidden matrix
  (this assumes, as in this GPT, that every hidden fan_in is proportional to d_model).
- base_width: the ``base_width`` arg when set, else the smallest d_model among the
  benchmark's sizes; the configure hook records it in the args, so it is part of the run's
  identity (adding a smaller size to the benchmark retrains this run).
- Weight decay is left as configured (independent decay is already LR-independent).
"""

from stabench.methods import base_width as shared_base_width
from stabench.model import MATRIX_NDIM, parameter_roles

VERSION = "1"
ARGS = {"base_width": None}
ARG_TYPES = {"base_width": (int, None)}
ARG_ALLOWED = {"base_width": ">= 1"}
CHANGES_LR_MEANING = True


def configure(config, args):
    """Record the width the LR is tuned at (the arg, else the benchmark's smallest d_model)."""
    args["base_width"] = shared_base_width(config, args.get("base_width"))


def mup_widths(config, args) -> tuple[int, int]:
    """(base_width, d_model) of the run."""
    return args["base_width"], config["model"]["d_model"]


def hidden_lr_mults(model, config, args) -> dict:
    """{param name: {'lr_mult': base_fan_in / fan_in}} for every hidden matrix."""
    base, d_model = mup_widths(config, args)
    roles = parameter_roles(model)
    options = {}
    for name, param in model.named_parameters():
        if roles[name] == "hidden" and param.ndim == MATRIX_NDIM:
            fan_in = param.shape[2]  # weights are (members, out_features, in_features)
            base_fan_in = base * fan_in / d_model
            options[name] = {"lr_mult": base_fan_in / fan_in}
    return options


def param_options(model, config, args):
    return hidden_lr_mults(model, config, args)
