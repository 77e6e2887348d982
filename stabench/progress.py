"""Training progress: a tqdm bar in a terminal, one plain line per probe step in a log file.

Snakemake sends a job's stderr to its log; a bar redrawn there becomes hundreds of carriage
returns, so when stderr is not a terminal the trainer prints one line per probe step instead,
and ``library_bars`` turns off the bars of the libraries stabench calls (lm-eval, datasets,
huggingface_hub, any plain tqdm).
"""

from __future__ import annotations

import functools
import math
import os
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


_quiet = False


def library_bars(enabled: bool = True) -> bool:
    """Whether progress bars are shown: ``enabled`` and stderr a terminal. When not, the
    libraries' own bars are turned off in this process: tqdm's default becomes ``disable=True``
    (as TQDM_DISABLE=1 would at tqdm's import; a bar that passes ``disable=`` itself still
    decides, and stabench's lm-eval model passes its own setting), and datasets' and
    huggingface_hub's bars are disabled (their variables are set too, for an import to come and
    for child processes). Nothing is turned back on."""
    global _quiet
    if enabled and sys.stderr.isatty():
        return True
    if not _quiet:
        import tqdm.std

        tqdm.std.tqdm.__init__ = functools.partialmethod(tqdm.std.tqdm.__init__, disable=True)
        _quiet = True
    # read at import by datasets and huggingface_hub; once imported, their own switch
    os.environ.update(HF_DATASETS_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    return False
