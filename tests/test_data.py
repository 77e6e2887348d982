"""Tests of the data layer: corpus sources, split, tokenizer, prepared folder, windows.

All offline and small (vocab ~300, a few dozen documents) so the file runs in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stabench.data import (
    DataError,
    load_data,
    load_documents,
    prepare_data,
    split_documents,
    train_batch,
    val_windows,
)
from stabench.data.tokenizer import eos_id, train_bpe

WORDS = "the quick brown fox jumps over lazy dog stability loss learning rate model training".split()


def make_docs(n: int, prefix: str = "doc") -> list[str]:
    """Distinct, deterministic pseudo-English documents."""
    rng = np.random.default_rng(len(prefix) + n)
    return [f"{prefix} {i}: " + " ".join(rng.choice(WORDS, size=40)) + "." for i in range(n)]


def cfg(source: str, **over) -> dict:
    base = {
        "source": source, "text_field": "text", "val_fraction": 0.2, "split_seed": 0,
        "max_documents": None, "tokenizer": "bpe", "vocab_size": 300, "hf_split": "train",
    }
    return {**base, **over}


@pytest.fixture
def mixed_files(tmp_path: Path) -> tuple[Path, list[str]]:
    """A folder with .txt (one doc per file), .jsonl and .parquet files; returns (folder, all docs)."""
    root = tmp_path / "corpus"
    (root / "txt").mkdir(parents=True)
    txt_docs, jsonl_docs, pq_docs = make_docs(5, "txt"), make_docs(8, "jsonl"), make_docs(7, "parquet")
    for i, doc in enumerate(txt_docs):
        (root / "txt" / f"{i}.txt").write_text(doc + "\nsecond line\n", encoding="utf-8")
    with open(root / "a.jsonl", "w", encoding="utf-8") as f:
        for doc in jsonl_docs:
            f.write(json.dumps({"text": doc, "other": 1}) + "\n")
    pd.DataFrame({"text": pq_docs}).to_parquet(root / "b.parquet")
    return root, [d + "\nsecond line" for d in txt_docs] + jsonl_docs + pq_docs


def check_prepared(out: Path, manifest: dict) -> None:
    """Counts agree, eos separators == documents, and ids decode back to the documents."""
    data = load_data(out)
    tok = data.tokenizer()
    val_docs = [json.loads(line)["text"] for line in (out / "val_docs.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(val_docs) == manifest["n_documents"]["val"]
    for split, arr in (("train", data.train), ("val", data.val)):
        assert arr.dtype == np.uint16 and arr.ndim == 1
        assert arr.size == manifest["tokens"][split]
        assert int((arr == data.eos_id).sum()) == manifest["n_documents"][split]
        assert arr[-1] == data.eos_id
    first = int(np.argmax(data.val == data.eos_id))
    assert val_docs[0] in tok.decode(data.val[:first].tolist())
    assert manifest["vocab_size"] == tok.get_vocab_size() == data.vocab_size


# --- split ---------------------------------------------------------------------------------

def test_split_disjoint_deterministic_and_seeded() -> None:
    docs = make_docs(50) + make_docs(50)[:10]  # 10 exact duplicates
    train, val = split_documents(docs, 0.2, seed=0)
    assert not set(train) & set(val)
    assert len(train) + len(val) == 50 and len(val) == 10
    assert split_documents(docs, 0.2, seed=0) == (train, val)
    assert split_documents(docs, 0.2, seed=1)[1] != val


def test_split_keeps_at_least_one_val_doc() -> None:
    train, val = split_documents(make_docs(3), 0.01, seed=0)
    assert len(val) == 1 and len(train) == 2


# --- corpus sources --------------------------------------------------------------------------

def test_files_source_prepare(mixed_files, tmp_path: Path) -> None:
    root, docs = mixed_files
    assert sorted(load_documents(cfg(f"files:{root}/**/*"))) == sorted(docs)
    out = tmp_path / "prepared"
    manifest = prepare_data(cfg(f"files:{root}/**/*"), out, progress=False)
    assert manifest["n_documents"]["train"] + manifest["n_documents"]["val"] == len(docs)
    assert manifest["n_documents"]["val"] == 4
    check_prepared(out, manifest)
    assert not list(out.glob("*.tmp")), "temp files left behind"


def test_prepare_reuses_matching_manifest(mixed_files, tmp_path: Path) -> None:
    root, _ = mixed_files
    out = tmp_path / "prepared"
    first = prepare_data(cfg(f"files:{root}/*.jsonl"), out, progress=False)
    assert prepare_data(cfg(f"files:{root}/*.jsonl"), out, progress=False) == first  # same 'created'
    other = prepare_data(cfg(f"files:{root}/*.jsonl", split_seed=1), out, progress=False)
    assert other["data"]["split_seed"] == 1


def test_hf_source_on_local_jsonl_folder(tmp_path: Path) -> None:
    folder = tmp_path / "hfds"
    folder.mkdir()
    docs = make_docs(30, "hf")
    for part in range(2):
        with open(folder / f"part{part}.jsonl", "w", encoding="utf-8") as f:
            for doc in docs[part * 15:(part + 1) * 15]:
                f.write(json.dumps({"content": doc}) + "\n")
    c = cfg(f"hf:{folder}", text_field="content", max_documents=25)
    assert len(load_documents(c)) == 25
    manifest = prepare_data(c, tmp_path / "out", progress=False)
    assert manifest["n_documents"] == {"train": 20, "val": 5}
    check_prepared(tmp_path / "out", manifest)


def test_pretrained_tokenizer_file(mixed_files, tmp_path: Path) -> None:
    root, docs = mixed_files
    tok_path = tmp_path / "my_tokenizer.json"
    train_bpe(docs, 280).save(str(tok_path))
    manifest = prepare_data(cfg(f"files:{root}/*.jsonl", tokenizer=str(tok_path)), tmp_path / "out", progress=False)
    assert manifest["vocab_size"] == 280
    assert manifest["tokenizer_sha256"]
    check_prepared(tmp_path / "out", manifest)


def test_bpe_is_deterministic_and_has_eos() -> None:
    docs = make_docs(40)
    a, b = train_bpe(docs, 300), train_bpe(docs, 300)
    assert a.to_str() == b.to_str()
    assert eos_id(a) == a.token_to_id("<|endoftext|>")


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ("foo", "data.source 'foo': unknown corpus"),
        ("files:/nonexistent/**/*.jsonl", "data.source 'files:/nonexistent/**/*.jsonl': glob matched no files"),
    ],
)
def test_bad_source_errors(source: str, needle: str) -> None:
    with pytest.raises(DataError, match="valid:") as info:
        load_documents(cfg(source))
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_unsupported_extension_and_missing_field(mixed_files, tmp_path: Path) -> None:
    root, _ = mixed_files
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"data\.source .*unsupported file"):
        load_documents(cfg(f"files:{tmp_path}/x.csv"))
    with pytest.raises(DataError, match=r"data\.text_field 'body'.*valid: 'text', 'other'"):
        load_documents(cfg(f"files:{root}/*.jsonl", text_field="body"))


def test_bad_tokenizer_and_missing_folder(mixed_files, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no manifest\.json"):
        load_data(tmp_path / "nothing")
    with pytest.raises(DataError, match=r"data\.vocab_size"):
        train_bpe(make_docs(5), 100)


def test_wiki_vital_corpus() -> None:
    docs = load_documents(cfg("wiki-vital"))
    assert len(docs) > 9000
    assert sum(map(len, docs)) > 4_000_000
    assert docs == load_documents(cfg("wiki-vital"))
    assert len(load_documents(cfg("wiki-vital", max_documents=300))) == 300


def test_wiki_vital_prepare_small(tmp_path: Path) -> None:
    small = cfg("wiki-vital", max_documents=300, vocab_size=512, val_fraction=0.05)
    manifest = prepare_data(small, tmp_path, progress=False)
    assert manifest["n_documents"] == {"train": 285, "val": 15}
    assert manifest["vocab_size"] == 512
    check_prepared(tmp_path, manifest)


# --- windows -------------------------------------------------------------------------------

def test_train_batch_determinism_and_shape() -> None:
    tokens = np.arange(10_000, dtype=np.uint16)
    batch = train_batch(tokens, step=5, batch_size=8, seq_len=32, seed=0)
    assert batch.shape == (8, 33) and batch.dtype == np.int64
    assert np.array_equal(batch, train_batch(tokens, step=5, batch_size=8, seq_len=32, seed=0))
    assert not np.array_equal(batch, train_batch(tokens, step=6, batch_size=8, seq_len=32, seed=0))
    assert not np.array_equal(batch, train_batch(tokens, step=5, batch_size=8, seq_len=32, seed=1))
    assert not np.array_equal(batch, train_batch(tokens, 5, 8, 32, 0, rank=1, world_size=2))
    assert (np.diff(batch, axis=1) == 1).all()  # contiguous windows of the source array
    assert batch.min() >= 0 and batch.max() < len(tokens)
    edge = train_batch(np.arange(33), step=0, batch_size=4, seq_len=32, seed=0)
    assert (edge == np.arange(33)).all()  # the only window that fits


def test_val_windows_fixed_and_non_overlapping() -> None:
    tokens = np.arange(1000, dtype=np.uint16)
    win = val_windows(tokens, n_windows=5, seq_len=99)
    assert win.shape == (5, 100)
    assert np.array_equal(win, val_windows(tokens, 5, 99))
    starts = win[:, 0]
    assert (np.diff(starts) >= 100).all() and win[-1, -1] == 999
    assert val_windows(tokens, n_windows=50, seq_len=99).shape == (10, 100)  # fewer if short
    with pytest.raises(DataError, match="val_fraction"):
        val_windows(tokens[:50], n_windows=1, seq_len=99)
