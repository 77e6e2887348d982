"""Everything written about one run: history rows, per-step losses, divergence, checkpoints,
metrics.json. A member of a pack and a separate run are recorded alike, in their own folders.

Files of a run folder: ``metrics.json`` (the result), ``history.csv`` (a row per probe step),
``losses.csv`` (the training loss of every optimizer step), ``checkpoint.pt`` (resume and
evaluation). Each is written atomically, so a killed process never leaves a torn file.
A folder belongs to one run slot (benchmark, method label, size, LR, seed): a trainer asked
to write a different slot into it refuses; the same slot with a changed config (its
identity) is retrained, because the benchmark changed it.
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .checkpoint import read_checkpoint, save_checkpoint
from .config import ConfigError
from .io import write_csv, write_json
from .runspec import RunSpec
from .selection import is_diverged, uniform_l0
from .spikes import loss_spikes

METRICS_NAME, HISTORY_NAME, LOSSES_NAME = "metrics.json", "history.csv", "losses.csv"


SLOT_KEYS = ("benchmark", "method", "size", "lr", "seed")


def slot(config: dict) -> dict:
    """The place of a run in its benchmark's grid (what its folder stands for)."""
    return {k: config[k] for k in SLOT_KEYS}


def check_folder(out_dir: Path, state: dict | None, config: dict) -> None:
    """Refuse (one line naming both) to write a run into a folder holding another run: its
    checkpoint says so, or (no readable checkpoint) its metrics.json does."""
    theirs = (state or {}).get("slot")
    if theirs is None and (Path(out_dir) / METRICS_NAME).is_file():
        try:
            metrics = json.loads((Path(out_dir) / METRICS_NAME).read_text(encoding="utf-8"))
            theirs = {k: metrics[k] for k in SLOT_KEYS}
        except (ValueError, UnicodeDecodeError, KeyError, TypeError):
            theirs = None  # damaged or foreign: nothing to protect, it is rewritten
    if theirs is not None and theirs != slot(config):
        raise ConfigError(f"{out_dir} holds the run {theirs}; refusing to write the run {slot(config)} there "
                          "(choose another --out)")


@dataclass
class Member:
    """One run being trained: its config, folder and everything recorded so far."""

    run: RunSpec
    out_dir: Path
    state: dict | None = None     # the unfinished checkpoint it resumes from
    history: list[dict] = field(default_factory=list)
    losses: list[tuple[int, float, float]] = field(default_factory=list)  # (step, lm loss, total loss)
    init_loss: float = math.nan
    diverged_at: int | None = None
    elapsed: float = 0.0          # wall seconds of earlier sessions (before a resume)
    train_seconds: float = 0.0
    resumed_from: int | None = None
    final: dict | None = None
    metrics: dict | None = None
    session_seconds: float = 0.0  # train_seconds when this session started (for tokens/s)

    @classmethod
    def open(cls, run: RunSpec, out_dir: Path, write: bool = True) -> "Member":
        """A member for ``run`` in ``out_dir``: finished (metrics set), resuming, or new.
        ``write=False`` (a process other than the main one) never writes the folder."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        state = read_checkpoint(out_dir)
        check_folder(out_dir, state, run)
        member = cls(run, out_dir)
        if state is None or state.get("identity") != run.identity:
            return member  # new, or the benchmark changed this run: train it afresh
        if state.get("finished"):
            member.metrics = state["metrics"]
            member.history, member.losses = state["history"], [tuple(x) for x in state["losses"]]
            if write:
                member.write_files()  # already computed: never lose it
            return member
        member.state = state
        member.history, member.losses = state["history"], [tuple(x) for x in state["losses"]]
        member.init_loss, member.elapsed = state["init_loss"], state["elapsed"]
        member.train_seconds, member.resumed_from = state["train_seconds"], state["step"]
        return member

    @property
    def config(self) -> RunSpec:
        """The run's spec, read by key as the hooks and probes read it."""
        return self.run

    @property
    def finished(self) -> bool:
        return self.metrics is not None

    @property
    def resume_step(self) -> int:
        return self.state["step"] if self.state else 0

    def add_losses(self, steps: list[int], values: list[list[float]]) -> None:
        self.losses.extend((s, v[0], v[1]) for s, v in zip(steps, values))

    def mean_loss_since(self, step: int) -> float:
        """Mean language-model loss of the steps after ``step`` (the last probe step)."""
        recent = [lm for s, lm, _ in self.losses if s > step]
        return sum(recent) / len(recent) if recent else math.nan

    @property
    def l0(self) -> float:
        """The benchmark's one l0: ``analysis.l0`` when it sets one, else ln(vocabulary)."""
        return self.run.l0 if self.run.l0 is not None else uniform_l0(self.run.model.vocab_size)

    def is_diverged(self, loss: float, factor: float) -> bool:
        """The one divergence rule (stabench.selection), against the benchmark's l0, not the
        run's own initial loss (which differs by method)."""
        return is_diverged(loss, self.l0, factor)

    def checkpoint(self, payload: dict[str, Any], *, elapsed: float, finished: bool = False) -> None:
        """Save the run's state; ``elapsed`` is its wall time so far, all sessions."""
        save_checkpoint(self.out_dir, {
            **payload, "identity": self.run.identity, "slot": slot(self.config), "finished": finished,
            "metrics": self.metrics or {}, "history": self.history, "losses": [list(x) for x in self.losses],
            "init_loss": self.init_loss, "elapsed": elapsed, "train_seconds": self.train_seconds})

    def write_files(self) -> None:
        write_csv(self.out_dir / HISTORY_NAME, self.history)
        write_csv(self.out_dir / LOSSES_NAME, [{"step": s, "loss": lm, "loss_total": total}
                                              for s, lm, total in self.losses])
        write_json(self.out_dir / METRICS_NAME, self.metrics)

    def finish(self, final: dict, *, step: int, tokens: int, wall_seconds: float, tokens_per_second: float,
               families: dict, packed_with: int, device: str, precision: str, model_info: dict) -> dict:
        """Compute metrics.json of the finished run (diverged or not)."""
        diverged = self.diverged_at is not None or not math.isfinite(final["loss"])
        steps = [s for s, _, _ in self.losses]
        self.metrics = {
            **slot(self.config), "identity": self.run.identity,
            "final_val_loss": final["loss"], "init_loss": self.init_loss, "diverged": diverged,
            "diverged_at_step": self.diverged_at if self.diverged_at is not None else (step if diverged else None),
            "steps": step, "tokens": tokens, "wall_seconds": wall_seconds, "train_seconds": self.train_seconds,
            "tokens_per_second": tokens_per_second, "packed_with": packed_with,
            "max_attn_logit": final["attn_logit_max"], "max_attn_logit_per_layer": final["attn_logit_max_per_layer"],
            "final_log_z": final["log_z"],
            "final_train_loss": next((r["loss"] for r in reversed(self.history) if "loss" in r), None),
            **model_info,
            **loss_spikes(steps, [lm for _, lm, _ in self.losses], self.config["probes"]),
            "probe_families": families,
            "resumed_from_step": self.resumed_from, "config": self.run.to_dict(), "methods": self.run.to_dict()["methods"],
            "versions": versions(), "device": device, "precision": precision,
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        return self.metrics


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": str(torch.__version__), "stabench": __version__,
            "numpy": np.__version__}
