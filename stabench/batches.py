"""Training batches on the device that trains, ready before the step that needs them.

A batch is a pure function of (seed, step) (``stabench.data.train_starts``: the offsets of its
windows). On a GPU the host would otherwise gather the windows, pin them and copy them every
step, and the device would wait for that copy. Here, when the train tokens fit a sixteenth of
the device's free memory, they are copied to the device once and the offsets of every step
are drawn up front: a step's batch is then one gather on the device, queued like any kernel,
and the host never waits. Otherwise (and on a CPU, where the device is the host) the windows
are gathered from the memory-mapped array as before. Both give the same tokens (a test).

Members that share a seed share their batch: the result is (S, B / world, T + 1) with S = 1
when every member has one seed, else S = K in member order.
"""

from __future__ import annotations

import numpy as np
import torch

from .data import train_batch, train_starts

DEVICE_TOKENS_FRACTION = 16  # keep the train tokens on a GPU when they take at most 1/16 of its free memory


class Batches:
    def __init__(self, tokens: np.ndarray, train_cfg: dict, seeds: list[int], rank: int, world: int,
                 device: torch.device, on_device: bool | None = None):
        self.tokens, self.device, self.rank, self.world = tokens, device, rank, world
        self.batch_size, self.seq_len, self.steps = train_cfg["batch_size"], train_cfg["seq_len"], train_cfg["steps"]
        if on_device is None:
            on_device = device.type == "cuda" and _fits(tokens, device)
        self.on_device = on_device
        self.unique = sorted(set(seeds))
        if on_device:
            self.device_tokens = torch.from_numpy(np.asarray(tokens, dtype=np.int32)).to(device)
            table = np.stack([np.stack([self._starts(step, seed) for step in range(self.steps + 1)])
                              for seed in self.unique])                       # (U, steps + 1, B / world)
            self.starts = torch.from_numpy(table).to(device)
            self.offsets = torch.arange(self.seq_len + 1, device=device)
        self.keep(seeds)

    def _starts(self, step: int, seed: int) -> np.ndarray:
        return train_starts(len(self.tokens), step, self.batch_size, self.seq_len, seed, self.rank, self.world)

    def keep(self, seeds: list[int]) -> None:
        """The seeds of the members now training, in member order (after some left)."""
        self.seeds = list(seeds)
        self.shared = len(set(seeds)) == 1
        if self.on_device:
            rows = [self.unique.index(s) for s in (seeds[:1] if self.shared else seeds)]
            self.rows = torch.tensor(rows, device=self.device)

    def __call__(self, step: int) -> torch.Tensor:
        """(S, B / world, T + 1) int64 token windows of this rank at ``step``."""
        if self.on_device:
            starts = self.starts[self.rows, step]                              # (S, B / world)
            return self.device_tokens[starts[..., None] + self.offsets].long()
        host = {s: train_batch(self.tokens, step, self.batch_size, self.seq_len, s, self.rank, self.world)
                for s in sorted(set(self.seeds))}
        stacked = host[self.seeds[0]][None] if self.shared else np.stack([host[s] for s in self.seeds])
        batch = torch.from_numpy(stacked)
        if self.device.type == "cuda":
            batch = batch.pin_memory()  # so the copy below is asynchronous
        return batch.to(self.device, non_blocking=True)


def _fits(tokens: np.ndarray, device: torch.device) -> bool:
    free, _ = torch.cuda.mem_get_info(device)
    return len(tokens) * 4 <= free // DEVICE_TOKENS_FRACTION
