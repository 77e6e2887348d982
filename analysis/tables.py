"""runs.csv is verified before it is read: a table truncated at a line boundary is still valid
CSV, and a leaderboard built from what is left of it is wrong without a word.

`python -m analysis aggregate` writes beside runs.csv its record, runs.csv.json: the rows,
bytes and SHA-256 of what it wrote, the aggregation's arguments (``sources``) and a digest of
those inputs (paths, sizes, modification times). Every step that reads runs.csv checks it
first (``problem``): a table that no longer matches its record, or whose inputs changed
since, is rebuilt from its sources (analysis/cli.py) instead of being used.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd

from stabench.io import read_table_record, table_record_damage, write_dataframe_csv, write_table_record


def input_paths(sources: dict) -> list[str]:
    return [*sources.get("metrics", []), *sources.get("evals", []), sources["benchmark_yaml"],
            *([sources["reference_rows"]] if sources.get("reference_rows") else [])]


def inputs_digest(sources: dict) -> str:
    """SHA-256 of every input's path, size and modification time, in order."""
    h = hashlib.sha256()
    for path in input_paths(sources):
        try:
            st = os.stat(path)
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{path}\0missing\n".encode())
    return h.hexdigest()


def write_runs_csv(path: str | Path, runs: pd.DataFrame, sources: dict) -> None:
    """runs.csv and its record (the table first: a kill between the two leaves a mismatch)."""
    write_dataframe_csv(path, runs)
    write_table_record(path, len(runs), sources=sources, inputs_sha256=inputs_digest(sources))


def sources(path: str | Path) -> dict | None:
    """The aggregation arguments runs.csv was built from (None when its record has none)."""
    record = read_table_record(path)
    found = (record or {}).get("sources")
    return found if isinstance(found, dict) and "benchmark_yaml" in found else None


def problem(path: str | Path) -> str | None:
    """Why runs.csv must not be used as it is (damaged, or built from inputs that changed since), or None."""
    if not Path(path).is_file():
        return "missing"
    if damage := table_record_damage(path):
        return damage
    record, src = read_table_record(path), sources(path)
    if src is not None and record.get("inputs_sha256") != inputs_digest(src):
        return "its metrics files changed since it was built"
    return None


def missing_inputs(src: dict) -> list[str]:
    return [p for p in input_paths(src) if not Path(p).is_file()]
