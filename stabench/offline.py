"""No network unless the benchmark asks for it.

The default path (the embedded corpus, a BPE trained on it, the offline zero-shot tasks)
needs nothing from the internet, yet the Hugging Face libraries phone home on their own:
``datasets`` counts every ``load_dataset`` (lm-eval loads each task's jsonl through it) with
a request to the hub, and a mistyped tokenizer path becomes hub lookups retried for half a
minute. So every stabench process (and the workflow, whose jobs inherit its environment)
switches the libraries' offline mode on unless the benchmark names something only the hub
has: an ``hf:`` dataset that is no local folder, a hub tokenizer, or an lm-eval task that is
not one of the offline ones (``stabench.evaluation.runner.hub_offline`` then decides).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Read by huggingface_hub, datasets, evaluate and transformers when they are imported.
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE", "TRANSFORMERS_OFFLINE")


def hub_needs(benchmark: dict) -> list[str]:
    """What in ``benchmark`` needs the hub (empty: the benchmark runs offline)."""
    from .data.tokenizer import looks_like_path
    from .evaluation.tasks import LOCAL_NAMES

    data, needs = benchmark["data"], []
    if data["source"].startswith("hf:") and not Path(data["source"][3:].partition(":")[0]).exists():
        needs.append(f"data.source {data['source']!r}")
    if data["tokenizer"] != "bpe" and not looks_like_path(data["tokenizer"]):
        needs.append(f"data.tokenizer {data['tokenizer']!r}")
    if benchmark["eval"]["runs"] != "none":
        needs += [f"eval task {t!r}" for t in benchmark["eval"]["tasks"] if t not in LOCAL_NAMES]
    return needs


def go_offline() -> None:
    """Offline mode for this process and its children; also in the libraries' config when they
    are already imported (they read the variables once, at import)."""
    for name in OFFLINE_VARIABLES:
        os.environ[name] = "1"
    if (hub := sys.modules.get("huggingface_hub.constants")) is not None:
        hub.HF_HUB_OFFLINE = True
    if (cfg := sys.modules.get("datasets.config")) is not None:
        cfg.HF_HUB_OFFLINE = cfg.HF_DATASETS_OFFLINE = True


def network_for(benchmark: dict) -> list[str]:
    """Go offline unless the benchmark needs the hub; return what needs it."""
    needs = hub_needs(benchmark)
    if not needs:
        go_offline()
    return needs
