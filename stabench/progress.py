"""Training progress: a tqdm bar in a terminal, one plain line per probe step in a log file.

Snakemake sends a job's stderr to its log; a bar redrawn there becomes hundreds of carriage
returns, so when stderr is not a terminal the trainer prints one line per probe step instead.
"""

from __future__ import annotations

import math
import sys
import time

from tqdm.auto import tqdm


class Progress:
    def __init__(self, total: int, initial: int, title: str, enabled: bool = True):
        self.total, self.title, self.enabled = total, title, enabled
        self.interactive = enabled and sys.stderr.isatty()
        self.start = time.perf_counter()
        self.bar = tqdm(total=total, initial=initial, mininterval=2.0, file=sys.stderr, desc=title,
                        unit="step") if self.interactive else None
        if enabled and not self.interactive:
            print(f"{title}: step {initial}/{total}", file=sys.stderr, flush=True)

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def probe(self, step: int, losses: list[float]) -> None:
        text = "/".join("nan" if not math.isfinite(x) else f"{x:.3f}" for x in losses)
        if self.bar is not None:
            self.bar.set_postfix(loss=text, refresh=False)
        elif self.enabled:
            print(f"step {step}/{self.total} loss {text} ({time.perf_counter() - self.start:.1f} s)",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
