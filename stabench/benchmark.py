"""A benchmark loaded for use: its file's checks, the checks of the layers above, its network.

``stabench.config`` checks what a benchmark file says by itself (the schema, finite numbers,
fields that agree) and imports nothing of stabench. What only a higher layer can judge is
checked by that layer and run here, once, where a benchmark is loaded to be used (the CLI's
commands and the workflow's ``common.smk``):

- ``stabench.paths.lr_labels``: two LRs of the grid that would share a run folder;
- ``stabench.evaluation.tasks.check_task_names``: a mistyped offline task;
- ``stabench.evaluation.tasks.check_tasks_offline``: when the hub is unreachable
  (``stabench.offline.hub_reachable``), an ``eval.tasks`` entry that is no offline task (else
  it would switch the workflow online and be reported as skipped only after training);
- ``stabench.data.tokenizer.check_tokenizer_value``: a tokenizer file that does not exist.

Each failure is one line naming the benchmark file, as ``stabench.config.validate``'s are.

``network_for`` switches the Hugging Face libraries to offline mode (``stabench.offline``)
unless the benchmark names something only the hub has.
"""

from __future__ import annotations

import re
from pathlib import Path

from . import offline
from .config import ConfigError, load_benchmark, resolve_benchmark_path
from .data.tokenizer import check_tokenizer_value, looks_like_path
from .evaluation.tasks import LOCAL_NAMES, check_task_names, check_tasks_offline
from .methods import known_methods
from .paths import lr_labels

# stabench.config's line for a method label the schema refuses ('baseline+', 'a-b'): it says in
# words what is valid, and only this layer can list the method files.
_BAD_LABEL = re.compile(r"(^|: )methods\[\d+\](\.use)?: got ")


def check_for_use(benchmark: dict, source: str = "benchmark") -> dict:
    """The checks of the layers above ``stabench.config`` on a validated benchmark; a
    ConfigError of one line naming ``source``. Returns the benchmark."""
    try:
        lr_labels(benchmark["learning_rates"])  # two LRs that would share a run folder (0.001 and 1.0e-3)
        check_task_names(benchmark["eval"])  # a typo in an offline task would be looked for on the hub
        if _hub_tasks(benchmark) and not offline.hub_reachable():
            check_tasks_offline(benchmark["eval"])  # a hub task cannot run: refuse it now, not after training
        check_tokenizer_value(benchmark["data"]["tokenizer"])  # the data layer owns what a tokenizer value means
    except ValueError as exc:  # ConfigError, or the data layer's DataError
        raise ConfigError(f"{source}: {exc}") from None
    return benchmark


def load_for_use(name_or_path: str | Path, overrides: list[str] | None = None) -> dict:
    """Read, override and validate a benchmark file (``stabench.config.load_benchmark``), then
    run the checks of the layers above it."""
    path = resolve_benchmark_path(name_or_path)
    try:
        benchmark = load_benchmark(path, overrides)
    except ConfigError as exc:
        if _BAD_LABEL.search(str(exc)):
            raise ConfigError(f"{exc}; known methods: {', '.join(known_methods())}") from None
        raise
    return check_for_use(benchmark, source=str(path))


def hub_needs(benchmark: dict) -> list[str]:
    """What in ``benchmark`` needs the hub (empty: the benchmark runs offline): an ``hf:``
    dataset that is no local folder, a hub tokenizer, or an lm-eval task that is not one of the
    offline ones (``stabench.evaluation.runner.hub_offline`` then decides)."""
    return data_hub_needs(benchmark["data"]) + [f"eval task {t!r}" for t in _hub_tasks(benchmark)]


def _hub_tasks(benchmark: dict) -> list[str]:
    """The evaluated tasks that are not offline ones (the hub has their data, or no one has)."""
    if benchmark["eval"]["runs"] == "none":
        return []
    return [t for t in benchmark["eval"]["tasks"] if t not in LOCAL_NAMES]


def data_hub_needs(data: dict) -> list[str]:
    """What in a data section needs the hub: an ``hf:`` dataset that is no local folder, or a
    hub tokenizer."""
    needs = []
    if data["source"].startswith("hf:") and not Path(data["source"][3:].partition(":")[0]).exists():
        needs.append(f"data.source {data['source']!r}")
    if data["tokenizer"] != "bpe" and not looks_like_path(data["tokenizer"]):
        needs.append(f"data.tokenizer {data['tokenizer']!r}")
    return needs


def network_for_data(data: dict) -> list[str]:
    """Go offline unless the data needs the hub (a run's training); return what needs it."""
    needs = data_hub_needs(data)
    if not needs:
        offline.go_offline()
    return needs


def network_for(benchmark: dict) -> list[str]:
    """Go offline unless the benchmark needs the hub; return what needs it."""
    needs = hub_needs(benchmark)
    if not needs:
        offline.go_offline()
    return needs
