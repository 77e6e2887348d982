"""The GPU slot pool: exclusive across processes, released on death, distinct ports."""

import multiprocessing as mp
import os
import signal
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
