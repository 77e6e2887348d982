"""One process trains a run at a time: an exclusive lock on its folder for the run's life.

``fcntl.flock`` on ``<run folder>/.lock`` is released by the kernel when the holder dies,
however it dies (kill -9 included), so a resumed job never waits on a stale lock, and a job
that finds the lock held (an orphan of a killed workflow still training) fails in one line
naming the holder's pid instead of writing the same files at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from .config import ConfigError

LOCK_NAME = ".lock"


@contextlib.contextmanager
def run_locks(out_dirs: list[Path]):
    """Hold an exclusive lock on each run folder while training it (released on any exit)."""
    handles = []
    try:
        for out_dir in out_dirs:
            out_dir.mkdir(parents=True, exist_ok=True)
            handle = open(out_dir / LOCK_NAME, "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _holder(handle)
                handle.close()
                raise ConfigError(f"{out_dir} is being trained by another process (pid {holder}); "
                                  "wait for it or stop it") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            handles.append(handle)
        yield
    finally:
        for handle in handles:
            handle.close()


def _holder(handle) -> str:
    handle.seek(0)
    return handle.read().strip() or "unknown"


def lock_holder(out_dir: Path) -> str | None:
    """The pid (as written) of a live process training ``out_dir``, or None."""
    path = Path(out_dir) / LOCK_NAME
    if not path.is_file():
        return None
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _holder(handle)
    return None
