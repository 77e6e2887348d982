"""Resume after a real SIGKILL: ``stabench train`` (K = 1) and ``stabench train-pack`` (K = 2)
killed mid-run and started again end exactly where an uninterrupted run (or pack) ends: same
final validation loss, same history, same per-step losses, bit for bit on CPU."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from stabench.checkpoint import CHECKPOINT_NAME, PREVIOUS_NAME
from stabench.loop import train
from stabench.runspec import resolve_run

from conftest import crash_at_step

REPO = Path(__file__).resolve().parent.parent
STEPS, EVERY = 300, 20
OVERRIDES = [f"train.steps={STEPS}", f"train.checkpoint_every={EVERY}"]
MEMBERS = {"train": [(1e-2, 0)], "train-pack": [(1e-2, 0), (1e-3, 1)]}


def command(engine_bench, kind: str, outs: list[Path]) -> list[str]:
    sets = [arg for o in OVERRIDES for arg in ("--set", o)]
    if kind == "train":
        (lr, seed), = MEMBERS[kind]
        where = ["--lr", repr(lr), "--seed", str(seed), "--out", str(outs[0])]
    else:
        where = [arg for (lr, seed), out in zip(MEMBERS[kind], outs) for arg in ("--run", f"{lr!r}:{seed}:{out}")]
    return [sys.executable, "-m", "stabench", kind, str(engine_bench.path), "--method", "baseline", "--size", "tiny",
            *where, "--data", str(engine_bench.data_dir), "--threads", "1", "--no-progress", *sets]


def checkpoint_step(out: Path) -> tuple[int, bool] | None:
    try:
        state = torch.load(out / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
        return state["step"], state["finished"]
    except (FileNotFoundError, EOFError, RuntimeError):
        return None


def history_losses(out: Path) -> list[tuple[str, str, str]]:
    with open(out / "history.csv", newline="") as f:
        return [(r["step"], r.get("loss", ""), r.get("val_loss", "")) for r in csv.DictReader(f)]


@pytest.mark.parametrize("kind", ["train", "train-pack"])
def test_resume_after_sigkill_matches_uninterrupted(engine_bench, tmp_path, kind):
    outs = [tmp_path / "killed" / f"m{i}" for i in range(len(MEMBERS[kind]))]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen(command(engine_bench, kind, outs), cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killed_after = None
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            # Members save one after the other; the last one's new checkpoint means every member
            # has just saved that step, and the next save is checkpoint_every steps away.
            seen = checkpoint_step(outs[-1])
            if seen is not None and seen[0] >= EVERY and not seen[1]:
                os.kill(proc.pid, signal.SIGKILL)
                killed_after = seen[0]
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None and killed_after is None:
            proc.kill()
        _, err = proc.communicate(timeout=60)
    assert killed_after is not None, f"no mid-run checkpoint seen; rc={proc.returncode} stderr={err.decode()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    steps = {checkpoint_step(out)[0] for out in outs}
    assert len(steps) == 1, f"members were killed between their checkpoint writes: {steps}"
    for out in outs:
        assert not (out / "metrics.json").exists()

    again = subprocess.run(command(engine_bench, kind, outs), cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    if kind == "train-pack":
        assert "trained together as one ensemble" in again.stderr
    resumed = [json.loads((out / "metrics.json").read_text()) for out in outs]
    print(f"{kind}: killed after checkpoint {killed_after}, resumed from {resumed[0]['resumed_from_step']}")

    # the uninterrupted reference, in this process with the same thread count as --threads 1
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        bench = engine_bench.load(OVERRIDES)
        runs = [resolve_run(bench, method="baseline", size="tiny", lr=lr, seed=seed) for lr, seed in MEMBERS[kind]]
        ref_outs = [tmp_path / "reference" / f"m{i}" for i in range(len(runs))]
        reference = train(runs, ref_outs, engine_bench.data_dir, progress=False)
    finally:
        torch.set_num_threads(before)
    for out, ref_out, m, ref in zip(outs, ref_outs, resumed, reference):
        assert ref["resumed_from_step"] is None
        assert m["resumed_from_step"] is not None
        assert m["resumed_from_step"] >= killed_after and m["resumed_from_step"] % EVERY == 0
        assert m["resumed_from_step"] < STEPS and m["steps"] == STEPS
        assert m["packed_with"] == ref["packed_with"] == len(outs)
        assert m["final_val_loss"] == ref["final_val_loss"]
        assert m["tokens"] == ref["tokens"]
        assert history_losses(out) == history_losses(ref_out)
        assert (out / "losses.csv").read_text() == (ref_out / "losses.csv").read_text()


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "engine: a kill between two members' checkpoint writes leaves the members of a pack at "
    "different steps; stabench.loop.train then resumes them as separate ensembles (K = 1 each), "
    "which is equal to the uninterrupted pack only to float tolerance, not bit for bit. Exact "
    "would need the members to resume from their common step (checkpoint.prev.pt)."))
def test_pack_killed_between_member_checkpoints_resumes_exactly(engine_bench, tmp_path):
    bench = engine_bench.load(["train.checkpoint_every=10"])
    runs = [resolve_run(bench, method="baseline", size="tiny", lr=lr, seed=0) for lr in (1e-3, 1e-2)]
    ref_outs = [tmp_path / "ref" / f"m{i}" for i in range(2)]
    reference = train(runs, ref_outs, engine_bench.data_dir, progress=False)
    outs = [tmp_path / "killed" / f"m{i}" for i in range(2)]
    with crash_at_step(30):
        train(runs, outs, engine_bench.data_dir, progress=False)
    # the state a SIGKILL right after member 0 saved step 20 leaves: member 1 still at step 10
    os.replace(outs[1] / PREVIOUS_NAME, outs[1] / CHECKPOINT_NAME)
    assert [checkpoint_step(o)[0] for o in outs] == [20, 10]
    resumed = train(runs, outs, engine_bench.data_dir, progress=False)
    for out, ref_out, m, ref in zip(outs, ref_outs, resumed, reference):
        assert m["final_val_loss"] == pytest.approx(ref["final_val_loss"], rel=1e-5)  # holds
        assert (out / "losses.csv").read_text() == (ref_out / "losses.csv").read_text()  # fails
