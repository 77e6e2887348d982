"""The method contract: find method files, check them, and compose their hooks.

A method is one file ``methods/<name>.py``. The engine imports it by file name (no registry
to edit) and reads:

- the module docstring (required): what it does, which paper, which choices were made;
- ``VERSION`` (required, str): recorded in every run's metrics;
- ``ARGS`` (optional dict): argument names and defaults; the benchmark file may override
  them (``{use: name, args: {name: {key: value}}}``), unknown names are an error;
- ``CHANGES_LR_MEANING`` (optional bool): the method rescales what "peak LR" means
  (parameterizations, optimizers), so LR sensitivity compares it unfairly;
- any of the hooks below, as module-level functions. ``args`` is the merged argument dict.

==================  =========  ==============================================================
hook                kind       signature and purpose
==================  =========  ==============================================================
configure           composed   ``configure(config, args)``: edit the resolved run config
transform_model     composed   ``transform_model(model, config, args)``: swap modules, wrap
                               weights, re-initialize (in place)
param_options       composed   ``param_options(model, config, args) -> {param_name: opts}``;
                               opts may hold ``lr_mult`` (multiplied across methods),
                               ``weight_decay``, ``eps``, ``trainable`` (False keeps it out of
                               the optimizer); two methods giving one key two values fail
build_optimizer     exclusive  ``build_optimizer(param_groups, config, args) -> Optimizer``
loss                composed   ``loss(ctx, args) -> Tensor``: a term added to the loss; ``ctx``
                               has ``logits``, ``targets`` and the cached ``log_z``
transform_batch     exclusive  ``transform_batch(batch, step, config, args) -> batch``
lr_schedule         exclusive  ``lr_schedule(step, tokens, config, args) -> float``: the LR
                               multiplier of the peak at a step
on_step             composed   ``on_step(step, state, args)``: after each optimizer step
probes              composed   ``probes(args) -> {name: fn}``: extra probes (see probes.py)
==================  =========  ==============================================================

Methods compose with ``+``: ``a+b`` runs a's composed hooks, then b's. Two methods that
both define an exclusive hook cannot be composed, and say so.
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

COMPOSED_HOOKS = ("configure", "transform_model", "param_options", "loss", "on_step", "probes")
EXCLUSIVE_HOOKS = ("build_optimizer", "transform_batch", "lr_schedule")
HOOKS = COMPOSED_HOOKS + EXCLUSIVE_HOOKS


class MethodError(ValueError):
    """A method name, file or argument is invalid; the message is one line for the user."""


def methods_dirs() -> list[Path]:
    """Where method files are looked up, first match wins.

    ``STABENCH_METHODS_PATH`` (os.pathsep-separated) lets users keep methods outside the
    repository; ``./methods`` is the folder of the workflow being run; the last is the
    folder shipped beside this package.
    """
    dirs = [Path(p) for p in os.environ.get("STABENCH_METHODS_PATH", "").split(os.pathsep) if p]
    dirs += [Path.cwd() / "methods", Path(__file__).resolve().parent.parent / "methods"]
    unique: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [u.resolve() for u in unique]:
            unique.append(d)
    return unique


def known_methods() -> list[str]:
    names = {p.stem for d in methods_dirs() for p in d.glob("*.py") if not p.stem.startswith("_")}
    return sorted(names)


def _find_file(name: str) -> Path:
    for d in methods_dirs():
        path = d / f"{name}.py"
        if path.is_file():
            return path
    known = known_methods()
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise MethodError(f"unknown method {name!r}.{hint} Known methods: {', '.join(known)}")


def load_module(name: str) -> ModuleType:
    """Import methods/<name>.py (once per process) and check its contract."""
    if not name.isidentifier():
        raise MethodError(f"method name {name!r} is not a valid file name; use letters, digits and _")
    key = f"stabench_methods.{name}"
    if key in sys.modules:
        return sys.modules[key]
    path = _find_file(name)
    spec = importlib.util.spec_from_file_location(key, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[key]
        raise MethodError(f"method {name!r} ({path}) failed to import: {exc!r}") from exc
    problem = None
    if not (module.__doc__ or "").strip():
        problem = "has no docstring; say what it does and cite its paper"
    elif not isinstance(getattr(module, "VERSION", None), str):
        problem = "needs VERSION = '<version string>'"
    if problem:
        del sys.modules[key]
        raise MethodError(f"method {name!r} ({path}) {problem}")
    return module


@dataclass
class Method:
    """One loaded method with its merged arguments."""

    name: str
    module: ModuleType
    args: dict[str, Any]

    @property
    def version(self) -> str:
        return self.module.VERSION

    @property
    def doc(self) -> str:
        return (self.module.__doc__ or "").strip()

    @property
    def changes_lr_meaning(self) -> bool:
        return bool(getattr(self.module, "CHANGES_LR_MEANING", False))

    def hook(self, hook: str) -> Callable | None:
        return getattr(self.module, hook, None)

    def describe(self) -> dict:
        return {"name": self.name, "args": self.args, "version": self.version,
                "changes_lr_meaning": self.changes_lr_meaning}


def load_method(name: str, args: dict | None = None) -> Method:
    module = load_module(name)
    defaults = dict(getattr(module, "ARGS", {}))
    args = dict(args or {})
    unknown = sorted(set(args) - set(defaults))
    if unknown:
        valid = ", ".join(defaults) or "none"
        raise MethodError(f"method {name!r}: unknown argument(s) {', '.join(unknown)}; valid: {valid}")
    return Method(name, module, {**defaults, **args})


@dataclass
class MethodStack:
    """The methods of one run, composed in order; the engine calls hooks only through this."""

    methods: list[Method] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.methods]

    def describe(self) -> list[dict]:
        return [m.describe() for m in self.methods]

    def exclusive(self, hook: str) -> tuple[Callable, dict] | None:
        for method in self.methods:
            if method.hook(hook):
                return method.hook(hook), method.args
        return None

    def composed(self, hook: str) -> list[tuple[Callable, dict]]:
        return [(m.hook(hook), m.args) for m in self.methods if m.hook(hook)]


def parse_use(use: str) -> list[str]:
    names = [n.strip() for n in use.split("+")]
    if not all(names):
        raise MethodError(f"method {use!r}: empty name between '+' signs")
    return names


def load_stack(use: str, args: dict[str, dict] | None = None) -> MethodStack:
    """'a+b' with per-method args {'a': {...}} -> a checked MethodStack."""
    names = parse_use(use)
    args = args or {}
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise MethodError(f"method {use!r}: {', '.join(duplicates)} listed twice")
    stray = sorted(set(args) - set(names))
    if stray:
        raise MethodError(f"method {use!r}: args given for {', '.join(stray)}, which it does not use")
    stack = MethodStack([load_method(n, args.get(n)) for n in names])
    for hook in EXCLUSIVE_HOOKS:
        owners = [m.name for m in stack.methods if m.hook(hook)]
        if len(owners) > 1:
            raise MethodError(
                f"method {use!r}: {' and '.join(owners)} both define the exclusive hook {hook!r}; "
                "they cannot be composed")
    return stack


def configure(config: dict, stack: MethodStack) -> dict:
    """A copy of the run config after the methods' configure hooks (no torch needed)."""
    config = copy.deepcopy(config)
    config["model"]["seq_len"] = config["train"]["seq_len"]
    for hook, args in stack.composed("configure"):
        hook(config, args)
    config["methods"] = stack.describe()
    return config


def base_width(config: dict, override: int | None = None) -> int:
    """The width that width-relative rules (per-layer LRs, inits, eps) are tuned at.

    ``override`` (a method's ``base_width`` argument) if given, else the smallest d_model among
    the benchmark's sizes, else the run's own width (then every such rule is the identity).
    """
    if override is not None:
        width = override
    elif config.get("benchmark_sizes"):
        width = min(size["d_model"] for size in config["benchmark_sizes"].values())
    else:
        width = config["model"]["d_model"]
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise MethodError(f"base_width must be a positive integer, got {width!r}")
    return width
