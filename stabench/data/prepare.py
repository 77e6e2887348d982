"""Build and load a prepared data folder.

``prepare_data`` is the body of the Snakemake data rule: corpus -> split ->
tokenizer -> token arrays, written once per benchmark. Layout of the folder::

    tokenizer.json   the tokenizer (trained or copied pretrained)
    train.npy        1-D packed token ids of the train documents
    val.npy          1-D packed token ids of the validation documents
    val_docs.jsonl   held-out documents {"id", "text"}, for zero-shot tasks
    manifest.json    counts, hashes, config; written LAST

Every file is written atomically and the manifest last, so a folder with a
manifest is complete; a folder without one is garbage from an interrupted run.
The manifest holds each token array's size in bytes and a SHA-256 of its content (of all
of it up to FULL_HASH_BYTES, else of SAMPLE_BLOCKS evenly spaced blocks), checked whenever
the folder is opened: a truncated or overwritten array is named, never trained on, and
preparing again repairs it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from ..io import atomic_open, write_text
from ..progress import library_bars
from .corpus import load_documents
from .errors import DataError
from .split import split_documents
from .tokenizer import eos_id, load_pretrained, train_bpe
from .tokens import encode_documents, token_dtype

MANIFEST = "manifest.json"
FILES = ("tokenizer.json", "train.npy", "val.npy", "val_docs.jsonl")
ARRAYS = ("train.npy", "val.npy")

# The embedded corpus's arrays are a few MB (a full hash takes milliseconds); a 10B-token
# array is 20 GB, of which 256 blocks of 64 KiB (16 MiB, the header included) are hashed.
FULL_HASH_BYTES = 256 << 20
SAMPLE_BLOCKS, BLOCK_BYTES = 256, 64 << 10


def array_checksum(path: str | os.PathLike) -> dict:
    """{"bytes": size, "sha256": hash, "sampled": bool} of a token array file: a hash of all of
    it up to FULL_HASH_BYTES, else of SAMPLE_BLOCKS blocks of BLOCK_BYTES evenly spaced from
    its first byte to its last (a fixed sample: the same offsets for the same size)."""
    size = os.path.getsize(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= FULL_HASH_BYTES:
            for chunk in iter(lambda: f.read(8 << 20), b""):
                h.update(chunk)
        else:
            for offset in np.linspace(0, size - BLOCK_BYTES, SAMPLE_BLOCKS).astype(np.int64):
                f.seek(int(offset))
                h.update(f.read(BLOCK_BYTES))
    return {"bytes": size, "sha256": h.hexdigest(), "sampled": size > FULL_HASH_BYTES}


def checksum_damage(path: Path, expected: Mapping[str, Any]) -> str | None:
    """Why a token array does not match its manifest entry (size, then content), or None."""
    size = path.stat().st_size
    if size != expected["bytes"]:
        return (f"{path.name} is {size:,} bytes, the manifest says {expected['bytes']:,} "
                f"({'truncated' if size < expected['bytes'] else 'longer'})")
    if array_checksum(path)["sha256"] != expected["sha256"]:
        return f"{path.name} differs from the checksum in the manifest (same size, other bytes)"
    return None


def prepare_data(data_cfg: Mapping[str, Any], out_dir: str | os.PathLike, progress: bool = True) -> dict:
    """Prepare ``out_dir`` for ``data_cfg`` and return its manifest; reuse it if already done."""
    out = Path(out_dir)
    cached = _reusable_manifest(out, data_cfg)
    if cached is not None:
        _check_vocab(data_cfg, cached["vocab_size"])
        return cached
    library_bars(progress)  # datasets' bars only in a terminal: a log file gets no carriage returns
    documents = load_documents(data_cfg)  # before any folder exists: a bad source leaves nothing behind
    out.mkdir(parents=True, exist_ok=True)
    train_docs, val_docs = split_documents(
        documents, float(data_cfg.get("val_fraction", 0.05)), int(data_cfg.get("split_seed", 0))
    )
    tok = _build_tokenizer(data_cfg, train_docs)
    tok_json = tok.to_str()
    write_text(out / "tokenizer.json", tok_json)
    eos, vocab = eos_id(tok), tok.get_vocab_size()
    _check_vocab(data_cfg, vocab)
    dtype = token_dtype(vocab)
    train = encode_documents(tok, train_docs, eos, dtype, progress=progress, desc="tokenize train")
    val = encode_documents(tok, val_docs, eos, dtype, progress=progress, desc="tokenize val")
    _save_npy(out / "train.npy", train)
    _save_npy(out / "val.npy", val)
    checksums = {name: array_checksum(out / name) for name in ARRAYS}
    _save_val_docs(out / "val_docs.jsonl", val_docs)
    manifest = {
        "source": data_cfg["source"],
        "data": _jsonable(data_cfg),
        "n_documents": {"train": len(train_docs), "val": len(val_docs)},
        "tokens": {"train": int(train.size), "val": int(val.size)},
        "vocab_size": vocab,
        "eos_id": eos,
        "dtype": dtype.name,
        "tokenizer_sha256": hashlib.sha256(tok_json.encode("utf-8")).hexdigest(),
        "train_docs_sha256": docs_sha256(train_docs),
        "val_docs_sha256": docs_sha256(val_docs),
        "checksums": checksums,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if _same_but_created(_read_manifest(out), manifest):
        # a damaged folder prepared again to the same bytes: the manifest (and its date, which
        # Snakemake compares with the runs' outputs) stays, so no finished run is retrained
        return _read_manifest(out)
    write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def _read_manifest(out: Path) -> dict | None:
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _same_but_created(old: dict | None, new: dict) -> bool:
    return old is not None and {k: v for k, v in old.items() if k != "created"} == \
        {k: v for k, v in new.items() if k != "created"}


@dataclass(frozen=True)
class TokenData:
    """A prepared data folder, opened read-only with memory-mapped token arrays."""

    train: np.ndarray
    val: np.ndarray
    manifest: dict
    vocab_size: int
    eos_id: int
    tokenizer_path: Path

    def tokenizer(self) -> Tokenizer:
        """Load the tokenizer that produced these ids (for decoding and zero-shot tasks)."""
        return Tokenizer.from_file(str(self.tokenizer_path))


def prepared_damage(out_dir: str | os.PathLike, complete: bool = True) -> str | None:
    """What is wrong with a prepared folder that has a manifest (a file missing, unreadable, not
    the size the manifest says, or a token array that fails its checksum), or None. Cheap: the
    token arrays are memory-mapped and hashed (all of a small one, a fixed sample of a large
    one). ``complete=False`` checks only what training reads (manifest and token arrays)."""
    out = Path(out_dir)
    missing = [name for name in FILES if complete and not (out / name).is_file()]
    if missing:
        return f"{', '.join(missing)} missing"
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        counts = manifest["tokens"] if complete else manifest.get("tokens")  # (stabench speed writes none)
        checksums = manifest.get("checksums") or {}  # (folders prepared before checksums have none)
        for name in ARRAYS:
            if not (out / name).is_file():
                return f"{name} missing"
            if name in checksums and (problem := checksum_damage(out / name, checksums[name])):
                return problem
        for split in ("train", "val"):
            tokens = np.load(out / f"{split}.npy", mmap_mode="r")
            if counts is not None and tokens.size != counts[split]:
                return f"{split}.npy holds {tokens.size} tokens, the manifest says {counts[split]}"
        if complete:
            json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{type(exc).__name__}: {str(exc)[:120]}"
    return None


def load_data(out_dir: str | os.PathLike) -> TokenData:
    """Open a folder written by :func:`prepare_data`; memory-mapped, so every process shares pages."""
    out = Path(out_dir)
    if not (out / MANIFEST).is_file():
        raise DataError(
            f"data folder {str(out)!r}: no {MANIFEST}; valid: a folder completed by prepare_data (run the data rule)"
        )
    problem = prepared_damage(out, complete=False)
    if problem:
        raise DataError(f"data folder {str(out)!r} is damaged ({problem}); run snakemake or stabench prepare "
                        "again, which prepares it anew")
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    return TokenData(
        train=np.load(out / "train.npy", mmap_mode="r"),
        val=np.load(out / "val.npy", mmap_mode="r"),
        manifest=manifest,
        vocab_size=int(manifest["vocab_size"]),
        eos_id=int(manifest["eos_id"]),
        tokenizer_path=out / "tokenizer.json",
    )


def docs_sha256(docs: Iterable[str]) -> str:
    """Order-independent fingerprint of a document set (sorted texts, NUL-separated)."""
    h = hashlib.sha256()
    for text in sorted(docs):
        h.update(text.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def _build_tokenizer(data_cfg: Mapping[str, Any], train_docs: list[str]) -> Tokenizer:
    """Train BPE on the train split (``tokenizer: bpe``), else load the named pretrained one."""
    name = str(data_cfg.get("tokenizer", "bpe"))
    if name == "bpe":
        return train_bpe(train_docs, int(data_cfg.get("vocab_size", 2048)))
    return load_pretrained(name)


def check_prepared_for(data_cfg: Mapping[str, Any], out_dir: str | os.PathLike) -> None:
    """Refuse a folder that holds data prepared from other settings (preparing would replace it)."""
    path = Path(out_dir) / MANIFEST
    try:
        prepared = json.loads(path.read_text(encoding="utf-8"))["data"]
        prepared.items()
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return  # nothing prepared there, or a damaged folder that preparing repairs
    if prepared != _jsonable(data_cfg):
        ours = _jsonable(data_cfg)
        changed = "; ".join(f"data.{k}: {prepared.get(k)!r} there, {ours.get(k)!r} here"
                            for k in sorted(set(prepared) | set(ours)) if prepared.get(k) != ours.get(k))
        raise DataError(f"data folder {str(out_dir)!r} holds data prepared with other settings ({changed}); "
                        "give another --data folder, or run stabench prepare to replace it")


def _check_vocab(data_cfg: Mapping[str, Any], vocab: int) -> None:
    """A trained BPE stops merging when the corpus has no pair left: a vocab_size above what
    the corpus yields would silently train a smaller model than the benchmark says."""
    asked = int(data_cfg.get("vocab_size", 2048))
    if str(data_cfg.get("tokenizer", "bpe")) == "bpe" and vocab < asked:
        raise DataError(f"data.vocab_size {asked}: byte-level BPE on this train split yields only {vocab} "
                        f"tokens; valid: at most {vocab} (or a larger corpus)")


def _reusable_manifest(out: Path, data_cfg: Mapping[str, Any]) -> dict | None:
    """The existing manifest if it was made from the same config and all files are present."""
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    complete = prepared_damage(out) is None
    return manifest if complete and manifest.get("data") == _jsonable(data_cfg) else None


def _jsonable(data_cfg: Mapping[str, Any]) -> dict:
    """The config as it reads back from JSON, so a fresh dict compares equal to a stored one."""
    return json.loads(json.dumps(dict(data_cfg), sort_keys=True))


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_open(path, "wb") as f:
        np.save(f, arr)


def _save_val_docs(path: Path, docs: list[str]) -> None:
    with atomic_open(path, "w") as f:
        for i, text in enumerate(docs):
            f.write(json.dumps({"id": i, "text": text}, ensure_ascii=False) + "\n")
