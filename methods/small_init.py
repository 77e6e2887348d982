"""Small Init (Nguyen & Salazar 2019, "Transformers without Tears"), WeSaR's comparison init.

Every weight, embeddings included, is drawn from N(0, 2 / (5 d)) with d = d_model: token and
position embeddings, attention q, k, v, out, MLP up and down, and the readout head. This is
the form the WeSaR paper (Nishida et al. 2024) compares against and GPT-NeoX calls
``small_init``: std sqrt(2 / (5 d)) for all parameters, independent of fan-in (so the MLP
down projection with fan-in 4d gets the same std as the others) and of depth.

Choices: plain (untruncated) normal, as in GPT-NeoX; LayerNorm gains stay 1. Parameters
added by other methods are left alone; list small_init before methods that re-initialize.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from stabench.model import Embedding, Linear

VERSION = "1"


def small_init_std(d_model: int) -> float:
    return math.sqrt(2.0 / (5.0 * d_model))


@torch.no_grad()
def transform_model(model, config, args):
    std = small_init_std(model.tok_emb.embedding_dim)
    for module in model.modules():
        if isinstance(module, (Linear, Embedding)):
            nn.init.normal_(module.weight, std=std)
