"""qk-layernorm: LayerNorm on queries and keys, per head, before the dot product.

Dehghani et al. (2023) used it to train ViT-22B; Wortsman et al. (2023, section 3.1) show it
removes attention-logit growth, the instability where the max attention logit grows without
bound at high learning rates and attention collapses to one-hot (entropy collapse).

Choices: LayerNorm over head_dim with a learnable gain of size head_dim shared across heads
(one per layer for q and one for k), no bias, the model's LayerNorm eps (1e-6). The gains are
norm parameters, so they are not weight-decayed.
"""

from stabench.model import LayerNorm

VERSION = "1"


def transform_model(model, config, args):
    eps = config["model"]["ln_eps"]
    for block in model.blocks:
        device = block.attn.q.weight.device
        block.attn.q_norm = LayerNorm(block.attn.head_dim, eps, model.members).to(device)
        block.attn.k_norm = LayerNorm(block.attn.head_dim, eps, model.members).to(device)
