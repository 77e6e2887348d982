"""Benchmark files: load, validate against the JSON schema, apply overrides, resolve one run.

The schema in ``benchmarks/schema.yaml`` is the single source of truth for fields, defaults
and allowed values (the model's too: ``stabench.model.GPT``'s defaults are tested to equal
them). The CLI and the workflow both validate through this module, once, so they can never
disagree about what a benchmark means. Errors are one line that names the file, the field and
what would be valid, because users edit these files by hand.

What a schema cannot say is checked here too, so nothing wrong reaches a run: numbers must
be finite (YAML reads ``.nan``, ``.inf`` and ``1e400`` as floats, and NaN passes every
``minimum``), integers must be integers (JSON Schema accepts 40.0), a key may appear once in
a mapping (YAML keeps the last silently), and the fields must agree with each other
(``check_consistent``). Names that become folders are slugs (``$defs.slug`` of the schema),
so a benchmark can never write outside ``results/<name>/``.

This module is a leaf: it imports nothing of stabench. What only a higher layer knows (the
offline task names, what a tokenizer value means, the run folders' LR labels) is checked by
that layer; ``stabench.benchmark.load_for_use`` runs those checks too where a benchmark is
loaded to be used.
"""

from __future__ import annotations

import copy
import difflib
import functools
import math
import os
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

# The shipped benchmarks and schema travel with the package (stabench/shipped/ links to the
# repository's benchmarks/ and methods/; a wheel holds copies), so an installed stabench works
# from any folder; a ./benchmarks folder of the current directory is looked in first.
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
SCHEMA_PATH = SHIPPED_DIR / "benchmarks" / "schema.yaml"
BENCHMARKS_DIR = SCHEMA_PATH.parent
SIZE_PLACEMENT_KEYS = ("gpus", "runtime_min", "mem_mb")


class ConfigError(ValueError):
    """A benchmark file or override is invalid; the message is one line for the user."""


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads '1e-3' (no dot) as a string; benchmark authors mean a number.
    A key given twice in one mapping is an error (PyYAML would keep the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool, type(None))):
                continue  # an unhashable key: PyYAML's own error names it
            if key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} appears twice in one mapping")
            seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def read_yaml(text: str, source: str = "YAML"):
    """Parse YAML; a syntax error is a ConfigError naming ``source`` and the line."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise ConfigError(f"{where}: not valid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {str(exc).splitlines()[0]}") from None
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


@functools.lru_cache(maxsize=1)
def load_schema() -> dict:
    return read_yaml(SCHEMA_PATH.read_text(), str(SCHEMA_PATH))


def slug_pattern() -> str:
    """The regular expression (anchored) every name that becomes a folder matches."""
    return load_schema()["$defs"]["slug"]["pattern"]


def check_slug(field: str, value: str) -> str:
    """``value`` if it is a safe folder name, else a ConfigError naming ``field``."""
    slug = load_schema()["$defs"]["slug"]
    if not isinstance(value, str) or not re.fullmatch(slug["pattern"], value) or len(value) > slug["maxLength"]:
        raise ConfigError(f"{field}: got {value!r}; allowed: {slug['description']}")
    return value


def _with_defaults(validator_class):
    """A validator that also fills in the schema's defaults."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _strict_integer(checker, instance) -> bool:
    """JSON Schema counts 40.0 as an integer; a step count or a seed must be a real int."""
    return isinstance(instance, int) and not isinstance(instance, bool)


_Validator = jsonschema.validators.extend(
    _with_defaults(jsonschema.Draft202012Validator),
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _strict_integer))


def _field_name(path) -> str:
    name = ""
    for part in path:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "(top level)"


def _describe(error: jsonschema.ValidationError) -> str:
    """Turn a schema error into 'field: got X; allowed: Y'."""
    schema = error.schema if isinstance(error.schema, dict) else {}
    got = error.instance
    if error.validator == "additionalProperties":
        extra = sorted(set(got) - set(schema.get("properties", {})))
        allowed = ", ".join(sorted(schema.get("properties", {}))) or "none"
        return f"unknown field(s) {', '.join(map(repr, extra))}; allowed: {allowed}"
    if error.validator == "required":
        return error.message
    if error.validator == "enum":
        return f"got {got!r}; allowed: {', '.join(map(repr, error.validator_value))}"
    if error.validator == "type":
        return f"got {got!r}; expected {error.validator_value}"
    if error.validator in ("pattern", "maxLength") and "description" in schema:
        return f"got {got!r}; allowed: {schema['description']}"
    if error.validator == "oneOf" and "items" not in schema:
        return f"got {got!r}; expected method names joined by '+' like 'a+b', or {{use: ..., args: ...}}"
    hint = (schema.get("description") or "").strip()
    return f"got {got!r}: {error.message}" + (f" ({hint})" if hint else "")


def _non_finite(node, path=()) -> tuple | None:
    """(path, value) of the first NaN or infinity in a nested benchmark, else None."""
    if isinstance(node, float) and not math.isfinite(node):
        return path, node
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        found = _non_finite(value, (*path, key))
        if found:
            return found
    return None


def check_consistent(benchmark: dict) -> None:
    """What the schema cannot express: fields that must agree with each other (those this
    module can check; see ``stabench.benchmark.check_for_use`` for the rest)."""
    train = benchmark["train"]
    if train["warmup_steps"] > train["steps"]:
        raise ConfigError(f"train.warmup_steps: got {train['warmup_steps']}; allowed: at most train.steps "
                          f"({train['steps']})")
    for lr in benchmark["learning_rates"]:
        check_run_point(benchmark, lr, 0, field="learning_rates")
    seeds = benchmark["seeds"]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds: got {seeds}; allowed: each seed once (each is one run folder)")
    for size in benchmark["sizes"]:
        size_config(benchmark, size)
    labels = method_specs(benchmark)
    if benchmark.get("reference") is not None and benchmark["reference"] not in labels:
        raise ConfigError(f"reference: got {benchmark['reference']!r}; allowed: one of the benchmark's methods "
                          f"({', '.join(labels)})")


def check_run_point(benchmark: dict, lr, seed, field: str = "lr") -> None:
    """A run's peak LR and seed (from the benchmark's grid or the command line) are usable."""
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ConfigError(f"{field}: got {lr!r}; allowed: a finite number > 0")
    min_lr = benchmark["train"]["min_lr"]
    if lr < min_lr:
        raise ConfigError(f"{field}: got {lr!r}; allowed: at least train.min_lr ({min_lr!r}), "
                          "since the schedule decays from the peak LR to min_lr")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed: got {seed!r}; allowed: an integer from 0 to 4294967295")


def validate(benchmark: dict, source: str = "benchmark") -> dict:
    """Validate in place, fill defaults, and return the benchmark; raise ConfigError."""
    bad = _non_finite(benchmark)
    if bad:
        raise ConfigError(f"{source}: {_field_name(bad[0])}: got {bad[1]!r}; allowed: a finite number")
    errors = sorted(_Validator(load_schema()).iter_errors(benchmark), key=lambda e: len(e.path))
    if errors:
        err = jsonschema.exceptions.best_match(errors)
        message = " ".join(_describe(err).split())  # schema descriptions may span lines: one line
        raise ConfigError(f"{source}: {_field_name(err.absolute_path)}: {message}")
    try:
        check_consistent(benchmark)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return benchmark


def inside(path: str | Path, root: str | Path) -> Path:
    """``path`` if it lies under ``root`` with '..' resolved lexically (so a results/ that is
    a symlink to another disk is fine), else a ConfigError."""
    full, top = (os.path.normpath(os.path.abspath(p)) for p in (path, root))
    if os.path.commonpath([full, top]) != top:
        raise ConfigError(f"{path} lies outside {root}; refusing to write there")
    return Path(path)


# The workflow's --config keys: default and least value (benchmark: a name or a path;
# max_job_minutes: the longest wall time a job may ask for, a number > 0, fractions for tests;
# reference: a folder of shipped results, reference/<name> or a path, none by default).
WORKFLOW_SETTINGS = {"benchmark": ("cpu", None), "train_threads": (1, 1), "gpus": (0, 0), "runs_per_gpu": (1, 1),
                     "pack": ("auto", 0), "max_job_minutes": (1440, 0), "reference": (None, None)}

# Shipped reference results (stabench.reference): reference/<name>/ of the current directory
# (looked in first), then the repository's (a link in stabench/shipped, a copy in a wheel).
REFERENCE_DIR = SHIPPED_DIR / "reference"
REFERENCE_TABLE = "runs.csv"


def workflow_settings(config: dict) -> dict:
    """Snakemake's ``--config`` checked: known keys (did-you-mean), integers in range."""
    settings = {}
    for key in config:
        if key not in WORKFLOW_SETTINGS:
            close = difflib.get_close_matches(key, WORKFLOW_SETTINGS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"--config {key}: unknown key; {hint}known: {', '.join(WORKFLOW_SETTINGS)}")
    for key, (default, least) in WORKFLOW_SETTINGS.items():
        value = config.get(key, default)
        if key == "pack" and isinstance(value, bool):  # pack=true / pack=false
            value = int(value)
        if key == "pack" and value in ("all", "auto"):  # every run of a (method, size) in one ensemble;
            settings[key] = value                        # packs where they pay (stabench.resources.pack_pays)
            continue
        if key == "reference":
            settings[key] = None if value is None else str(resolve_reference_dir(value))
            continue
        if least is None:
            if not isinstance(value, (str, int)) or isinstance(value, bool) or value == "":
                raise ConfigError(f"--config {key}={value!r}: allowed: a benchmark name or a YAML file path")
            settings[key] = str(value)
            continue
        if key == "max_job_minutes":  # a job limit (stabench.resources.capped): any positive number
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ConfigError(f"--config {key}={value!r}: allowed: minutes > 0, e.g. 1440 (24 h)")
            settings[key] = value
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < least or (key == "pack" and value > 1):
            allowed = "0, 1, all or auto" if key == "pack" else f"an integer >= {least}"
            raise ConfigError(f"--config {key}={value!r}: allowed: {allowed}")
        settings[key] = value
    return settings


def resolve_benchmark_path(name_or_path: str | Path) -> Path:
    """Accept 'cpu', 'cpu.yaml' or a path; the bare name looks in benchmarks/."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    folders = [Path.cwd() / "benchmarks", BENCHMARKS_DIR]
    for folder in folders:
        for candidate in (folder / f"{name_or_path}.yaml", folder / str(name_or_path)):
            if candidate.is_file():
                return candidate
    known = sorted({p.stem for folder in folders for p in folder.glob("*.yaml") if p.stem != "schema"})
    raise ConfigError(f"benchmark {str(name_or_path)!r} not found; known: {', '.join(known)}")


def resolve_reference_dir(name_or_path) -> Path:
    """A folder of reference results (one that holds a runs.csv): a path, or a name under
    ./reference/ or the repository's reference/; else a one-line ConfigError naming those known."""
    if not isinstance(name_or_path, (str, int)) or isinstance(name_or_path, bool) or str(name_or_path) == "":
        raise ConfigError(f"--config reference={name_or_path!r}: allowed: a folder name under reference/ or a path")
    folders = [Path.cwd() / "reference", REFERENCE_DIR]
    for candidate in (Path(str(name_or_path)), *(folder / str(name_or_path) for folder in folders)):
        if (candidate / REFERENCE_TABLE).is_file():
            return candidate
    known = sorted({p.parent.name for folder in folders for p in folder.glob(f"*/{REFERENCE_TABLE}")})
    raise ConfigError(f"--config reference={name_or_path}: no such folder with a {REFERENCE_TABLE} "
                      f"(a path, or a name under reference/); known: {', '.join(known) or 'none'}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.steps=300' -> (['train', 'steps'], 300); values are parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. train.steps=300")
    key, value = text.split("=", 1)
    if not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", key):
        raise ConfigError(f"--set {text!r}: bad key {key!r}; allowed: field names joined by '.', e.g. train.steps")
    return key.split("."), read_yaml(value, f"--set {text!r}")


def apply_overrides(benchmark: dict, overrides: list[str]) -> dict:
    out = copy.deepcopy(benchmark)
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: {key!r} is not a section")
        node[keys[-1]] = value
    return out


def load_benchmark(name_or_path: str | Path, overrides: list[str] | None = None) -> dict:
    """Read, override and validate a benchmark file: what it says by itself. To use it (train,
    evaluate, run the workflow), load it with ``stabench.benchmark.load_for_use``, which also
    runs the checks of the layers above this one."""
    path = resolve_benchmark_path(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it ({exc})") from None
    benchmark = read_yaml(text, str(path))
    if not isinstance(benchmark, dict):
        raise ConfigError(f"{path}: expected a mapping of fields at the top level")
    benchmark = apply_overrides(benchmark, overrides or [])
    return validate(benchmark, source=str(path))


def method_specs(benchmark: dict) -> dict[str, dict]:
    """label -> {'use': 'a+b', 'args': {...}} for every method of the benchmark."""
    specs: dict[str, dict] = {}
    for i, entry in enumerate(benchmark["methods"]):
        if isinstance(entry, str):
            entry = {"use": entry}
        label = check_slug(f"methods[{i}].label", entry.get("label", entry["use"]))
        if label in specs:
            raise ConfigError(f"methods: label {label!r} appears twice; give one a distinct 'label'")
        specs[label] = {"use": entry["use"], "args": entry.get("args", {})}
    return specs


def size_config(benchmark: dict, size: str) -> dict:
    if size not in benchmark["sizes"]:
        known = ", ".join(benchmark["sizes"])
        raise ConfigError(f"size {size!r} is not in sizes of benchmark {benchmark['name']!r}; known: {known}")
    # placement and cluster requests, not shape: they are no part of a run's identity
    dims = {k: v for k, v in benchmark["sizes"][size].items() if k not in SIZE_PLACEMENT_KEYS}
    if dims["d_model"] % dims["n_heads"]:
        raise ConfigError(f"sizes.{size}: d_model {dims['d_model']} is not divisible by n_heads {dims['n_heads']}")
    return dims
