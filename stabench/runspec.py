"""A run of a benchmark grid as one typed, frozen spec: what it computes, and its identity.

``resolve_run`` is the one place a run's settings are put together: the benchmark's defaults
and sections, the size, the exact peak LR and seed, the world size, and everything the
methods' ``configure`` hooks derive (including values derived from the benchmark, such as a
base width, which they record in their arguments). Its result is a ``RunSpec``: frozen
dataclasses for the model, data, train, optimizer and probe settings and the method stack
with its arguments, written as the run folder's ``run.json``. A job is handed that file
(``stabench train --spec run.json``) and builds the run from it alone, so no value is
resolved twice or passes through text on its way (the workflow's rules write it).

Each section's fields are defined once: the model's are ``stabench.model.GPT``'s keyword
arguments (``MODEL_KEYS``; the model's vocabulary is the benchmark's ``data.vocab_size``, which
may pad the tokenizer's and which preparing the data checks); the others are the benchmark
schema's (``benchmarks/schema.yaml``), plus ``train.world_size``. A key that is not one, from a
benchmark, a method's ``configure`` hook or a ``run.json``, is a one-line ConfigError. The
sections are also read by key (``spec["train"]["steps"]``), as the methods' hooks read them.

``run_identity`` hashes the spec; the Snakemake rules use it as the spec rule's params (a
change retrains exactly the runs it changes) and the trainer stores it in checkpoints and
metrics (a folder never resumes or reports a different run). A run's folder and its LR label
are defined in ``stabench.paths``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import inspect
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import ConfigError, check_run_point, load_schema, method_specs, size_config
from .io import write_json
from .methods import MethodError, MethodStack, load_stack, stack_of
from .model import GPT
from .paths import SPEC_NAME

# Settings that change where or how often a run is stored, not what it computes; and the
# names under which it is stored (the same run may be stored under another label).
NOT_IDENTITY = {"benchmark", "method", "train.checkpoint_every", "train.device", "train.trackers"}

# A run's model section: GPT's keyword arguments but the ensemble's member count (Ensemble's).
MODEL_KEYS = tuple(sorted(name for name in inspect.signature(GPT).parameters if name != "members"))

# Who wrote a folder's run.json: the workflow's rule, or `stabench train` by hand. A folder the
# workflow owns is never given another run without --force (stabench.cli).
OWNERS = ("workflow", "cli")


def check_model_keys(model: Mapping, where: str = "model") -> Mapping:
    """``model`` if every key is a GPT argument (``MODEL_KEYS``), else a one-line ConfigError
    naming the first unknown key and the valid ones."""
    unknown = [key for key in model if key not in MODEL_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown model key {unknown[0]!r}; valid: {', '.join(MODEL_KEYS)}")
    return model


class FrozenDict(dict):
    """A dict no one can change (a resolved run's nested values); it pickles, deep-copies and
    writes as JSON like a dict."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("a resolved run is frozen; resolve it again (stabench.runspec.resolve_run) to change it")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _refuse

    def __reduce__(self):
        return FrozenDict, (dict(self),)

    def __deepcopy__(self, memo):
        return self  # immutable all the way down


def _freeze(value: Any) -> Any:
    """A read-only copy: mappings become FrozenDicts, lists tuples (JSON reads them back alike)."""
    if isinstance(value, Section):
        return value
    if isinstance(value, Mapping):
        return FrozenDict({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    """Plain dicts and lists again (JSON, and configs the caller may change)."""
    if isinstance(value, Mapping):  # sections, FrozenDicts, plain dicts
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


class Section(Mapping):
    """A frozen dataclass that is also read by key, as the methods' hooks read a run's config."""

    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(self.__dataclass_fields__)

    def __len__(self) -> int:
        return len(self.__dataclass_fields__)

    def to_dict(self) -> dict:
        """Plain dicts and lists (JSON, comparisons with what a file says)."""
        return _thaw(self)

    def __eq__(self, other: object) -> bool:  # equal to a section or a plain mapping with the same values
        return isinstance(other, Mapping) and _thaw(self) == _thaw(other)

    __hash__ = None  # like a dict

    @classmethod
    def build(cls, values: Mapping, where: str):
        """The section from ``values``, every value frozen; an unknown or missing key is a
        one-line ConfigError naming ``where``."""
        names = list(cls.__dataclass_fields__)
        if not isinstance(values, Mapping):
            raise ConfigError(f"{where}: expected a mapping of {', '.join(names)}; got {values!r}")
        unknown = [k for k in values if k not in names]
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}; valid: {', '.join(names)}")
        optional = {f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
        missing = [k for k in names if k not in values and k not in optional]
        if missing:
            raise ConfigError(f"{where}: missing key {missing[0]!r}")
        return cls(**{k: _freeze(v) for k, v in values.items()})


_JSON_TYPES = {"integer": int, "number": float, "boolean": bool, "string": str, "array": tuple, "object": Mapping}


def _schema_type(prop: dict) -> Any:
    return _JSON_TYPES.get(prop.get("type"), Any) if isinstance(prop.get("type"), str) else Any


def _section(name: str, keys: dict[str, Any], doc: str) -> type:
    cls = dataclasses.make_dataclass(name, list(keys.items()), bases=(Section,), frozen=True, eq=False)
    cls.__doc__ = doc
    cls.__module__ = __name__
    return cls


@functools.cache
def _schema_section(section: str) -> dict[str, Any]:
    return {k: _schema_type(p) for k, p in load_schema()["properties"][section]["properties"].items()}


ModelArgs = _section("ModelArgs", {k: inspect.signature(GPT).parameters[k].annotation for k in MODEL_KEYS},
                     "GPT's keyword arguments (stabench.model.GPT), but the ensemble's member count.")
DataArgs = _section("DataArgs", _schema_section("data"), "The schema's data section: where tokens come from.")
TrainArgs = _section("TrainArgs", {**_schema_section("train"), "world_size": int},
                     "The schema's train section, and the processes one run trains on.")
OptimizerArgs = _section("OptimizerArgs", _schema_section("optimizer"), "The schema's optimizer section.")
ProbeArgs = _section("ProbeArgs", _schema_section("probes"), "The schema's probes section.")


@dataclasses.dataclass(frozen=True, eq=False)
class MethodArgs(Section):
    """One method of the stack: its file's name and version, and its resolved arguments."""

    name: str
    args: Mapping
    version: str
    changes_lr_meaning: bool


@dataclasses.dataclass(frozen=True, eq=False)
class RunSpec(Section):
    """Everything one run computes with, resolved once (``resolve_run``) and frozen."""

    benchmark: str
    method: str                 # the benchmark's method label
    method_spec: Mapping        # the label's {use, args} as the benchmark wrote them
    size: str
    lr: float
    seed: int
    data: DataArgs
    model: ModelArgs
    train: TrainArgs
    optimizer: OptimizerArgs
    probes: ProbeArgs
    methods: tuple              # MethodArgs, in stack order
    l0: float | None = None     # analysis.l0 when the benchmark sets it (stabench.selection)

    SECTIONS = {"data": DataArgs, "model": ModelArgs, "train": TrainArgs, "optimizer": OptimizerArgs,
                "probes": ProbeArgs}

    @classmethod
    def from_config(cls, config: Mapping, where: str = "run") -> "RunSpec":
        """The spec of a resolved config (or of a run.json's ``spec``); unknown keys are errors."""
        values = dict(config) if isinstance(config, Mapping) else config
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: expected a mapping; got {config!r}")
        built = {name: section.build(values.get(name, {}), f"{where}: {name}")
                 for name, section in cls.SECTIONS.items() if name in values}
        if isinstance(values.get("methods"), (list, tuple)):
            built["methods"] = tuple(MethodArgs.build(m, f"{where}: methods[{i}]") for i, m in enumerate(values["methods"]))
        return cls.build({**values, **built}, where)

    @property
    def config(self) -> "RunSpec":
        """The spec read by key, as the methods' hooks and the recorder read a run's config."""
        return self

    @functools.cached_property
    def stack(self) -> MethodStack:
        """The method stack with the arguments the spec records (built once per spec)."""
        return stack_of(self)

    def to_dict(self) -> dict:
        """Plain JSON-ready data; ``l0`` only when the benchmark sets one (identities of the
        runs of benchmarks without it stay what they were)."""
        plain = super().to_dict()
        if plain["l0"] is None:
            del plain["l0"]
        return plain

    @functools.cached_property
    def identity(self) -> str:
        return run_identity(self.to_dict())


def resolve_run(benchmark: dict, *, method: str, size: str, lr: float, seed: int, world_size: int = 1) -> RunSpec:
    """The run (method label, size, peak LR, seed) of ``benchmark`` on ``world_size`` processes."""
    check_run_point(benchmark, lr, seed)
    specs = method_specs(benchmark)
    spec = specs.get(method, {"use": method, "args": {}})
    stack = load_stack(spec["use"], spec["args"])
    train = copy.deepcopy(benchmark["train"])
    if world_size < 1 or train["batch_size"] % world_size:
        raise ConfigError(f"train.batch_size {train['batch_size']} cannot be split over {world_size} processes; "
                          "use a batch size divisible by the number of GPUs")
    train["world_size"] = int(world_size)
    config = {
        "benchmark": benchmark["name"],
        "method": method,
        "method_spec": copy.deepcopy(spec),
        "size": size,
        "lr": float(lr),
        "seed": int(seed),
        "data": copy.deepcopy(benchmark["data"]),
        "model": check_model_keys({**benchmark["model"], **size_config(benchmark, size), "seq_len": train["seq_len"],
                                   "vocab_size": benchmark["data"]["vocab_size"]}),
        "train": train,
        "optimizer": copy.deepcopy(benchmark["optimizer"]),
        "probes": copy.deepcopy(benchmark["probes"]),
        # Visible to configure hooks only (see stabench.methods.base_width), then removed:
        # a method that derives something from the grid records it, so it is in the identity.
        "benchmark_sizes": copy.deepcopy(benchmark["sizes"]),
    }
    for method_ in stack.methods:
        if method_.hook("configure"):
            try:
                method_.hook("configure")(config, method_.args)
            except (ConfigError, MethodError):
                raise
            except (ValueError, TypeError, KeyError) as exc:  # a method's own check of its arguments
                raise MethodError(f"method {method_.name!r}: {type(exc).__name__}: {exc} "
                                  f"(arguments {method_.args})") from None
        check_model_keys(config["model"], where=f"method {method_.name!r} (configure)")
    del config["benchmark_sizes"]
    config["methods"] = copy.deepcopy(stack.describe())
    # The benchmark's one l0 also decides divergence (stabench.selection); None unless it sets one.
    config["l0"] = None if benchmark.get("analysis", {}).get("l0") is None else float(benchmark["analysis"]["l0"])
    return RunSpec.from_config(config, where=f"run {method} {size} lr={lr:g} seed={seed}")


def run_identity(config: Mapping) -> str:
    """A hash of everything that decides what a run computes (see NOT_IDENTITY)."""
    kept = config.to_dict() if isinstance(config, Section) else _thaw(config)
    for key in NOT_IDENTITY:
        *path, leaf = key.split(".")
        node = kept
        for part in path:
            node = node.get(part, {})
        node.pop(leaf, None)
    text = json.dumps(kept, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_spec(folder: str | Path, spec: RunSpec, owner: str) -> Path:
    """Write ``spec`` as ``folder``'s run.json (atomically), with its identity and its writer."""
    if owner not in OWNERS:
        raise ValueError(f"owner {owner!r}; valid: {', '.join(OWNERS)}")
    path = Path(folder) / SPEC_NAME
    write_json(path, {"identity": spec.identity, "owner": owner, "spec": spec.to_dict()})
    return path


def read_spec_file(path: str | Path) -> tuple[RunSpec, str]:
    """The spec and owner of a run.json; a missing, damaged or foreign file is one ConfigError
    naming it. The identity is recomputed from the spec (a hand-edited spec is a new run)."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        spec, owner = record["spec"], record.get("owner", "cli")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such run spec (the workflow writes one into every run folder)") from None
    except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a stabench run spec ({type(exc).__name__}: {exc})") from None
    if owner not in OWNERS:
        raise ConfigError(f"{path}: owner {owner!r}; valid: {', '.join(OWNERS)}")
    return RunSpec.from_config(spec, where=str(path)), owner


def read_spec(folder: str | Path) -> tuple[RunSpec, str] | None:
    """The run a folder is for and who said so, or None when it has no run.json."""
    path = Path(folder) / SPEC_NAME
    return read_spec_file(path) if path.exists() else None


def spec_difference(ours: RunSpec, theirs: RunSpec) -> str:
    """The settings two specs differ in, as 'train.steps: 40 there, 60 here' (the first few)."""
    def flat(node, prefix=""):
        if isinstance(node, dict):
            return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()}
        return {prefix.rstrip("."): node}
    a, b = flat(theirs.to_dict()), flat(ours.to_dict())
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    shown = "; ".join(f"{k}: {a.get(k)!r} there, {b.get(k)!r} here" for k in keys[:3])
    return shown + (f"; and {len(keys) - 3} more" if len(keys) > 3 else "")
