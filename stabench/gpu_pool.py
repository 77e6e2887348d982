"""A lock-file pool of GPU slots, so concurrent Snakemake jobs each get their own GPU.

Snakemake's ``resources: gpu_slots=...`` with ``--resources gpu_slots=N`` bounds how many
train jobs run at once, but it does not say *which* GPU a job should use. Each job therefore
takes free slots here: slot j of GPU g is the file ``gpu<g>.slot<j>.lock`` held with an
exclusive ``fcntl.flock``. The kernel drops the lock when the process dies (even on SIGKILL),
so a crashed job never leaks a GPU. ``runs_per_gpu`` > 1 lets several small runs share one
GPU; a run that needs n GPUs takes every slot of n GPUs.

GPUs are named by their ids in ``CUDA_VISIBLE_DEVICES`` when it is set (as SLURM does), so two
jobs on one node with different visible GPUs never collide. The slot index also gives each
multi-process run its own ``main_process_port``.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

BASE_PORT = 29500


@dataclass
class Allocation:
    gpu_ids: list[str]      # values for CUDA_VISIBLE_DEVICES
    first_slot: int         # global slot index of the first held slot
    port: int               # a main_process_port no concurrent run in this pool uses

    @property
    def visible_devices(self) -> str:
        return ",".join(self.gpu_ids)


def visible_gpu_ids(n_gpus: int | None = None) -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env:
        return [g.strip() for g in env.split(",") if g.strip()]
    if n_gpus is None:
        import torch

        n_gpus = torch.cuda.device_count()
    return [str(i) for i in range(n_gpus)]


def default_lock_dir() -> Path:
    return Path(os.environ.get("STABENCH_LOCK_DIR", "/tmp/stabench-gpu-locks"))


def _try_lock(path: Path):
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return handle
    except BlockingIOError:
        handle.close()
        return None


def _try_allocate(gpu_ids, gpus_needed, runs_per_gpu, lock_dir):
    """Hold slots or return None. One GPU: any free slot; several: whole free GPUs."""
    slots_needed = 1 if gpus_needed == 1 else runs_per_gpu
    held, chosen, first = [], [], None
    for g_index, gpu in enumerate(gpu_ids):
        got = []
        for slot in range(runs_per_gpu):
            handle = _try_lock(lock_dir / f"gpu{gpu}.slot{slot}.lock")
            if handle:
                got.append((handle, g_index * runs_per_gpu + slot))
                if len(got) == slots_needed:
                    break
        if len(got) == slots_needed:
            held += [h for h, _ in got]
            chosen.append(gpu)
            first = got[0][1] if first is None else first
            if len(chosen) == gpus_needed:
                return held, Allocation(chosen, first, BASE_PORT + first)
        else:
            for h, _ in got:
                h.close()
    for h in held:
        h.close()
    return None


@contextmanager
def gpu_slots(gpus_needed: int = 1, runs_per_gpu: int = 1, *, n_gpus: int | None = None,
              lock_dir: Path | None = None, poll_seconds: float = 2.0,
              timeout: float | None = None) -> Iterator[Allocation]:
    """Wait for and hold slots of ``gpus_needed`` GPUs; release them on exit."""
    gpu_ids = visible_gpu_ids(n_gpus)
    if gpus_needed > len(gpu_ids):
        raise RuntimeError(f"a run needs {gpus_needed} GPUs but only {len(gpu_ids)} are visible")
    lock_dir = lock_dir or default_lock_dir()
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = None if timeout is None else time.monotonic() + timeout
    waited = False
    while True:
        result = _try_allocate(gpu_ids, gpus_needed, runs_per_gpu, lock_dir)
        if result:
            break
        if not waited:  # say once why the job sits idle
            print(f"stabench: every GPU slot in {lock_dir} is taken; waiting for one", file=sys.stderr, flush=True)
            waited = True
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"no free GPU slot in {lock_dir} after {timeout} s")
        time.sleep(poll_seconds)
    handles, allocation = result
    try:
        yield allocation
    finally:
        for h in handles:
            h.close()
