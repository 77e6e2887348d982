"""Evaluate finished runs with lm-eval and write one JSON record per evaluation.

``evaluate_runs`` is the body of the workflow's eval rules (``stabench eval``):

- one run (``select="single"``): the record of that run (``runs/<...>/eval.json``);
- several runs (``select="best"``): the runs of one (method, size) over the LR grid (and
  seeds); only the best-LR run is evaluated (``eval/<method>/<size>.json``). "Best" is
  stabench.selection.best_lr_run, the function the leaderboard's best LR uses too: per LR, the
  seed-mean of min(final val loss, l0) with a diverged run counting as l0, l0 the benchmark's
  one l0 (``l0``; default ln(vocab_size) of the runs); lowest wins, ties to the smaller LR; no
  LR when none is below l0. Of that LR, the lowest seed that did not diverge is evaluated.

A diverged run is not evaluated (its weights are whatever was left when it stopped): its record
says ``status: diverged``. Every task is loaded alone first; a task that cannot be loaded (a hub
dataset offline, an unknown name) is recorded as skipped with the reason and the others go on.
The same model at initialization (same seed and method transforms, no training) is evaluated
on ``init_tasks`` too, so a score can be read against the untrained model's.

Record layout::

    status       evaluated | diverged | all_diverged
    run_dir, method, size, lr, seed     the evaluated (or diverged) run
    candidates   (best) every run considered, with its loss and whether it diverged
    tasks        {task: {status: ok, examples, metrics: {acc, acc_stderr, ...}} | {status: skipped, reason}}
    init         the same for the model at initialization (init_tasks only)
    scores       flat {"<task>/<metric>": value, "<task>/init_<metric>": value}: what runs.csv joins
    settings, versions, wall_seconds
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from ..io import write_json
from ..offline import go_offline, hub_reachable
from ..progress import library_bars
from ..selection import best_lr_run, effective_loss, uniform_l0
from .tasks import LOCAL_NAMES

log = logging.getLogger(__name__)

BOOTSTRAP_ITERS = 1000  # stderr of perplexity by bootstrap; acc's is closed-form


# ---------------------------------------------------------------------------- selection
def _metrics(run_dir: str | Path) -> dict:
    from ..runs import read_metrics  # one reader of metrics.json, with one-line errors

    return read_metrics(run_dir)


def _num(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def run_failed(m: dict) -> bool:
    """Diverged, or a final loss that is not a number: nothing worth evaluating."""
    return bool(m.get("diverged")) or not math.isfinite(_num(m.get("final_val_loss")))


def run_l0(run_dirs: list[str | Path], l0: float | None = None) -> float:
    """The benchmark's l0: ``l0`` when given (the benchmark's analysis.l0), else ln(vocab_size)
    of the runs' model config (the analysis' default, analysis/settings.py)."""
    if l0 is not None:
        return float(l0)
    vocab = {((_metrics(rd).get("config") or {}).get("model") or {}).get("vocab_size") for rd in run_dirs}
    vocab.discard(None)
    if len(vocab) != 1:
        raise ValueError(f"runs disagree on vocab_size ({sorted(vocab)}) or do not record it; give l0")
    return uniform_l0(vocab.pop())


def select_best(run_dirs: list[str | Path], l0: float | None = None) -> tuple[str | None, list[dict]]:
    """(run_dir to evaluate or None when no LR is best, candidate summaries)."""
    level = run_l0(run_dirs, l0)
    cands = []
    for rd in run_dirs:
        m = _metrics(rd)
        cands.append({"run_dir": str(rd), "lr": _num(m.get("lr")), "seed": int(m.get("seed") or 0),
                      "final_val_loss": _num(m.get("final_val_loss")),
                      "effective_loss": effective_loss(m.get("final_val_loss"), run_failed(m), level),
                      "diverged": run_failed(m)})
    best = best_lr_run(cands, level)
    return (best["run_dir"] if best else None), cands


# ---------------------------------------------------------------------------- lm-eval
def task_manager(tasks: list[str], tasks_dir: str | Path | None):
    """A TaskManager over the offline tasks' folder; lm-eval's own tasks are indexed (~10 s)
    only when a task outside the folder is asked for."""
    from lm_eval.tasks import TaskManager

    needs_defaults = any(t not in LOCAL_NAMES for t in tasks)
    include = str(Path(tasks_dir).resolve()) if tasks_dir else None
    return TaskManager(include_path=include, include_defaults=needs_defaults or include is None)


def hub_offline(timeout: float = 3.0) -> bool:
    """True when the Hugging Face hub cannot be used; then offline mode is switched on.

    Without it, every hub task on a machine without network would spend ~20 s in connection
    retries before being skipped. HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set by the user win;
    otherwise one TCP connection to the hub decides. Offline mode is set in the environment
    and, since ``datasets`` and ``huggingface_hub`` read it at import, in their loaded config.
    Benchmarks that need no hub are offline before this is asked (``stabench.offline``).
    """
    offline = not hub_reachable(timeout)
    if offline:
        go_offline()
    return offline


def keep_cache_beside(tasks_dir: str | Path) -> None:
    """lm-eval reads the offline tasks' jsonl through ``datasets``, which caches them as Arrow
    files in ~/.cache/huggingface: keep that cache in the tasks folder (under results/), so an
    offline evaluation writes nowhere else. A cache the user chose (HF_DATASETS_CACHE) wins;
    hub tasks keep the user's cache (their downloads are worth sharing)."""
    if "HF_DATASETS_CACHE" not in os.environ and "datasets" not in sys.modules:
        os.environ["HF_DATASETS_CACHE"] = str(Path(tasks_dir).resolve() / ".datasets_cache")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def loadable_tasks(tasks: list[str], tm) -> tuple[list[str], dict[str, str]]:
    """(names that load, {name: why not}) - each task loaded alone so one failure skips one."""
    ok, skipped = [], {}
    for name in tasks:
        if name not in tm.all_tasks:
            close = difflib.get_close_matches(name, tm.all_tasks, n=1)
            skipped[name] = "unknown task" + (f"; did you mean {close[0]!r}?" if close else "")
            continue
        try:
            tm.load([name])
        except Exception as err:  # hub dataset offline, missing files, bad config: skip, go on
            skipped[name] = f"cannot load its data ({_first_line(err)})"
            continue
        ok.append(name)
    return ok, skipped


def flatten_results(results: dict) -> dict[str, dict]:
    """lm-eval's results -> {task: {status, examples, metrics}} (filter 'none' only)."""
    out = {}
    n_samples = results.get("n-samples", {})
    for task, res in results.get("results", {}).items():
        metrics = {}
        for key, value in res.items():
            if key == "alias" or "," not in key:
                continue
            name, filt = key.split(",", 1)
            if filt != "none":
                name = f"{name}[{filt}]"
            metrics[name] = _num(value)
        if "perplexity" in metrics and metrics["perplexity"] > 0:
            metrics["ll"] = -math.log(metrics["perplexity"])  # mean log p(target | context)
        out[task] = {"status": "ok", "examples": int(n_samples.get(task, {}).get("effective", 0)) or None,
                     "metrics": metrics}
    return out


def evaluate_model(lm, tasks: list[str], tm, *, limit: int | None) -> dict[str, dict]:
    """Run lm-eval on the tasks that load; skipped ones carry their reason."""
    import lm_eval

    os.environ.setdefault("DISABLE_MULTIPROC", "1")  # bootstrap without a process pool
    ok, skipped = loadable_tasks(tasks, tm)
    out: dict[str, dict] = {}
    if ok:
        results = lm_eval.simple_evaluate(model=lm, tasks=ok, task_manager=tm, limit=limit,
                                          bootstrap_iters=BOOTSTRAP_ITERS, log_samples=False)
        out.update(flatten_results(results or {}))
    for name, reason in skipped.items():
        log.warning("task %s skipped: %s", name, reason)
        out[name] = {"status": "skipped", "reason": reason}
    return out


def flat_scores(tasks: dict[str, dict], init: dict[str, dict]) -> dict[str, float]:
    scores = {}
    for prefix, block in (("", tasks), ("init_", init)):
        for task, res in block.items():
            for metric, value in res.get("metrics", {}).items():
                scores[f"{task}/{prefix}{metric}"] = value
    return dict(sorted(scores.items()))


# ---------------------------------------------------------------------------- runs
def _versions() -> dict:
    import importlib.metadata as md

    import torch

    return {"lm_eval": md.version("lm_eval"), "torch": torch.__version__}


def evaluate_runs(run_dirs: list[str | Path], *, data_dir: str | Path, tasks_dir: str | Path | None,
                  tasks: list[str], init_tasks: list[str] | None = None, limit: int | None = None,
                  batch_size: int = 32, device: str = "auto", select: str = "single",
                  l0: float | None = None, progress: bool = True) -> dict:
    """Evaluate one run, or the best of several, and return the record (see module doc).
    ``progress``: lm-eval's and the model's bars, in a terminal only (``stabench.progress.library_bars``)."""
    from .adapter import StabenchLM

    start = time.perf_counter()
    if select == "best":
        chosen, candidates = select_best(run_dirs, l0)
    elif len(run_dirs) == 1:
        chosen, candidates = str(run_dirs[0]), None
    else:
        raise ValueError(f"select='single' needs exactly one run, got {len(run_dirs)}")
    init_tasks = [t for t in (init_tasks or []) if t in tasks]
    record: dict[str, Any] = {"selection": select}
    hub = None
    if candidates is not None:
        record["candidates"] = candidates
    settings = {"tasks": tasks, "init_tasks": init_tasks, "limit": limit, "batch_size": batch_size,
                "device": device, "tasks_dir": str(tasks_dir) if tasks_dir else None}
    if chosen is None:
        first = _metrics(run_dirs[0])
        record.update(status="all_diverged", method=first.get("method"), size=first.get("size"),
                      run_dir=None, lr=None, seed=None, tasks={}, init={}, scores={})
    else:
        metrics = _metrics(chosen)
        record.update(run_dir=str(chosen), method=metrics.get("method"), size=metrics.get("size"),
                      lr=metrics.get("lr"), seed=metrics.get("seed"))
        if run_failed(metrics):
            record.update(status="diverged", tasks={}, init={}, scores={})
        else:
            if any(t not in LOCAL_NAMES for t in tasks):
                hub = "offline" if hub_offline() else "online"
            elif tasks_dir:
                keep_cache_beside(tasks_dir)
            progress = library_bars(progress)  # after keep_cache_beside: it reads the cache before datasets' import
            tm = task_manager(tasks, tasks_dir)
            lm = StabenchLM(run_dir=str(chosen), data_dir=str(data_dir), device=device, batch_size=batch_size,
                            progress=progress)
            settings["device"] = str(lm.device)
            results = evaluate_model(lm, tasks, tm, limit=limit)
            del lm
            init = {}
            if init_tasks:
                lm0 = StabenchLM(run_dir=str(chosen), data_dir=str(data_dir), device=device,
                                 batch_size=batch_size, at_init=True, progress=progress)
                init = evaluate_model(lm0, init_tasks, tm, limit=limit)
            record.update(status="evaluated", tasks=results, init=init, scores=flat_scores(results, init))
    settings["hub"] = hub  # None: only offline tasks, the hub was not needed
    record.update(settings=settings, versions=_versions(), wall_seconds=time.perf_counter() - start)
    return record


def write_record(record: dict, out: str | Path) -> None:
    write_json(Path(out), record)
