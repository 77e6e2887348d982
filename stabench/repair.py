"""What a killed or damaged workflow needs before one plain ``snakemake`` can finish it.

Snakemake decides what to run from which files exist: a corrupt ``metrics.json`` still exists,
so its job is never rerun, and a missing file whose consumers' outputs exist (a deleted
``history.csv``, a ``runs.csv`` removed by a failed aggregation) is not rebuilt either. So the
workflow calls ``repair`` when it starts: every damaged file of the grid is removed, saying
which (a run's job then rebuilds its files from its finished checkpoint, or resumes, or
retrains), and when a run file or an evaluation record is missing, the analysis outputs are
removed too, so leaderboard and report are rebuilt from the repaired runs.

``stale_lock`` handles the other leftover of a killed Snakemake, its lock in
``.snakemake/locks``: removed when no other Snakemake runs in this folder on this machine,
else left, with the one command that removes it.
"""

from __future__ import annotations

import csv
import json
import os
import socket
from pathlib import Path

from .checkpoint import CHECKPOINT_NAME, quick_damage
from .data.prepare import prepared_damage
from .io import table_record_damage, table_record_path
from .lifeline import parent_of
from .recorder import HISTORY_NAME, LOSSES_NAME, METRICS_NAME, SLOT_KEYS
from .runlock import lock_holder

RUN_FILES = (METRICS_NAME, HISTORY_NAME, LOSSES_NAME)
METRICS_KEYS = ("identity", "final_val_loss", "diverged", "config")


def json_damage(path: Path, keys: tuple[str, ...] = ()) -> str | None:
    """Why a JSON record cannot be read (or lacks ``keys``), or None."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        return f"{type(exc).__name__}: {str(exc)[:120]}"
    if not isinstance(record, dict):
        return "not a JSON object"
    missing = [k for k in keys if k not in record]
    return f"lacks {', '.join(missing)}" if missing else None


def csv_damage(path: Path) -> str | None:
    """Why a run's CSV cannot be read (no header with a step column), or None."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if "step" in header else "no header with a step column"


def run_damage(run_dir: Path, expected: dict | None = None) -> list[tuple[Path | None, str]]:
    """(file to remove, why and what happens next) for a run folder that must hold the run
    ``expected`` (its slot); None: nothing to remove.

    A finished run's train job reruns only when its metrics.json is missing (the consumers
    read nothing else), so metrics.json goes too when history.csv or losses.csv is missing or
    damaged: the job then rewrites all three from the finished checkpoint."""
    run_dir, found = Path(run_dir), []
    metrics, checkpoint = run_dir / METRICS_NAME, run_dir / CHECKPOINT_NAME
    for name in (HISTORY_NAME, LOSSES_NAME):
        if (run_dir / name).is_file() and (problem := csv_damage(run_dir / name)):
            found.append((run_dir / name, f"damaged ({problem})"))
    if not metrics.is_file():
        return found
    lost = [name for name in (HISTORY_NAME, LOSSES_NAME) if not (run_dir / name).is_file()] + \
        [path.name for path, _ in found]
    if problem := json_damage(metrics, (*METRICS_KEYS, *SLOT_KEYS)):
        found.append((metrics, f"damaged ({problem}); its job rebuilds it from the checkpoint or retrains the run"))
    elif expected and (theirs := {k: json.loads(metrics.read_text())[k] for k in SLOT_KEYS}) != expected:
        found.append((metrics, f"it holds the run {theirs}, not {expected}; its job rebuilds it"))
    elif checkpoint.is_file() and (problem := quick_damage(checkpoint)):
        found.append((metrics, f"its {CHECKPOINT_NAME} is damaged ({problem}); its job resumes the run from "
                               "the previous checkpoint or retrains it"))
    elif lost and checkpoint.is_file():
        found.append((metrics, f"so that its job restores {' and '.join(lost)} from the finished checkpoint"))
    elif lost:
        found.append((None, f"{run_dir}: {' and '.join(lost)} cannot be restored without {CHECKPOINT_NAME}; "
                            f"delete {metrics} to retrain the run"))
    return found


def derived_damage(path: Path) -> str | None:
    """Why an analysis output cannot be read (tables and JSON only), or None. A table with a
    record beside it (runs.csv.json, stabench.io.write_table_record) must match it."""
    if path.suffix == ".json":
        return json_damage(path)
    if path.suffix == ".csv":
        if table_record_path(path).is_file():
            return table_record_damage(path)
        try:
            with open(path, newline="", encoding="utf-8") as f:
                return None if next(csv.reader(f), None) else "empty"
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            return f"{type(exc).__name__}: {exc}"
    return None


def repair(runs: dict[str, dict], records: list[str], derived: list[str], manifests: list[str] = (),
           data_dir: str | None = None, *, dryrun: bool = False, data_cfg: dict | None = None) -> list[str]:
    """Remove damaged files: of the runs (run folder -> its slot: the run it must hold),
    evaluation ``records`` and JSON ``manifests``; prepare a damaged ``data_dir`` again from
    ``data_cfg`` (its manifest stays when the arrays come out as before, so no finished run is
    retrained; without ``data_cfg``, or when preparing fails, its manifest is removed);
    remove ``derived`` (the analysis outputs) when a run file or record is missing, or one of
    them is missing or damaged, so they are all rebuilt. Returns the lines to print;
    ``dryrun`` changes nothing and says what it would."""
    lines, incomplete = [], False
    verb = "would remove" if dryrun else "removed"

    def remove(path: Path, why: str) -> None:
        lines.append(f"{verb} {path}: {why}")
        if not dryrun:
            path.unlink()

    for run_dir, expected in runs.items():
        run_dir = Path(run_dir)
        holder = lock_holder(run_dir)
        if holder:
            lines.append(f"{run_dir} is being trained by pid {holder}; not checked")
            continue
        for path, why in run_damage(run_dir, expected):
            if path:
                remove(path, why)
            else:
                lines.append(why)
        incomplete = incomplete or not (run_dir / METRICS_NAME).is_file()
    for path in map(Path, [*records, *manifests]):
        if path.is_file() and (problem := json_damage(path)):
            remove(path, f"damaged ({problem}); its job rebuilds it")
    if data_dir and (Path(data_dir) / "manifest.json").is_file() and (problem := prepared_damage(data_dir)):
        lines += _prepare_again(Path(data_dir), problem, data_cfg, remove, dryrun)
    present = [Path(p) for p in derived if Path(p).is_file()]
    damaged = [f"{p.name}: {why}" for p in present if (why := derived_damage(p))]
    incomplete = incomplete or any(not Path(p).is_file() for p in records) or \
        bool(damaged) or 0 < len(present) < len(derived)  # one lost (runs.csv)
    stale = present if incomplete else []
    if stale:
        lines.append(f"{verb} {len(stale)} analysis outputs ({', '.join(p.name for p in stale[:3])}, ...) "
                     "so that they are rebuilt from every run" + (f" ({damaged[0]})" if damaged else ""))
        for path in [] if dryrun else stale:
            path.unlink()
    return lines


def _prepare_again(data_dir: Path, problem: str, data_cfg: dict | None, remove, dryrun: bool) -> list[str]:
    """Prepare a damaged data folder again, in place (the workflow's data job would not run:
    the finished runs that read it do not need it)."""
    if data_cfg is not None and dryrun:
        return [f"would prepare {data_dir} again: {problem}"]
    if data_cfg is not None:
        from .data import DataError, prepare_data
        try:
            prepare_data(data_cfg, data_dir, progress=False)
            if (still := prepared_damage(data_dir)) is None:
                return [f"prepared {data_dir} again: {problem}"]
            problem = f"{problem}; prepared again, still {still}"
        except (DataError, OSError) as exc:
            problem = f"{problem}; preparing it again failed: {exc}"
    remove(data_dir / "manifest.json", f"the data folder is damaged ({problem}); it is prepared again")
    return []


# ---- Snakemake's lock -------------------------------------------------------------------------

OWNER_NAME = "stabench-lock-owner.json"  # which machine's snakemake took the locks


def _ancestors() -> set[int]:
    """This process and its ancestors (a `timeout snakemake ...` wrapping us is not another run)."""
    found, pid = {os.getpid()}, os.getppid()
    while pid > 1 and pid not in found:
        found.add(pid)
        pid = parent_of(pid) or 0
    return found


def snakemakes_here(here: str | None = None) -> list[int]:
    """Pids of other Snakemake processes on this machine whose working folder is ``here``
    (default: the current folder)."""
    here, found, mine = here or os.getcwd(), [], _ancestors()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd == here and any(os.path.basename(a) == b"snakemake" for a in argv):
            found.append(int(entry.name))
    return sorted(found)


def stale_lock(state_dir: str | Path = ".snakemake", *, dryrun: bool = False) -> list[str]:
    """Remove a lock left by a killed Snakemake when it is safe; return the lines to print."""
    state_dir = Path(state_dir)
    locks = sorted((state_dir / "locks").glob("*.lock")) if (state_dir / "locks").is_dir() else []
    owner_file, host = state_dir / OWNER_NAME, socket.gethostname()
    if not locks:
        if not dryrun and state_dir.is_dir():
            owner_file.write_text(json.dumps({"host": host, "pid": os.getpid()}) + "\n")
        return []
    try:
        owner = json.loads(owner_file.read_text())
    except (OSError, ValueError):
        owner = {"host": host, "pid": "unknown"}
    others = snakemakes_here()
    if others:
        return [f"another snakemake (pid {', '.join(map(str, others))}) is running in this folder; "
                "wait for it to finish, or stop it and run your command again"]
    if owner.get("host") != host:
        return [f"{state_dir}/locks was left by snakemake pid {owner.get('pid')} on {owner.get('host')}; if that "
                "one has stopped, run `snakemake --unlock` once, then your command again"]
    if dryrun:
        return [f"{state_dir}/locks was left by a killed snakemake; a real run removes it"]
    for lock in locks:
        lock.unlink(missing_ok=True)
    owner_file.write_text(json.dumps({"host": host, "pid": os.getpid()}) + "\n")
    return [f"removed the lock a killed snakemake left in {state_dir}/locks (no other snakemake runs in this folder)"]
