"""Checkpoints: one per run folder, everything needed to resume the run bit-for-bit.

A member of a pack and a separate run save the same payload (K = 1 tensors): model and
optimizer state, the step, tokens, history rows and per-step losses so far, timers, torch's
RNG state, and the run's identity (``stabench.runspec.run_identity``), so a checkpoint left
by a different run is never resumed by mistake. Only tensors, numbers, strings, lists and
dicts are stored: ``torch.load(..., weights_only=True)`` reads it without executing code.

The previous checkpoint is kept as ``checkpoint.prev.pt``: a damaged (truncated, corrupt)
checkpoint is reported in one line, removed (so the next save does not keep it as the
previous one) and the run resumes from the previous one, or from scratch when both are
unreadable. ``read_checkpoint`` is only called by a trainer holding the run's lock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import os
import shutil
import sys
import zipfile

import torch

from .io import atomic_path, tensor_bytes, torch_save

CHECKPOINT_NAME = "checkpoint.pt"
PREVIOUS_NAME = "checkpoint.prev.pt"


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
    """Write the new checkpoint aside, keep the current one as the previous, then put the new
    one in place: at no moment (a kill) is there no checkpoint.pt, or no previous one."""
    path, previous = Path(out_dir) / CHECKPOINT_NAME, Path(out_dir) / PREVIOUS_NAME
    state = {**payload, "rng": rng_state()}
    with atomic_path(path, needed=tensor_bytes(state)) as tmp:
        torch_save(state, tmp)
        if path.is_file():
            _keep_as(path, previous)


def _keep_as(path: Path, target: Path) -> None:
    """``target`` becomes the content of ``path`` atomically, ``path`` staying in place
    (a hard link; a copy where the file system has none)."""
    staged = target.with_name(f".{target.name}.staged")
    staged.unlink(missing_ok=True)
    try:
        os.link(path, staged)
    except OSError:
        shutil.copyfile(path, staged)
    os.replace(staged, target)


REQUIRED_KEYS = ("identity", "step", "finished", "model")


def damage(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(checkpoint, None) if ``path`` reads as a stabench checkpoint, else (None, what is wrong).
    The CRCs are checked first: torch.load does not, and would load flipped bytes as weights."""
    problem = quick_damage(path, full_check_bytes=1 << 62)
    if problem:
        return None, problem
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (any damage: torch raises many kinds)
        text = str(exc).strip().splitlines()
        return None, f"{type(exc).__name__}: {text[0][:120] if text else ''}"
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        return None, "not a stabench checkpoint"
    return state, None


def quick_damage(path: Path, full_check_bytes: int = 64 << 20) -> str | None:
    """What is wrong with a checkpoint file, judged without unpickling it (cheap enough for
    every run of a grid at workflow start): its zip structure, and the CRC of every record
    when the file is small. None when it looks whole."""
    try:
        with zipfile.ZipFile(path) as archive:
            if not any(n.endswith("data.pkl") for n in archive.namelist()):
                return "not a torch checkpoint"
            bad = archive.testzip() if Path(path).stat().st_size <= full_check_bytes else None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return f"record {bad} fails its CRC check" if bad else None


def read_checkpoint(out_dir: Path) -> dict[str, Any] | None:
    """The newest readable checkpoint of ``out_dir`` (the previous one if the last is damaged)."""
    damaged = []
    for name in (CHECKPOINT_NAME, PREVIOUS_NAME):
        path = Path(out_dir) / name
        if not path.is_file():
            continue
        state, problem = damage(path)
        if state is None:
            damaged.append(f"{path} is damaged ({problem})")
            path.unlink()
            continue
        if damaged:
            print(f"stabench: {'; '.join(damaged)}; removed it, resuming from {name} (step {state['step']})",
                  file=sys.stderr)
        return state
    if damaged:
        print(f"stabench: {'; '.join(damaged)}; removed, training from scratch", file=sys.stderr)
    return None
