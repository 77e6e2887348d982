"""muParam (full): muParam (simple) plus the readout init, attention scale and query init of muP.

Wortsman et al. (2023, section 3.3), after Yang et al. (2022, muP for Adam). On top of
``mup_simple`` (hidden-layer LR x base_fan_in / fan_in):
- readout (head) init: std sqrt(base_fan_in) / fan_in instead of 1 / sqrt(fan_in), so the
  output logits shrink as 1/width relative to the base model (equal at the base width);
- attention scale 1 / d_head instead of 1 / sqrt(d_head) (muP: q and k become correlated
  during training, so <q, k> grows like d_head);
- zero-initialized queries (every attention layer starts uniform over the causal window).
It changes what the peak LR means, so compare it by best loss as well as LR sensitivity.

Choices:
- The base width is found as in ``mup_simple`` (arg ``base_width``, else the benchmark's
  smallest d_model) and recorded in the args; the base width and the hidden LR rule are
  imported from ``mup_simple``, so the two cannot drift apart.
- The head keeps its truncated normal (cut at 2 std, rescaled to the target std), like every
  other weight of the baseline; fan_in = d_model and base_fan_in = base_width.
- Embeddings, head LR, norm gains and weight decay are unchanged; head_dim is fixed across
  sizes in these benchmarks, so 1/d_head is the same scale for every size.
- Composes with qk_layernorm: a zero query normalizes to zero (LayerNorm eps keeps it finite),
  so attention still starts uniform and Adam's first update is of normal size.
- Must run before any method that reparameterizes the head (torch parametrize); it says so.
"""

import math

import torch
from torch.nn.utils import parametrize

from stabench.methods import MethodError, load_module
from stabench.model import truncated_normal_

VERSION = "1"
ARGS = {"base_width": None}
ARG_TYPES = {"base_width": (int, None)}
ARG_ALLOWED = {"base_width": ">= 1"}
CHANGES_LR_MEANING = True


# The base width and the hidden-layer LR rule are mup_simple's: one definition for both.
_simple = load_module("mup_simple")
mup_widths = _simple.mup_widths
configure = _simple.configure
param_options = _simple.param_options


def readout_std(config, args) -> float:
    base, d_model = mup_widths(config, args)
    return math.sqrt(base) / d_model  # sqrt(base_fan_in) / fan_in, fan_in = d_model


@torch.no_grad()
def transform_model(model, config, args):
    for module in [model.head] + [block.attn.q for block in model.blocks]:
        if parametrize.is_parametrized(module):
            raise MethodError("mup_full must come before methods that reparameterize weights "
                              "(list it first in 'a+b')")
    truncated_normal_(model.head.weight, readout_std(config, args))
    for block in model.blocks:
        block.attn.q.weight.zero_()
        block.attn.scale = 1.0 / block.attn.head_dim

