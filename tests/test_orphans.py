"""No trainer outlives its workflow, whatever the timing (issue 21): a stand-in for Snakemake
(a process that marks itself as the workflow, as workflow/rules/repair.smk does, and starts
`stabench train` through bash like a Snakemake job, or directly) is killed with SIGKILL at
several moments of the job's first second, before and after the job could start following
it; within a few seconds no trainer is left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pidfds, prctl and /proc are Linux")


def trainers(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmd and b"stabench" in cmd and b"train" in cmd and b"bash" not in cmd:
                found.append(int(entry.name))
    return found


WORKFLOW = textwrap.dedent("""
    import subprocess, sys, time
    from stabench import lifeline
    lifeline.mark_workflow()
    argv, via_shell, log = sys.argv[2:], sys.argv[1] == "shell", sys.argv[2 + sys.argv[2:].index("--out") + 1] + ".log"
    if via_shell:  # as Snakemake runs a job: bash -c "set -euo pipefail; python -m stabench ... > log 2>&1"
        job = subprocess.Popen(["bash", "-c", "set -euo pipefail; " + " ".join(argv) + f" > {log} 2>&1"])
    else:
        job = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(job.pid, flush=True)
    time.sleep(600)
""")


@pytest.mark.parametrize("via", ["shell", "direct"])
@pytest.mark.parametrize("delay", [0.0, 0.4, 1.0])
def test_a_trainer_ends_when_its_workflow_is_killed(engine_bench, tmp_path, via, delay):
    out = tmp_path / f"run-{uuid.uuid4().hex[:8]}"
    train = [sys.executable, "-m", "stabench", "train", str(engine_bench.path), "--method", "baseline", "--size",
             "tiny", "--lr", "1e-2", "--out", str(out), "--data", str(engine_bench.data_dir), "--threads", "1",
             "--no-progress", "--set", "train.steps=100000"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("STABENCH_WORKFLOW_PID", None)
    workflow = subprocess.Popen([sys.executable, "-c", WORKFLOW, via, *train], env=env, stdout=subprocess.PIPE,
                                text=True, start_new_session=True)
    try:
        workflow.stdout.readline()  # the job has been started
        time.sleep(delay)
        os.kill(workflow.pid, signal.SIGKILL)
        workflow.wait()
        time.sleep(2)  # the job may not have started its trainer yet: give it time to appear
        deadline = time.monotonic() + 6
        while trainers(str(out)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not trainers(str(out)), f"a trainer outlived its workflow killed {delay} s after starting it"
    finally:
        for pid in trainers(str(out)):
            os.kill(pid, signal.SIGKILL)
        if workflow.poll() is None:
            workflow.kill()


def test_a_workflow_on_another_machine_or_boot_is_not_followed(monkeypatch):
    """An id inherited from elsewhere (a cluster job's environment) names no process here."""
    from stabench import lifeline
    monkeypatch.setenv(lifeline.VARIABLE, "4194000@another-boot:12345")
    assert lifeline._workflow() == (4194000, None)
    assert lifeline._follow() is False  # no process of ours, and this process lives on
