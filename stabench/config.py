"""Benchmark files: load, validate against the JSON schema, apply overrides, resolve one run.

The schema in ``benchmarks/schema.yaml`` is the single source of truth for fields, defaults
and allowed values: the Snakefile validates with it too, so the CLI and the workflow can
never disagree about what a benchmark means. Errors are one line that names the file, the
field and what would be valid, because users edit these files by hand.
"""

from __future__ import annotations

import copy
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


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads '1e-3' (no dot) as a string; benchmark authors mean a number."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def read_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


class ConfigError(ValueError):
    """A benchmark file or override is invalid; the message is one line for the user."""


def load_schema() -> dict:
    return read_yaml(SCHEMA_PATH.read_text())


def _with_defaults(validator_class):
    """A validator that also fills in the schema's defaults (as snakemake's validate does)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


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
    if error.validator == "oneOf" and "items" not in schema:
        return f"got {got!r}; expected method names joined by '+' like 'a+b', or {{use: ..., args: ...}}"
    hint = schema.get("description")
    return f"got {got!r}: {error.message}" + (f" ({hint})" if hint else "")


def validate(benchmark: dict, source: str = "benchmark") -> dict:
    """Validate in place, fill defaults, and return the benchmark; raise ConfigError."""
    errors = sorted(_Validator(load_schema()).iter_errors(benchmark), key=lambda e: len(e.path))
    if errors:
        err = jsonschema.exceptions.best_match(errors)
        raise ConfigError(f"{source}: {_field_name(err.absolute_path)}: {_describe(err)}")
    return benchmark


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


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.steps=300' -> (['train', 'steps'], 300); values are parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. train.steps=300")
    key, value = text.split("=", 1)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", key):
        raise ConfigError(f"--set {text!r}: bad key {key!r}")
    return key.split("."), read_yaml(value)


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
    """Read, override and validate a benchmark file."""
    path = resolve_benchmark_path(name_or_path)
    try:
        benchmark = read_yaml(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(benchmark, dict):
        raise ConfigError(f"{path}: expected a mapping of fields at the top level")
    benchmark = apply_overrides(benchmark, overrides or [])
    return validate(benchmark, source=str(path))


def method_specs(benchmark: dict) -> dict[str, dict]:
    """label -> {'use': 'a+b', 'args': {...}} for every method of the benchmark."""
    specs: dict[str, dict] = {}
    for entry in benchmark["methods"]:
        if isinstance(entry, str):
            entry = {"use": entry}
        label = entry.get("label", entry["use"])
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
