"""Batches gathered on the device (the GPU path: tokens copied once, offsets drawn up front)
equal the host path's windows, for shared and per-member seeds and after members leave."""

import numpy as np
import torch

from stabench.batches import Batches
from stabench.data import train_batch

TRAIN = {"batch_size": 4, "seq_len": 8, "steps": 5}


def test_device_gather_equals_the_host_windows():
    tokens = np.random.default_rng(0).integers(0, 500, 10_000).astype(np.uint16)
    for seeds in ([3, 3, 3], [1, 2, 1]):
        host = Batches(tokens, TRAIN, seeds, 0, 1, torch.device("cpu"), on_device=False)
        device = Batches(tokens, TRAIN, seeds, 0, 1, torch.device("cpu"), on_device=True)
        for step in range(1, TRAIN["steps"] + 1):
            assert torch.equal(host(step), device(step))
        assert host(2).shape == ((1 if len(set(seeds)) == 1 else 3), 4, 9)
        want = np.stack([train_batch(tokens, 3, 4, 8, s) for s in seeds[1:]])
        for b in (host, device):
            b.keep(seeds[1:])  # the first member left
            got = b(3)
            assert np.array_equal(got.expand(len(seeds) - 1, -1, -1).numpy(), want)
