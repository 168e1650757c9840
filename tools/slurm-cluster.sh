#!/usr/bin/env bash
# Single-node SLURM cluster for tests: munge, MariaDB + slurmdbd (so `sacct` works), slurmctld,
# slurmd, with fake GPUs as gres. Debian 12, run as root, no systemd needed.
#
#   tools/slurm-cluster.sh start    install missing packages, write the config, start the daemons,
#                                   create the account, wait until the node is idle (idempotent)
#   tools/slurm-cluster.sh stop     cancel leftover jobs, stop every daemon by its pid file
#                                   (reverse start order) and wait until each has exited
#   tools/slurm-cluster.sh status   show each daemon and the node state; exit 0 only if all run
#
# Environment (all optional):
#   GHANET_SLURM_DIR      state directory (spool, logs, pid files, database)  [/tmp/ghanet-slurm]
#   GHANET_SLURM_ACCOUNT  account created for root                           [ci]
#   GHANET_SLURM_GPUS     number of fake GPUs (/dev/fakegpuN, the /dev/null device) [2]
#   GHANET_SLURM_DB_PORT  TCP port of the private MariaDB on 127.0.0.1        [53306]
#   GHANET_SLURM_TIMEOUT  seconds to wait for each daemon to come up           [60]
#
# Besides the state directory it writes /etc/slurm/{slurm,gres,slurmdbd}.conf (refusing to
# overwrite files it did not write), the munge key if missing, and /dev/fakegpuN.
set -euo pipefail

STATE_DIR=${GHANET_SLURM_DIR:-/tmp/ghanet-slurm}
ACCOUNT=${GHANET_SLURM_ACCOUNT:-ci}
N_GPUS=${GHANET_SLURM_GPUS:-2}
DB_PORT=${GHANET_SLURM_DB_PORT:-53306}
TIMEOUT=${GHANET_SLURM_TIMEOUT:-60}

CLUSTER=ghanet
MARKER="# written by ghanet tools/slurm-cluster.sh"
CONF_DIR=/etc/slurm
RUN_DIR=$STATE_DIR/run
LOG_DIR=$STATE_DIR/log
DB_DIR=$STATE_DIR/mysql
DB_SOCKET=$RUN_DIR/mariadb.sock
MUNGE_PID=/run/munge/munged.pid
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server mariadb-client)
HOST=$(hostname -s)

log() { printf '[slurm-cluster] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Run a named step and print how long it took.
timed() {
    local name=$1 t0 t1
    shift
    t0=$(date +%s.%N)
    "$@"
    t1=$(date +%s.%N)
    log "$(awk -v n="$name" -v a="$t0" -v b="$t1" 'BEGIN { printf "%-22s %6.1f s", n, b - a }')"
}

# True when the pid file names a live process.
is_running() {
    local pidfile=$1 pid
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

# Poll a command until it succeeds; on timeout show the log that explains why.
wait_for() {
    local what=$1 logfile=$2
    shift 2
    local deadline=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            log "last lines of $logfile:"
            tail -n 30 "$logfile" >&2 2>/dev/null || true
            die "$what not ready after ${TIMEOUT}s (see $logfile)"
        fi
        sleep 0.5
    done
}

check_platform() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and starts daemons)"
    command -v apt-get >/dev/null || die "needs apt-get (Debian 12)"
}

missing_packages() {
    local pkg
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || echo "$pkg"
    done
}

# Install what is missing; policy-rc.d stops the packages' init scripts from starting daemons.
install_packages() {
    local missing
    mapfile -t missing < <(missing_packages)
    ((${#missing[@]})) || return 0
    log "installing: ${missing[*]}"
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        created_policy=1
    fi
    local rc=0
    {
        DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    } >"$STATE_DIR/apt.log" 2>&1 || rc=$?
    ((created_policy)) && rm -f "$policy"
    if ((rc != 0)); then
        tail -n 30 "$STATE_DIR/apt.log" >&2
        die "apt-get failed (exit $rc; log: $STATE_DIR/apt.log)"
    fi
}

# Write a config file unless a file not written by this script is already there.
write_config() {
    local path=$1 mode=$2 content=$3
    if [[ -e $path ]] && ! grep -qF "$MARKER" "$path"; then
        die "$path exists and was not written by this script; move it away to use the test cluster"
    fi
    printf '%s\n%s\n' "$MARKER" "$content" >"$path"
    chmod "$mode" "$path"
}

real_memory_mb() {
    local kb
    kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
    echo $((kb / 1024 - 1024))
}

make_fake_gpus() {
    local i
    for ((i = 0; i < N_GPUS; i++)); do
        [[ -c /dev/fakegpu$i ]] || mknod -m 666 "/dev/fakegpu$i" c 1 3
    done
}

write_configs() {
    mkdir -p "$CONF_DIR" "$RUN_DIR" "$LOG_DIR" "$STATE_DIR/ctld" "$STATE_DIR/slurmd"
    chmod 755 "$STATE_DIR"
    local cpus mem gres_line=""
    cpus=$(nproc)
    mem=$(real_memory_mb)
    ((N_GPUS > 0)) && gres_line="Gres=gpu:$N_GPUS"
    write_config "$CONF_DIR/slurm.conf" 644 "ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=600
KillWait=5
InactiveLimit=0
GresTypes=gpu
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/slurmd
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageEnforce=associations
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem $gres_line State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=1000"
    local files=""
    ((N_GPUS > 0)) && files="NodeName=$HOST Name=gpu File=/dev/fakegpu[0-$((N_GPUS - 1))]"
    write_config "$CONF_DIR/gres.conf" 644 "AutoDetect=off
$files"
    write_config "$CONF_DIR/slurmdbd.conf" 600 "AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$RUN_DIR/slurmdbd.pid
LogFile=$LOG_DIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db"
}

start_munge() {
    is_running "$MUNGE_PID" && return 0
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create --keyfile=/etc/munge/munge.key
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge
    chown munge:munge /run/munge
    runuser -u munge -- /usr/sbin/munged </dev/null
    wait_for munged /var/log/munge/munged.log munge -n
}

mariadb_sql() { mariadb --socket="$DB_SOCKET" -u root -e "$1"; }

start_mariadb() {
    is_running "$RUN_DIR/mariadb.pid" && return 0
    if [[ ! -d $DB_DIR/mysql ]]; then
        mkdir -p "$DB_DIR"
        chown mysql:mysql "$DB_DIR"
        mariadb-install-db --user=mysql --datadir="$DB_DIR" --skip-test-db \
            --auth-root-authentication-method=socket >"$LOG_DIR/mariadb-install.log" 2>&1 ||
            { tail -n 20 "$LOG_DIR/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
    fi
    chown mysql:mysql "$RUN_DIR" 2>/dev/null || true
    setsid mariadbd --no-defaults --user=mysql --datadir="$DB_DIR" --socket="$DB_SOCKET" \
        --pid-file="$RUN_DIR/mariadb.pid" --bind-address=127.0.0.1 --port="$DB_PORT" \
        --log-error="$LOG_DIR/mariadb.log" --innodb-buffer-pool-size=64M \
        </dev/null >/dev/null 2>&1 &
    wait_for MariaDB "$LOG_DIR/mariadb.log" mariadb-admin --socket="$DB_SOCKET" ping
    mariadb_sql "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
}

start_slurmdbd() {
    is_running "$RUN_DIR/slurmdbd.pid" && return 0
    slurmdbd </dev/null >>"$LOG_DIR/slurmdbd.log" 2>&1
    wait_for slurmdbd "$LOG_DIR/slurmdbd.log" sacctmgr -n list cluster
}

# Register the cluster, the account and root's association (each only if missing).
create_account() {
    [[ -n $(sacctmgr -n -P list cluster "$CLUSTER" format=cluster) ]] ||
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    [[ -n $(sacctmgr -n -P list account "$ACCOUNT" format=account) ]] ||
        sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description="test account" >/dev/null
    [[ -n $(sacctmgr -n -P list association user=root account="$ACCOUNT" format=account) ]] ||
        sacctmgr -i add user root Account="$ACCOUNT" Cluster="$CLUSTER" >/dev/null
}

start_slurmctld() {
    is_running "$RUN_DIR/slurmctld.pid" && return 0
    slurmctld </dev/null >>"$LOG_DIR/slurmctld.log" 2>&1
    wait_for slurmctld "$LOG_DIR/slurmctld.log" scontrol ping
}

start_slurmd() {
    is_running "$RUN_DIR/slurmd.pid" && return 0
    slurmd </dev/null >>"$LOG_DIR/slurmd.log" 2>&1
}

node_is_idle() { sinfo -h -o %T | grep -qx 'idle\|mixed\|allocated'; }

# An idle node accepts jobs; a drained one never will, so say why at once.
wait_node_idle() {
    local deadline=$((SECONDS + TIMEOUT)) state
    until node_is_idle; do
        state=$(sinfo -h -o '%T %E' 2>/dev/null || true)
        if [[ $state == drain* ]] || ((SECONDS >= deadline)); then
            tail -n 20 "$LOG_DIR/slurmd.log" >&2 || true
            die "node not idle (sinfo: '$state'); see $LOG_DIR/slurmd.log and $LOG_DIR/slurmctld.log"
        fi
        sleep 0.5
    done
}

configure() {
    write_configs
    make_fake_gpus
}

cmd_start() {
    check_platform
    mkdir -p "$STATE_DIR" "$RUN_DIR" "$LOG_DIR"
    local t0=$SECONDS
    timed "packages" install_packages
    timed "config + fake GPUs" configure
    timed "munged" start_munge
    timed "mariadbd" start_mariadb
    timed "slurmdbd" start_slurmdbd
    timed "account '$ACCOUNT'" create_account
    timed "slurmctld" start_slurmctld
    timed "slurmd" start_slurmd
    timed "node idle" wait_node_idle
    log "cluster '$CLUSTER' up in $((SECONDS - t0)) s: partition debug, account $ACCOUNT, $N_GPUS fake GPU(s)"
}

# Send TERM to the process in the pid file and wait until it has exited (KILL after 30 s).
stop_daemon() {
    local name=$1 pidfile=$2 pid i
    is_running "$pidfile" || { rm -f "$pidfile"; return 0; }
    pid=$(<"$pidfile")
    kill -TERM "$pid"
    for ((i = 0; i < 60; i++)); do
        kill -0 "$pid" 2>/dev/null || { log "stopped $name (pid $pid)"; rm -f "$pidfile"; return 0; }
        sleep 0.5
    done
    log "$name (pid $pid) ignored TERM for 30 s; sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pidfile"
}

# Cancel jobs still queued or running, so no job step outlives the cluster.
cancel_jobs() {
    is_running "$RUN_DIR/slurmctld.pid" || return 0
    local jobs
    jobs=$(squeue -h -o %i 2>/dev/null || true)
    [[ -z $jobs ]] && return 0
    log "cancelling leftover jobs: $(echo $jobs)"
    # shellcheck disable=SC2086
    scancel $jobs || true
    local deadline=$((SECONDS + 20))
    while [[ -n $(squeue -h -o %i 2>/dev/null) ]] && ((SECONDS < deadline)); do sleep 0.5; done
}

cmd_stop() {
    cancel_jobs
    stop_daemon slurmd "$RUN_DIR/slurmd.pid"
    stop_daemon slurmctld "$RUN_DIR/slurmctld.pid"
    stop_daemon slurmdbd "$RUN_DIR/slurmdbd.pid"
    stop_daemon mariadbd "$RUN_DIR/mariadb.pid"
    stop_daemon munged "$MUNGE_PID"
}

cmd_status() {
    local ok=0 name pidfile
    for name in munged mariadb slurmdbd slurmctld slurmd; do
        pidfile=$RUN_DIR/$name.pid
        [[ $name == munged ]] && pidfile=$MUNGE_PID
        if is_running "$pidfile"; then
            echo "$name: running (pid $(<"$pidfile"))"
        else
            echo "$name: stopped"
            ok=1
        fi
    done
    ((ok == 0)) && echo "node: $(sinfo -h -o '%N %T %G')"
    return $ok
}

case ${1:-} in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
*) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
