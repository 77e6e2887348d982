"""Find method files, check them against the contract, and compose their hooks.

A method is one file ``methods/<name>.py``; ``stabench/contract.py`` defines what it may hold
and ``methods/_template.py`` shows it. Methods compose with ``+``: ``a+b`` runs a's composed
hooks, then b's; two methods that both define an exclusive hook cannot be composed.
Method files are Python that runs when they are loaded, like any import.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from .contract import (EXCLUSIVE_HOOKS, HOOKS, PARAM_OPTION_KEYS, Probe, arg_problem, as_probe, declaration_problem,
                       signature_problem)
from .probes import PROBES, place

SHIPPED_DIR = Path(__file__).resolve().parent / "shipped" / "methods"  # travels with the package
METHODS_PATH_VARIABLE = "STABENCH_METHODS_PATH"


class MethodError(ValueError):
    """A method name, file or argument is invalid; the message is one line for the user."""


def methods_dirs() -> list[Path]:
    """Where method files are looked up, first match wins.

    ``STABENCH_METHODS_PATH`` (os.pathsep-separated) lets users keep methods outside the
    repository; ``./methods`` is the folder of the workflow being run; the last is the
    folder shipped beside this package. A folder named in the variable must exist.
    """
    named = [Path(p) for p in os.environ.get(METHODS_PATH_VARIABLE, "").split(os.pathsep) if p]
    missing = [str(p) for p in named if not p.is_dir()]
    if missing:
        raise MethodError(f"{METHODS_PATH_VARIABLE} names {', '.join(missing)}, which is not a folder")
    unique: list[Path] = []
    for d in named + [Path.cwd() / "methods", SHIPPED_DIR]:
        if d.is_dir() and d.resolve() not in [u.resolve() for u in unique]:
            unique.append(d)
    return unique


def method_files() -> dict[str, list[Path]]:
    """name -> every file of that name on the methods path, first (the one used) first."""
    files: dict[str, list[Path]] = {}
    for d in methods_dirs():
        for path in sorted(d.glob("*.py")):
            if not path.stem.startswith("_"):
                files.setdefault(path.stem, []).append(path)
    return files


def known_methods() -> list[str]:
    return sorted(method_files())


def _find_file(name: str) -> Path:
    files = method_files()
    if name in files:
        found = files[name]
        shipped = found[-1]
        if len(found) > 1 and shipped.parent.resolve() == SHIPPED_DIR.resolve() and \
                found[0].read_bytes() != shipped.read_bytes():
            warnings.warn(f"method {name!r}: {found[0]} shadows the shipped {found[-1]}", stacklevel=3)
        return found[0]
    known = sorted(files)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    where = ", ".join(str(d) for d in methods_dirs())
    raise MethodError(f"unknown method {name!r}.{hint} Known methods: {', '.join(known)} (looked in {where})")


def _contract_problem(module: ModuleType) -> str | None:
    if not (module.__doc__ or "").strip():
        return "has no docstring; say what it does and cite its paper"
    if not isinstance(getattr(module, "VERSION", None), str):
        return "needs VERSION = '<version string>'"
    if not isinstance(getattr(module, "ARGS", {}), dict):
        return "ARGS must be a dict of argument names and defaults"
    problem = declaration_problem(module)
    if problem:
        return problem
    if getattr(module, "PACKABLE", True) is False and not getattr(module, "UNPACKABLE_REASON", ""):
        return "sets PACKABLE = False without UNPACKABLE_REASON = '<why>'"
    for hook in HOOKS:
        fn = getattr(module, hook, None)
        if fn is not None:
            problem = signature_problem(hook, fn)
            if problem:
                return problem
    return None


def load_module(name: str) -> ModuleType:
    """Import methods/<name>.py (once per process) and check it against the contract."""
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
        raise MethodError(f"method {name!r} ({import_failure(path, exc)}) failed to import: "
                          f"{type(exc).__name__}: {exc_text(exc)}") from None
    problem = _contract_problem(module)
    if problem:
        del sys.modules[key]
        raise MethodError(f"method {name!r} ({path}) {problem}")
    return module


def hook_failure(exc: BaseException) -> tuple[str, str] | None:
    """(method, hook) when ``exc`` was raised inside a method file: the outermost frame of its
    traceback in a method module is the hook the engine called. None otherwise."""
    tb = exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module.startswith("stabench_methods."):
            return module[len("stabench_methods."):], tb.tb_frame.f_code.co_name
        tb = tb.tb_next
    return None


def exc_text(exc: BaseException) -> str:
    """The first line of an exception's message (SyntaxError: its own message only)."""
    text = exc.msg if isinstance(exc, SyntaxError) else str(exc)
    return (text.strip().splitlines() or [""])[0]


def import_failure(path: Path, exc: BaseException) -> str:
    """'file:line' where importing a method file failed (the deepest frame in that file)."""
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f"{path}:{exc.lineno}"
    lines = [tb.tb_lineno for tb in _frames(exc.__traceback__) if Path(tb.tb_frame.f_code.co_filename) == path]
    return f"{path}:{lines[-1]}" if lines else str(path)


def _frames(tb):
    while tb is not None:
        yield tb
        tb = tb.tb_next


@dataclass
class Method:
    """One loaded method with its merged arguments (configure may fill in derived ones)."""

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

    @property
    def unpackable_reason(self) -> str | None:
        if getattr(self.module, "PACKABLE", True) is False:
            return str(self.module.UNPACKABLE_REASON)
        return None

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
    types, allowed = getattr(module, "ARG_TYPES", {}), getattr(module, "ARG_ALLOWED", {})
    for key, value in args.items():
        problem = arg_problem(value, defaults[key], types.get(key), allowed.get(key))
        if problem:
            raise MethodError(f"method {name!r}: argument {key}: got {value!r}; {problem}")
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

    def owners(self, hook: str) -> list[Method]:
        return [m for m in self.methods if m.hook(hook)]

    @property
    def changes_lr_meaning(self) -> bool:
        return any(m.changes_lr_meaning for m in self.methods)

    def unpackable_reason(self) -> str | None:
        """Why this composition cannot train as an ensemble (a method says so), or None."""
        reasons = [f"{m.name}: {m.unpackable_reason}" for m in self.methods if m.unpackable_reason]
        return "; ".join(reasons) or None

    def probes(self) -> dict[str, Probe]:
        """The methods' probes ({name: Probe}); a name taken by an engine probe
        (``stabench.probes.ENGINE_PROBES``) or by another method's probe is an error naming both."""
        out: dict[str, Probe] = {}
        where: dict[str, str] = {}
        for method in self.owners("probes"):
            here = f"method {method.name!r} ({method.module.__file__})"
            for name, probe in method.hook("probes")(method.args).items():
                if name in PROBES:
                    raise MethodError(f"probe {name!r} of {here} is taken by the engine's probe "
                                      f"{place(PROBES[name].fn)}; rename it")
                if name in out:
                    raise MethodError(f"probe {name!r} is defined by {where[name]} and by {here}; "
                                      "they cannot be composed until one is renamed")
                out[name], where[name] = as_probe(probe), here
        return out


VALID_LABEL = ("valid: method names joined by '+' (one name, or several such as 'a+b'), each the name of "
               "a file in methods/")


def parse_use(use: str) -> list[str]:
    names = [n.strip() for n in use.split("+")]
    if not all(names):
        raise MethodError(f"method {use!r}: an empty name before, between or after '+' signs; {VALID_LABEL}; "
                          f"known methods: {', '.join(known_methods())}")
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
        owners = [m.name for m in stack.owners(hook)]
        if len(owners) > 1:
            raise MethodError(
                f"method {use!r}: {' and '.join(owners)} both define the exclusive hook {hook!r}; "
                "they cannot be composed")
    stack.probes()  # probe names: unique among the methods and the engine's
    return stack


def stack_of(config: dict) -> MethodStack:
    """The methods of a resolved run config, with the arguments its configure hooks resolved."""
    stack = MethodStack([load_method(m["name"], m["args"]) for m in config["methods"]])
    for method, recorded in zip(stack.methods, config["methods"]):
        if method.version != recorded.get("version"):
            warnings.warn(f"method {method.name!r} is version {method.version} now; the run was "
                          f"resolved with version {recorded.get('version')}", stacklevel=2)
    return stack


def param_options(model, config: dict, stack: MethodStack) -> dict[str, dict]:
    """Per-parameter options after every method's ``param_options`` hook, keys checked."""
    options: dict[str, dict] = {name: {} for name, _ in model.named_parameters()}
    for method in stack.owners("param_options"):
        for name, opts in method.hook("param_options")(model, config, method.args).items():
            if name not in options:
                close = difflib.get_close_matches(name, list(options), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise MethodError(f"method {method.name!r}: param_options names unknown parameter {name!r}{hint}")
            bad = sorted(set(opts) - set(PARAM_OPTION_KEYS))
            if bad:
                raise MethodError(f"method {method.name!r}: param_options for {name} has unknown key(s) "
                                  f"{', '.join(map(repr, bad))}; valid keys: {', '.join(PARAM_OPTION_KEYS)}")
            merged = options[name]
            for key, value in opts.items():
                if key == "lr_mult":
                    merged["lr_mult"] = merged.get("lr_mult", 1.0) * float(value)
                elif key in merged and merged[key] != value:
                    raise MethodError(f"method {method.name!r} sets {key}={value!r} for {name}, "
                                      f"which another method set to {merged[key]!r}")
                else:
                    merged[key] = value
    return options


def base_width(config: dict, override: int | None = None) -> int:
    """The width that width-relative rules (per-layer LRs, inits, eps) are tuned at.

    ``override`` (a method's ``base_width`` argument) if given, else the smallest d_model among
    the benchmark's sizes. Only ``configure`` hooks can call it without an override (the
    benchmark's sizes are visible there only), so the width a method derives is recorded in
    its arguments and is part of the run's identity.
    """
    if override is None:
        sizes = config.get("benchmark_sizes")
        if not sizes:
            raise MethodError("base_width: the benchmark's sizes are only visible in configure hooks; "
                              "derive the base width there and store it in the method's args")
        override = min(size["d_model"] for size in sizes.values())
    if isinstance(override, bool) or not isinstance(override, int) or override < 1:
        raise MethodError(f"base_width must be a positive integer, got {override!r}")
    return override
