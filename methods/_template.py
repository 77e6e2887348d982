"""One line: what the method does (the report shows this docstring; cite the paper).

Copy this file to ``methods/<your_method>.py`` (the file name is the method's name; files
starting with ``_`` are not methods), keep the hooks you need and delete the rest. Then name
it in a benchmark (``methods: [baseline, your_method]``) and run ``snakemake --cores 2``: only
its runs train. ``stabench/contract.py`` holds the typed definition of every hook below.

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

from stabench.contract import Context, ParamOptions, Probe, ProbeFamily, StepHyper  # noqa: F401

VERSION = "1"                 # recorded in every run and part of its identity: bump it when results change
ARGS = {"strength": 1.0}      # argument names and defaults; a benchmark overrides them with
#                               {use: your_method, args: {your_method: {strength: 2.0}}}
ARG_TYPES = {}                # only where a default does not show the type, e.g. {"steps": (int, None)}
#                               for ARGS = {"steps": None}; else a value must have its default's type
ARG_ALLOWED = {"strength": ">= 0"}  # bounds as text ("> 0, <= 1") or a tuple of choices ("a", "b"):
#                               a benchmark giving anything else fails at load, naming the argument
CHANGES_LR_MEANING = False    # True if the method rescales what "peak LR" means (a parameterization,
#                               another optimizer): the report then flags its LR sensitivity
PACKABLE = True               # False only if runs of this method cannot train together
UNPACKABLE_REASON = ""        # ... and then say why (the workflow prints it)


# ---- composed hooks: every method of 'a+b' that defines one runs, in order ------------------

def configure(config: dict, args: dict) -> None:
    """Edit the run config in place, e.g. ``config['optimizer']['eps'] = args['strength'] * 1e-8``.
    Only here is ``config['benchmark_sizes']`` visible: a value derived from the benchmark goes
    into ``args`` (``args['base_width'] = stabench.methods.base_width(config, None)``)."""


def transform_model(model, config: dict, args: dict) -> None:
    """Change the model in place after its seeded init (K = 1): swap ``block.attn.q_norm``,
    re-initialize ``module.weight``, wrap weights with ``torch.nn.utils.parametrize``, set
    ``block.attn.scale``. Use ``stabench.model.Linear``/``LayerNorm``/``Embedding`` (they carry
    the member dimension) for new modules."""


def param_options(model, config: dict, args: dict) -> dict[str, ParamOptions]:
    """{parameter name: {'lr_mult': ..., 'weight_decay': ..., 'eps': ..., 'trainable': ...}};
    an unknown key or parameter name is an error naming both."""
    return {}


def loss(ctx: Context, args: dict) -> torch.Tensor:
    """A term added to each member's loss, shape (K,): e.g.
    ``args['strength'] * ctx.member_mean(ctx.log_z.square())``."""
    return torch.zeros(ctx.members, device=ctx.targets.device)


def on_step(ctx: Context, args: dict) -> None:
    """After optimizer step ``ctx.step`` (and its probes): act on ``ctx.model``, the whole
    ensemble (all members at once)."""


def probes(args: dict) -> dict[str, Probe]:
    """Extra columns for history.csv on probe steps, values () or (K,); the family tells the
    report how to draw them."""
    return {"template_norm": Probe(lambda ctx: {"template_head_norm": ctx.model.head.weight.detach().flatten(1).norm(dim=1)},
                                   ProbeFamily("head weight norm", headline="template_head_norm"))}


# ---- exclusive hooks: at most one method of a composition may define each -------------------

class MyRule:
    """An update rule (stabench.contract.UpdateRule): element-wise on stacked member tensors."""

    state_names = ("exp_avg",)

    def update(self, param: torch.Tensor, grad: torch.Tensor, state: dict, h: StepHyper) -> None:
        state["exp_avg"].lerp_(grad, 1 - h.betas[0])
        param.sub_(h.lr * state["exp_avg"].sign())

    def direction(self, state: dict, h: StepHyper) -> torch.Tensor:
        return state["exp_avg"].sign()

    def preconditioner(self, state: dict, h: StepHyper) -> torch.Tensor | None:
        return None  # no diagonal preconditioner: the curvature probe skips this rule


def update_rule(config: dict, args: dict):
    """Replace AdamW: return an object with ``state_names``, ``update``, ``direction``,
    ``preconditioner`` (see ``MyRule``)."""
    return MyRule()


def transform_batch(batch: torch.Tensor, step: int, config: dict, args: dict) -> torch.Tensor:
    """Change step ``step``'s (K or 1, B, T + 1) token batch; a pure function of (batch, step)
    whose shape depends on ``step`` only, e.g. ``batch[..., : length + 1]``."""
    return batch


def lr_schedule(step: int, tokens: int, config: dict, args: dict) -> float:
    """The learning rate at ``step`` (1-based) for a member whose peak is ``config['lr']``;
    ``tokens`` = target tokens trained on before this step."""
    from stabench.schedule import warmup_cosine
    train = config["train"]
    return warmup_cosine(step, train["warmup_steps"], train["steps"], config["lr"], train["min_lr"])
