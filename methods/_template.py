"""One line: what the method does (the report shows this docstring; cite the paper).

Copy this file to ``methods/<your_method>.py`` (the file name is the method's name; files
starting with ``_`` are not methods). As copied it changes nothing: it trains exactly the
baseline. Fill in the hooks you need and delete the rest; each docstring says what the hook
receives and returns, with a commented example of real use. Then name the method in a
benchmark (``methods: [baseline, your_method]``) and run ``snakemake --cores 2``: only its
runs train. ``stabench/contract.py`` holds the typed definition of every hook below.

Say here which choices you made where the paper leaves a detail open, with the paper's
section: the report prints this text next to the method's results.

Members. Every run is an ensemble of K >= 1 members that differ only in peak LR and seed (a
separate run is K = 1); the engine stacks them and your code never needs to know K. Every
tensor you see carries the member dimension first: weights (K, out, in), batches (K or 1, B,
T + 1), per-member values (K,). ``transform_model`` and ``param_options`` run on one member
at a time (K = 1): a parameter or buffer you add keeps that leading dimension of size 1.
"""

from __future__ import annotations

import torch

from stabench.contract import Context, ParamOptions, Probe, ProbeFamily, StepHyper, UpdateRule  # noqa: F401

VERSION = "1"                 # recorded in every run and part of its identity: bump it when results change
ARGS = {}                     # argument names and defaults, e.g. {"strength": 1.0}; a benchmark overrides
#                               them with {use: your_method, args: {your_method: {strength: 2.0}}}
ARG_TYPES = {}                # only where a default does not show the type, e.g. {"steps": (int, None)}
#                               for ARGS = {"steps": None}; else a value must have its default's type
ARG_ALLOWED = {}              # bounds as text or a tuple of choices, e.g. {"strength": ">= 0"} or
#                               {"mode": ("a", "b")}: a benchmark giving anything else fails at load
CHANGES_LR_MEANING = False    # True if the method rescales what "peak LR" means (a parameterization,
#                               another optimizer): the report then flags its LR sensitivity
PACKABLE = True               # False only if runs of this method cannot train together
UNPACKABLE_REASON = ""        # ... and then say why (the workflow prints it)


# ---- composed hooks: every method of 'a+b' that defines one runs, in order ------------------
# Each stub below changes nothing; delete the ones you do not fill in.

def configure(config: dict, args: dict) -> None:
    """Edit the resolved run config in place, when the run is resolved; returns nothing.

    Only here is ``config['benchmark_sizes']`` visible: a value derived from the benchmark goes
    into ``args``, where it becomes part of the run's identity. Example::

        # config["optimizer"]["eps"] = args["strength"] * 1e-8
        # args["base_width"] = stabench.methods.base_width(config, None)
    """


def transform_model(model, config: dict, args: dict) -> None:
    """Change one member's model (K = 1) in place after its seeded init; returns nothing.

    Swap modules, re-initialize weights, wrap them with ``torch.nn.utils.parametrize``; new
    modules should be ``stabench.model.Linear``/``LayerNorm``/``Embedding`` (they carry the
    member dimension). Example::

        # for block in model.blocks:
        #     block.attn.scale /= args["tau"]
    """


def param_options(model, config: dict, args: dict) -> dict[str, ParamOptions]:
    """Per-parameter optimizer options of one member (K = 1): {parameter name: ParamOptions}
    with keys ``lr_mult`` (multiplies across methods), ``weight_decay``, ``eps``,
    ``trainable``; an unknown key or parameter name is an error naming both. {} changes
    nothing. Example::

        # return {name: {"weight_decay": 0.0} for name, p in model.named_parameters() if p.ndim < 3}
    """
    return {}


def loss(ctx: Context, args: dict) -> torch.Tensor:
    """A term added to each member's training loss: a (K,) tensor, with grad. ``ctx`` is the
    step's ``stabench.contract.Context`` (``ctx.log_z``, ``ctx.member_logits``,
    ``ctx.targets``, ``ctx.member_mean``); zeros change nothing. Example::

        # return args["strength"] * ctx.member_mean(ctx.log_z.square())
    """
    return torch.zeros(ctx.members, device=ctx.targets.device)


def on_step(ctx: Context, args: dict) -> None:
    """Act on ``ctx.model`` (the whole ensemble, all members at once) after optimizer step
    ``ctx.step`` and its probes; returns nothing. Example::

        # with torch.no_grad():                   # a max-norm constraint on the readout's rows
        #     w = ctx.model.head.weight             # (K, vocab, d)
        #     w.mul_(args["max_norm"] / w.norm(dim=-1, keepdim=True).clamp(min=args["max_norm"]))
    """


def probes(args: dict) -> dict[str, Probe]:
    """Extra columns for history.csv on probe steps: {probe name: Probe}, where ``Probe(fn,
    family)`` has ``fn(ctx) -> {column: value}`` with values () or (K,), and the
    ``ProbeFamily`` tells the report how to draw them. A probe name must differ from the
    engine's probes (``stabench.probes.ENGINE_PROBES``) and from other methods' ({} adds
    none). Example::

        # return {"head_norm": Probe(lambda ctx: {"head_norm": ctx.model.head.weight.detach().flatten(1).norm(dim=1)},
        #                            ProbeFamily("head weight norm", headline="head_norm"))}
    """
    return {}


# ---- exclusive hooks: at most one method of a composition may define each -------------------
# Defining one replaces the engine's default (AdamW, the batch as drawn, warm-up + cosine) and
# keeps the method from composing with another method that defines it, so they are not defined
# here. To use one, remove the leading '# ' of its block.

# def update_rule(config: dict, args: dict) -> UpdateRule:
#     """Replace AdamW: return an update rule (``stabench.contract.UpdateRule``), an object
#     with ``state_names`` (per-element state, zero-initialized, checkpointed) and
#     ``update(param, grad, state, h)``, ``direction(state, h)``, ``preconditioner(state, h)``,
#     element-wise on stacked (K, n) member tensors; ``h`` is a ``StepHyper`` (lr, weight_decay,
#     eps, betas, step). Example (sign momentum)::
#
#         class SignMomentum:
#             state_names = ("exp_avg",)
#
#             def update(self, param, grad, state, h):
#                 state["exp_avg"].lerp_(grad, 1 - h.betas[0])
#                 param.sub_(h.lr * state["exp_avg"].sign())
#
#             def direction(self, state, h):       # the step lr multiplies, for the update-RMS probe
#                 return state["exp_avg"].sign()
#
#             def preconditioner(self, state, h):  # None: the curvature probe skips this rule
#                 return None
#
#         return SignMomentum()
#     """


# def transform_batch(batch: torch.Tensor, step: int, config: dict, args: dict) -> torch.Tensor:
#     """Change step ``step``'s (K or 1, B, T + 1) token batch and return it: a pure function of
#     (batch, step) whose output shape depends on ``step`` only (the engine derives token
#     counts from it). Example (sequence-length warm-up)::
#
#         length = min(config["train"]["seq_len"], args["start"] * 2 ** (step // args["every"]))
#         return batch[..., : length + 1]
#     """


# def lr_schedule(step: int, tokens: int, config: dict, args: dict) -> float:
#     """The learning rate at ``step`` (1-based) for a member whose peak is ``config['lr']``;
#     ``tokens`` = target tokens trained on before this step. Returns a float. Example
#     (warm-up + cosine with the method's own warm-up length)::
#
#         from stabench.schedule import warmup_cosine
#         train = config["train"]
#         return warmup_cosine(step, args["warmup_steps"], train["steps"], config["lr"], train["min_lr"])
#     """
