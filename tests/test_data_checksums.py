"""Verified inputs: a prepared data folder's token arrays carry a checksum in its manifest,
checked whenever the folder is opened. A truncated or byte-flipped train.npy is named in one
line and never trained on; `stabench prepare` and the workflow's repair prepare it again, in
place, keeping the manifest (and its date) when the arrays come out as before, so no finished
run is retrained (issue 21)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from stabench.data import DataError, load_data
from stabench.data import prepare as P


@pytest.fixture
def data(engine_bench, tmp_path) -> Path:
    """A copy of the engine tests' prepared folder, free to damage."""
    out = tmp_path / "data"
    shutil.copytree(engine_bench.data_dir, out)
    return out


def flip_byte(path: Path, where: float = 0.5) -> None:
    raw = bytearray(path.read_bytes())
    i = int(len(raw) * where)
    raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_the_manifest_holds_a_checksum_of_each_token_array(data):
    import json
    manifest = json.loads((data / "manifest.json").read_text())
    for name in ("train.npy", "val.npy"):
        entry = manifest["checksums"][name]
        assert entry["bytes"] == (data / name).stat().st_size and not entry["sampled"]
        assert entry == P.array_checksum(data / name)


def test_truncated_train_npy_is_named_and_the_workflow_prepares_it_again(engine_bench, data):
    from stabench.repair import repair
    original, manifest = (data / "train.npy").read_bytes(), data / "manifest.json"
    before = (manifest.read_bytes(), manifest.stat().st_mtime_ns)
    (data / "train.npy").write_bytes(original[:-1000])
    with pytest.raises(DataError) as exc:
        load_data(data)
    line = one_line(exc)
    assert f"train.npy is {len(original) - 1000:,} bytes, the manifest says {len(original):,} (truncated)" in line
    assert str(data) in line

    assert repair({}, [], [], [], str(data), dryrun=True, data_cfg=engine_bench.benchmark["data"]) == \
        [f"would prepare {data} again: train.npy is {len(original) - 1000:,} bytes, the manifest says "
         f"{len(original):,} (truncated)"]
    lines = repair({}, [], [], [], str(data), data_cfg=engine_bench.benchmark["data"])
    assert lines == [f"prepared {data} again: train.npy is {len(original) - 1000:,} bytes, the manifest says "
                     f"{len(original):,} (truncated)"]
    assert (data / "train.npy").read_bytes() == original
    assert (manifest.read_bytes(), manifest.stat().st_mtime_ns) == before  # no finished run is retrained
    assert len(load_data(data).train) == len(original) // 2 - 64  # uint16 ids after a 128-byte header


def test_byte_flipped_train_npy_is_named_and_stabench_prepare_prepares_it_again(engine_bench, data, capsys):
    from stabench.cli import main
    original = (data / "train.npy").read_bytes()
    flip_byte(data / "train.npy")
    with pytest.raises(DataError) as exc:
        load_data(data)
    assert "train.npy differs from the checksum in the manifest (same size, other bytes)" in one_line(exc)
    assert main(["prepare", str(engine_bench.path), "--out", str(data), "--no-progress"]) == 0
    assert (data / "train.npy").read_bytes() == original
    np.testing.assert_array_equal(load_data(data).train, np.load(data / "train.npy"))


def test_a_large_array_is_checked_by_size_and_a_fixed_sample_of_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(P, "FULL_HASH_BYTES", 1 << 16)
    monkeypatch.setattr(P, "SAMPLE_BLOCKS", 8)
    monkeypatch.setattr(P, "BLOCK_BYTES", 1 << 10)
    path = tmp_path / "train.npy"
    np.save(path, np.arange(200_000, dtype=np.uint16))
    entry = P.array_checksum(path)
    assert entry["sampled"] and entry["bytes"] == os.path.getsize(path)
    flip_byte(path, where=0.0001)  # inside the first block (the .npy header's neighbourhood)
    assert P.checksum_damage(path, entry) == "train.npy differs from the checksum in the manifest (same size, other bytes)"
    flip_byte(path, where=0.0001)
    assert P.checksum_damage(path, entry) is None
    with open(path, "r+b") as f:
        f.truncate(entry["bytes"] - 2)
    assert P.checksum_damage(path, entry) == f"train.npy is {entry['bytes'] - 2:,} bytes, the manifest says {entry['bytes']:,} (truncated)"
