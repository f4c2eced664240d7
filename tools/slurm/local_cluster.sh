#!/bin/bash
# A one-host Slurm cluster on this machine, for trying tools/slurm/train.sbatch for real (CI does;
# tests/test_slurm.py). Needs root and Debian's packages: apt-get install -y slurm-wlm munge.
#
#   tools/slurm/local_cluster.sh start    # munged + slurmctld + slurmd; waits until the node is idle
#   export SLURM_CONF=$(tools/slurm/local_cluster.sh conf)   # for sbatch / squeue / scontrol
#   tools/slurm/local_cluster.sh status
#   tools/slurm/local_cluster.sh stop     # ends the daemons this script started (by their pid files)
#
# Everything lives in $SLURM_LOCAL_DIR (default /tmp/slurm-local): slurm.conf, state, logs, pid
# files. No systemd (containers have none): the daemons are started directly, as root, and the
# configuration avoids what a container lacks: proctrack/linuxproc (no cgroups), task/none (no
# CPU binding). JobRequeue=1 so a preempted job can be requeued (train.sbatch does).
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/tmp/slurm-local}
CONF=$DIR/slurm.conf
HOST=$(hostname -s)
# Not nproc: it honours OMP_NUM_THREADS, and a node declared with fewer CPUs than a job asks for
# leaves the job pending forever (PartitionConfig).
CPUS=${SLURM_LOCAL_CPUS:-$(getconf _NPROCESSORS_ONLN)}
# munged runs as the munge user, which may not enter $DIR (e.g. under pytest's private tmp): its
# files go to a directory of their own, named after $DIR so that two clusters never share one.
MUNGE_DIR=/tmp/munge-local-$(echo -n "$DIR" | md5sum | cut -c1-8)
MUNGE_SOCKET=$MUNGE_DIR/munge.socket

die() { echo "local_cluster: $*" >&2; exit 1; }

write_conf() {
    mkdir -p "$DIR/ctld" "$DIR/d"
    cat > "$CONF" <<EOF
ClusterName=local
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire: a requeued job waits this long before it may start again (default 120 s).
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=${SLURM_LOCAL_CRED_EXPIRE:-10}
CryptoType=crypto/munge
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/d
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
SlurmctldPort=${SLURM_LOCAL_PORT:-6817}
SlurmdPort=$(( ${SLURM_LOCAL_PORT:-6817} + 1 ))
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# Look at pending jobs every few seconds (default 60 s / 30 s): a requeued job starts promptly.
SchedulerParameters=sched_interval=5,bf_interval=5
MpiDefault=none
JobRequeue=1
# Seconds between the SIGTERM and the SIGKILL when a job ends (time limit, scancel): the save's
# last chance on a real cluster; docs/CLUSTERS.md has the arithmetic.
KillWait=30
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Preemption as sites run it: a job in "urgent" requeues jobs of "local" after their GraceTime.
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
NodeName=$HOST CPUs=$CPUS State=UNKNOWN
PartitionName=local Nodes=$HOST Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=60
PartitionName=urgent Nodes=$HOST MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
EOF
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
    [ "$(id -u)" = 0 ] || die "needs root (slurmd runs jobs as their users)"
    for bin in munged slurmctld slurmd sinfo; do
        command -v "$bin" >/dev/null || [ -x "/usr/sbin/$bin" ] || die "$bin not found: apt-get install -y slurm-wlm munge"
    done
    export PATH=$PATH:/usr/sbin
    write_conf
    export SLURM_CONF=$CONF
    # munge: a key if the package did not make one; the daemon as the munge user, its socket here.
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p "$MUNGE_DIR" /var/lib/munge /var/log/munge
    chown munge:munge "$MUNGE_DIR" /var/lib/munge /var/log/munge
    if ! alive "$MUNGE_DIR/munged.pid"; then
        runuser -u munge -- munged --socket="$MUNGE_SOCKET" --pid-file="$MUNGE_DIR/munged.pid" \
            --log-file="$MUNGE_DIR/munged.log" --seed-file="$MUNGE_DIR/munged.seed"
    fi
    alive "$DIR/slurmctld.pid" || slurmctld -f "$CONF"
    alive "$DIR/slurmd.pid" || slurmd -f "$CONF"
    for _ in $(seq 60); do
        state=$(sinfo -h -n "$HOST" -o %t 2>/dev/null || true)
        if [ "$state" = idle ]; then
            echo "local_cluster: node $HOST idle; export SLURM_CONF=$CONF"
            return 0
        fi
        sleep 1
    done
    die "node $HOST not idle after 60 s (state '${state:-none}'); see $DIR/slurmctld.log and $DIR/slurmd.log"
}

stop() {
    # Jobs first: their processes (slurmstepd, the training) would outlive slurmd.
    if alive "$DIR/slurmctld.pid"; then
        export SLURM_CONF=$CONF PATH=$PATH:/usr/sbin
        scancel --partition=local,urgent --full 2>/dev/null || true
        for _ in $(seq 60); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.5; done
    fi
    # Only the daemons started here (their pid files), never by name: other Slurms may run.
    for pidfile in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$MUNGE_DIR/munged.pid"; do
        if alive "$pidfile"; then
            pid=$(cat "$pidfile")
            kill -TERM "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        fi
        rm -f "$pidfile"
    done
    rm -rf "$MUNGE_DIR"
    # Job state would requeue old jobs into the next start.
    rm -rf "$DIR/ctld" "$DIR/d"
    echo "local_cluster: stopped"
}

status() {
    for pidfile in "$MUNGE_DIR/munged.pid" "$DIR/slurmctld.pid" "$DIR/slurmd.pid"; do
        if alive "$pidfile"; then echo "$(basename "$pidfile" .pid): running ($(cat "$pidfile"))"
        else echo "$(basename "$pidfile" .pid): stopped"; fi
    done
    [ -f "$CONF" ] && SLURM_CONF=$CONF sinfo 2>/dev/null || true
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    conf) echo "$CONF" ;;
    *) echo "usage: $0 start|stop|status|conf" >&2; exit 2 ;;
esac
