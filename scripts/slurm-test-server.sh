#!/usr/bin/env bash
# A throw-away one-node Slurm cluster (Debian's slurm-wlm 22.05 + munge) for the test suite,
# shaped like NERSC Perlmutter: one node with Features=gpu,cpu and four fake GPUs, partitions
# 'gpu' and 'cpu', and a job_submit.lua that routes jobs by constraint (-C gpu|cpu) the way
# Perlmutter does and refuses jobs without one. EnforcePartLimits=ALL makes impossible jobs
# fail at sbatch instead of pending forever.
#
# Everything lives under one run directory (munge key/socket/pid, slurm.conf, gres.conf,
# job_submit.lua, fake GPU device files, state and spool, logs, pids). Daemons run in the
# background and are stopped by their own pids. Needs root (slurmd, munge's key); installs
# slurm-wlm, munge and libpmix-dev from Debian when missing.
#
# Usage: scripts/slurm-test-server.sh start|stop|env|status
#   start  start (idempotently) and print the lines the caller must export (as `env`; plus
#          AUTOPIPE_SLURM_STARTED=1 when this call started the daemons)
#   env    print `export SLURM_CONF=...` lines for a running cluster
#   stop   stop the daemons started by `start`
# Environment: AUTOPIPE_SLURM_PORT (default 56817; slurmd uses +1), AUTOPIPE_SLURM_DIR.
set -euo pipefail
PORT=${AUTOPIPE_SLURM_PORT:-56817}
RUN=${AUTOPIPE_SLURM_DIR:-/tmp/autopipe-slurm-$PORT}
CONF=$RUN/etc/slurm.conf
SOCK=$RUN/munge/munge.socket
# libpmix-dev: Slurm's mpi/pmix plugin dlopens the unversioned libpmix.so; without it `srun`
# cannot start Debian's Open MPI programs (pw.x) as steps ("OMPI was not built with SLURM's PMI
# support"). slurmd loads the plugin at start, so it must be there before slurmd starts.
PACKAGES=(slurm-wlm munge libpmix-dev)

say() { echo "slurm-test-server: $*" >&2; }

print_env() {
    echo "export SLURM_CONF=$CONF"
    echo "export AUTOPIPE_TEST_SLURM=1"
}

alive() {  # alive NAME: the daemon whose pid is in $RUN/pid/NAME.pid runs
    local f=$RUN/pid/$1.pid
    [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}

stop_one() {  # stop_one NAME: SIGTERM the recorded pid, wait up to 10 s, then SIGKILL
    local f=$RUN/pid/$1.pid pid
    [ -f "$f" ] || return 0
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
}

launch() {  # launch NAME CMD...: run CMD in the background, its own session, pid recorded
    setsid "${@:2}" </dev/null >"$RUN/log/$1.out" 2>&1 &
    echo $! >"$RUN/pid/$1.pid"
}

install_packages() {
    command -v slurmctld >/dev/null && command -v munged >/dev/null \
        && ls /usr/lib/*/pmix2/lib/libpmix.so >/dev/null 2>&1 && return 0
    if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null; then
        say "Slurm is not installed; install it as root (apt-get install ${PACKAGES[*]})"; exit 1
    fi
    say "installing ${PACKAGES[*]} from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
}

write_config() {
    mkdir -p "$RUN"/{etc,munge,state,spool,log,pid,gpu}
    chmod 700 "$RUN/munge"
    [ -s "$RUN/munge/munge.key" ] || {
        dd if=/dev/urandom of="$RUN/munge/munge.key" bs=1024 count=1 status=none
        chmod 400 "$RUN/munge/munge.key"
    }
    # Fake GPUs: character devices like /dev/null. gres.conf needs real device files
    # (without File= the node goes 'inval').
    for i in 0 1 2 3; do
        [ -e "$RUN/gpu/nvidia$i" ] || mknod "$RUN/gpu/nvidia$i" c 1 3
    done
    # This node as slurmd sees it; RealMemory a little below the measured value so that
    # memory used by other processes never drains the node.
    local node name mem
    node=$(slurmd -C | head -n 1)
    name=$(sed -E 's/^NodeName=([^ ]+).*/\1/' <<<"$node")
    mem=$(sed -E 's/.*RealMemory=([0-9]+).*/\1/' <<<"$node")
    node=$(sed -E "s/RealMemory=[0-9]+/RealMemory=$((mem * 8 / 10))/" <<<"$node")
    cat >"$CONF" <<EOF
# Written by scripts/slurm-test-server.sh; a one-node test cluster, not for production.
ClusterName=autopipe-test
SlurmctldHost=localhost
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$RUN/state
SlurmdSpoolDir=$RUN/spool
SlurmctldPidFile=$RUN/pid/slurmctld.daemon.pid
SlurmdPidFile=$RUN/pid/slurmd.daemon.pid
SlurmctldLogFile=$RUN/log/slurmctld.log
SlurmdLogFile=$RUN/log/slurmd.log
# No systemd, no cgroups here.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# srun starts MPI programs through PMIx by default, as a site's srun starts its own MPI.
MpiDefault=pmix
MailProg=/bin/true
ReturnToService=2
# Refuse at submission what can never run (too many nodes, too long, unknown partition).
EnforcePartLimits=ALL
# Route by constraint as Perlmutter does: job_submit.lua beside this file.
JobSubmitPlugins=lua
# Finished jobs stay visible to squeue/scontrol for 10 min, so tests can inspect them.
MinJobAge=600
# SIGTERM -> SIGKILL delay on scancel and at the end of the walltime.
KillWait=5
SchedulerParameters=sched_interval=5
GresTypes=gpu
$node NodeAddr=127.0.0.1 Features=gpu,cpu Gres=gpu:4 State=UNKNOWN
PartitionName=gpu Nodes=$name MaxTime=2-00:00:00 MaxNodes=1 State=UP
PartitionName=cpu Nodes=$name MaxTime=2-00:00:00 MaxNodes=1 State=UP Default=YES
EOF
    echo "Name=gpu File=$RUN/gpu/nvidia[0-3]" >"$RUN/etc/gres.conf"
    cat >"$RUN/etc/job_submit.lua" <<'EOF'
-- Perlmutter-style routing: the node type comes from the constraint, not the partition.
function slurm_job_submit(job_desc, part_list, submit_uid)
    local features = job_desc.features or ""
    if job_desc.partition == nil then
        if string.find(features, "gpu") then
            job_desc.partition = "gpu"
        elseif string.find(features, "cpu") then
            job_desc.partition = "cpu"
        else
            slurm.log_user("Job request does not match any supported policy: give a node type with -C gpu or -C cpu")
            return slurm.ERROR
        end
    end
    return slurm.SUCCESS
end

function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
    return slurm.SUCCESS
end
EOF
}

wait_idle() {  # the node answers and is idle (or mixed/allocated: jobs from an earlier start)
    for _ in $(seq 150); do
        if SLURM_CONF=$CONF sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then return 0; fi
        sleep 0.2
    done
    say "the node did not become idle in 30 s; see $RUN/log/"; SLURM_CONF=$CONF sinfo -N -l >&2 || true
    return 1
}

start() {
    if alive munged && alive slurmctld && alive slurmd; then print_env; return 0; fi
    trap 'stop_all' ERR  # a half-started cluster is stopped again
    [ "$(id -u)" = "0" ] || { say "needs root (slurmd and munged run as root here)"; exit 1; }
    install_packages
    stop_all  # whatever half is left from an earlier start
    write_config
    launch munged munged --foreground --force --socket="$SOCK" --key-file="$RUN/munge/munge.key" \
        --pid-file="$RUN/munge/munged.pid" --seed-file="$RUN/munge/munged.seed" \
        --log-file="$RUN/log/munged.log"
    for _ in $(seq 50); do [ -S "$SOCK" ] && break; sleep 0.1; done
    [ -S "$SOCK" ] || { say "munged did not start; see $RUN/log/munged.*"; return 1; }
    # -c: start from a clean state (no jobs from an earlier test session); -i: ignore bad state files.
    SLURM_CONF=$CONF launch slurmctld slurmctld -D -c -i -f "$CONF"
    SLURM_CONF=$CONF launch slurmd slurmd -D -f "$CONF"
    wait_idle
    trap - ERR
    print_env
    echo "export AUTOPIPE_SLURM_STARTED=1"  # this call started the daemons: the caller stops them
}

stop_all() {
    # Jobs first (slurmstepd and the job scripts are not children of the daemons), then daemons.
    if alive slurmctld; then
        local jobs
        jobs=$(SLURM_CONF=$CONF squeue -h -o %A 2>/dev/null | tr '\n' ' ')
        if [ -n "${jobs// /}" ]; then
            SLURM_CONF=$CONF scancel $jobs 2>/dev/null || true
            for _ in $(seq 100); do
                [ -z "$(SLURM_CONF=$CONF squeue -h -t R,CG -o %A 2>/dev/null)" ] && break; sleep 0.1
            done
        fi
    fi
    stop_one slurmd
    stop_one slurmctld
    stop_one munged
}

case "${1:-start}" in
start) start ;;
env) print_env ;;
stop) stop_all ;;
status)
    for d in munged slurmctld slurmd; do
        if alive $d; then echo "$d running (pid $(cat "$RUN/pid/$d.pid"))"; else echo "$d stopped"; fi
    done ;;
*) echo "usage: $0 start|stop|env|status" >&2; exit 2 ;;
esac
