"""Atomic file writes: a killed process never leaves a half-written result behind.

Each writer writes a temporary file in the target's folder and renames it over the target
(``os.replace`` is atomic on POSIX), so readers and Snakemake see the old file or the new
one, never a torn one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

import torch


def _umask() -> int:
    mask = os.umask(0o022)  # the umask can only be read by setting it
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # mkstemp makes 0600 files; outputs should read like any other


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_open(target: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file for writing; on success it replaces ``target``."""
    with atomic_path(target) as tmp, open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
        yield f


def write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_dataframe_csv(target: str | Path, frame) -> None:
    """A pandas DataFrame as CSV without its index."""
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, index=False)


def _json_safe(value: Any) -> Any:
    """NaN and inf are not JSON: write them as null so every reader can parse the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(target: str | Path, data: Any) -> None:
    write_text(target, json.dumps(_json_safe(data), indent=2) + "\n")


def write_csv(target: str | Path, rows: list[dict]) -> None:
    """Rows may have different keys (probes appear over time): the header is their union."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with atomic_path(target) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def save_torch(target: str | Path, obj: Any) -> None:
    with atomic_path(target) as tmp:
        torch.save(obj, tmp)


# ---- tables that carry their own record --------------------------------------------------------
# A CSV truncated at a line boundary is still valid CSV: only a record of what was written tells.

def table_record_path(table: str | Path) -> Path:
    """The record beside a table: ``runs.csv`` -> ``runs.csv.json``."""
    return Path(f"{table}.json")


def write_table_record(table: str | Path, rows: int, **extra: Any) -> None:
    """Record a table just written: its data rows, bytes and SHA-256 (and ``extra``)."""
    data = Path(table).read_bytes()
    write_json(table_record_path(table), {"rows": int(rows), "bytes": len(data),
                                          "sha256": hashlib.sha256(data).hexdigest(), **extra})


def read_table_record(table: str | Path) -> dict | None:
    try:
        record = json.loads(table_record_path(table).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and {"rows", "bytes", "sha256"} <= set(record) else None


def table_record_damage(table: str | Path) -> str | None:
    """Why a table does not match its record (its rows, then its bytes), or None; a table
    without a readable record is damaged too (what it should hold is unknown)."""
    table = Path(table)
    record = read_table_record(table)
    if record is None:
        return f"no readable {table_record_path(table).name} (the record of what it holds)"
    try:
        data = table.read_bytes()
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    if hashlib.sha256(data).hexdigest() == record["sha256"]:
        return None
    try:
        rows = max(sum(1 for _ in csv.reader(io.StringIO(data.decode("utf-8"), newline=""))) - 1, 0)
    except (UnicodeDecodeError, csv.Error):
        rows = None
    if rows is not None and rows != record["rows"]:
        return f"it holds {rows} rows, {record['rows']} were written"
    return f"its {len(data):,} bytes differ from the {record['bytes']:,} written"
