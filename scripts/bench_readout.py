"""The fused readout + cross-entropy (stabench.readout) against the plain path, side by side.

    python scripts/bench_readout.py --threads 1 --rows 2048 --vocab 2048 --dims 32 64

Times forward + backward of one member's head and mean cross-entropy, alternating the two
implementations ``--repeats`` times (median reported), and checks that their gradients agree.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from stabench.readout import fused_cross_entropy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rows", type=int, default=2048, help="batch x sequence length")
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--dims", type=int, nargs="+", default=[32, 64])
    p.add_argument("--repeats", type=int, default=15)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    for d in a.dims:
        gen = torch.Generator().manual_seed(0)
        hidden = torch.randn(1, 1, a.rows, d, generator=gen).requires_grad_()
        weight = (torch.randn(1, a.vocab, d, generator=gen) / d ** 0.5).requires_grad_()
        targets = torch.randint(0, a.vocab, (1, 1, a.rows), generator=gen)

        def plain():
            F.cross_entropy(F.linear(hidden[0, 0], weight[0]), targets[0, 0]).backward()

        def fused():
            fused_cross_entropy(hidden, weight, targets).sum().backward()

        grads = {}
        for name, fn in (("plain", plain), ("fused", fused)):
            hidden.grad = weight.grad = None
            fn()
            grads[name] = (hidden.grad.clone(), weight.grad.clone())
        diff = max(float((x - y).abs().max()) for x, y in zip(grads["plain"], grads["fused"]))
        times = {"plain": [], "fused": []}
        for _ in range(a.repeats):
            for name, fn in (("plain", plain), ("fused", fused)):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        plain_ms, fused_ms = (1e3 * statistics.median(times[k]) for k in ("plain", "fused"))
        print(f"d={d} rows={a.rows} vocab={a.vocab} threads={a.threads}: plain {plain_ms:.1f} ms, "
              f"fused {fused_ms:.1f} ms ({plain_ms / fused_ms:.2f}x); max gradient difference {diff:.1e}")


if __name__ == "__main__":
    main()
