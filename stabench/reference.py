"""Reference results: one benchmark's tables, shipped so that a user's methods are ranked
against them without training them again.

A reference folder (``reference/<name>/``) holds the ``runs.csv``, ``leaderboard.csv`` and
``claims.csv`` of one workflow run (no checkpoints, no histories) and ``provenance.json``: the
commit, machine and versions that produced them, the benchmark's name and its ``eval``
settings. ``stabench make-reference RESULTS_DIR --out FOLDER`` writes one.

With ``--config reference=<name or path>`` the workflow takes a (method, size) of its grid
from the reference when the identity (stabench.runspec) of every one of its runs is a row of
the reference's runs.csv, and its zero-shot evaluation settings are the reference's: those
runs are neither trained nor evaluated, their rows join runs.csv (``source`` reference). The
identity leaves out the benchmark's and the method's names, so a renamed copy of a benchmark
finds the same rows; any change of what a run computes (train.steps, a method argument, the
data) gives another identity, and that run trains. The unit is the (method, size), not the
run: a pack job trains a seed's whole LR sweep, and eval.runs: best picks one run among all
of a (method, size)'s runs, so part of a (method, size) from the reference and part trained
would not be one sweep.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import paths
from .config import REFERENCE_TABLE, ConfigError
from .io import write_json

PROVENANCE = "provenance.json"
TABLES = (REFERENCE_TABLE, "leaderboard.csv", "claims.csv")
SOURCE = "source"  # runs.csv column: trained here, or taken from the reference


@dataclass(frozen=True)
class Reference:
    folder: Path
    columns: list[str]
    rows: dict[str, dict[str, str]]  # run identity -> its runs.csv row, as text
    provenance: dict = field(default_factory=dict)

    def eval_matches(self, eval_settings: Mapping) -> bool:
        """Whether the reference's zero-shot scores were made with these eval settings (a
        reference that does not record them is trusted)."""
        recorded = self.provenance.get("eval")
        return recorded is None or json.dumps(recorded, sort_keys=True) == json.dumps(dict(eval_settings),
                                                                                      sort_keys=True)

    def describe(self) -> str:
        """Where the rows came from, in one line, for the log and the report."""
        p = self.provenance
        bits = [f"benchmark {p['benchmark']}" if p.get("benchmark") else "",
                f"commit {p['git commit']}" if p.get("git commit") else "",
                p.get("machine") or p.get("host") or "", p.get("date", "")[:10]]
        return f"{self.folder} ({', '.join(b for b in bits if b) or 'no provenance.json'})"


def load_reference(folder: str | Path) -> Reference:
    """The reference folder's runs.csv (rows by identity) and provenance.json; a one-line
    ConfigError when the table has no identity column or is unreadable."""
    folder = Path(folder)
    table = folder / REFERENCE_TABLE
    try:
        with table.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            columns = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{table}: unreadable ({type(exc).__name__}: {exc})") from None
    if "identity" not in columns:
        raise ConfigError(f"{table}: no identity column (written before run identities were recorded); "
                          "make the reference again with stabench make-reference")
    provenance = {}
    if (folder / PROVENANCE).is_file():
        try:
            provenance = json.loads((folder / PROVENANCE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{folder / PROVENANCE}: unreadable ({type(exc).__name__}: {exc})") from None
    return Reference(folder, columns, {r["identity"]: r for r in rows if r.get("identity")}, provenance)


def pairs_from_reference(reference: Reference, identities: Mapping[tuple, str],
                         eval_settings: Mapping) -> set[tuple[str, str]]:
    """(method, size) pairs of a grid whose runs are all in the reference. ``identities`` maps
    each run (method, size, lr, seed) of the grid to its identity."""
    if not reference.eval_matches(eval_settings):
        return set()
    pairs: dict[tuple[str, str], bool] = {}
    for run, identity in identities.items():
        pairs[run[:2]] = pairs.get(run[:2], True) and identity in reference.rows
    return {pair for pair, found in pairs.items() if found}


def write_rows(path: str | Path, reference: Reference, runs: Mapping[tuple, str]) -> None:
    """The reference's rows of ``runs`` (run (method, size, lr label, seed) -> identity) as a
    CSV: the method relabelled as the grid names it, run_dir the folder the run would have
    under the reference (which holds no files: figures drawn from histories leave it out),
    and ``source`` reference."""
    columns = [c for c in reference.columns if c != SOURCE] + [SOURCE]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for (method, size, lr, seed), identity in sorted(runs.items()):
            row = dict(reference.rows[identity])
            row.update(method=method, run_dir=str(paths.run_dir(reference.folder, method, size, lr, seed)))
            row[SOURCE] = "reference"
            writer.writerow(row)
    os.replace(tmp, path)


def machine() -> str:
    """This machine in words: CPU count and model, OS and architecture."""
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs{f' ({model})' if model else ''}, {platform.system()} {platform.machine()}"


def make_reference(results: str | Path, out: str | Path, notes: Mapping[str, str] | None = None) -> Path:
    """Copy a finished workflow run's tables (results/<benchmark>/) into ``out`` with a
    provenance.json: the run's provenance (commit, versions), this machine, the benchmark's name
    and eval settings, and any ``notes`` (e.g. the wall time)."""
    import yaml

    results, out = Path(results), Path(out)
    missing = [name for name in (*TABLES, "benchmark.yaml", PROVENANCE) if not (results / name).is_file()]
    if missing:
        raise ConfigError(f"{results}: not a finished workflow run ({', '.join(missing)} missing)")
    with (results / REFERENCE_TABLE).open(newline="", encoding="utf-8") as fh:
        if "identity" not in (csv.DictReader(fh).fieldnames or []):
            raise ConfigError(f"{results / REFERENCE_TABLE}: no identity column; run the workflow's aggregate "
                              "step again (snakemake --forcerun aggregate)")
    benchmark = yaml.safe_load((results / "benchmark.yaml").read_text(encoding="utf-8")) or {}
    out.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        shutil.copyfile(results / name, out / name)
    record = {"benchmark": benchmark.get("name"), **json.loads((results / PROVENANCE).read_text(encoding="utf-8")),
              "machine": machine(), "eval": benchmark.get("eval"), **dict(notes or {})}
    write_json(out / PROVENANCE, record)
    return out
