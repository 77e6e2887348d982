"""The GPU slot pool: exclusive across processes, released on death, distinct ports."""

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

import pytest

from stabench.cli import without_options
from stabench.gpu_pool import gpu_slots


def test_slots_are_exclusive_and_ports_distinct(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with gpu_slots(1, runs_per_gpu=2, n_gpus=2, lock_dir=tmp_path) as a, \
            gpu_slots(1, runs_per_gpu=2, n_gpus=2, lock_dir=tmp_path) as b:
        assert a.gpu_ids == b.gpu_ids == ["0"]  # two runs share GPU 0 (2 slots per GPU)
        assert a.port != b.port
        with gpu_slots(1, runs_per_gpu=2, n_gpus=2, lock_dir=tmp_path) as c:
            assert c.gpu_ids == ["1"]
        with pytest.raises(TimeoutError):  # a 2-GPU run needs whole free GPUs: GPU 0 is busy
            with gpu_slots(2, runs_per_gpu=2, n_gpus=2, lock_dir=tmp_path, timeout=0.1, poll_seconds=0.05):
                pass
    with gpu_slots(2, runs_per_gpu=2, n_gpus=2, lock_dir=tmp_path) as d:
        assert d.gpu_ids == ["0", "1"]


def test_visible_devices_name_the_locks(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    with gpu_slots(1, lock_dir=tmp_path) as a, gpu_slots(1, lock_dir=tmp_path) as b:
        assert {a.visible_devices, b.visible_devices} == {"3", "5"}


def _hold(lock_dir, ready):
    with gpu_slots(1, n_gpus=1, lock_dir=lock_dir):
        ready.set()
        time.sleep(60)


def test_a_killed_holder_releases_its_slot(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    ready = mp.Event()
    proc = mp.Process(target=_hold, args=(tmp_path, ready))
    proc.start()
    assert ready.wait(20)
    with pytest.raises(TimeoutError):
        with gpu_slots(1, n_gpus=1, lock_dir=tmp_path, timeout=0.2, poll_seconds=0.05):
            pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    with gpu_slots(1, n_gpus=1, lock_dir=tmp_path, timeout=5, poll_seconds=0.05) as a:
        assert a.gpu_ids == ["0"]


def test_gpu_options_are_stripped_before_relaunch():
    argv = ["train", "b.yaml", "--gpus", "2", "--method", "m", "--runs-per-gpu=3", "--lr", "0.1"]
    assert without_options(argv, ("--gpus", "--runs-per-gpu")) == ["train", "b.yaml", "--method", "m", "--lr", "0.1"]


def test_eval_waits_for_the_slot_a_training_run_holds(tmp_path, monkeypatch):
    """``stabench eval --gpus 1`` takes its GPU from the pool training uses: while a run holds
    the only slot it waits, and it evaluates on that GPU once the slot is free."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"method": "baseline", "size": "t16", "lr": 0.1, "seed": 0,
                                                  "diverged": True, "init_loss": 6.0, "final_val_loss": None}))
    out, locks = tmp_path / "eval.json", tmp_path / "locks"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    env = {**os.environ, "STABENCH_LOCK_DIR": str(locks)}
    command = [sys.executable, "-m", "stabench", "eval", "smoke", "--runs", str(run), "--out", str(out),
               "--gpus", "1", "--no-progress"]
    with gpu_slots(1, lock_dir=locks):  # a training run holds GPU 7
        proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        lines = iter(proc.stderr.readline, "")
        assert any("is taken; waiting" in line for line in lines)  # blocks until it waits (or exits)
        time.sleep(1)
        assert proc.poll() is None and not out.exists()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=60) == 0, stderr
    assert "evaluating on GPU 7" in stderr
    assert json.loads(out.read_text())["status"] == "diverged"
