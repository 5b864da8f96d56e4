#!/usr/bin/env bash
# local-slurm.sh: a real single-node SLURM cluster on this machine, for trying `snakemake --profile slurm`
# locally and for tests/workflow/test_slurm.py (CI). Debian/Ubuntu with apt, run as root, no systemd needed.
#
#   scripts/local-slurm.sh start    install (apt) if needed, configure, start; prints 'slurm up' when the node
#                                   is idle and sacct answers. Idempotent: reuses live daemons, restarts only
#                                   the SLURM daemons whose configuration changed.
#   scripts/local-slurm.sh stop     cancel the cluster's jobs, then stop, by the PIDs recorded in
#                                   $LOCAL_SLURM_HOME/pids, exactly the daemons this script started
#   scripts/local-slurm.sh status   daemons + sinfo (exit 0 only when slurmctld runs)
#   scripts/local-slurm.sh purge    stop, then delete $LOCAL_SLURM_HOME (job state, accounting DB, logs)
#
# Daemons, each in the foreground in its own session (setsid, so killing a caller's process group never takes
# one down): munged (private socket), mariadbd (private datadir, 127.0.0.1:$LOCAL_SLURM_DB_PORT), slurmdbd,
# slurmctld, slurmd. Everything listens on loopback only (6817-6819 and the DB port).
# The node gets $LOCAL_SLURM_GPUS fake GPUs: GRES gpu backed by null character devices (mknod), so
# `--gpus=N` / `--gres=gpu:N` are scheduled and the job sees CUDA_VISIBLE_DEVICES, without any GPU.
#
# Environment (defaults in brackets):
#   LOCAL_SLURM_HOME       state, logs, pid files, DB             [/var/lib/vqinsight-slurm]
#   LOCAL_SLURM_GPUS       fake GPUs on the node                  [2]
#   LOCAL_SLURM_CLUSTER    cluster name                           [vqinsight]
#   LOCAL_SLURM_PARTITION  the one partition (tests/slurm/profile)[debug]
#   LOCAL_SLURM_MEM_MB     node RealMemory                        [85% of what `slurmd -C` reports]
#   LOCAL_SLURM_DB_PORT    MariaDB port on 127.0.0.1              [3307]
#   LOCAL_SLURM_WAIT       seconds to wait for the node           [90]
#
# Writes /etc/slurm/{slurm.conf,gres.conf,slurmdbd.conf}; the client tools (sbatch, squeue, sacct) read
# /etc/slurm/slurm.conf by default, so nothing else needs configuring. SLURM 22.05 (Debian bookworm) is what this
# was tested with; the facts behind each setting are in the comments below.
set -euo pipefail

LS_HOME=${LOCAL_SLURM_HOME:-/var/lib/vqinsight-slurm}
FAKE_GPUS=${LOCAL_SLURM_GPUS:-2}
CLUSTER=${LOCAL_SLURM_CLUSTER:-vqinsight}
PARTITION=${LOCAL_SLURM_PARTITION:-debug}
DB_PORT=${LOCAL_SLURM_DB_PORT:-3307}
WAIT_S=${LOCAL_SLURM_WAIT:-90}
DB_PASS=slurmdbpass # throwaway accounting database, reachable on loopback only
CONF_DIR=/etc/slurm
PIDS=$LS_HOME/pids
LOGS=$LS_HOME/log
MUNGE_DIR=$LS_HOME/munge
MUNGE_SOCK=$MUNGE_DIR/munge.socket
MYSQL_DIR=$LS_HOME/mysql
MYSQL_RUN=$LS_HOME/mysqld
MYSQL_SOCK=$MYSQL_RUN/mysqld.sock
GPU_DIR=$LS_HOME/fakegpu
PACKAGES=(slurm-wlm slurm-client munge slurmdbd mariadb-server mariadb-client)

# daemon -> expected /proc/PID/comm, so a recycled PID is never mistaken for (or killed as) our daemon
declare -A COMM=([munged]=munged [mariadb]=mariadbd [slurmdbd]=slurmdbd [slurmctld]=slurmctld [slurmd]=slurmd)

log() { echo "[local-slurm] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# exit 3: this machine cannot host the cluster at all (tests skip on it)
unsupported() { log "UNSUPPORTED: $*"; exit 3; }

usage() { echo "usage: $0 start|stop|status|purge" >&2; exit 2; }
case "${1:-}" in start | stop | status | purge) ;; *) usage ;; esac
[ "$(id -u)" = 0 ] || unsupported "must run as root (it installs packages, writes /etc/slurm and runs daemons)"

alive() { # alive NAME: the recorded PID runs the expected program
  local f=$PIDS/$1.pid pid
  [ -s "$f" ] || return 1
  pid=$(cat "$f")
  [ -d "/proc/$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "${COMM[$1]}" ]
}

start_daemon() { # start_daemon NAME CMD... (CMD stays in the foreground)
  local name=$1 i
  shift
  if alive "$name"; then
    log "$name already running (pid $(cat "$PIDS/$name.pid"))"
    return
  fi
  rm -f "$PIDS/$name.pid"
  # new session; bash records its own PID, then execs the daemon, so the recorded PID is the daemon's
  setsid bash -c 'echo $$ > "$0"; exec "$@"' "$PIDS/$name.pid" "$@" >>"$LOGS/$name.out" 2>&1 </dev/null &
  for i in $(seq 1 50); do
    [ -s "$PIDS/$name.pid" ] && break
    sleep 0.1
  done
  log "started $name (pid $(cat "$PIDS/$name.pid" 2>/dev/null || echo '?'))"
}

stop_daemons() { # stop_daemons NAME...: TERM our recorded PIDs, wait up to 20 s, then KILL
  local name pid i left
  declare -A pids=()
  for name in "$@"; do
    [ -s "$PIDS/$name.pid" ] || continue
    if alive "$name"; then
      pid=$(cat "$PIDS/$name.pid")
      pids[$name]=$pid
      kill -TERM "$pid" 2>/dev/null || true
    else
      rm -f "$PIDS/$name.pid"
    fi
  done
  for i in $(seq 1 100); do
    left=0
    for name in "${!pids[@]}"; do [ -d "/proc/${pids[$name]}" ] && left=1; done
    [ "$left" = 0 ] && break
    sleep 0.2
  done
  for name in "${!pids[@]}"; do
    pid=${pids[$name]}
    if [ -d "/proc/$pid" ]; then
      log "$name (pid $pid) ignored TERM; sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDS/$name.pid"
    log "stopped $name (pid $pid)"
  done
}

wait_for() { # wait_for SECONDS DESCRIPTION CMD...
  local t=$1 what=$2 end
  shift 2
  end=$(($(date +%s) + t))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || {
      log "timed out after ${t}s waiting for $what"
      return 1
    }
    sleep 0.2
  done
}

write_if_changed() { # write_if_changed FILE MODE < content; status 0 if the file changed
  local f=$1 mode=$2 tmp
  tmp=$(mktemp)
  cat >"$tmp"
  if [ -f "$f" ] && cmp -s "$tmp" "$f"; then
    rm -f "$tmp"
    return 1
  fi
  install -m "$mode" "$tmp" "$f"
  rm -f "$tmp"
  return 0
}

install_packages() {
  local b missing=0 own_policy=0
  for b in slurmctld slurmd slurmdbd sbatch sacct munged mariadbd mariadb-install-db; do
    command -v "$b" >/dev/null || missing=1
  done
  [ "$missing" = 1 ] || return 0
  command -v apt-get >/dev/null || unsupported "SLURM is not installed and apt-get is not available to install it"
  log "apt-get install ${PACKAGES[*]}"
  # keep the packages' postinst scripts from starting system services (no systemd here; we run our own)
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    own_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || log "apt-get update failed; trying the cached package lists"
  apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null || {
    [ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    die "apt-get install ${PACKAGES[*]} failed"
  }
  [ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  return 0
}

configure() { # writes the configuration; CONF_CHANGED=1 if slurm.conf, gres.conf or slurmdbd.conf changed
  CONF_CHANGED=0
  mkdir -p "$PIDS" "$LOGS" "$LS_HOME/spool/ctld" "$LS_HOME/spool/d" "$CONF_DIR" "$MUNGE_DIR"
  NODE=$(hostname -s) # SlurmctldHost must be the short host name; slurmd gets -N with the same name

  # munge: the key (the package's postinst normally makes one) and a private socket directory
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null ||
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  fi
  chown munge:munge /etc/munge /etc/munge/munge.key
  chmod 700 /etc/munge
  chmod 400 /etc/munge/munge.key
  chown munge:munge "$MUNGE_DIR"
  chmod 755 "$MUNGE_DIR"

  # node topology as slurmd sees it (RealMemory above what slurmd -C reports puts the node in INVAL)
  local hw cpus boards spb cps tpc realmem mem
  hw=$(slurmd -C | head -1)
  get() { sed -n "s/.*\b$1=\([0-9]*\).*/\1/p" <<<"$hw"; }
  cpus=$(get CPUs)
  boards=$(get Boards)
  spb=$(get SocketsPerBoard)
  cps=$(get CoresPerSocket)
  tpc=$(get ThreadsPerCore)
  realmem=$(get RealMemory)
  mem=${LOCAL_SLURM_MEM_MB:-$((realmem * 85 / 100))}

  # fake GPUs: GRES needs character devices (plain files are rejected, no File= puts the node in INVAL);
  # null-device nodes (c 1 3) are enough for SLURM to bind them and set CUDA_VISIBLE_DEVICES
  local gres_node="" gres_types="" ngpu=$FAKE_GPUS i ok=1
  if [ "$ngpu" -gt 0 ]; then
    mkdir -p "$GPU_DIR"
    for i in $(seq 0 $((ngpu - 1))); do
      [ -c "$GPU_DIR/gpu$i" ] || mknod -m 666 "$GPU_DIR/gpu$i" c 1 3 2>/dev/null || ok=0
    done
    if [ "$ok" = 1 ]; then
      gres_node=" Gres=gpu:$ngpu"
      gres_types="GresTypes=gpu"
    else
      log "mknod failed: the node gets no fake GPUs"
      ngpu=0
    fi
  fi
  if [ "$ngpu" -gt 0 ]; then
    write_if_changed "$CONF_DIR/gres.conf" 644 <<EOF && CONF_CHANGED=1 || true
# written by vqinsight scripts/local-slurm.sh
AutoDetect=off
NodeName=$NODE Name=gpu File=$GPU_DIR/gpu[0-$((ngpu - 1))]
EOF
  else
    write_if_changed "$CONF_DIR/gres.conf" 644 </dev/null && CONF_CHANGED=1 || true
  fi

  write_if_changed "$CONF_DIR/slurm.conf" 644 <<EOF && CONF_CHANGED=1 || true
# written by vqinsight scripts/local-slurm.sh: single-node test cluster, loopback only
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCK
StateSaveLocation=$LS_HOME/spool/ctld
SlurmdSpoolDir=$LS_HOME/spool/d
SlurmctldPidFile=$LS_HOME/slurmctld.pidfile
SlurmdPidFile=$LS_HOME/slurmd.pidfile
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
# no cgroups and no systemd here: memory limits are not enforced, time limits are
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without a default, a job with no --mem takes the whole node's memory and jobs run one at a time
DefMemPerCPU=1000
SchedulerType=sched/backfill
ReturnToService=2
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
Waittime=0
# accounting through slurmdbd: the snakemake slurm plugin polls job states with sacct
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
# connections to slurmdbd authenticate with AccountingStoragePass (here: the private munge socket), not with
# AuthInfo; without it slurmctld uses /run/munge/munge.socket.2 and dies ("no TRES from it")
AccountingStoragePass=$MUNGE_SOCK
AccountingStoreFlags=job_comment
# record GPUs in AllocTRES, so sacct shows what a job got
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=5
JobCompType=jobcomp/none
$gres_types
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus Boards=$boards SocketsPerBoard=$spb CoresPerSocket=$cps ThreadsPerCore=$tpc RealMemory=$mem$gres_node State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

  write_if_changed "$CONF_DIR/slurmdbd.conf" 600 <<EOF && CONF_CHANGED=1 || true
# written by vqinsight scripts/local-slurm.sh
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=$LOGS/slurmdbd.log
PidFile=$LS_HOME/slurmdbd.pidfile
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=$DB_PASS
EOF
}

mysql_root() { mariadb --no-defaults --socket="$MYSQL_SOCK" -uroot "$@"; }

start_db() {
  if [ ! -d "$MYSQL_DIR/mysql" ]; then
    log "initialising the accounting database in $MYSQL_DIR"
    mkdir -p "$MYSQL_DIR"
    chown mysql:mysql "$MYSQL_DIR"
    mariadb-install-db --no-defaults --user=mysql --datadir="$MYSQL_DIR" \
      --auth-root-authentication-method=socket --skip-test-db >"$LOGS/mariadb-install.log" 2>&1 ||
      die "mariadb-install-db failed, see $LOGS/mariadb-install.log"
  fi
  mkdir -p "$MYSQL_RUN"
  chown mysql:mysql "$MYSQL_RUN" # mariadbd runs as mysql and writes its socket and pid file here
  start_daemon mariadb mariadbd --no-defaults --user=mysql --datadir="$MYSQL_DIR" \
    --socket="$MYSQL_SOCK" --pid-file="$MYSQL_RUN/mariadbd.pid" --port="$DB_PORT" \
    --bind-address=127.0.0.1 --log-error="$MYSQL_RUN/mariadb.log" --skip-log-bin \
    --innodb-buffer-pool-size=128M --innodb-log-file-size=64M --innodb-lock-wait-timeout=900
  wait_for 60 MariaDB mysql_root -e 'select 1' || die "MariaDB did not come up, see $MYSQL_RUN/mariadb.log"
  mysql_root -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
                 CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
                 GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
                 GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
  # slurmdbd before slurmctld: on a fresh state directory slurmctld needs it to register the cluster
  start_daemon slurmdbd slurmdbd -D
  wait_for 60 slurmdbd bash -c '(exec 3<>/dev/tcp/127.0.0.1/6819)' ||
    die "slurmdbd is not listening on 6819, see $LOGS/slurmdbd.log"
}

node_state() { sinfo -h -n "$NODE" -o %T 2>/dev/null | head -1 || true; }

do_start() {
  local t0 end st d resumed=0
  t0=$(date +%s.%N)
  install_packages
  configure
  if [ "$CONF_CHANGED" = 1 ] && { alive slurmctld || alive slurmd || alive slurmdbd; }; then
    log "configuration changed: restarting the SLURM daemons"
    stop_daemons slurmd slurmctld
    stop_daemons slurmdbd
  fi

  start_daemon munged setpriv --reuid=munge --regid=munge --init-groups \
    munged -F --socket="$MUNGE_SOCK" --pid-file="$MUNGE_DIR/munged.pid" \
    --log-file="$MUNGE_DIR/munged.log" --seed-file="$MUNGE_DIR/munged.seed"
  wait_for 30 munged bash -c "munge -S '$MUNGE_SOCK' -n | unmunge -S '$MUNGE_SOCK'" ||
    die "munged is not answering, see $MUNGE_DIR/munged.log"
  start_db
  start_daemon slurmctld slurmctld -D
  start_daemon slurmd slurmd -D -N "$NODE"

  end=$(($(date +%s) + WAIT_S))
  while :; do
    for d in slurmctld slurmd; do
      alive "$d" || {
        log "$d died; its last log lines:"
        tail -n 8 "$LOGS/$d.log" "$LOGS/$d.out" >&2 || true
        exit 1
      }
    done
    st=$(node_state)
    case "$st" in
    idle | mixed | allocated | completing) break ;;
    down* | drain* | inval* | fail*)
      if [ "$resumed" = 0 ] && alive slurmd; then
        sleep 1
        scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
        resumed=1
      fi
      ;;
    esac
    if [ "$(date +%s)" -ge "$end" ]; then
      log "node state '$st' after ${WAIT_S}s; last log lines:"
      tail -n 5 "$LOGS/slurmctld.log" "$LOGS/slurmd.log" >&2 || true
      exit 1
    fi
    sleep 0.25
  done
  # slurmctld registers the cluster (and the root account) with slurmdbd by itself; wait until sacct answers
  wait_for 60 sacct sh -c "sacctmgr -n list cluster format=cluster%60 | grep -qw '$CLUSTER' && sacct -n -X" ||
    die "sacct/sacctmgr are not answering, see $LOGS/slurmdbd.log"
  log "node $NODE: $(sinfo -h -n "$NODE" -o '%T cpus=%c mem=%m gres=%G partition=%P')"
  log "ready in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s (state: $LS_HOME)"
  echo "slurm up"
}

cancel_jobs() { # jobs outlive slurmd (slurmstepd is its own process): cancel them while slurmctld still runs
  local ids i
  alive slurmctld || return 0
  ids=$(squeue -h -o %A 2>/dev/null || true)
  [ -n "$ids" ] || return 0
  log "cancelling jobs: $(echo $ids)"
  # shellcheck disable=SC2086
  scancel $ids 2>/dev/null || true
  for i in $(seq 1 75); do
    [ -z "$(squeue -h -o %A 2>/dev/null || true)" ] && return 0
    sleep 0.2
  done
  log "jobs still listed after 15 s: $(squeue -h -o '%A %T' 2>/dev/null | tr '\n' ' ')"
}

do_stop() {
  cancel_jobs
  # in waves: slurmd first (it takes >20 s to exit when slurmctld is already gone), then slurmdbd (it may
  # still flush to the database), then the database and munged
  stop_daemons slurmd slurmctld
  stop_daemons slurmdbd
  stop_daemons mariadb munged
  echo "slurm down"
}

do_status() {
  local d
  for d in munged mariadb slurmdbd slurmctld slurmd; do
    if alive "$d"; then echo "$d: running (pid $(cat "$PIDS/$d.pid"))"; else echo "$d: not running"; fi
  done
  alive slurmctld || return 1
  sinfo
}

case "$1" in
start) do_start ;;
stop) do_stop ;;
status) do_status ;;
purge)
  do_stop
  rm -rf "$LS_HOME"
  echo "purged $LS_HOME"
  ;;
esac
