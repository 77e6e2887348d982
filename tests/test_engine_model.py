"""The GPT of stabench.model: a leading member dimension K on every weight; shapes, causality,
init (bit-identical to the pre-ensemble model for a seed), members computing what their K = 1
models compute, parameter roles, attention-logit capture, and what the qk_layernorm method
does to the queries and keys it feeds into attention."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stabench.ensemble import Ensemble
from stabench.methods import load_method
from stabench.model import GPT, MATRIX_NDIM, Embedding, LayerNorm, Linear, parameter_roles

VOCAB, SEQ = 97, 16


def tiny_gpt(seed: int = 0, **over) -> GPT:
    torch.manual_seed(seed)
    dims = {"vocab_size": VOCAB, "seq_len": SEQ, "d_model": 32, "n_layers": 2, "n_heads": 4, **over}
    return GPT(**dims).eval()


def tokens(batch: int = 3, t: int = SEQ, seed: int = 1, members: int = 1) -> torch.Tensor:
    """Token ids (members, batch, t)."""
    return torch.randint(0, VOCAB, (members, batch, t), generator=torch.Generator().manual_seed(seed))


# ---- the model before the member dimension (commit f76518a), for init and forward parity -----

class _OldAttention(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.n_heads, self.head_dim = h, d // h
        self.q, self.k, self.v, self.out = (nn.Linear(d, d, bias=False) for _ in range(4))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (m(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2) for m in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1 / math.sqrt(self.head_dim))
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class _OldBlock(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.ln1 = nn.LayerNorm(d, eps=1e-6, bias=False)
        self.attn = _OldAttention(d, h)
        self.ln2 = nn.LayerNorm(d, eps=1e-6, bias=False)
        self.mlp = nn.Sequential()
        self.mlp.up, self.mlp.down = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp.down(F.gelu(self.mlp.up(self.ln2(x))))


class OldGPT(nn.Module):
    """stabench.model.GPT as it was before the member dimension: (B, T) -> (B, T, V)."""

    def __init__(self, vocab_size, seq_len, d_model, n_layers, n_heads):
        super().__init__()
        self.tok_emb, self.pos_emb = nn.Embedding(vocab_size, d_model), nn.Embedding(seq_len, d_model)
        self.blocks = nn.ModuleList(_OldBlock(d_model, n_heads) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model, eps=1e-6, bias=False)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        with torch.no_grad():
            nn.init.normal_(self.tok_emb.weight, std=1 / math.sqrt(d_model))
            nn.init.normal_(self.pos_emb.weight, std=1 / math.sqrt(d_model))
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    wide = 1 / math.sqrt(m.in_features) / 0.87962566103423978
                    nn.init.trunc_normal_(m.weight, std=wide, a=-2 * wide, b=2 * wide)

    def forward(self, idx):
        x = self.tok_emb(idx) + self.pos_emb.weight[:idx.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def test_a_seed_gives_the_init_of_the_old_model_bit_for_bit():
    torch.manual_seed(5)
    old = OldGPT(VOCAB, SEQ, 32, 2, 4)
    new = tiny_gpt(seed=5)
    old_params = dict(old.named_parameters())
    for name, p in new.named_parameters():
        assert p.shape == (1, *old_params[name].shape), name
        assert torch.equal(p[0], old_params[name]), name
    assert set(old_params) == {n for n, _ in new.named_parameters()}
    # the RNG stream is where the old model left it, so later draws (methods, data) agree too
    torch.manual_seed(5)
    OldGPT(VOCAB, SEQ, 32, 2, 4)
    after_old = torch.rand(3)
    tiny_gpt(seed=5)
    assert torch.equal(torch.rand(3), after_old)
    # and the forward is the old forward
    idx = tokens()
    with torch.no_grad():
        torch.testing.assert_close(new(idx)[0], old.eval()(idx[0]), rtol=1e-5, atol=1e-5)


# ---- shapes -------------------------------------------------------------------------------

@pytest.mark.parametrize("t", [1, 7, SEQ])
def test_output_shape(t):
    model = tiny_gpt()
    with torch.no_grad():
        out = model(tokens(t=t))
    assert out.shape == (1, 3, t, VOCAB)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("members", [2, 3])
def test_member_shapes(members):
    model = tiny_gpt(members=members)
    assert model.members == members
    for name, p in model.named_parameters():
        assert p.shape[0] == members, name
    assert model.head.weight.shape == (members, VOCAB, 32)
    assert model.tok_emb.weight.shape == (members, VOCAB, 32)
    assert model.ln_f.weight.shape == (members, 32)
    assert {p.ndim for n, p in model.named_parameters() if "ln" not in n} == {MATRIX_NDIM}
    with torch.no_grad():
        shared = model(tokens())                     # (1, B, T): every member reads the same batch
        own = model(tokens(members=members))         # (K, B, T): one batch per member
        hidden, maxima = model.features(tokens(), capture=True)
    assert shared.shape == own.shape == (members, 3, SEQ, VOCAB)
    assert hidden.shape == (members, 3, SEQ, 32) and maxima.shape == (2, members)
    assert [x.shape for x in model.readout(hidden)] == [(3, SEQ, VOCAB)] * members
    assert model.num_parameters() == tiny_gpt().num_parameters()  # counts one member


def test_token_ids_must_carry_a_member_dimension():
    with pytest.raises(ValueError, match="members or 1, batch, time"):
        tiny_gpt()(tokens()[0])


def test_longer_than_seq_len_is_an_error():
    with pytest.raises(ValueError, match="seq_len"):
        tiny_gpt()(tokens(t=SEQ + 1))


@pytest.mark.parametrize("t", [0, 5, SEQ - 1])
def test_causal(t):
    model = tiny_gpt()
    idx = tokens()
    changed = idx.clone()
    changed[..., t] = (changed[..., t] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :, :t], b[:, :, :t], rtol=0, atol=1e-6)
    assert (a[:, :, t] - b[:, :, t]).abs().max() > 1e-4
    if t + 1 < SEQ:  # later positions see the change too
        assert (a[:, :, t + 1:] - b[:, :, t + 1:]).abs().max() > 1e-4


# ---- members compute what their own K = 1 models compute ------------------------------------

def stacked(seeds: list[int]) -> tuple[GPT, list[GPT]]:
    singles = [tiny_gpt(seed=s) for s in seeds]
    copies = [tiny_gpt(seed=s) for s in seeds]
    return Ensemble(copies).model.eval(), singles


def test_each_member_computes_its_own_model():
    pack, singles = stacked([0, 1, 2])
    shared, own = tokens(), tokens(members=3, seed=7)
    with torch.no_grad():
        out_shared, out_own = pack(shared), pack(own)
        _, maxima = pack.features(own, capture=True)
        for k, single in enumerate(singles):
            torch.testing.assert_close(out_shared[k], single(shared)[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(out_own[k], single(own[k:k + 1])[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(maxima[:, k], single.features(own[k:k + 1], capture=True)[1][:, 0],
                                       rtol=1e-5, atol=1e-5)


def test_members_do_not_mix_gradients():
    pack, singles = stacked([0, 1])
    idx = tokens(members=2, seed=3)
    pack.train()
    logits = pack(idx)
    (F.cross_entropy(logits[0].flatten(0, 1), idx[0].flatten()) * 1.0).backward()
    head = dict(pack.named_parameters())["head.weight"].grad
    assert head[0].abs().sum() > 0 and head[1].abs().sum() == 0  # member 1's loss was not in it


# ---- init ---------------------------------------------------------------------------------

def _truncated_std_factor(a: float = 2.0) -> float:
    """Std of N(0, 1) truncated to [-a, a]."""
    pdf = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(a / math.sqrt(2))
    return math.sqrt(1 - 2 * a * pdf / mass)


def test_init_stds():
    d = 256
    model = tiny_gpt(d_model=d, n_layers=2, n_heads=4, vocab_size=512, seq_len=64)
    for emb in (model.tok_emb.weight, model.pos_emb.weight):
        assert emb.std().item() == pytest.approx(1 / math.sqrt(d), rel=0.05)
        assert emb.mean().abs().item() < 0.01
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    assert len(linears) == 2 * 6 + 1  # q k v out up down per block, and the head
    for lin in linears:
        std = 1 / math.sqrt(lin.in_features)
        w = lin.weight
        # cut at 2 std of the widened normal, rescaled so the realized std is 1/sqrt(fan_in)
        assert w.abs().max().item() <= 2 * std / _truncated_std_factor(2.0) + 1e-7
        assert w.std().item() == pytest.approx(std, rel=0.05)
    # fan_in matters: the MLP down projection (fan_in 4d) is half as wide as q (fan_in d)
    block = model.blocks[0]
    ratio = block.attn.q.weight.std() / block.mlp.down.weight.std()
    assert ratio.item() == pytest.approx(2.0, rel=0.05)
    norms = [m for m in model.modules() if isinstance(m, LayerNorm)]
    assert len(norms) == 2 * 2 + 1
    for m in norms:
        assert torch.equal(m.weight, torch.ones_like(m.weight))
    assert {n for n, _ in model.named_parameters() if "bias" in n} == set()
    assert all(isinstance(m, Embedding) for m in (model.tok_emb, model.pos_emb))


def test_init_depends_on_seed_only():
    a, b, c = tiny_gpt(seed=3), tiny_gpt(seed=3), tiny_gpt(seed=4)
    assert torch.equal(a.head.weight, b.head.weight)
    assert not torch.equal(a.head.weight, c.head.weight)


# ---- parameter roles ----------------------------------------------------------------------

def test_parameter_roles():
    model = tiny_gpt()
    roles = parameter_roles(model)
    assert set(roles) == {n for n, _ in model.named_parameters()}
    assert roles["tok_emb.weight"] == roles["pos_emb.weight"] == "embedding"
    assert roles["head.weight"] == "readout"
    for name in ("ln_f.weight", "blocks.0.ln1.weight", "blocks.1.ln2.weight"):
        assert roles[name] == "norm"
    for name in ("blocks.0.attn.q.weight", "blocks.0.attn.k.weight", "blocks.0.attn.v.weight",
                 "blocks.1.attn.out.weight", "blocks.0.mlp.up.weight", "blocks.1.mlp.down.weight"):
        assert roles[name] == "hidden"
    assert set(roles.values()) == {"embedding", "hidden", "readout", "norm"}


def test_parameter_roles_follow_parametrizations_and_tags():
    from torch.nn.utils import parametrize

    from stabench.model import ROLE_ATTRIBUTE

    class Scale(torch.nn.Module):
        def forward(self, w):
            return 2 * w

    model = tiny_gpt()
    parametrize.register_parametrization(model.blocks[0].attn.q, "weight", Scale())
    parametrize.register_parametrization(model.head, "weight", Scale())
    extra = torch.nn.Parameter(torch.zeros(1, 3))
    setattr(extra, ROLE_ATTRIBUTE, "gate")
    model.register_parameter("extra", extra)
    model.register_parameter("vector", torch.nn.Parameter(torch.zeros(1, 3)))
    roles = parameter_roles(model)
    assert roles["blocks.0.attn.q.parametrizations.weight.original"] == "hidden"
    assert roles["head.parametrizations.weight.original"] == "readout"
    assert roles["extra"] == "gate" and roles["vector"] == "other"


# ---- attention-logit capture --------------------------------------------------------------

def _manual_max_logits(model: GPT, idx: torch.Tensor) -> list[list[float]]:
    """[layer][member] max over causal pairs of scale * <q_i, k_j>, from each attention input."""
    inputs = []
    hooks = [b.attn.register_forward_pre_hook(lambda m, args: inputs.append(args[0])) for b in model.blocks]
    with torch.no_grad():
        model(idx)
    for h in hooks:
        h.remove()
    out = []
    for block, x in zip(model.blocks, inputs):
        attn = block.attn
        k_, b, t, _ = x.shape
        q = attn.q(x).view(k_, b, t, attn.n_heads, attn.head_dim).transpose(2, 3)
        k = attn.k(x).view(k_, b, t, attn.n_heads, attn.head_dim).transpose(2, 3)
        row = []
        for member in range(k_):
            best = -math.inf
            for i in range(t):
                for j in range(i + 1):
                    z = (q[member, :, :, i] * k[member, :, :, j]).sum(-1) / math.sqrt(attn.head_dim)
                    best = max(best, z.max().item())
            row.append(best)
        out.append(row)
    return out


def test_capture_records_max_attention_logit_per_layer_and_member():
    model, _ = stacked([0, 1])
    with torch.no_grad():  # make logits large enough that a wrong mask or scale shows
        for block in model.blocks:
            block.attn.q.weight.mul_(4)
    idx = tokens(batch=2, members=2)
    with torch.no_grad():
        _, nothing = model.features(idx)
        hidden, maxima = model.features(idx, capture=True)
    assert nothing is None, "nothing recorded unless capturing"
    assert maxima.shape == (2, 2)
    assert maxima.tolist() == [pytest.approx(row, rel=1e-5, abs=1e-5) for row in _manual_max_logits(model, idx)]
    assert maxima[:, 0].tolist() != pytest.approx(maxima[:, 1].tolist())
    model.active_blocks = 1
    with torch.no_grad():
        assert model.features(idx, capture=True)[1].shape == (1, 2)  # active layers only


# ---- qk-layernorm ---------------------------------------------------------------------------

def _captured_qk(model: GPT, idx: torch.Tensor) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    hooks = []
    for block in model.blocks:
        for mod in (block.attn.q_norm, block.attn.k_norm):
            hooks.append(mod.register_forward_hook(lambda m, args, out: seen.append(out.detach())))
    with torch.no_grad():
        model(idx)
    for h in hooks:
        h.remove()
    return seen


def test_qk_layernorm_normalizes_queries_and_keys_per_head():
    config = {"model": {"ln_eps": 1e-6}}
    plain = tiny_gpt()
    normed = tiny_gpt()
    method = load_method("qk_layernorm")
    method.hook("transform_model")(normed, config, method.args)
    idx = tokens()

    for qk in _captured_qk(normed, idx):
        assert qk.shape == (1, 3, 4, SEQ, 8)  # (K, B, H, T, head_dim)
        mean, var = qk.mean(-1), qk.var(-1, unbiased=False)
        assert mean.abs().max().item() < 1e-5
        assert (var - 1).abs().max().item() < 1e-3

    raw = _captured_qk(plain, idx)
    assert len(raw) == 4
    for qk in raw:
        mean, var = qk.mean(-1), qk.var(-1, unbiased=False)
        assert mean.abs().max().item() > 1e-2
        assert (var - 1).abs().max().item() > 1e-2


def test_qk_layernorm_gains_are_per_head_dim_norm_parameters():
    model = tiny_gpt()
    method = load_method("qk_layernorm")
    before = {n for n, _ in model.named_parameters()}
    method.hook("transform_model")(model, {"model": {"ln_eps": 1e-6}}, method.args)
    new = {n: p for n, p in model.named_parameters() if n not in before}
    assert set(new) == {f"blocks.{i}.attn.{qk}_norm.weight" for i in range(2) for qk in "qk"}
    assert all(p.shape == (1, 8) for p in new.values())  # head_dim gains, shared across heads, K = 1
    roles = parameter_roles(model)
    assert {roles[n] for n in new} == {"norm"}
    # the transformed model still runs and stays causal
    idx = tokens()
    changed = idx.clone()
    changed[..., 9] = (changed[..., 9] + 1) % VOCAB
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[:, :, :9], model(changed)[:, :, :9], rtol=0, atol=1e-6)
