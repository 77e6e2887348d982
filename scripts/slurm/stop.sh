#!/usr/bin/env bash
# Stop the SLURM daemons that scripts/slurm/setup.sh started, and nothing else: it reads the
# "name pid" lines setup.sh recorded and signals a pid only while it still runs that program
# (a pid reused by another process is left alone). Daemons that were running before setup.sh
# (a machine's own munged, say) were never recorded, so they keep running.
#
#   scripts/slurm/stop.sh                 # slurmd, slurmctld, munged (those setup.sh started)
#   scripts/slurm/stop.sh --only slurmd   # one of them (setup.sh uses it to restart on a new config)
set -euo pipefail

STATE_DIR=${STABENCH_SLURM_STATE:-/var/lib/stabench-slurm}
STARTED=$STATE_DIR/started
ONLY=""
[ "${1:-}" = --only ] && ONLY=${2:?"stop.sh: --only needs a daemon name"}

[ -e "$STARTED" ] || { echo "stop.sh: nothing to stop (no $STARTED)"; exit 0; }

stop_one() {  # stop_one NAME PID
    local name=$1 pid=$2
    if [ "$(cat /proc/"$pid"/comm 2>/dev/null)" != "$name" ]; then
        echo "stop.sh: $name (pid $pid) is no longer running"
        return
    fi
    kill -TERM "$pid"
    for _ in $(seq 100); do [ -e /proc/"$pid" ] || break; sleep 0.1; done
    if [ -e /proc/"$pid" ]; then
        echo "stop.sh: $name (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    echo "stop.sh: stopped $name (pid $pid)"
}

# the compute daemon first, then the controller, then munge (the others authenticate through it)
for name in slurmd slurmctld munged; do
    [ -n "$ONLY" ] && [ "$ONLY" != "$name" ] && continue
    line=$(grep "^$name " "$STARTED" || true)
    [ -n "$line" ] || continue
    stop_one "$name" "${line#* }"
    grep -v "^$name " "$STARTED" > "$STARTED.tmp" || true
    mv "$STARTED.tmp" "$STARTED"
done
[ -s "$STARTED" ] || rm -f "$STARTED"
