"""Rebuild the trained model of a finished run from its folder (for evaluation, analysis).

A run's model is the GPT of its resolved config after its methods' ``transform_model`` hooks
(which may add modules or parametrizations), so it must be rebuilt the same way before the
checkpoint's weights fit. ``at_init=True`` gives the same model before training (same seed),
the reference that evaluations compare against.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .checkpoint import CHECKPOINT_NAME
from .data import load_data
from .methods import load_stack
from .model import GPT


def read_metrics(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the run has not finished")
    return json.loads(path.read_text())


def build_model(config: dict) -> GPT:
    """The run's untrained model: seeded init, then the methods' model transforms."""
    stack = load_stack(config["method_spec"]["use"], config["method_spec"]["args"])
    torch.manual_seed(config["seed"])
    model = GPT(**config["model"])
    for hook, args in stack.composed("transform_model"):
        hook(model, config, args)
    return model


def load_run_model(run_dir: str | Path, *, at_init: bool = False, device: str = "cpu") -> tuple[GPT, dict]:
    """(model in eval mode, metrics) of a finished run."""
    metrics = read_metrics(run_dir)
    model = build_model(metrics["config"])
    if not at_init:
        state = torch.load(Path(run_dir) / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
    return model.to(device).eval(), metrics


def run_tokenizer(data_dir: str | Path):
    """The tokenizers.Tokenizer the run was trained with."""
    return load_data(data_dir).tokenizer()
