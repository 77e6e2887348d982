"""A job dies with the workflow that started it.

Snakemake runs each job as ``bash -c "python -m stabench ..."``; killed with ``kill -9``,
Snakemake cannot stop its jobs, and the shell in between keeps them alive, so a training run
would go on alone and race the job a resumed workflow starts for the same run (the run lock
makes that job fail instead of corrupting the run, but the orphan still holds the CPU). The
workflow records its process id in ``STABENCH_WORKFLOW_PID`` (``mark_workflow``); a stabench
command started under it (``follow_workflow``) watches that process through a pidfd, which
cannot be fooled by a reused pid, and kills itself the moment it ends. Only an ancestor is
followed, so an id inherited across machines (a cluster job's environment) is ignored.
Linux only (pidfds, /proc); elsewhere a job outlives a killed workflow as before.
"""

from __future__ import annotations

import os
import select
import signal
import threading

VARIABLE = "STABENCH_WORKFLOW_PID"


def mark_workflow() -> None:
    """Called by the workflow: its jobs (which inherit the environment) follow this process."""
    os.environ[VARIABLE] = str(os.getpid())


def parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])  # the field after the state
    except (OSError, ValueError, IndexError):
        return None


def is_ancestor(pid: int) -> bool:
    current = os.getppid()
    for _ in range(32):
        if current == pid:
            return True
        if current in (None, 0, 1):
            return False
        current = parent_of(current)
    return False


def follow_workflow() -> bool:
    """If a workflow started this process, die with it; True when following one."""
    try:
        pid = int(os.environ.get(VARIABLE, ""))
    except ValueError:
        return False
    if not hasattr(os, "pidfd_open") or not is_ancestor(pid):
        return False
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False
    if not is_ancestor(pid):  # it ended between the two looks: this job is an orphan already
        os.kill(os.getpid(), signal.SIGKILL)

    def wait() -> None:
        select.select([fd], [], [])  # readable once the process has ended
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=wait, name="stabench-lifeline", daemon=True).start()
    return True
