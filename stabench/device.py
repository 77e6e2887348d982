"""The device a run trains on, its precision, and the Accelerate object that holds them.

``train.device: auto`` takes CUDA when there is a GPU, and ``train.precision: auto`` bf16
autocast there (float32 on a CPU). Accelerate keeps process-wide state, which is reset for
every ensemble so that several ensembles can train in one process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from .config import ConfigError


def resolve_device(config: dict) -> tuple[str, str]:
    """(device, precision): auto picks CUDA with bf16 autocast when there is a GPU."""
    train = config["train"]
    device = train["device"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is available; valid here: auto, cpu")
    precision = train["precision"]
    if precision == "auto":
        precision = "bf16" if device == "cuda" else "fp32"
    return device, precision


def make_accelerator(device: str, precision: str, trackers: list[str] = (), project_dir: Path | None = None) -> Accelerator:
    # Accelerate keeps process-wide state; reset it so several ensembles in one process work.
    AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(cpu=device == "cpu", mixed_precision="bf16" if precision == "bf16" else "no",
                       log_with=list(trackers) or None, project_dir=project_dir)


def device_name(device: str) -> str:
    if device == "cuda":
        return f"cuda ({torch.cuda.get_device_name()})"
    return f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc mallopt parameters (malloc.h)


def keep_host_memory() -> bool:
    """Serve large host allocations from the heap and keep freed memory, on glibc.

    A CPU step of a pack allocates tensors of 100 MB and more (the logits of every member);
    glibc maps each such allocation from the OS and unmaps it when freed, so every step
    page-faults them in again: a pack job of the default benchmark spent a third of its CPU
    time in the kernel. With mappings off and trimming at 2 GB, freed memory is reused (the
    process keeps its peak). Returns False where this is not glibc (nothing changes)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))
    except (OSError, AttributeError):
        return False
