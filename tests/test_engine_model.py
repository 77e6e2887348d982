"""The GPT of stabench.model: shapes, causality, init, parameter roles, attention-logit capture,
and what the qk_layernorm method does to the queries and keys it feeds into attention."""

from __future__ import annotations

import math

import pytest
import torch

from stabench.methods import load_method
from stabench.model import GPT, parameter_roles

VOCAB, SEQ = 97, 16


def tiny_gpt(seed: int = 0, **over) -> GPT:
    torch.manual_seed(seed)
    dims = {"vocab_size": VOCAB, "seq_len": SEQ, "d_model": 32, "n_layers": 2, "n_heads": 4, **over}
    return GPT(**dims).eval()


def tokens(batch: int = 3, t: int = SEQ, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("t", [1, 7, SEQ])
def test_output_shape(t):
    model = tiny_gpt()
    with torch.no_grad():
        out = model(tokens(t=t))
    assert out.shape == (3, t, VOCAB)
    assert torch.isfinite(out).all()


def test_longer_than_seq_len_is_an_error():
    with pytest.raises(ValueError, match="seq_len"):
        tiny_gpt()(tokens(t=SEQ + 1))


@pytest.mark.parametrize("t", [0, 5, SEQ - 1])
def test_causal(t):
    model = tiny_gpt()
    idx = tokens()
    changed = idx.clone()
    changed[:, t] = (changed[:, t] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=1e-6)
    assert (a[:, t] - b[:, t]).abs().max() > 1e-4
    if t + 1 < SEQ:  # later positions see the change too
        assert (a[:, t + 1:] - b[:, t + 1:]).abs().max() > 1e-4


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
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
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
    for m in model.modules():
        if isinstance(m, torch.nn.LayerNorm):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert m.bias is None
    assert all(lin.bias is None for lin in linears)


def test_init_depends_on_seed_only():
    a, b, c = tiny_gpt(seed=3), tiny_gpt(seed=3), tiny_gpt(seed=4)
    assert torch.equal(a.head.weight, b.head.weight)
    assert not torch.equal(a.head.weight, c.head.weight)


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


def test_parameter_roles_follow_parametrizations():
    from torch.nn.utils import parametrize

    class Scale(torch.nn.Module):
        def forward(self, w):
            return 2 * w

    model = tiny_gpt()
    parametrize.register_parametrization(model.blocks[0].attn.q, "weight", Scale())
    parametrize.register_parametrization(model.head, "weight", Scale())
    roles = parameter_roles(model)
    assert roles["blocks.0.attn.q.parametrizations.weight.original"] == "hidden"
    assert roles["head.parametrizations.weight.original"] == "readout"


def _manual_max_logits(model: GPT, idx: torch.Tensor) -> list[float]:
    """max over causal pairs of scale * <q_i, k_j>, from each attention layer's input."""
    inputs = []
    hooks = [b.attn.register_forward_pre_hook(lambda m, args: inputs.append(args[0]))
             for b in model.blocks]
    with torch.no_grad():
        model(idx)
    for h in hooks:
        h.remove()
    out = []
    for block, x in zip(model.blocks, inputs):
        attn = block.attn
        b, t, _ = x.shape
        q = attn.q(x).view(b, t, attn.n_heads, attn.head_dim).transpose(1, 2)
        k = attn.k(x).view(b, t, attn.n_heads, attn.head_dim).transpose(1, 2)
        best = -math.inf
        for i in range(t):
            for j in range(i + 1):
                z = (q[:, :, i] * k[:, :, j]).sum(-1) / math.sqrt(attn.head_dim)
                best = max(best, z.max().item())
        out.append(best)
    return out


def test_capture_records_max_attention_logit():
    model = tiny_gpt()
    with torch.no_grad():  # make logits large enough that a wrong mask or scale shows
        for block in model.blocks:
            block.attn.q.weight.mul_(4)
    idx = tokens(batch=2)
    with torch.no_grad():
        model(idx)
    assert model.attention_max_logits() == [None, None], "nothing recorded unless capturing"
    model.capture(True)
    with torch.no_grad():
        model(idx)
    got = [m.item() for m in model.attention_max_logits()]
    want = _manual_max_logits(model, idx)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-5)
    model.capture(False)
    assert model.attention_max_logits() == [None, None]


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
        assert qk.shape == (3, 4, SEQ, 8)  # (B, H, T, head_dim)
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
    assert all(p.shape == (8,) for p in new.values())  # head_dim gains, shared across heads
    roles = parameter_roles(model)
    assert {roles[n] for n in new} == {"norm"}
    # the transformed model still runs and stays causal
    idx = tokens()
    changed = idx.clone()
    changed[:, 9] = (changed[:, 9] + 1) % VOCAB
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[:, :9], model(changed)[:, :9], rtol=0, atol=1e-6)
