"""A plain reference trainer: the yardstick for ``stabench speed``.

What it is. A standalone, single-file GPT trainer (this file imports nothing from stabench)
that trains on uniform random tokens and reports tokens/s, ms per step and, with ``--ops``,
the number of aten ops one training step dispatches. Running it next to ``stabench speed`` at
the same shape on the same GPU says how far stabench's trainer (packed members, probes,
hooks) is from a well-known, minimal implementation.

    python scripts/reference_trainer.py --d-model 128 --n-layers 2 --n-heads 2 --vocab 8192 \\
        --batch 64 --seq 256 --steps 100 --warmup 20 --compile --out speed.jsonl

It prints ONE JSON line (and appends it to ``--out``).

What it follows. karpathy/nanoGPT's ``model.py`` (GPT with learned positions, pre-LN blocks,
``F.scaled_dot_product_attention(is_causal=True)``, a fused q/k/v projection, GELU MLP of
width 4d, LayerNorm eps 1e-5, N(0, 0.02) init with the residual projections scaled by
1/sqrt(2 n_layers), ``configure_optimizers``: AdamW with weight decay on the 2-D tensors only,
``fused=True`` on CUDA) and ``train.py`` (bf16 ``torch.autocast`` on CUDA and no autocast on
CPU, ``clip_grad_norm_`` to 1.0, ``zero_grad(set_to_none=True)``, ``torch.compile(model)`` of
the whole model). The loss is ``F.cross_entropy`` on the logits; as in nanoGPT there is no
explicit ``.float()``: under autocast cross_entropy is on autocast's float32 list, so the bf16
logits are upcast to float32 inside it.

Differences from nanoGPT, chosen to match stabench's model and recipe:
  * the head is UNTIED (its own (vocab, d) matrix; nanoGPT ties it to the token embedding),
    because stabench's model has an untied readout;
  * no biases anywhere (nanoGPT's ``bias=False``): linears and LayerNorms have none;
  * no dropout modules (nanoGPT's ``dropout=0.0`` makes them identities anyway);
  * weight decay 1e-4, betas (0.9, 0.95), constant learning rate (``--lr``, no schedule);
    off CUDA AdamW is ``foreach=True`` (nanoGPT leaves the default there);
  * data: uniform random tokens drawn ON THE DEVICE each step (``torch.randint``), so data
    loading costs one kernel and no host-to-device copy; random tokens cannot be learned, the
    loss stays near ln(vocab);
  * no gradient accumulation, no GradScaler (bf16 needs none), no evaluation, no checkpoints,
    no per-step ``loss.item()``: the timed loop has no host sync until the end, where
    ``torch.cuda.synchronize()`` runs before the clock is read.
Left as in nanoGPT but unlike stabench: LayerNorm eps 1e-5 (stabench 1e-6) and the init.

Timing. The first warm-up step is timed on its own (``compile_seconds`` when ``--compile``:
it includes the compilation), the remaining warm-up steps are untimed, then ``--steps`` steps
are timed as one block. ``--ops`` then runs ONE more (eager) step under a
``TorchDispatchMode`` that counts every ``__torch_dispatch__`` call (forward, backward,
gradient clipping, optimizer step and zero_grad; drawing the batch is not counted) and
reports ``ops_per_step``. With ``--compile`` it is not counted (the compiled graph dispatches
few, fused ops; the count would not compare with stabench's eager steps): ``ops_per_step`` is
null and ``ops_note`` says why. The count depends on the device: on CPU the foreach AdamW
reads each parameter's step count with ``.item()`` (2 x n_params of its ops; a host read, not a
device sync there), while on CUDA ``fused=True`` does the update in a few fused ops.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from contextlib import nullcontext

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode


# ----------------------------------------------------------------------------- model (nanoGPT)

class LayerNorm(nn.Module):
    """LayerNorm without bias (nanoGPT's LayerNorm with bias=False)."""

    def __init__(self, ndim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, None, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        assert d_model % n_heads == 0
        self.c_attn = nn.Linear(d_model, 3 * d_model, bias=False)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(d_model, d_model, bias=False)
        self.n_heads = n_heads
        self.d_model = d_model

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.d_model, dim=2)
        k = k.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)
        v = v.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, d_model: int):
        super().__init__()
        self.c_fc = nn.Linear(d_model, 4 * d_model, bias=False)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * d_model, d_model, bias=False)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.ln_1 = LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.ln_2 = LayerNorm(d_model)
        self.mlp = MLP(d_model)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, vocab: int, seq_len: int, d_model: int, n_layers: int, n_heads: int):
        super().__init__()
        self.seq_len = seq_len
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab, d_model),
            wpe=nn.Embedding(seq_len, d_model),
            h=nn.ModuleList([Block(d_model, n_heads) for _ in range(n_layers)]),
            ln_f=LayerNorm(d_model),
        ))
        self.lm_head = nn.Linear(d_model, vocab, bias=False)  # UNTIED (nanoGPT ties it to wte)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layers))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets):
        b, t = idx.size()
        assert t <= self.seq_len, f"sequence of length {t}, block size is only {self.seq_len}"
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss


def configure_optimizer(model: nn.Module, weight_decay: float, lr: float, betas, device_type: str):
    """nanoGPT's configure_optimizers: decay the 2-D tensors (matmuls, embeddings), not the gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    extra = dict(fused=True) if device_type == "cuda" else dict(foreach=True)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, **extra)


# ----------------------------------------------------------------------------- op counter

class CountOps(TorchDispatchMode):
    """Counts every aten op that reaches Python dispatch (one per ``__torch_dispatch__`` call)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


# ----------------------------------------------------------------------------- training

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--n-heads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=100, help="timed steps, after the warm-up")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps first (>= 1; the first is compile_seconds)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--compile", action="store_true", help="torch.compile(model), as nanoGPT's compile=True")
    p.add_argument("--ops", action="store_true", help="count aten ops of one eager training step")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cuda:N or cpu")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--out", default=None, help="append the JSON line to this file")
    args = p.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        p.error("--warmup and --steps must be at least 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True  # as nanoGPT's train.py
    torch.backends.cudnn.allow_tf32 = True
    ctx = nullcontext() if device_type == "cpu" else torch.autocast(device_type=device_type, dtype=torch.bfloat16)

    model = GPT(args.vocab, args.seq, args.d_model, args.n_layers, args.n_heads).to(device)
    optimizer = configure_optimizer(model, 1e-4, args.lr, (0.9, 0.95), device_type)
    train_model = torch.compile(model) if args.compile else model

    def sync():
        if device_type == "cuda":
            torch.cuda.synchronize(device)

    def get_batch():
        # uniform random tokens drawn on the device in one kernel: no loader, no host-to-device
        # copy; inputs and targets are independent draws (random tokens have nothing to shift),
        # each contiguous like nanoGPT's get_batch
        x, y = torch.randint(args.vocab, (2, args.batch, args.seq), device=device).unbind(0)
        return x, y

    def step(x, y):
        with ctx:
            _, loss = train_model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    # warm-up: the first step on its own (compilation when --compile), then the rest
    sync()
    t0 = time.perf_counter()
    first_loss = step(*get_batch())
    sync()
    first_step_seconds = time.perf_counter() - t0
    for _ in range(args.warmup - 1):
        step(*get_batch())

    # timed loop: no host sync until the end
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step(*get_batch())
    sync()
    seconds = time.perf_counter() - t0
    final_loss = loss.item()

    ops_per_step, ops_note = None, None
    if args.ops and args.compile:
        ops_note = "not counted: --ops counts eager steps only, this run is compiled"
    elif args.ops:
        x, y = get_batch()
        with CountOps() as counter:
            step(x, y)
        sync()
        ops_per_step = counter.count
        ops_note = "aten ops of one eager step: forward, backward, clip, AdamW step, zero_grad"

    tokens = args.steps * args.batch * args.seq
    record = {
        "trainer": "reference",
        "d_model": args.d_model, "n_layers": args.n_layers, "n_heads": args.n_heads, "vocab": args.vocab,
        "batch": args.batch, "seq_len": args.seq, "compiled": bool(args.compile),
        "device": torch.cuda.get_device_name(device) if device_type == "cuda" else "cpu",
        "precision": "bf16-autocast" if device_type == "cuda" else "fp32",
        "torch": torch.__version__,
        "steps": args.steps, "warmup": args.warmup, "lr": args.lr,
        "tokens_per_second": tokens / seconds, "step_ms": 1000.0 * seconds / args.steps,
        "first_loss": first_loss.item(), "final_loss": final_loss, "ln_vocab": math.log(args.vocab),
        "compile_seconds": first_step_seconds if args.compile else None,
        "first_step_seconds": first_step_seconds,
        "ops_per_step": ops_per_step,
    }
    if ops_note:
        record["ops_note"] = ops_note
    line = json.dumps(record)
    print(line, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")
    return record


if __name__ == "__main__":
    main()
