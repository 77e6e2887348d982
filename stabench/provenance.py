"""What a report needs to be trusted later: method docs, versions, git commit, date.

Written next to the results by ``stabench describe`` so the report can say exactly which
code and which method versions produced the numbers.
"""

from __future__ import annotations

import platform
import subprocess
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from . import __version__
from .config import method_specs
from .methods import load_stack

REPO_ROOT = Path(__file__).resolve().parent.parent


def method_docs(benchmark: dict) -> dict[str, str]:
    """label -> docstring(s) of its methods, with version and arguments."""
    docs = {}
    for label, spec in method_specs(benchmark).items():
        parts = []
        for method in load_stack(spec["use"], spec["args"]).methods:
            args = ", ".join(f"{k}={v!r}" for k, v in method.args.items())
            parts.append(f"[{method.name} v{method.version}{'; ' + args if args else ''}]\n{method.doc}")
        docs[label] = "\n\n".join(parts)
    return docs


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown (not a git checkout)"
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def provenance() -> dict[str, str]:
    return {
        "stabench": __version__, "git commit": git_commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(), "torch": str(torch.__version__),
        "accelerate": _version("accelerate"), "snakemake": _version("snakemake"),
        "tokenizers": _version("tokenizers"), "host": f"{platform.system()} {platform.machine()}",
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
    }
