"""Forbid the network in every Python process that has this folder on its PYTHONPATH.

Python imports ``sitecustomize`` at start-up, so putting this folder first on PYTHONPATH
(Snakemake's jobs inherit it) installs an audit hook in the workflow, every job and every
process they start. Any DNS lookup or connection other than a Unix socket is written to
$STABENCH_NETLOG (a library that catches the error cannot hide the attempt) and fails.
"""

import os
import socket
import sys
import traceback

_LOG = os.environ.get("STABENCH_NETLOG")
_EVENTS = ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex",
           "socket.gethostbyaddr", "socket.sendto", "socket.sendmsg")


def _forbid(event, args):
    if event not in _EVENTS:
        return
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg") and \
            getattr(args[0], "family", None) == socket.AF_UNIX:
        return
    with open(_LOG, "a") as f:
        f.write(f"{os.getpid()} {' '.join(sys.argv[:3])}: {event} {args!r}\n")
        f.write("".join(traceback.format_stack(limit=40)[:-1]) + "\n")
    raise OSError(f"network access forbidden by tests/offline_guard: {event}")


if _LOG:
    sys.addaudithook(_forbid)
