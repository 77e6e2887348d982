#!/usr/bin/env bash
# A single-node SLURM on this machine, for the end-to-end test of profiles/slurm (and for
# trying the SLURM path on a laptop). Idempotent: a second call installs, writes and starts
# nothing that is already there, and only waits for the node.
#
#   sudo scripts/slurm/setup.sh     # install slurm-wlm + munge, configure, start, wait for idle
#   sudo scripts/slurm/stop.sh      # stop the daemons this script started, nothing else
#   sudo scripts/slurm/setup.sh --install-only   # only the packages (.ci/run, before the tests)
#
# Why these choices:
# - Debian's packages, started by hand (no systemd): CI machines and containers differ in
#   their init system; the daemons' own --daemonize works everywhere. A temporary
#   policy-rc.d keeps the packages' scripts from starting half-configured services.
# - No accounting daemon (AccountingStorageType=accounting_storage/none): slurmdbd needs a
#   MySQL server. Job status comes from squeue instead of sacct (profiles/slurm sets the
#   plugin's slurm-status-command: squeue); MinJobAge=600 keeps finished jobs visible to
#   squeue for 10 minutes, well above the plugin's 3 x 40 s threshold.
# - JobCompType=jobcomp/filetxt writes one line per finished job (id, name, state, times) to
#   $STATE_DIR/jobcomp.log: SLURM's own record that a job ran, read by tests/test_slurm.py.
# - No cgroup plugins (proctrack/linuxproc, task/none): they need a delegated cgroup tree,
#   which containers often lack. Memory is still a scheduling constraint (CR_Core_Memory),
#   so a job asking more than the node has is refused at sbatch time.
# The node gets the CPU count and memory slurmd itself detects (slurmd -C), so the
# scheduler never over-subscribes the machine.
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
STATE_DIR=${STABENCH_SLURM_STATE:-/var/lib/stabench-slurm}   # pids this script started, logs
MARK="# written by stabench scripts/slurm/setup.sh"
PARTITION=${STABENCH_SLURM_PARTITION:-main}
NODE=localhost

die() { echo "setup.sh: $*" >&2; exit 1; }
ms() { echo $(( $(date +%s%N) / 1000000 )); }
secs() { printf '%d.%d' $(( $1 / 1000 )) $(( $1 % 1000 / 100 )); }
T0=$(ms); T=$T0
phase() {  # phase NAME: print how long the step since the last phase took
    local t; t=$(ms)
    printf 'setup.sh: %-18s %6s s\n' "$1" "$(secs $(( t - T )))"
    T=$t
}

[ "$(id -u)" = 0 ] || die "needs root (installs packages and starts daemons); run it with sudo"

# 1. packages ---------------------------------------------------------------------------------
if ! dpkg -s slurmctld slurmd slurm-client munge >/dev/null 2>&1; then
    command -v apt-get >/dev/null || die "slurm-wlm and munge are missing and there is no apt-get to install them"
    if [ ! -e /usr/sbin/policy-rc.d ]; then  # packages start no service; this script does
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi
phase "install packages"
[ "${1:-}" = --install-only ] && exit 0

# 2. configuration ----------------------------------------------------------------------------
mkdir -p "$STATE_DIR" "$CONF_DIR" /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm /run/slurm
chown slurm:slurm /var/lib/slurm/slurmctld /var/log/slurm /run/slurm "$STATE_DIR"
if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script; refusing to replace a real SLURM configuration"
fi
# slurmd -C prints this machine's hardware as slurmd sees it, e.g.
# NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105
HW=$(slurmd -C | head -1 | sed -E 's/^NodeName=[^ ]+ //; s/ *$//')
echo "$HW" | grep -q "CPUs=" || die "slurmd -C did not report the CPUs of this machine: $HW"
# slurmd -C sees the hardware; a container or an affinity mask may allow fewer CPUs: use those
HW_CPUS=$(echo "$HW" | sed -E 's/.*CPUs=([0-9]+).*/\1/')
if [ "$(nproc)" -lt "$HW_CPUS" ]; then
    HW="CPUs=$(nproc) $(echo "$HW" | grep -o 'RealMemory=[0-9]*')"
fi
NEW_CONF=$(cat <<CONF
$MARK
# A single-node SLURM for stabench's tests; see the script for why each setting is here.
ClusterName=stabench
SlurmctldHost=localhost
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE_DIR/jobcomp.log
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$NODE NodeAddr=127.0.0.1 $HW State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
)
changed=0
if [ ! -e "$CONF" ] || [ "$(cat "$CONF")" != "$NEW_CONF" ]; then
    echo "$NEW_CONF" > "$CONF"
    changed=1
fi
phase "write slurm.conf"

# 3. daemons ----------------------------------------------------------------------------------
running() {  # running NAME: a process with exactly this command name exists
    pgrep -x "$1" >/dev/null
}
remember() {  # remember NAME PIDFILE: record that this script started NAME
    local pid
    for _ in $(seq 50); do [ -s "$2" ] && break; sleep 0.1; done
    pid=$(cat "$2" 2>/dev/null) || die "$1 did not write its pid file $2"
    echo "$1 $pid" >> "$STATE_DIR/started"
}
started_by_us() { [ -e "$STATE_DIR/started" ] && grep -q "^$1 " "$STATE_DIR/started"; }

if ! running munged; then
    if [ ! -s /etc/munge/munge.key ]; then
        mungekey --create --keyfile /etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- /usr/sbin/munged
    remember munged /run/munge/munged.pid
fi
munge -n | unmunge >/dev/null || die "munge does not work (munge -n | unmunge failed)"
phase "start munged"

if [ "$changed" = 1 ]; then  # a new slurm.conf: restart the daemons we own so they read it
    for d in slurmd slurmctld; do
        if started_by_us "$d" && running "$d"; then
            "$(dirname "$0")/stop.sh" --only "$d"
        fi
    done
fi
for d in slurmctld slurmd; do
    if running "$d" && ! started_by_us "$d"; then
        die "$d is already running and was not started by this script; stop it or use that SLURM"
    fi
done
if ! running slurmctld; then
    slurmctld
    remember slurmctld /run/slurm/slurmctld.pid
fi
for _ in $(seq 60); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.5; done
scontrol ping | grep -q UP || die "slurmctld does not answer; see /var/log/slurm/slurmctld.log"
phase "start slurmctld"

if ! running slurmd; then
    slurmd -N "$NODE"
    remember slurmd /run/slurm/slurmd.pid
fi
phase "start slurmd"

# 4. wait until the node takes jobs -----------------------------------------------------------
state=""
for _ in $(seq 120); do
    state=$(sinfo -h -N -n "$NODE" -o %t 2>/dev/null | head -1)
    [ "$state" = idle ] && break
    case "$state" in drain*|drng|inval|fail*|down*)
        # after a restart the node may still be down from before: resume it once
        scontrol update nodename="$NODE" state=resume 2>/dev/null || true ;;
    esac
    sleep 0.5
done
[ "$state" = idle ] || die "node $NODE is '$state', not idle, after 60 s: $(sinfo -h -R -o '%E' | head -1); see /var/log/slurm/slurmd.log"
phase "node idle"
printf 'setup.sh: %-18s %6s s  (partition %s: %s)\n' "total" "$(secs $(( $(ms) - T0 )))" "$PARTITION" "$HW"
