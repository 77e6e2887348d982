"""The method contract as typed code: every hook a method may define, and what it receives.

A method is one file ``methods/<name>.py`` (copy ``methods/_template.py``, which shows every
hook). The engine imports it by file name and reads:

- the module docstring (required): what it does, which paper, which choices were made;
- ``VERSION`` (required, str): recorded in every run, part of the run's identity;
- ``ARGS`` (optional dict): argument names and defaults; a benchmark may override them;
- ``ARG_TYPES`` (optional dict): the type (or tuple of types) an argument must have, where its
  default does not say it (a default of None); otherwise a value must have its default's type
  (an int default takes ints, a float default ints or floats, a bool only bools). Every
  number must be finite. ``arg_problem`` below is the check;
- ``ARG_ALLOWED`` (optional dict): the values an argument may take, either bounds as text
  (``">= 0"``, ``"> 0, <= 1"``) or a tuple of choices (``("linear", "root")``); None passes
  (a None default means "derive it"). A benchmark giving anything else fails when it loads,
  with one line naming the method, the argument, the value and what is allowed;
- ``CHANGES_LR_MEANING`` (optional bool): the method rescales what "peak LR" means;
- ``PACKABLE`` (optional bool, default True) and ``UNPACKABLE_REASON`` (str): a method that
  cannot train as part of an ensemble says why; the workflow prints the reason and trains
  its runs one at a time (every shipped method packs);
- any hook of ``HOOKS`` below, as a module-level function with exactly those parameters.

Members. A run is an ensemble of K >= 1 members sharing (method, size) and differing in peak
LR and seed; a separate run is K = 1, and a method never needs to know which. Every tensor
a hook sees carries the member dimension first: weights (K, out, in), batches (K or 1, B,
T + 1), logits (K, B, T, V), per-member values (K,). Hooks that return per-member values
return (K,) tensors (``Context.member_mean`` reduces everything but the member dimension).
``transform_model`` and ``param_options`` run while each member is built on its own, so
there K = 1; a parameter or buffer a method adds must keep that leading dimension of size 1.
"""

from __future__ import annotations

import inspect
import math
import re
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol, TypedDict

import torch

from .readout import fused_cross_entropy_and_log_z

if TYPE_CHECKING:  # pragma: no cover
    from .model import GPT


class ParamOptions(TypedDict, total=False):
    """Per-parameter optimizer options a ``param_options`` hook may set.

    ``lr_mult`` multiplies across methods; any other key set by two methods must agree.
    ``weight_decay`` is the coefficient of the run's decay form (independent or coupled);
    ``trainable: False`` keeps the parameter out of the update (no step, no decay).
    """

    lr_mult: float
    weight_decay: float
    eps: float
    trainable: bool


PARAM_OPTION_KEYS = tuple(ParamOptions.__annotations__)


@dataclass(frozen=True)
class ProbeFamily:
    """How the report draws a probe's columns: one panel per family, one line per method.

    ``headline`` names the column plotted (else the mean of the family's columns);
    ``threshold`` draws a horizontal line (a stability limit, say).
    """

    title: str
    log_y: bool = False
    headline: str | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class Probe:
    """A diagnostic computed on probe steps: ``fn(ctx) -> {column: value}``.

    Values are floats or tensors of shape () or (K,) (one per member); the recorder moves all
    of them to the host in one transfer. ``family`` tells the report how to draw the columns
    (None: recorded, not drawn as a probe panel).
    """

    fn: Callable[["Context"], dict[str, Any]]
    family: ProbeFamily | None = None


@dataclass
class StepHyper:
    """What an update rule needs for one slice of elements, broadcastable to (K, n).

    ``lr`` is this step's learning rate times each element's lr_mult; ``weight_decay`` is the
    AdamW-form coefficient (the decay step is lr * weight_decay * p; the engine has already
    turned independent decay into this form); ``step`` counts the updates of these elements,
    this one included (1 on their first update).
    """

    lr: torch.Tensor
    weight_decay: torch.Tensor | float
    eps: torch.Tensor | float
    betas: tuple[float, float]
    step: int


class UpdateRule(Protocol):
    """An optimizer written once as an element-wise update of stacked member tensors.

    The engine keeps every trainable element of every member in (K, N) tensors and calls
    ``update`` on slices of them, so one rule serves a separate run and a pack alike.
    """

    state_names: tuple[str, ...]  # per-element state, zero-initialized, checkpointed

    def update(self, param: torch.Tensor, grad: torch.Tensor, state: dict[str, torch.Tensor],
               h: StepHyper) -> None:
        """Update ``param`` and ``state`` in place from ``grad``."""

    def direction(self, state: dict[str, torch.Tensor], h: StepHyper) -> torch.Tensor | None:
        """The step that ``lr`` multiplies (decay excluded), for the update-RMS probe; or None."""

    def preconditioner(self, state: dict[str, torch.Tensor], h: StepHyper) -> torch.Tensor | None:
        """Diagonal P of the linearized update lr * P^-1 g (for the curvature probe); or None."""


@dataclass
class Context:
    """The one object that loss, on_step and probe hooks receive.

    ``config`` is the run config the members share; per-member settings are ``peak_lrs`` and
    ``seeds``. Fields that do not exist yet in a phase are None: ``logits``/``targets`` exist
    from the forward on (loss hooks, probes), ``loss``/``grad_norm``/``optimizer`` on probe
    steps and in ``on_step``. Computed values (logits, log Z) are cached per context.
    """

    step: int                          # the optimizer step (1-based)
    tokens: int                        # target tokens trained on before this step (all processes)
    config: dict
    model: "GPT"                       # the ensemble
    peak_lrs: tuple[float, ...]
    seeds: tuple[int, ...]
    lr: torch.Tensor | None = None     # (K,) this step's learning rate
    batch: torch.Tensor | None = None  # (K or 1, B, T + 1) after transform_batch
    hidden: torch.Tensor | None = None  # (K, B, T, d): the final hidden states (the readout's input)
    targets: torch.Tensor | None = None  # (K or 1, B, T)
    loss: torch.Tensor | None = None    # (K,) mean train loss since the previous probe step
    grad_norm: torch.Tensor | None = None  # (K,) before clipping
    optimizer: Any = None               # stabench.update.OptimizerView: per-parameter state views
    autocast: Callable = nullcontext    # the trainer's autocast, for probes that run forwards
    fused_readout: bool = False         # a training step: log Z comes from the fused readout (stabench.readout)
    objective: Callable[..., torch.Tensor] | None = None  # (params=None) -> (K,): the loss the run
    #      optimizes on this step's batch, with grad; ``params`` (name -> tensor) replace the weights
    cache: dict = field(default_factory=dict)

    @property
    def members(self) -> int:
        return len(self.peak_lrs)

    @staticmethod
    def member_mean(x: torch.Tensor) -> torch.Tensor:
        """Mean over every dimension but the first: (K, ...) -> (K,)."""
        return x.reshape(x.shape[0], -1).mean(dim=1)

    @property
    def logits(self) -> torch.Tensor:
        """The output logits (K, B, T, V), computed from ``hidden`` on first use with one batched
        product (the training loss itself never materializes them: stabench.readout), with grad
        in loss hooks. Prefer ``log_z`` where it suffices."""
        if "logits" not in self.cache:
            if "member_logits" in self.cache:
                self.cache["logits"] = torch.stack(self.cache["member_logits"])
            else:
                self.cache["logits"] = self.model.readout(self.hidden)
        return self.cache["logits"]

    @property
    def member_logits(self) -> list[torch.Tensor]:
        """Each member's output logits (B, T, V): views of ``logits``."""
        if "member_logits" not in self.cache:
            self.cache["member_logits"] = list(self.logits.unbind(0))
        return self.cache["member_logits"]

    @property
    def log_z(self) -> torch.Tensor:
        """logsumexp of the output logits at each position, (K, B, T), computed once. On a
        training step it comes with the step's cross-entropy from one fused pass over the
        readout (no logits materialized); else from the logits."""
        if "log_z" not in self.cache:
            if self.fused_readout and "member_logits" not in self.cache and "logits" not in self.cache:
                self.cache["lm_loss"], self.cache["log_z"] = fused_cross_entropy_and_log_z(
                    self.hidden, self.model.head.weight, self.targets)
            else:
                self.cache["log_z"] = torch.logsumexp(self.logits.float(), dim=-1)
        return self.cache["log_z"]


# ---- the hooks ------------------------------------------------------------------------------

def configure(config: dict, args: dict) -> None:
    """Edit the run config in place (warm-up, eps, decay). Runs when the run is resolved; only
    here ``config['benchmark_sizes']`` (every size of the benchmark) is readable, so a method
    that derives a value from the benchmark (a base width) stores it in ``args`` or ``config``,
    where it becomes part of the run's identity."""


def transform_model(model: "GPT", config: dict, args: dict) -> None:
    """Swap modules, wrap weights, re-initialize, in place, on one member (K = 1) after its
    seeded init; the same code then holds for every member of a pack."""


def param_options(model: "GPT", config: dict, args: dict) -> dict[str, ParamOptions]:
    """{parameter name: ParamOptions} for the parameters the method treats specially."""


def loss(ctx: Context, args: dict) -> torch.Tensor:
    """A term added to each member's loss: a (K,) tensor (``ctx.logits``, ``ctx.log_z``, ...)."""


def on_step(ctx: Context, args: dict) -> None:
    """Act on the ensemble after optimizer step ``ctx.step`` (unlock blocks, say)."""


def probes(args: dict) -> dict[str, Probe]:
    """Extra diagnostics: {probe name: Probe} (a plain function is a Probe without a family). A
    name an engine probe (``stabench.probes.ENGINE_PROBES``) or another method's probe has is
    an error when the methods load."""


def update_rule(config: dict, args: dict) -> UpdateRule:
    """Replace AdamW by another element-wise update rule (see ``UpdateRule``)."""


def transform_batch(batch: torch.Tensor, step: int, config: dict, args: dict) -> torch.Tensor:
    """Change the (K or 1, B, T + 1) token batch of ``step``: a pure function of (batch, step)
    whose output shape depends on the step only (the engine derives token counts from it)."""


def lr_schedule(step: int, tokens: int, config: dict, args: dict) -> float:
    """The learning rate of ``step`` (1-based) for a member whose peak is ``config['lr']``;
    ``tokens`` counts the target tokens trained on before this step."""


@dataclass(frozen=True)
class HookSpec:
    name: str
    exclusive: bool       # exclusive hooks: at most one method of a composition defines it
    signature: inspect.Signature
    doc: str


def _spec(fn: Callable, exclusive: bool) -> HookSpec:
    return HookSpec(fn.__name__, exclusive, inspect.signature(fn), inspect.getdoc(fn) or "")


HOOKS: dict[str, HookSpec] = {spec.name: spec for spec in (
    _spec(configure, False), _spec(transform_model, False), _spec(param_options, False),
    _spec(loss, False), _spec(on_step, False), _spec(probes, False),
    _spec(update_rule, True), _spec(transform_batch, True), _spec(lr_schedule, True),
)}
COMPOSED_HOOKS = tuple(n for n, s in HOOKS.items() if not s.exclusive)
EXCLUSIVE_HOOKS = tuple(n for n, s in HOOKS.items() if s.exclusive)


def signature_problem(name: str, fn: Callable) -> str | None:
    """Why ``fn`` cannot serve as hook ``name`` (wrong parameter count), or None."""
    expected = list(HOOKS[name].signature.parameters)
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return f"hook {name!r} is not a function"
    if any(p.kind in (p.VAR_POSITIONAL,) for p in params):
        return None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    if len(required) > len(expected) or len(positional) < len(expected):
        got = ", ".join(p.name for p in params)
        return f"hook {name!r} must take ({', '.join(expected)}), got ({got})"
    return None


# ---- method arguments ---------------------------------------------------------------------------

_BOUND = re.compile(r"\s*(>=|<=|>|<)\s*([-+0-9.eE]+)\s*")
_COMPARE = {">=": lambda x, b: x >= b, "<=": lambda x, b: x <= b, ">": lambda x, b: x > b, "<": lambda x, b: x < b}


def parse_bounds(text: str) -> list[tuple[str, float]]:
    """'> 0, <= 1' -> [('>', 0.0), ('<=', 1.0)]; ValueError if it does not read so."""
    bounds = []
    for part in text.split(","):
        match = _BOUND.fullmatch(part)
        if not match:
            raise ValueError(f"cannot read bound {part.strip()!r}; write e.g. '>= 0' or '> 0, <= 1'")
        bounds.append((match[1], float(match[2])))
    return bounds


def _types_of(default: Any, declared: Any) -> tuple[type, ...] | None:
    """The types an argument accepts (None: any), from its declared type or its default."""
    if declared is not None:
        types = declared if isinstance(declared, tuple) else (declared,)
    elif default is None:
        return None
    else:
        types = (type(default),)
    if float in types and int not in types:
        types = (*types, int)  # a float argument takes 2 as well as 2.0
    return tuple(type(None) if t is None else t for t in types)


def _type_name(types: tuple[type, ...]) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null",
             list: "a list", dict: "a mapping"}
    if float in types:
        types = tuple(t for t in types if t is not int)
    return " or ".join(names.get(t, t.__name__) for t in types)


def arg_problem(value: Any, default: Any, declared_type: Any = None, allowed: Any = None) -> str | None:
    """Why ``value`` cannot be this argument ("... allowed: ..."), or None if it can."""
    types = _types_of(default, declared_type)
    if types is not None:
        is_bool = isinstance(value, bool)
        if not isinstance(value, types) or (is_bool and bool not in types):
            return f"allowed: {_type_name(types)}"
    if isinstance(value, float) and not math.isfinite(value):
        return "allowed: a finite number"
    if value is None or allowed is None:
        return None
    if isinstance(allowed, str):
        bounds = parse_bounds(allowed)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not all(_COMPARE[op](value, bound) for op, bound in bounds):
            return f"allowed: a number {allowed}"
    elif value not in allowed:
        return f"allowed: {', '.join(map(repr, allowed))}"
    return None


def declaration_problem(module: Any) -> str | None:
    """Why a method's ARGS / ARG_TYPES / ARG_ALLOWED do not fit together, or None."""
    args = getattr(module, "ARGS", {})
    types, allowed = getattr(module, "ARG_TYPES", {}), getattr(module, "ARG_ALLOWED", {})
    for table, name in ((types, "ARG_TYPES"), (allowed, "ARG_ALLOWED")):
        if not isinstance(table, dict):
            return f"{name} must be a dict keyed by argument names"
        stray = sorted(set(table) - set(args))
        if stray:
            return f"{name} names {', '.join(stray)}, which ARGS does not define"
    for key, spec in allowed.items():
        if isinstance(spec, str):
            try:
                parse_bounds(spec)
            except ValueError as exc:
                return f"ARG_ALLOWED[{key!r}]: {exc}"
        elif not isinstance(spec, (tuple, list)):
            return f"ARG_ALLOWED[{key!r}] must be bounds as text ('>= 0') or a tuple of choices"
    for key, default in args.items():
        problem = arg_problem(default, default, types.get(key), allowed.get(key))
        if problem:
            return f"the default of argument {key!r} ({default!r}) does not pass its own check ({problem})"
    return None


def as_probe(value: Probe | Callable) -> Probe:
    return value if isinstance(value, Probe) else Probe(value)
