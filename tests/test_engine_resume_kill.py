"""Resume after a real SIGKILL: ``stabench train`` killed mid-run and started again ends
exactly where an uninterrupted run ends (same final validation loss, same history)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from stabench.checkpoint import CHECKPOINT_NAME
from stabench.config import run_config
from stabench.trainer import train_run

REPO = Path(__file__).resolve().parent.parent
STEPS, EVERY = 300, 20
OVERRIDES = [f"train.steps={STEPS}", f"train.checkpoint_every={EVERY}"]


def command(engine_bench, out: Path) -> list[str]:
    sets = [arg for o in OVERRIDES for arg in ("--set", o)]
    return [sys.executable, "-m", "stabench", "train", str(engine_bench.path), "--method", "baseline",
            "--size", "tiny", "--lr", "1e-2", "--out", str(out), "--data", str(engine_bench.data_dir),
            "--threads", "1", "--no-progress", *sets]


def read_checkpoint(path: Path) -> dict | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, EOFError, RuntimeError):
        return None


def history_losses(out: Path) -> list[tuple[str, str, str]]:
    with open(out / "history.csv", newline="") as f:
        return [(r["step"], r.get("loss", ""), r.get("val_loss", "")) for r in csv.DictReader(f)]


def test_resume_after_sigkill_matches_uninterrupted(engine_bench, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen(command(engine_bench, out), cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killed_after = None
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            state = read_checkpoint(out / CHECKPOINT_NAME)
            if state is not None and state["step"] >= EVERY and not state["finished"]:
                os.kill(proc.pid, signal.SIGKILL)
                killed_after = state["step"]
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None and killed_after is None:
            proc.kill()
        _, err = proc.communicate(timeout=60)
    assert killed_after is not None, f"no mid-run checkpoint seen; rc={proc.returncode} stderr={err.decode()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "metrics.json").exists()

    again = subprocess.run(command(engine_bench, out), cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["resumed_from_step"] is not None
    assert resumed["resumed_from_step"] >= killed_after and resumed["resumed_from_step"] % EVERY == 0
    assert resumed["resumed_from_step"] < STEPS
    assert resumed["steps"] == STEPS
    print(f"killed after checkpoint {killed_after}, resumed from {resumed['resumed_from_step']}")

    # the uninterrupted reference, in this process with the same thread count as --threads 1
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        bench = engine_bench.load(OVERRIDES)
        config = run_config(bench, method="baseline", size="tiny", lr=1e-2, seed=0)
        reference = train_run(config, tmp_path / "reference", engine_bench.data_dir, progress=False)
    finally:
        torch.set_num_threads(before)
    assert reference["resumed_from_step"] is None
    assert resumed["final_val_loss"] == reference["final_val_loss"]
    assert resumed["tokens"] == reference["tokens"]
    assert history_losses(out) == history_losses(tmp_path / "reference")
