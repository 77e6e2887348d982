"""Data layer: corpus -> document split -> tokenizer -> packed token arrays -> windows.

Public API::

    load_documents(data_cfg) -> list[str]
    split_documents(docs, val_fraction, seed) -> (train_docs, val_docs)
    prepare_data(data_cfg, out_dir, progress=True) -> manifest dict
    load_data(out_dir) -> TokenData
    train_batch(tokens, step, batch_size, seq_len, seed, rank=0, world_size=1) -> int64 array
    train_starts(n_tokens, step, batch_size, seq_len, seed, rank=0, world_size=1) -> its offsets
    val_windows(tokens, n_windows, seq_len) -> int64 array

Every user-facing failure is a :class:`DataError` (a ``ValueError``) with a
one-line message naming the offending ``data.*`` key.
"""

from .corpus import load_documents
from .errors import DataError
from .prepare import TokenData, load_data, prepare_data
from .split import split_documents
from .windows import train_batch, train_starts, val_windows

__all__ = [
    "DataError",
    "TokenData",
    "load_data",
    "load_documents",
    "prepare_data",
    "split_documents",
    "train_batch",
    "train_starts",
    "val_windows",
]
