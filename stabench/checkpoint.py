"""Checkpoints: everything needed to resume a run bit-for-bit, loadable with weights_only.

Contents: model and optimizer state, torch RNG states, the step, the history rows so far, the
on-device loss accumulators and timers, and a hash of the run config, so a checkpoint left
by a different config is never resumed by mistake. Only tensors, numbers, strings, lists and
dicts are stored: ``torch.load(..., weights_only=True)`` can read it without executing code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from .io import save_torch

CHECKPOINT_NAME = "checkpoint.pt"

# Settings that change how a run is observed or stored, not what it computes.
_NOT_HASHED = {"checkpoint_every", "device", "world_size"}


def config_hash(config: dict) -> str:
    observed = {k: v for k, v in config.items() if k != "benchmark_sizes"}
    observed["train"] = {k: v for k, v in config["train"].items() if k not in _NOT_HASHED}
    return hashlib.sha256(json.dumps(observed, sort_keys=True, default=str).encode()).hexdigest()[:16]


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out_dir: Path, payload: dict[str, Any]) -> None:
    save_torch(Path(out_dir) / CHECKPOINT_NAME, {**payload, "rng": rng_state()})


def load_checkpoint(out_dir: Path, expected_hash: str) -> dict[str, Any] | None:
    """The checkpoint in ``out_dir`` if it belongs to this config, else None."""
    path = Path(out_dir) / CHECKPOINT_NAME
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("config_hash") != expected_hash:
        return None
    return state
