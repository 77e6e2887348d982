"""A job dies with the workflow that started it.

Snakemake runs each job as ``bash -c "python -m stabench ..."``; killed with ``kill -9``,
Snakemake cannot stop its jobs, and the shell in between keeps them alive, so a training run
would go on alone and race the job a resumed workflow starts for the same run (the run lock
makes that job fail instead of corrupting the run, but the orphan still holds the CPU). The
workflow records its process id in ``STABENCH_WORKFLOW_PID`` (``mark_workflow``); a stabench
command started under it (``follow_workflow``) watches that process through a pidfd, which
cannot be fooled by a reused pid, and kills itself the moment it ends.

Whatever the timing: ``python -m stabench`` follows before it imports anything heavy (torch
takes seconds), and a workflow that is already gone when the job looks is recognised by its
identity in the variable (``<pid>@<boot id>:<start time>``): on the same machine, no process
with that pid and start time means the workflow ended, and the job kills itself at once
instead of training alone. The job also asks the kernel to kill it when its own parent (the
job's shell) dies (``PR_SET_PDEATHSIG``), and checks that parent is still there once armed.
A workflow alive on this machine but not an ancestor (a local scheduler started the job), or
an id inherited from another machine (a cluster job's environment, another boot id), is not
followed. Linux only (pidfds, /proc, prctl); elsewhere a job outlives a killed workflow as before.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
import threading

VARIABLE = "STABENCH_WORKFLOW_PID"
PR_SET_PDEATHSIG = 1
_following: bool | None = None  # the answer of the first follow_workflow() of this process


def boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def start_time(pid: int) -> str | None:
    """The process's start time since boot (clock ticks, /proc/<pid>/stat field 22), or None
    when no such process exists: with the pid, an identity no later process can have."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if len(fields) < 20 or fields[0] in ("Z", "X"):  # a zombie has ended, only not been reaped yet
        return None
    return fields[19]


def mark_workflow() -> None:
    """Called by the workflow: its jobs (which inherit the environment) follow this process."""
    pid = os.getpid()
    os.environ[VARIABLE] = f"{pid}@{boot_id()}:{start_time(pid)}"


def _die(why: str) -> None:
    print(f"stabench: {why}; this job ends with it", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def _arm_parent_death() -> None:
    """SIGKILL when this process's parent (the job's shell) exits; then check it is still there."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):
        return
    if os.getppid() != parent or parent == 1:  # it died before the kernel was asked to tell
        _die("the job's parent process ended before it started")


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


def _workflow() -> tuple[int, str | None] | None:
    """(pid, its start time when the variable was set on this machine's current boot) of the
    workflow named in the environment, or None."""
    value = os.environ.get(VARIABLE, "")
    pid_text, _, ident = value.partition("@")
    try:
        pid = int(pid_text)
    except ValueError:
        return None
    boot, _, started = ident.rpartition(":")
    here = boot and boot == boot_id() and started not in ("", "None")
    return pid, started if here else None


def follow_workflow() -> bool:
    """If a workflow started this process, die with it; True when following one. Dies at once
    when the workflow has already ended. Only the first call of a process acts."""
    global _following
    if _following is None:
        _following = _follow()
    return _following


def _follow() -> bool:
    found = _workflow()
    if found is None:
        return False
    pid, started = found
    if started is not None and start_time(pid) != started:
        _die(f"the workflow that started this job (pid {pid}) has ended")
    if not hasattr(os, "pidfd_open") or not is_ancestor(pid):
        return False
    if sys.platform.startswith("linux"):
        _arm_parent_death()
    try:
        fd = os.pidfd_open(pid)
    except OSError:  # it ended between the two looks
        _die(f"the workflow that started this job (pid {pid}) has ended")
    if not is_ancestor(pid) or (started is not None and start_time(pid) != started):
        _die(f"the workflow that started this job (pid {pid}) has ended")

    def wait() -> None:
        select.select([fd], [], [])  # readable once the process has ended
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=wait, name="stabench-lifeline", daemon=True).start()
    return True
