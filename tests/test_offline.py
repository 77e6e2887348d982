"""The default path makes no network access at all, evaluation included (issue 15, item 3).

Every Python process runs with tests/offline_guard first on its PYTHONPATH: its
sitecustomize installs an audit hook that fails any DNS lookup or connection (Unix sockets
aside) and logs it, so an attempt a library swallows still fails the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
GUARD = Path(__file__).resolve().parent / "offline_guard"


def no_network_env(log: Path) -> dict:
    """The environment of a process (and its children) that must not touch the network."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    return {**env, "PYTHONPATH": os.pathsep.join([str(GUARD), str(REPO), env.get("PYTHONPATH", "")]),
            "STABENCH_NETLOG": str(log)}


def network_attempts(log: Path) -> str:
    return log.read_text() if log.exists() else ""


def test_the_guard_catches_a_lookup(tmp_path):
    log = tmp_path / "net.log"
    code = "import socket\ntry:\n    socket.getaddrinfo('huggingface.co', 443)\nexcept OSError as e:\n    print(e)"
    proc = subprocess.run([sys.executable, "-c", code], env=no_network_env(log), capture_output=True, text=True)
    assert "forbidden" in proc.stdout and "getaddrinfo" in network_attempts(log)


# The smoke workflow under the guard: tests/test_workflow.py's session run (one run serves both).


def test_tokenizer_typo_is_one_line_without_network(tmp_path):
    bench = yaml.safe_load((REPO / "benchmarks" / "smoke.yaml").read_text())
    bench["data"]["tokenizer"] = "my_tokenizer.json"
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(bench))
    log = tmp_path / "net.log"
    proc = subprocess.run([sys.executable, "-m", "stabench", "prepare", str(path), "--out", str(tmp_path / "data")],
                          env=no_network_env(log), capture_output=True, text=True, cwd=tmp_path, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "data.tokenizer 'my_tokenizer.json': no such file" in lines[0]
    assert network_attempts(log) == ""
