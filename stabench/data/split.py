"""Split documents into train and validation sets.

The split is by document, not by token offset, so the validation loss and the
zero-shot tasks built from held-out documents measure text the model has never
seen. Identical texts are removed first: otherwise a duplicated article could
sit on both sides and leak.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import DataError, config_error


def split_documents(docs: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Return ``(train_docs, val_docs)``: deduplicated, disjoint, seeded, each in corpus order.

    At least one document goes to validation (and at least one to training), so a
    tiny corpus still gives a usable validation set.
    """
    if not 0.0 < val_fraction < 1.0:
        raise config_error("val_fraction", val_fraction, "must be strictly between 0 and 1", "e.g. 0.05")
    unique = list(dict.fromkeys(docs))  # keeps first occurrence, so order stays deterministic
    if len(unique) < 2:
        raise DataError(
            f"data.source: only {len(unique)} distinct document(s), too few to split into train and val; "
            "valid: a corpus with at least 2 distinct documents"
        )
    n_val = min(max(1, round(len(unique) * val_fraction)), len(unique) - 1)
    order = np.random.default_rng(seed).permutation(len(unique))
    val_idx = np.sort(order[:n_val])
    train_idx = np.sort(order[n_val:])
    return [unique[i] for i in train_idx], [unique[i] for i in val_idx]
