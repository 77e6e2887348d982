"""A decoder-only pre-LN GPT: the baseline recipe of Wortsman et al. (2023), section 2.1.

No biases, LayerNorm eps 1e-6 without bias, GELU MLP of width 4d, learned positions, untied
head. Init: token and position embeddings N(0, std 1/sqrt(d)); every other weight truncated
normal (cut at 2 std, rescaled to keep the std) with std 1/sqrt(fan_in).

The model names no stabilization method. It exposes the points methods need:
- ``Attention.q_norm`` / ``k_norm`` (identity by default) act on (B, H, T, head_dim) per head;
- ``Attention.scale`` multiplies the attention logits (1/sqrt(head_dim) by default);
- ``GPT.active_blocks`` limits how many blocks the forward pass runs (depth schedules);
- every weight is a plain ``nn.Linear``/``nn.Embedding`` weight, so reparameterizations can
  use ``torch.nn.utils.parametrize``; ``parameter_roles`` says which layer type each is.
On probe steps ``capture(True)`` makes each attention layer record its max logit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


# A normal cut at +-2 std has std 0.8796 of the uncut one; scale up so the result has ``std``
# (as JAX's variance_scaling does), the std the recipe asks for.
_TRUNCATION_STD = 0.87962566103423978


def truncated_normal_(weight: torch.Tensor, std: float) -> torch.Tensor:
    wide = std / _TRUNCATION_STD
    return nn.init.trunc_normal_(weight, mean=0.0, std=wide, a=-2 * wide, b=2 * wide)


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.k = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.q_norm: nn.Module = nn.Identity()
        self.k_norm: nn.Module = nn.Identity()
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.capturing = False
        self.max_logit: torch.Tensor | None = None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q = self.q_norm(self._heads(self.q(x)))
        k = self.k_norm(self._heads(self.k(x)))
        v = self._heads(self.v(x))
        if self.capturing:
            self.max_logit = self._max_logit(q, k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        return self.out(y.transpose(1, 2).reshape(b, t, d))

    @torch.no_grad()
    def _max_logit(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Largest attention logit z = scale * <q, k> over causal pairs (a probe, not hot)."""
        logits = (q.float() @ k.float().transpose(-2, -1)) * self.scale
        t = logits.shape[-1]
        causal = torch.ones(t, t, dtype=torch.bool, device=logits.device).tril()
        return logits.masked_fill(~causal, float("-inf")).amax()


class MLP(nn.Module):
    def __init__(self, d_model: int, ratio: int):
        super().__init__()
        self.up = nn.Linear(d_model, ratio * d_model, bias=False)
        self.down = nn.Linear(ratio * d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, mlp_ratio: int, ln_eps: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model, eps=ln_eps, bias=False)
        self.attn = Attention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model, eps=ln_eps, bias=False)
        self.mlp = MLP(d_model, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Token ids (B, T) -> next-token logits (B, T, vocab)."""

    def __init__(self, *, vocab_size: int, seq_len: int, d_model: int, n_layers: int, n_heads: int,
                 mlp_ratio: int = 4, ln_eps: float = 1e-6, positions: str = "learned", **_ignored):
        super().__init__()
        if positions != "learned":
            raise ValueError(f"model.positions {positions!r}: only 'learned' is implemented")
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.seq_len = seq_len
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(seq_len, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, mlp_ratio, ln_eps) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model, eps=ln_eps, bias=False)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.active_blocks = n_layers
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        d = self.tok_emb.embedding_dim
        nn.init.normal_(self.tok_emb.weight, std=1 / math.sqrt(d))
        nn.init.normal_(self.pos_emb.weight, std=1 / math.sqrt(d))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                truncated_normal_(module.weight, 1 / math.sqrt(module.in_features))
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        if t > self.seq_len:
            raise ValueError(f"sequence of {t} tokens is longer than the model's seq_len {self.seq_len}")
        x = self.tok_emb(idx) + self.pos_emb.weight[:t]
        for block in self.blocks[: self.active_blocks]:
            x = block(x)
        return self.head(self.ln_f(x))

    def capture(self, on: bool) -> None:
        """Turn recording of per-layer max attention logits on or off (probe steps only)."""
        for block in self.blocks:
            block.attn.capturing = on
            block.attn.max_logit = None

    def attention_max_logits(self) -> list[torch.Tensor | None]:
        return [block.attn.max_logit for block in self.blocks]

    def num_parameters(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.pos_emb.weight.numel() - self.tok_emb.weight.numel() if non_embedding else n


ROLE_ATTRIBUTE = "_stabench_role"


def parameter_roles(model: nn.Module) -> dict[str, str]:
    """Map parameter name -> layer type: embedding, hidden, readout, norm or other.

    Parametrizations (torch.nn.utils.parametrize) keep the original weight under
    ``...parametrizations.weight.original``; it takes the role of the weight it stands for.
    A method that adds parameters can tag them with ``setattr(p, ROLE_ATTRIBUTE, role)``.
    """
    roles = {}
    for name, param in model.named_parameters():
        plain = name.replace(".parametrizations.weight.original", ".weight")
        if hasattr(param, ROLE_ATTRIBUTE):
            roles[name] = getattr(param, ROLE_ATTRIBUTE)
        elif plain.startswith(("tok_emb.", "pos_emb.")):
            roles[name] = "embedding"
        elif plain.startswith("head."):
            roles[name] = "readout"
        elif any(part.startswith("ln") or part.endswith("norm") for part in plain.split(".")[:-1]):
            roles[name] = "norm"
        elif param.ndim == 2:
            roles[name] = "hidden"
        else:
            roles[name] = "other"
    return roles
