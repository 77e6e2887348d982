"""Architecture (depth) warm-up (Ramasinghe et al. 2026, "Taming Curvature", arXiv:2606.16768).

Preconditioned curvature grows with depth, and instabilities coincide with its surges; so
training starts shallow and grows. The LAST blocks start locked (the network grows at the
top, next to the readout; the bottom blocks the embeddings feed stay trained from step 1).
A locked block is an exact identity: every weight matrix in it is zero (LayerNorm gains and
other vectors keep their values), all its parameters have requires_grad False, so they get no
gradient, AdamW skips them (no step, no decay) and clipping ignores them. The forward also
skips locked blocks (``model.active_blocks``), which saves their compute and is the same
function, since a locked block adds exactly zero to the residual stream.

Schedule (``active_blocks_at``): ``initial`` blocks (default half the depth, at least 1) run
for steps 1 .. ``start``; then ``group_size`` blocks (default 1) unlock after step ``start`` and
another group every ``every`` steps. ``start`` is the method's own argument, default
``start_fraction`` 0.1 of train.steps (rounded): the paper grows depth after the LR warm-up,
which the benchmarks here set to 10 % of training, but the shallow phase must not depend on the
LR warm-up, which a benchmark may set to 0 (benchmarks/cpu_spikes.yaml trains without one,
and tying the phase to it left depth_warmup no shallow phase there). The paper unlocks a group
every 500 of ~1e5 steps; our runs are short, so ``every`` defaults to the spacing that has the
last group unlocked by ``finish`` = 0.5 of train.steps:
every = max(1, floor((finish * steps - start - 1) / (groups - 1))).
A model of one block has nothing to grow (``initial`` is then its only block): depth warm-up
trains it exactly as the baseline does, so a claim about depth warm-up is not testable on
one-block sizes (claims/09b_depth_warmup_curvature.yaml asks for sizes of >= 2 layers).

Unlocking (``on_step`` after the step that ends a phase, for every member at once): the
block's q, k, v and MLP up weights get back the values they had at initialization (the
model's init after earlier methods' transforms, kept as buffers ``depth_warmup_init__*``),
attention out and MLP down stay zero, so the block is still an exact identity when it joins
and the loss is continuous; out and down receive gradients at once, q, k, v, up from the
next step on. Then requires_grad is switched on; their optimizer state starts fresh (its
step count starts at 1, as torch's AdamW's would).

Resume: the number of active blocks is a buffer of the model (``depth_warmup_active``) saved
in checkpoints; a load_state_dict post-hook unlocks the blocks it names without re-init.
Composition: no exclusive hooks. List depth_warmup after methods that re-initialize weights
(wesar, small_init, ...) so it captures and zeroes their init.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from stabench.contract import Probe, ProbeFamily
from stabench.model import parameter_roles

VERSION = "2"
ARGS = {"initial": None, "group_size": 1, "start": None, "start_fraction": 0.1, "every": None, "finish": 0.5}
ARG_TYPES = {"initial": (int, None), "start": (int, None), "every": (int, None)}
ARG_ALLOWED = {"initial": ">= 1", "group_size": ">= 1", "start": ">= 0", "start_fraction": ">= 0, < 1",
                "every": ">= 1", "finish": "> 0, <= 1"}
BUFFER = "depth_warmup_active"
ZERO_AT_UNLOCK = ("attn.out.", "mlp.down.")


def active_blocks_at(step: int, n_layers: int, initial: int, start: int, every: int, group_size: int = 1) -> int:
    """Blocks running in the forward of optimizer step ``step`` (1-based)."""
    if step <= start:
        return min(initial, n_layers)
    groups = 1 + (step - start - 1) // max(every, 1)
    return min(n_layers, initial + groups * group_size)


def schedule(config: dict, args: dict, n_layers: int | None = None) -> dict:
    """Resolved schedule: initial, start, every, group_size (defaults filled from the config)."""
    n = int(n_layers if n_layers is not None else config["model"]["n_layers"])
    train = config["train"]
    initial = args["initial"] if args.get("initial") is not None else max(1, n // 2)
    initial = max(1, min(int(initial), n))
    start = int(args["start"]) if args.get("start") is not None else int(round(args["start_fraction"] * train["steps"]))
    group_size = max(1, int(args["group_size"]))
    groups = math.ceil((n - initial) / group_size)
    if args.get("every") is not None:
        every = max(1, int(args["every"]))
    else:
        every = max(1, int((args["finish"] * train["steps"] - start - 1) // max(groups - 1, 1)))
    return {"n_layers": n, "initial": initial, "start": start, "every": every, "group_size": group_size}


def _block_hidden(model, index: int) -> dict[str, nn.Parameter]:
    """name (inside the model) -> weight matrices (role hidden) of block ``index``."""
    prefix = f"blocks.{index}."
    roles = parameter_roles(model)
    return {name: p for name, p in model.named_parameters() if name.startswith(prefix) and roles[name] == "hidden"}


def _init_buffer(name: str) -> str:
    return "depth_warmup_init__" + name.replace(".", "__")


def _restored(name: str, index: int) -> bool:
    """Whether an unlock restores this weight's init (q, k, v, MLP up) or keeps it zero (out, down)."""
    return not name[len(f"blocks.{index}."):].startswith(ZERO_AT_UNLOCK)


def _unlock(model, index: int, restore: bool) -> None:
    with torch.no_grad():
        for name, p in _block_hidden(model, index).items():
            if restore and _restored(name, index):
                p.copy_(model.get_buffer(_init_buffer(name)))
    for p in model.blocks[index].parameters():
        p.requires_grad_(True)


def _after_load(model, incompatible_keys) -> None:
    """After load_state_dict: unlock (without re-init) the blocks the loaded buffer says are active."""
    n_active = int(getattr(model, BUFFER).max())
    for index in range(model.active_blocks, n_active):
        _unlock(model, index, restore=False)
    model.active_blocks = max(model.active_blocks, n_active)


@torch.no_grad()
def transform_model(model, config, args):
    plan = schedule(config, args, len(model.blocks))
    initial = plan["initial"]
    for index in range(initial, plan["n_layers"]):
        for name, p in _block_hidden(model, index).items():
            if _restored(name, index):
                model.register_buffer(_init_buffer(name), p.detach().clone())
            p.zero_()
        for p in model.blocks[index].parameters():
            p.requires_grad_(False)
    model.register_buffer(BUFFER, torch.full((model.members,), initial, device=model.tok_emb.weight.device))
    model.active_blocks = initial
    model.register_load_state_dict_post_hook(_after_load)


def on_step(ctx, args):
    model = ctx.model
    plan = schedule(ctx.config, args, len(model.blocks))
    target = active_blocks_at(ctx.step + 1, plan["n_layers"], plan["initial"], plan["start"], plan["every"],
                              plan["group_size"])
    if target <= model.active_blocks:
        return
    for index in range(model.active_blocks, target):
        _unlock(model, index, restore=True)
    model.active_blocks = target
    getattr(model, BUFFER).fill_(target)


def probes(args):
    """How many blocks ran in each probe step's forward (before an unlock after that step)."""
    return {"active_blocks": Probe(lambda ctx: {"active_blocks": ctx.model.active_blocks},
                                   ProbeFamily("active blocks", headline="active_blocks"))}
