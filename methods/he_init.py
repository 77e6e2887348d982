"""He initialization (He et al. 2015), one of WeSaR's comparison inits (Nishida et al. 2024).

Every weight matrix is drawn from N(0, 2 / fan_in), so WeSaR's effect can be told apart from
its init (WeSaR's effective weights start at the backbone's stds; this is the classic
fan-in-scaled alternative the paper compares with, beside Small Init):

    attention q, k, v, out; MLP up; readout head:   std sqrt(2 / d)        (fan_in = d)
    MLP down projection:                             std sqrt(2 / (4 d))    (fan_in = 4 d)
    token and position embeddings:                   std sqrt(2 / d)

d = d_model. Choices: plain (untruncated) normal, as ``torch.nn.init.kaiming_normal_`` draws
it; for an embedding table the fan-in is its row width d (torch's convention for a
(rows, d) weight); LayerNorm gains stay 1. Parameters added by other methods are left alone;
list he_init before methods that re-initialize.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from stabench.model import Embedding, Linear

VERSION = "1"


def he_std(fan_in: int) -> float:
    return math.sqrt(2.0 / fan_in)


@torch.no_grad()
def transform_model(model, config, args):
    for module in model.modules():
        if isinstance(module, Linear):
            nn.init.normal_(module.weight, std=he_std(module.in_features))
        elif isinstance(module, Embedding):
            nn.init.normal_(module.weight, std=he_std(module.embedding_dim))
