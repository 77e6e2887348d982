"""Windows of tokens for training and validation.

Training batches are a pure function of ``(seed, step)``: offsets come from
``np.random.default_rng([seed, step, 0])``. Resuming at step k therefore
replays exactly the batches an uninterrupted run would have seen, with no
sampler state to checkpoint. With several processes, rank r takes rows
[r * B / W, (r + 1) * B / W) of that same global batch, so the ranks together train
exactly the batch one process would.
Validation uses fixed, evenly spaced, non-overlapping windows so every run of a
benchmark is scored on the very same tokens.
"""

from __future__ import annotations

import numpy as np

from .errors import DataError


def train_starts(
    n_tokens: int, step: int, batch_size: int, seq_len: int, seed: int, rank: int = 0, world_size: int = 1
) -> np.ndarray:
    """Offsets of this rank's ``batch_size / world_size`` training windows at ``step`` (int64)."""
    if not 0 <= rank < world_size or batch_size % world_size:
        raise ValueError(f"rank {rank} of world_size {world_size} with batch_size {batch_size}")
    width = seq_len + 1
    if n_tokens < width:
        raise DataError(
            f"train split has {n_tokens} tokens, fewer than seq_len + 1 = {width}; "
            "valid: a larger corpus or a shorter seq_len"
        )
    rng = np.random.default_rng([seed, step, 0])
    starts = rng.integers(0, n_tokens - width, size=batch_size, endpoint=True)
    share = batch_size // world_size
    return starts[rank * share:(rank + 1) * share]


def train_batch(
    tokens: np.ndarray, step: int, batch_size: int, seq_len: int, seed: int, rank: int = 0, world_size: int = 1
) -> np.ndarray:
    """Return this rank's int64 ``(batch_size / world_size, seq_len + 1)`` share of the global batch
    of windows at random offsets (inputs = [:, :-1], targets = [:, 1:])."""
    starts = train_starts(len(tokens), step, batch_size, seq_len, seed, rank, world_size)
    return _gather(tokens, starts, seq_len + 1)


def val_windows(tokens: np.ndarray, n_windows: int, seq_len: int) -> np.ndarray:
    """Return int64 ``(n, seq_len + 1)`` fixed windows, ``n = min(n_windows, how many fit)``."""
    width = seq_len + 1
    fit = len(tokens) // width
    if fit == 0:
        raise DataError(
            f"data.val_fraction: validation split has {len(tokens)} tokens, fewer than seq_len + 1 = {width}; "
            "valid: a larger val_fraction or corpus, or a shorter seq_len"
        )
    n = min(n_windows, fit)
    # Spacing (len - width) / (n - 1) >= width because n * width <= len, so windows never overlap.
    starts = np.linspace(0, len(tokens) - width, n).astype(np.int64)
    return _gather(tokens, starts, width)


def _gather(tokens: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """Vectorized window copy: one fancy-index read, also fast on a memmap."""
    idx = starts[:, None] + np.arange(width)[None, :]
    return np.asarray(tokens[idx], dtype=np.int64)
