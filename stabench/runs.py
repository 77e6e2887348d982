"""Rebuild the trained model of a finished run from its folder (for evaluation, analysis).

A run's model is the GPT of its resolved config after its methods' ``transform_model`` hooks
(which may add modules or parametrizations), so it is rebuilt by ``build_member`` before the
checkpoint's weights fit. ``at_init=True`` gives the same model before training (same seed),
the reference that evaluations compare against. The model is a K = 1 ensemble: token ids
(1, B, T) -> logits (1, B, T, V).
"""

from __future__ import annotations

import json
from pathlib import Path

from .checkpoint import CHECKPOINT_NAME, damage
from .data import DataError, load_data
from .ensemble import build_member
from .model import GPT

REPAIR_HINT = "run snakemake again: it removes damaged run files and rebuilds them"


def read_metrics(run_dir: str | Path) -> dict:
    """A finished run's metrics.json; a missing or damaged one is a one-line DataError naming it."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise DataError(f"{path} not found: the run has not finished")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is damaged ({type(exc).__name__}: {exc}); {REPAIR_HINT}") from None
    if not isinstance(metrics, dict):
        raise DataError(f"{path} is damaged (not a JSON object); {REPAIR_HINT}")
    return metrics


def load_run_model(run_dir: str | Path, *, at_init: bool = False, device: str = "cpu") -> tuple[GPT, dict]:
    """(model in eval mode, metrics) of a finished run."""
    metrics = read_metrics(run_dir)
    if not isinstance(metrics.get("config"), dict):
        raise DataError(f"{Path(run_dir) / 'metrics.json'} is damaged (no run config); {REPAIR_HINT}")
    model = build_member(metrics["config"])
    if not at_init:
        path = Path(run_dir) / CHECKPOINT_NAME
        state, problem = damage(path) if path.is_file() else (None, "missing")
        if state is None:
            raise DataError(f"{path} is {'missing' if problem == 'missing' else f'damaged ({problem})'}; {REPAIR_HINT}")
        model.load_state_dict(state["model"])
    return model.to(device).eval(), metrics


def run_tokenizer(data_dir: str | Path):
    """The tokenizers.Tokenizer the run was trained with."""
    return load_data(data_dir).tokenizer()
