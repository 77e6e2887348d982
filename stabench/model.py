"""A decoder-only pre-LN GPT whose every weight carries a leading member dimension.

The baseline recipe of Wortsman et al. (2023), section 2.1: no biases, LayerNorm eps 1e-6
without bias, GELU MLP of width 4d, learned positions, untied head. Init: token and position
embeddings N(0, std 1/sqrt(d)); every other weight truncated normal (cut at 2 std, rescaled to
keep the std) with std 1/sqrt(fan_in).

Members. A run is an ensemble of K >= 1 members that share (method, size) and differ in peak
LR and seed (a separate run is K = 1). Every parameter and buffer has shape (K, ...): a weight
matrix is (K, out, in), a LayerNorm gain (K, d), an embedding (K, rows, d). The forward takes
token ids (K or 1, B, T) (1 = every member reads the same batch) and returns logits
(K, B, T, vocab): one batched matrix product per layer for all members (``torch.bmm``), so a
pack of small models costs one model's worth of kernel launches and Python, not K. The
engine builds each member as a K = 1 model (seeded init, then the methods' transforms) and
stacks them (``stabench.ensemble``); member k of a pack computes exactly what the K = 1 run
of the same config computes, up to float reduction order.

The model names no stabilization method. It exposes the points methods need:
- ``Attention.q_norm`` / ``k_norm`` (identity by default) act on (K, B, H, T, head_dim);
- ``Attention.scale`` multiplies the attention logits (1/sqrt(head_dim) by default);
- ``GPT.active_blocks`` limits how many blocks the forward pass runs (depth schedules);
- every weight is the ``weight`` of a ``Linear``/``Embedding`` of this module, so
  reparameterizations can use ``torch.nn.utils.parametrize``; ``parameter_roles`` says which
  layer type each parameter is.
The trainer calls ``features`` (everything up to the final LayerNorm; with ``capture`` it also
returns the largest attention logit of every layer and member, on probe steps only; it
writes no module state, so it compiles) and, for evaluation, ``readout`` (the head).
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


def members_of(x: torch.Tensor, members: int) -> torch.Tensor:
    """``x`` with its leading dimension expanded from 1 to ``members`` (a view, no copy)."""
    return x if x.shape[0] == members else x.expand(members, *x.shape[1:])


def member_shape(t: torch.Tensor, ndim: int) -> tuple[int, ...]:
    """Shape that broadcasts a per-member (K, d) tensor against a (K, ..., d) one of ``ndim`` dims."""
    return (t.shape[0],) + (1,) * (ndim - 2) + (t.shape[-1],)


@torch.no_grad()
def _draw_like_torch(weight: torch.Tensor, kind: str) -> None:
    """Draw from the global RNG as torch's nn.Linear (uniform) or nn.Embedding (normal) do at
    construction. ``GPT.reset_parameters`` overwrites the values; the draws keep the RNG
    stream where it was with torch's modules, so a seed gives the same init as before."""
    if kind == "uniform":
        weight.uniform_(-1.0, 1.0)
    else:
        weight.normal_()


class Linear(nn.Module):
    """y = x W^T for every member: weight (K, out, in), x (K or 1, ..., in) -> (K, ..., out)."""

    def __init__(self, in_features: int, out_features: int, members: int = 1):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(members, out_features, in_features))
        _draw_like_torch(self.weight, "uniform")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        k = weight.shape[0]
        rows = members_of(x.reshape(x.shape[0], -1, self.in_features), k)  # (K, N, in)
        return torch.bmm(rows, weight.transpose(1, 2)).view(k, *x.shape[1:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, members={self.weight.shape[0]}"


class Embedding(nn.Module):
    """Rows of a (K, num, dim) table: ids (K or 1, B, T) -> (K, B, T, dim)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, members: int = 1):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = nn.Parameter(torch.empty(members, num_embeddings, embedding_dim))
        _draw_like_torch(self.weight, "normal")

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        k, rows = weight.shape[0], weight.shape[1]
        if k == 1:
            return F.embedding(idx, weight[0])
        # One lookup in the (K * rows, dim) table for all members: member k reads rows k * rows + id.
        offsets = torch.arange(0, k * rows, rows, device=idx.device).view(k, *[1] * (idx.dim() - 1))
        return F.embedding(idx + offsets, weight.reshape(k * rows, -1))

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, members={self.weight.shape[0]}"


class LayerNorm(nn.Module):
    """LayerNorm without bias over the last dim, with a gain per member: weight (K, dim)."""

    def __init__(self, dim: int, eps: float = 1e-6, members: int = 1):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(members, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if weight.shape[0] == 1:
            return F.layer_norm(x, (self.dim,), weight[0], None, self.eps)
        return F.layer_norm(x, (self.dim,), None, None, self.eps) * weight.view(member_shape(weight, x.dim()))

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, members={self.weight.shape[0]}"


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, members: int = 1):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.q = Linear(d_model, d_model, members)
        self.k = Linear(d_model, d_model, members)
        self.v = Linear(d_model, d_model, members)
        self.out = Linear(d_model, d_model, members)
        self.q_norm: nn.Module = nn.Identity()
        self.k_norm: nn.Module = nn.Identity()
        self.scale = 1.0 / math.sqrt(self.head_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        k, b, t, _ = x.shape
        return x.view(k, b, t, self.n_heads, self.head_dim).transpose(2, 3)  # (K, B, H, T, hd)

    def forward(self, x: torch.Tensor, capture: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(K, B, T, d) -> (output, per-member max attention logit (K,) when ``capture``)."""
        k, b, t, d = x.shape
        q = self.q_norm(self._heads(self.q(x))).reshape(k * b, self.n_heads, t, self.head_dim)
        key = self.k_norm(self._heads(self.k(x))).reshape(k * b, self.n_heads, t, self.head_dim)
        v = self._heads(self.v(x)).reshape(k * b, self.n_heads, t, self.head_dim)
        max_logit = self._max_logit(q, key, k) if capture else None
        y = F.scaled_dot_product_attention(q, key, v, is_causal=True, scale=self.scale)  # (K*B, H, T, hd)
        y = y.reshape(k, b, self.n_heads, t, self.head_dim).transpose(2, 3).reshape(k, b, t, d)
        return self.out(y), max_logit

    @torch.no_grad()
    def _max_logit(self, q: torch.Tensor, key: torch.Tensor, members: int) -> torch.Tensor:
        """Largest attention logit z = scale * <q, k> over causal pairs, per member (a probe, not hot)."""
        logits = (q.float() @ key.float().transpose(-2, -1)) * self.scale
        t = logits.shape[-1]
        causal = torch.ones(t, t, dtype=torch.bool, device=logits.device).tril()
        return logits.masked_fill(~causal, float("-inf")).view(members, -1).amax(dim=1)


class MLP(nn.Module):
    def __init__(self, d_model: int, ratio: int, members: int = 1):
        super().__init__()
        self.up = Linear(d_model, ratio * d_model, members)
        self.down = Linear(ratio * d_model, d_model, members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, mlp_ratio: int, ln_eps: float, members: int = 1):
        super().__init__()
        self.ln1 = LayerNorm(d_model, ln_eps, members)
        self.attn = Attention(d_model, n_heads, members)
        self.ln2 = LayerNorm(d_model, ln_eps, members)
        self.mlp = MLP(d_model, mlp_ratio, members)

    def forward(self, x: torch.Tensor, capture: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        y, max_logit = self.attn(self.ln1(x), capture)
        x = x + y
        return x + self.mlp(self.ln2(x)), max_logit


class GPT(nn.Module):
    """Token ids (K or 1, B, T) -> next-token logits (K, B, T, vocab) for K members.

    The keyword arguments are a run's ``config["model"]`` (``stabench.runspec.MODEL_KEYS``, built
    and checked there) plus ``members``; an unknown one is a TypeError. The defaults of
    ``mlp_ratio``, ``ln_eps`` and ``positions`` are the schema's (``benchmarks/schema.yaml``,
    the one source; a test asserts they agree), for models built outside a benchmark.
    """

    def __init__(self, *, vocab_size: int, seq_len: int, d_model: int, n_layers: int, n_heads: int,
                 mlp_ratio: int = 4, ln_eps: float = 1e-6, positions: str = "learned", members: int = 1):
        super().__init__()
        if positions != "learned":
            raise ValueError(f"model.positions {positions!r}: only 'learned' is implemented")
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.seq_len = seq_len
        self.tok_emb = Embedding(vocab_size, d_model, members)
        self.pos_emb = Embedding(seq_len, d_model, members)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, mlp_ratio, ln_eps, members) for _ in range(n_layers))
        self.ln_f = LayerNorm(d_model, ln_eps, members)
        self.head = Linear(d_model, vocab_size, members)
        self.active_blocks = n_layers
        self.reset_parameters()

    @property
    def members(self) -> int:
        return self.tok_emb.weight.shape[0]

    @torch.no_grad()
    def reset_parameters(self) -> None:
        d = self.tok_emb.embedding_dim
        nn.init.normal_(self.tok_emb.weight, std=1 / math.sqrt(d))
        nn.init.normal_(self.pos_emb.weight, std=1 / math.sqrt(d))
        for module in self.modules():
            if isinstance(module, Linear):
                truncated_normal_(module.weight, 1 / math.sqrt(module.in_features))
            elif isinstance(module, LayerNorm):
                nn.init.ones_(module.weight)

    def features(self, idx: torch.Tensor, capture: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token ids (K or 1, B, T) -> (final hidden states (K, B, T, d) after ln_f, and with
        ``capture`` the max attention logit of every active layer and member (layers, K))."""
        if idx.dim() != 3:
            raise ValueError(f"token ids must be (members or 1, batch, time), got shape {tuple(idx.shape)}")
        t = idx.shape[-1]
        if t > self.seq_len:
            raise ValueError(f"sequence of {t} tokens is longer than the model's seq_len {self.seq_len}")
        x = self.tok_emb(idx) + self.pos_emb.weight[:, None, :t]  # (K, B, T, d)
        maxima = []
        for block in self.blocks[: self.active_blocks]:
            x, max_logit = block(x, capture)
            if capture:
                maxima.append(max_logit)
        return self.ln_f(x), torch.stack(maxima) if capture else None

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states (K, B, T, d) -> logits (K, B, T, vocab), one batched product. The
        training loss does not call it (stabench.readout never keeps the logits)."""
        return self.head(h)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids (K or 1, B, T) -> logits (K, B, T, vocab)."""
        return self.readout(self.features(idx)[0])

    def num_parameters(self, non_embedding: bool = True) -> int:
        """Parameters of one member; with ``non_embedding`` (the default) without the vocabulary
        and position embeddings, as Kaplan et al. (2020) and Wortsman et al. (2023) count model
        size: the token embedding, the position embedding and the untied readout (unembedding)
        matrix are left out. (nanoGPT leaves out only the position embedding since its readout
        is tied to the token embedding.) At vocabulary 2048 and width 32 the readout alone is 5x
        the blocks, so counting it would make the sizes of a tiny grid look alike."""
        n = sum(p[0].numel() for p in self.parameters())
        if non_embedding:
            n -= self.pos_emb.weight[0].numel() + self.tok_emb.weight[0].numel() + self.head.weight[0].numel()
        return n


ROLE_ATTRIBUTE = "_stabench_role"
MATRIX_NDIM = 3  # (member, out, in)


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
        elif param.ndim == MATRIX_NDIM:
            roles[name] = "hidden"
        else:
            roles[name] = "other"
    return roles
