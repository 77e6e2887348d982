"""Scale-out that is proven on CPU: the same run on 1 and on 2 processes (accelerate launch, gloo)
trains the same global batch and gives the same losses; a compiled run records every probe an
eager run records, with the same values."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def cli(engine_bench, out, *extra):
    return ["-m", "stabench", "train", str(engine_bench.path), "--method", "qk_layernorm+z_loss", "--size", "tiny",
            "--lr", "0.01", "--out", str(out), "--data", str(engine_bench.data_dir), "--threads", "1",
            "--no-progress", "--set", "train.steps=12", "--set", "train.probe_every=4", "--set", "train.eval_every=12",
            *extra]


@pytest.mark.slow
def test_two_processes_train_the_same_run_as_one(engine_bench, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, *cli(engine_bench, one)], check=True, env=env, capture_output=True)
    # Accelerate's multi-process launcher; on a machine without GPUs it runs CPU processes over gloo
    # (its --cpu flag launches a single process). CUDA is hidden so the test means the same anywhere.
    launched = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                               "--main_process_port", "29517", *cli(engine_bench, two)],
                              env={**env, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert a["tokens"] == b["tokens"] == 12 * 8 * 32  # the global batch, whatever the processes
    assert b["config"]["train"]["world_size"] == 2 and a["config"]["train"]["world_size"] == 1
    assert a["identity"] != b["identity"]  # the world size is part of the run's identity
    la, lb = read_csv(one / "losses.csv"), read_csv(two / "losses.csv")
    assert [float(r["loss"]) for r in la] == pytest.approx([float(r["loss"]) for r in lb], rel=1e-5)
    assert b["final_val_loss"] == pytest.approx(a["final_val_loss"], rel=1e-5)


def test_world_size_must_divide_the_batch(engine_bench):
    from stabench.config import ConfigError
    from stabench.runspec import resolve_run
    with pytest.raises(ConfigError, match="batch_size 8 cannot be split over 3"):
        resolve_run(engine_bench.benchmark, method="baseline", size="tiny", lr=1e-2, seed=0, world_size=3)


def test_ranks_share_one_global_batch():
    import numpy as np
    from stabench.data import train_batch
    tokens = np.arange(10_000, dtype=np.uint16)
    whole = train_batch(tokens, 5, 8, 16, seed=3)
    parts = [train_batch(tokens, 5, 8, 16, seed=3, rank=r, world_size=2) for r in (0, 1)]
    assert np.array_equal(np.concatenate(parts), whole)


@pytest.mark.slow
def test_compiled_run_records_every_probe_an_eager_run_records(engine_bench, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    for out, flag in ((eager, "false"), (compiled, "true")):
        done = subprocess.run([sys.executable, *cli(engine_bench, out, "--set", f"train.compile={flag}")], env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    he, hc = read_csv(eager / "history.csv"), read_csv(compiled / "history.csv")
    assert list(he[0]) == list(hc[0])  # the same columns: attention-logit capture works under compile
    assert [r["step"] for r in he] == [r["step"] for r in hc]
    for re_, rc in zip(he, hc):
        for column in re_:
            if column == "time" or re_[column] == "":
                assert (re_[column] == "") == (rc[column] == "") or column == "time"
                continue
            assert float(rc[column]) == pytest.approx(float(re_[column]), rel=1e-3, abs=1e-5), column
    me, mc = (json.loads((d / "metrics.json").read_text()) for d in (eager, compiled))
    assert mc["final_val_loss"] == pytest.approx(me["final_val_loss"], rel=1e-4)
