"""Ranks that respect the uncertainty, and a method that never learned is never first.

Methods are ordered by group, then by the point estimate (lower is better), then by a
tie-break; within a group a method whose paired difference to the method ranked just above
has an interval containing 0 shares that method's rank (competition ranking: 1, 1, 3). With
one seed there are no intervals and no shared ranks. Groups, in order:

    LEARNED      learned at every size it has, scored at every size
    INCOMPLETE   learned, but some sizes are missing (its mean covers fewer sizes)
    NEVER        never learned at some size: its best loss there is not below l0 by the
                 benchmark's margin (LR sensitivity 0 would otherwise rank it first); these
                 share one rank after all others, since there is nothing to order them by
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

LEARNED, INCOMPLETE, NEVER = 0, 1, 2
GROUP_NAMES = {LEARNED: "", INCOMPLETE: "incomplete", NEVER: "never learned"}


def never_learned(best_loss: float | np.ndarray, l0: float, margin: float):
    """True where the best loss is not below l0 by ``margin`` (or is missing)."""
    best = np.asarray(best_loss, dtype=float)
    return ~(best < l0 - margin)


def ordered(keys: Sequence[tuple]) -> list[int]:
    """Positions sorted by key tuples (NaN sorts last within its place)."""
    def clean(k):
        return tuple((1, 0.0) if isinstance(v, float) and np.isnan(v) else (0, v) for v in k)
    return sorted(range(len(keys)), key=lambda i: clean(keys[i]))


def competition_ranks(groups: Sequence[int], diff_interval: Callable[[int, int], tuple[float, float]]
                      ) -> tuple[list[int], list[bool]]:
    """Ranks for items already in order. ``diff_interval(i, j)`` is the interval of the paired
    difference item i minus item j (j just above i). Returns (ranks, shared)."""
    ranks: list[int] = []
    shared = [False] * len(groups)
    for i, group in enumerate(groups):
        same = i > 0 and groups[i - 1] == group
        if same and group == NEVER:
            tie = True
        elif same:
            lo, hi = diff_interval(i, i - 1)
            tie = bool(np.isfinite(lo) and np.isfinite(hi) and lo <= 0 <= hi)
        else:
            tie = False
        ranks.append(ranks[-1] if tie else i + 1)
        if tie:
            shared[i] = shared[i - 1] = True
    return ranks, shared
