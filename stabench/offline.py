"""No network unless the benchmark asks for it.

The default path (the embedded corpus, a BPE trained on it, the offline zero-shot tasks)
needs nothing from the internet, yet the Hugging Face libraries phone home on their own:
``datasets`` counts every ``load_dataset`` (lm-eval loads each task's jsonl through it) with
a request to the hub, and a mistyped tokenizer path becomes hub lookups retried for half a
minute. So every stabench process (and the workflow, whose jobs inherit its environment)
switches the libraries' offline mode on (``go_offline``) unless the benchmark names something
only the hub has (``stabench.benchmark.network_for`` asks; ``stabench.evaluation.runner.hub_offline``
decides for hub tasks). This module imports nothing of stabench: every layer may use it.
"""

from __future__ import annotations

import os
import sys

# Read by huggingface_hub, datasets, evaluate and transformers when they are imported.
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE", "TRANSFORMERS_OFFLINE")


def go_offline() -> None:
    """Offline mode for this process and its children; also in the libraries' config when they
    are already imported (they read the variables once, at import)."""
    for name in OFFLINE_VARIABLES:
        os.environ[name] = "1"
    if (hub := sys.modules.get("huggingface_hub.constants")) is not None:
        hub.HF_HUB_OFFLINE = True
    if (cfg := sys.modules.get("datasets.config")) is not None:
        cfg.HF_HUB_OFFLINE = cfg.HF_DATASETS_OFFLINE = True
