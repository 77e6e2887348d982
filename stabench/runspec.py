"""A run of a benchmark grid: its fully resolved config and its identity.

``resolve_run`` is the one place a run's settings are put together: the benchmark's defaults
and sections, the size, the exact peak LR and seed, the world size, and everything the
methods' ``configure`` hooks derive (including values derived from the benchmark, such as a
base width, which they record in their arguments). ``run_identity`` hashes that config; the
Snakemake rules use it as the train jobs' params (a change retrains exactly the runs it
changes) and the trainer stores it in checkpoints and metrics (a folder never resumes or
reports a different run). A run's folder and its LR label are defined in ``stabench.paths``.

The model settings are the schema's ``model`` section (defaults filled), the size's shape, the
sequence length and the vocabulary: exactly the keyword arguments of ``stabench.model.GPT``
(``MODEL_KEYS``). A key that is not one, from the benchmark or from a method's ``configure``
hook, is a one-line ConfigError here, before any model is built.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
from dataclasses import dataclass

from .config import ConfigError, check_run_point, method_specs, size_config
from .methods import MethodError, MethodStack, load_stack
from .model import GPT

# Settings that change where or how often a run is stored, not what it computes; and the
# names under which it is stored (the same run may be stored under another label).
NOT_IDENTITY = {"benchmark", "method", "train.checkpoint_every", "train.device", "train.trackers"}

# A run's config["model"]: GPT's keyword arguments but the ensemble's member count (Ensemble's).
MODEL_KEYS = tuple(sorted(name for name in inspect.signature(GPT).parameters if name != "members"))


def check_model_keys(model: dict, where: str = "model") -> dict:
    """``model`` if every key is a GPT argument (``MODEL_KEYS``), else a one-line ConfigError
    naming the first unknown key and the valid ones."""
    unknown = [key for key in model if key not in MODEL_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown model key {unknown[0]!r}; valid: {', '.join(MODEL_KEYS)}")
    return model


@dataclass(frozen=True)
class ResolvedRun:
    """A run's resolved config (do not mutate it) and its identity."""

    config: dict
    identity: str

    @property
    def stack(self) -> MethodStack:
        from .methods import stack_of
        return stack_of(self.config)


def resolve_run(benchmark: dict, *, method: str, size: str, lr: float, seed: int, world_size: int = 1) -> ResolvedRun:
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
    l0 = benchmark.get("analysis", {}).get("l0")
    if l0 is not None:  # the benchmark's one l0 also decides divergence (stabench.selection); only when set,
        config["l0"] = float(l0)  # so the identity of runs of benchmarks without it stays what it was
    return ResolvedRun(config, run_identity(config))


def run_identity(config: dict) -> str:
    """A hash of everything that decides what a run computes (see NOT_IDENTITY)."""
    kept = copy.deepcopy(config)
    for key in NOT_IDENTITY:
        *path, leaf = key.split(".")
        node = kept
        for part in path:
            node = node.get(part, {})
        node.pop(leaf, None)
    text = json.dumps(kept, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
