"""Encode documents into one packed 1-D token array.

Training reads random windows from a flat array (see ``windows.py``), so
documents are concatenated, each followed by the end-of-document id, which
tells the model where one text stops and the next begins.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer
from tqdm.auto import tqdm

_CHUNK = 1024  # documents per encode_batch call: big enough for Rust threads, small enough for a live bar


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype holding every id: uint16 halves disk and page cache for small vocabs."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def encode_documents(
    tok: Tokenizer, docs: Sequence[str], eos: int, dtype: np.dtype, *, progress: bool = False, desc: str = "tokenize"
) -> np.ndarray:
    """Return ``concat(ids(doc) + [eos] for doc in docs)`` as a ``dtype`` array. ``progress``: a
    bar in a terminal; in a log file (stderr not a terminal) one line when done."""
    parts: list[np.ndarray] = []
    eos_arr = np.array([eos], dtype=dtype)
    began, live = time.perf_counter(), progress and sys.stderr.isatty()
    with tqdm(total=len(docs), desc=desc, unit="doc", disable=not live) as bar:
        for start in range(0, len(docs), _CHUNK):
            chunk = docs[start:start + _CHUNK]
            for enc in tok.encode_batch(list(chunk), add_special_tokens=False):
                parts.append(np.asarray(enc.ids, dtype=dtype))
                parts.append(eos_arr)
            bar.update(len(chunk))
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    if progress and not live:
        print(f"{desc}: {len(docs)} documents, {tokens.size} tokens ({time.perf_counter() - began:.1f} s)",
              file=sys.stderr, flush=True)
    return tokens
