"""Loss spikes: steps where the training loss jumps well above its recent running mean.

Li, Zhang and He (2022) and Wortsman et al. (2023) read instability from loss spikes. The
rule here, applied to the training loss of every optimizer step (``losses.csv`` of a run;
``window`` counts steps):

- a loss is a spike when it is above ``factor`` x the mean of the (up to) ``window`` finite
  losses before it;
- a non-finite loss (nan, inf) is always a spike;
- the first finite loss has nothing before it and is never a spike; early on, the mean is
  over the fewer finite losses there are;
- the reference mean is over the previous finite losses whether or not they were spikes
  themselves (a plain running mean: a long plateau after a jump stops counting as spikes
  once the window has filled with it), and non-finite losses never enter it.

Pure functions of a sequence, so the same count comes from a finished run's history or from
a list in a test.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Sequence


def spike_steps(losses: Sequence[float], window: int, factor: float,
                steps: Sequence[Any] | None = None) -> list:
    """The steps (``steps[i]``; the index ``i`` when ``steps`` is None) whose loss is a spike."""
    if window < 1:
        raise ValueError(f"spike window must be >= 1, got {window}")
    if factor <= 0:
        raise ValueError(f"spike factor must be > 0, got {factor}")
    if steps is not None and len(steps) != len(losses):
        raise ValueError(f"{len(steps)} steps for {len(losses)} losses")
    recent: deque[float] = deque(maxlen=window)
    found = []
    for i, loss in enumerate(losses):
        loss = float(loss)
        if not math.isfinite(loss):
            found.append(i)
            continue
        if recent and loss > factor * (sum(recent) / len(recent)):
            found.append(i)
        recent.append(loss)
    return found if steps is None else [steps[i] for i in found]


def count_loss_spikes(losses: Sequence[float], window: int, factor: float) -> int:
    """How many losses are spikes (see the module docstring for the rule)."""
    return len(spike_steps(losses, window, factor))


def loss_spikes(steps: Sequence[int], losses: Sequence[float], probes_config: dict) -> dict[str, Any]:
    """``{'loss_spikes': n, 'loss_spike_steps': [...]}`` from the per-step training losses,
    using ``probes.spike_window`` and ``probes.spike_factor`` of the run config."""
    found = spike_steps(losses, int(probes_config["spike_window"]), float(probes_config["spike_factor"]),
                        steps=list(steps))
    return {"loss_spikes": len(found), "loss_spike_steps": found}
