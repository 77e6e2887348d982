"""Tokenizers: a byte-level BPE trained on the train split, or a pretrained one.

Training our own small vocabulary keeps the embedding table small relative to
the tiny models a stability sweep trains, and training it on the train split
only keeps validation text unseen. Byte-level BPE never produces unknown
tokens, so any text round-trips.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .. import offline
from .errors import DataError, config_error

EOS_TOKEN = "<|endoftext|>"
# End-of-document tokens of common pretrained tokenizers, tried in order.
_EOS_CANDIDATES = (EOS_TOKEN, "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>")


def train_bpe(train_docs: Sequence[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE with ``<|endoftext|>`` as its only special token (id 0)."""
    min_vocab = len(pre_tokenizers.ByteLevel.alphabet()) + 1
    if vocab_size < min_vocab:
        raise config_error("vocab_size", vocab_size, "too small for byte-level BPE", f">= {min_vocab}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,  # the bar would pollute Snakemake logs; prepare_data shows its own
    )
    tok.train_from_iterator(train_docs, trainer=trainer, length=len(train_docs))
    return tok


VALID_TOKENIZERS = "'bpe', a path to a tokenizer.json file, or a hub tokenizer name (online)"
_HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?")


def looks_like_path(value: str) -> bool:
    """A value a user means as a file: it ends in .json, starts like a path (/ . ~), or is not
    a hub name ('gpt2', 'org/name')."""
    return value.endswith(".json") or value.startswith(("/", ".", "~")) or not _HUB_NAME.fullmatch(value)


def check_tokenizer_value(value: str) -> None:
    """A tokenizer value that names a missing file is an error at once, without asking the hub
    (which would retry for half a minute before giving up)."""
    if value == "bpe" or not looks_like_path(value):
        return
    path = Path(value).expanduser()
    if not (path.is_file() or (path / "tokenizer.json").is_file()):
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        raise config_error("tokenizer", value, f"no such file{where}", VALID_TOKENIZERS)


def load_pretrained(name_or_path: str) -> Tokenizer:
    """Load a ``tokenizer.json`` file, or a hub tokenizer by name (needs network, or the local
    cache: with the hub unreachable it is looked for there once, not retried for half a minute)."""
    check_tokenizer_value(name_or_path)
    path = Path(name_or_path).expanduser()
    hub_up = True
    try:
        if path.is_dir() and (path / "tokenizer.json").is_file():
            return Tokenizer.from_file(str(path / "tokenizer.json"))
        if path.is_file():
            return Tokenizer.from_file(str(path))
        hub_up = offline.hub_or_cache()
        return Tokenizer.from_pretrained(name_or_path)
    except Exception as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if not hub_up:
            msg = "the Hugging Face hub is unreachable (no network, or HF_HUB_OFFLINE set) and it is not in the local cache"
        raise config_error("tokenizer", name_or_path, f"cannot load tokenizer ({msg})", VALID_TOKENIZERS) from None


def eos_id(tok: Tokenizer) -> int:
    """Id of the end-of-document token that separates packed documents."""
    for token in _EOS_CANDIDATES:
        idx = tok.token_to_id(token)
        if idx is not None:
            return idx
    raise DataError(
        "data.tokenizer: tokenizer has no end-of-document token; valid: a tokenizer defining one of "
        + ", ".join(repr(t) for t in _EOS_CANDIDATES)
    )
