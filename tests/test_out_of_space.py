"""Out of space: a checkpoint or a result that does not fit is one line naming the folder and
the space the file needs, and nothing half-written is left (issue 21). The full disk is a
file-size limit (RLIMIT_FSIZE, as `ulimit -f`) in a child process, with SIGXFSZ ignored so
that a write past it fails with EFBIG instead of killing the process."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LIMIT = 200_000  # bytes: history and metrics fit, a checkpoint of the tiny model (~0.7 MB) does not

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE semantics of Linux")


def limited(limit: int):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def run_limited(argv: list[str], limit: int, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                          preexec_fn=limited(limit))


def test_a_checkpoint_that_does_not_fit_is_one_line_and_leaves_nothing(engine_bench, tmp_path):
    out = tmp_path / "run"
    proc = run_limited([sys.executable, "-m", "stabench", "train", str(engine_bench.path), "--method", "baseline",
                        "--size", "tiny", "--lr", "1e-2", "--out", str(out), "--data", str(engine_bench.data_dir),
                        "--threads", "1", "--no-progress", "--set", "train.steps=20",
                        "--set", "train.checkpoint_every=10"], LIMIT, tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"stabench: error: {out}: no room for checkpoint.pt, which needs about "), lines[0]
    assert "(over the file-size limit of 200.0 kB (ulimit -f)); nothing was written" in lines[0]
    assert "Traceback" not in proc.stderr and "iostream" not in proc.stderr
    left = sorted(p.name for p in out.iterdir() if p.name != ".stabench.lock")
    assert not any(name.endswith(".tmp") or name.startswith("checkpoint") for name in left), left
    assert "metrics.json" not in left


def test_a_result_that_does_not_fit_names_its_folder_and_size(tmp_path):
    code = ("from stabench.io import write_text\n"
            f"write_text({str(tmp_path / 'out' / 'big.json')!r}, 'x' * 50_000)\n")
    proc = run_limited([sys.executable, "-c", code], 10_000, tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"stabench.io.NoSpaceError: {tmp_path / 'out'}: no room for big.json, which needs about 50.0 kB (over "
        "the file-size limit of 10.0 kB (ulimit -f)); nothing was written: free some space there "
        "and run again")
    assert os.listdir(tmp_path / "out") == []
