"""Atomic file writes: a killed process never leaves a half-written result behind.

Each writer writes a temporary file in the target's folder and renames it over the target
(``os.replace`` is atomic on POSIX), so readers and Snakemake see the old file or the new
one, never a torn one. A write that finds no room (a full disk, a quota, a file-size limit)
removes its temporary file and raises :class:`NoSpaceError`, one line naming the folder and
the space the file needs.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import math
import os
import resource
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


NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class NoSpaceError(OSError):
    """A file did not fit: its message is the one line to show (the folder, the space needed)."""

    def __str__(self) -> str:
        return self.strerror


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _no_room(exc: BaseException) -> OSError | None:
    """The out-of-room OSError behind ``exc`` (itself, or what it was raised from or during:
    torch reports a failed write as a RuntimeError raised while handling it), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in NO_ROOM:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def no_space_error(target: Path, cause: OSError, needed: int | None, written: int) -> NoSpaceError:
    folder = target.parent
    size = f"about {human_bytes(needed)}" if needed else f"more than the {human_bytes(written)} written"
    if cause.errno == errno.EFBIG:
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        why = "over the file-size limit" + (f" of {human_bytes(limit)} (ulimit -f)" if limit != resource.RLIM_INFINITY else "")
    elif cause.errno == errno.EDQUOT:
        why = "over the disk quota"
    else:
        try:
            st = os.statvfs(folder)
            why = f"no space left on device, {human_bytes(st.f_bavail * st.f_frsize)} free"
        except OSError:
            why = "no space left on device"
    return NoSpaceError(cause.errno, f"{folder}: no room for {target.name}, which needs {size} ({why}); "
                                     "nothing was written: free some space there and run again")


@contextmanager
def atomic_path(target: str | Path, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces ``target``. ``needed``: the file's size
    when known beforehand (said when it does not fit)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        try:
            yield Path(tmp)
            os.chmod(tmp, _FILE_MODE)
            os.replace(tmp, target)
        except Exception as exc:
            cause = _no_room(exc)
            if cause is None:
                raise
            written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
            raise no_space_error(target, cause, needed, written) from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_open(target: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file for writing; on success it replaces ``target``."""
    with atomic_path(target) as tmp, open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
        yield f


def write_text(target: str | Path, text: str) -> None:
    data = text.encode("utf-8")
    with atomic_path(target, needed=len(data)) as tmp:
        tmp.write_bytes(data)


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


def tensor_bytes(obj: Any) -> int:
    """The bytes of every tensor in a nested payload: about the size of its torch.save file."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def torch_save(obj: Any, tmp: Path) -> None:
    """torch.save through a Python file, so a failed write keeps its OSError (a full disk)
    as the context of torch's RuntimeError instead of a bare 'iostream error'."""
    with open(tmp, "wb") as f:
        torch.save(obj, f)


def save_torch(target: str | Path, obj: Any) -> None:
    with atomic_path(target, needed=tensor_bytes(obj)) as tmp:
        torch_save(obj, tmp)


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
