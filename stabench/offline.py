"""No network unless the benchmark asks for it.

The default path (the embedded corpus, a BPE trained on it, the offline zero-shot tasks)
needs nothing from the internet, yet the Hugging Face libraries phone home on their own:
``datasets`` counts every ``load_dataset`` (lm-eval loads each task's jsonl through it) with
a request to the hub, and a mistyped tokenizer path becomes hub lookups retried for half a
minute. So every stabench process (and the workflow, whose jobs inherit its environment)
switches the libraries' offline mode on (``go_offline``) unless the benchmark names something
only the hub has (``stabench.benchmark.network_for`` asks; ``stabench.evaluation.runner.hub_offline``
decides for hub tasks). When the hub is needed but unreachable (``hub_reachable``: one TCP
connection), a download is one look in the local cache (``hub_or_cache``), not half a minute of
retries, and a hub eval task is refused when the benchmark is loaded (``stabench.benchmark``).
This module imports nothing of stabench: every layer may use it.
"""

from __future__ import annotations

import os
import socket
import sys
from urllib.parse import urlparse

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


def offline_requested() -> bool:
    """HF_HUB_OFFLINE or HF_DATASETS_OFFLINE set to a true value (by the user or ``go_offline``)."""
    truthy = ("1", "true", "yes", "on")
    return any(os.environ.get(v, "").strip().lower() in truthy for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be used: offline mode not requested and one TCP connection
    to the hub (HF_ENDPOINT's host, else huggingface.co) opens within ``timeout`` seconds. No
    name resolution (no network) fails at once; a network that drops packets costs ``timeout``."""
    if offline_requested():
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def hub_or_cache(timeout: float = 3.0) -> bool:
    """Before a hub download: when the hub is unreachable, offline mode (``go_offline``), so the
    libraries look in their local cache once and fail at once, instead of retrying for half a
    minute. Returns whether the hub is reachable."""
    if hub_reachable(timeout):
        return True
    go_offline()
    return False
