"""Where a benchmark's files lie: the one definition of the results layout.

    results/<benchmark>/                 results_dir(benchmark)
        data/                            data_dir(results)
        eval_tasks/                      tasks_dir(results)
        runs/<method>/<size>/lr<LR>-s<SEED>/   run_dir(results, method, size, lr, seed)

``lr`` is a run folder's label of a peak LR (``lr_label``), so a label always names exactly one
LR; the workflow's rules, the CLI, the lm-eval adapter (which finds a run's data folder from
its run folder, ``results_of_run``) and the tests all build these paths here.
"""

from __future__ import annotations

from pathlib import Path

from .config import ConfigError, check_slug

RESULTS_ROOT = Path("results")  # relative to the folder the workflow or the CLI runs in
RUNS = "runs"
DATA = "data"
TASKS = "eval_tasks"
SPEC_NAME = "run.json"  # in every run folder: the run the folder is for (stabench.runspec)


def results_dir(benchmark: dict) -> Path:
    """``results/<name>``: everything the workflow writes for a benchmark lies under it."""
    return RESULTS_ROOT / check_slug("name", benchmark["name"])


def data_dir(results: str | Path) -> Path:
    """The prepared data folder of a benchmark's results folder."""
    return Path(results) / DATA


def tasks_dir(results: str | Path) -> Path:
    """The offline zero-shot tasks' folder of a benchmark's results folder."""
    return Path(results) / TASKS


def lr_label(lr: float) -> str:
    """The run folder's label of a peak LR: '%g' when that reads back as the same float, else
    the shortest exact form (repr), so a label always names exactly one LR."""
    lr = float(lr)
    short = f"{lr:g}"
    return short if float(short) == lr else repr(lr)


def lr_labels(learning_rates: list[float]) -> dict[str, float]:
    """label -> exact LR for a benchmark's grid; two LRs with one label are a one-line error."""
    labels: dict[str, float] = {}
    for lr in learning_rates:
        label = check_slug("learning_rates", lr_label(lr))
        if label in labels:
            raise ConfigError(f"learning_rates: {labels[label]!r} and {float(lr)!r} are the same run "
                              f"(folder label lr{label}); list each LR once")
        labels[label] = float(lr)
    return labels


def run_name(method: str, size: str, lr: str, seed) -> str:
    """``<method>/<size>/lr<lr>-s<seed>`` (``lr`` a label): a run's place under ``runs/``, and
    under the workflow's logs/ and benchmarks/ folders. Wildcards such as '{lr}' pass through."""
    return f"{method}/{size}/lr{lr}-s{seed}"


def run_dir(results: str | Path, method: str, size: str, lr: str, seed) -> Path:
    """A run's folder under a benchmark's results folder (``lr`` a label, see ``lr_label``)."""
    return Path(results) / RUNS / run_name(method, size, lr, seed)


def results_of_run(run_folder: str | Path) -> Path | None:
    """The results folder a run folder lies in (the inverse of ``run_dir``: four levels up,
    ``<results>/runs/<method>/<size>/<lr-seed>``), or None when the path is too short."""
    parents = Path(run_folder).resolve().parents
    return parents[3] if len(parents) > 3 else None
