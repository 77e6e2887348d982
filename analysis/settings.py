"""The analysis settings of one benchmark, resolved once: l0, reference method, margins, bootstrap.

Every later step (aggregate, score, claims, figures, report) calls ``resolve`` on the same
resolved benchmark.yaml and the same runs, so they cannot disagree about l0 or the reference.
Defaults live in benchmarks/schema.yaml only: ``resolve`` fills them through the engine's own
validator, so a benchmark.yaml written before the ``analysis`` section existed still works.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import pandas as pd

from stabench.config import ConfigError, method_specs, validate


class SettingsError(ValueError):
    """The benchmark's analysis settings do not fit its methods or runs (one line for the user)."""


@dataclass(frozen=True)
class Settings:
    l0: float                 # the loss every diverged run counts as; NaN before any run exists
    l0_source: str            # how l0 was chosen, in words, for the report
    reference: str            # method label every comparison is made against
    methods: tuple[str, ...]  # method labels in benchmark order
    sizes: tuple[str, ...]    # size names, smallest first (benchmark order)
    never_learned_margin: float
    resamples: int
    seed: int
    confidence: float
    claims: tuple[str, ...] | None  # claim ids to check; None = all


def reference_of(benchmark: dict) -> str:
    """The benchmark's reference method label: its ``reference`` or else its first method."""
    labels = list(method_specs(benchmark))
    ref = benchmark.get("reference") or labels[0]
    if ref not in labels:
        raise SettingsError(f"benchmark {benchmark.get('name')!r}: reference {ref!r} is not one of its "
                            f"methods: {', '.join(labels)}")
    return ref


def vocab_l0(runs: pd.DataFrame) -> tuple[float, str]:
    """ln(vocab_size) of the runs' tokenizer: the loss of the uniform predictor."""
    if runs.empty or "vocab_size" not in runs or runs["vocab_size"].isna().all():
        return math.nan, "ln(vocab_size), not known before any run exists"
    sizes = sorted({int(v) for v in runs["vocab_size"].dropna()})
    if len(sizes) > 1:
        raise SettingsError(f"runs disagree on vocab_size ({sizes}); one benchmark has one tokenizer")
    return math.log(sizes[0]), f"ln(vocab_size) = ln {sizes[0]}"


def resolve(benchmark: dict, runs: pd.DataFrame | None = None) -> Settings:
    """Settings from a benchmark (defaults filled here) and, for l0, its runs table."""
    try:
        bench = validate(copy.deepcopy(benchmark), source=f"benchmark {benchmark.get('name')!r}")
    except ConfigError as exc:
        raise SettingsError(str(exc)) from None
    a = bench["analysis"]
    if a["l0"] is not None:
        l0, source = float(a["l0"]), "set in the benchmark (analysis.l0)"
    else:
        l0, source = vocab_l0(runs if runs is not None else pd.DataFrame())
    return Settings(
        l0=l0, l0_source=source, reference=reference_of(bench), methods=tuple(method_specs(bench)),
        sizes=tuple(bench["sizes"]), never_learned_margin=float(a["never_learned_margin"]),
        resamples=int(a["bootstrap"]["resamples"]), seed=int(a["bootstrap"]["seed"]),
        confidence=float(a["bootstrap"]["confidence"]),
        claims=None if a["claims"] is None else tuple(a["claims"]),
    )
