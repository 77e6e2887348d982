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

import torch

from .checkpoint import CHECKPOINT_NAME
from .data import load_data
from .ensemble import build_member
from .model import GPT


def read_metrics(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the run has not finished")
    return json.loads(path.read_text())


def load_run_model(run_dir: str | Path, *, at_init: bool = False, device: str = "cpu") -> tuple[GPT, dict]:
    """(model in eval mode, metrics) of a finished run."""
    metrics = read_metrics(run_dir)
    model = build_member(metrics["config"])
    if not at_init:
        state = torch.load(Path(run_dir) / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
    return model.to(device).eval(), metrics


def run_tokenizer(data_dir: str | Path):
    """The tokenizers.Tokenizer the run was trained with."""
    return load_data(data_dir).tokenizer()
