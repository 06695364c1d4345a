#!/usr/bin/env bash
# Start a real local Slurm cluster for hpcflow's tests, CI and image.
#
# Order: munged -> mariadbd -> slurmdbd -> slurmctld -> slurmd(s). Each daemon
# is started only if it is not running (a second slurmctld/slurmd/slurmdbd
# would kill the first; a second munged fails), and each is waited for until
# it answers. The configs are regenerated on every call; a running daemon whose
# config differs from the one it was started with is restarted. So a repeated
# call with the same options is a quick check, and a call with other options
# reshapes the cluster. See README.md.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NODES=2
GPUS=2
ACCOUNTING=1

usage() {
  cat <<EOF
usage: $0 [--nodes 1|2] [--gpus N] [--no-accounting]
  --nodes N        slurmd instances on this host, named n1 (and n2); default 2
  --gpus N         fake GPUs (gres gpu) per node, 0-8; default 2
  --no-accounting  no slurmdbd/MariaDB (sacct then reads jobcomp only with -c)
environment: HPCFLOW_SLURM_CONF_DIR (default /etc/slurm), HPCFLOW_SLURM_TIMEOUT
  (seconds per wait, default 30), HPCFLOW_SLURM_MEM_MB (RealMemory per node),
  HPCFLOW_SLURM_PROCTRACK=cgroup|linuxproc (skip detection), HPCFLOW_SLURM_DB_PORT (3307)
exit: 0 up, 1 could not start (the reason and log tails on stderr), 2 bad usage
EOF
}

parse_args() {
  while (($#)); do
    case $1 in
      --nodes) NODES=${2-}; shift $(($# > 1 ? 2 : 1)) ;;
      --nodes=*) NODES=${1#*=}; shift ;;
      --gpus) GPUS=${2-}; shift $(($# > 1 ? 2 : 1)) ;;
      --gpus=*) GPUS=${1#*=}; shift ;;
      --no-accounting) ACCOUNTING=0; shift ;;
      -h | --help) usage; exit 0 ;;
      *) usage >&2; exit 2 ;;
    esac
  done
  [[ $NODES =~ ^[12]$ ]] || { log "--nodes must be 1 or 2"; exit 2; }
  [[ $GPUS =~ ^[0-8]$ ]] || { log "--gpus must be 0 to 8"; exit 2; }
  NODE_NAMES=()
  local i
  for ((i = 1; i <= NODES; i++)); do NODE_NAMES+=("n$i"); done
}

check_installed() {
  local cmd missing=()
  for cmd in munged munge slurmctld slurmd scontrol sinfo; do
    command -v "$cmd" >/dev/null || missing+=("$cmd")
  done
  if ((ACCOUNTING)); then
    for cmd in slurmdbd mariadbd mariadb-install-db mariadb-admin sacctmgr; do
      command -v "$cmd" >/dev/null || missing+=("$cmd")
    done
  fi
  ((${#missing[@]} == 0)) || die "not installed: ${missing[*]}; run $(dirname "$0")/install.sh$( ((ACCOUNTING)) || echo ' --no-accounting')"
  getent passwd slurm >/dev/null || die "user slurm missing (the slurm packages create it)"
}

prepare_dirs() {
  install -d -m 755 "$RUN_DIR" "$RUN_DIR/gpu" "$CONF_DIR" /run/mysqld
  install -d -o munge -g munge -m 755 /run/munge
  install -d -o slurm -g slurm -m 755 "$STATE_DIR" "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd" "$LOG_DIR"
  # slurmctld runs as slurm and cannot create a root-owned jobcomp file (fatal).
  [[ -e $LOG_DIR/jobcomp.log ]] || install -o slurm -g slurm -m 644 /dev/null "$LOG_DIR/jobcomp.log"
  chown slurm:slurm "$LOG_DIR/jobcomp.log"
}

# proctrack/cgroup needs to create cgroups under the v1 freezer; try exactly
# that (a read-only mount still passes `test -w`). Containers and pure
# cgroup-v2 hosts fall back to linuxproc + affinity, with memory limits
# enforced by polling (OverMemoryKill).
detect_proctrack() {
  local probe=/sys/fs/cgroup/freezer/hpcflow-slurm-probe.$$
  PROCTRACK=${HPCFLOW_SLURM_PROCTRACK:-}
  if [[ -z $PROCTRACK ]]; then
    PROCTRACK=linuxproc
    if [[ -f /sys/fs/cgroup/freezer/tasks ]] && mkdir "$probe" 2>/dev/null; then
      rmdir "$probe"
      PROCTRACK=cgroup
    fi
  fi
  [[ $PROCTRACK == cgroup || $PROCTRACK == linuxproc ]] ||
    { log "HPCFLOW_SLURM_PROCTRACK must be cgroup or linuxproc"; exit 2; }
}

# CPU layout and memory from `slurmd -C`: a node claiming more than the host
# has is drained at registration. Both nodes claim the same cores; memory is
# split so that the nodes' sum stays below the host's (3/4 of it).
detect_hardware() {
  local out line real
  out=$(timeout 10 slurmd -C 2>/dev/null) || die "slurmd -C failed"
  line=${out%%$'\n'*}
  [[ $line =~ (CPUs=([0-9]+) .*ThreadsPerCore=[0-9]+) ]] || die "cannot parse slurmd -C: $line"
  CPU_LAYOUT=${BASH_REMATCH[1]}
  CPUS=${BASH_REMATCH[2]}
  [[ $line =~ RealMemory=([0-9]+) ]] || die "cannot parse slurmd -C: $line"
  real=${BASH_REMATCH[1]}
  MEM_MB=${HPCFLOW_SLURM_MEM_MB:-$((real * 3 / 4 / NODES / 100 * 100))}
  if ! [[ $MEM_MB =~ ^[0-9]+$ ]] || ((MEM_MB < 100 || MEM_MB > real)); then
    die "RealMemory per node $MEM_MB MB: must be 100..$real (slurmd -C)"
  fi
  # Without DefMemPerCPU each job gets the whole node's memory and jobs queue.
  DEF_MEM=$((MEM_MB / CPUS < 1000 ? MEM_MB / CPUS : 1000))
}

# GRES without GPUs: slurmd rejects regular files ("not a valid character or
# block device") and jobs then get no CUDA_VISIBLE_DEVICES, so make character
# devices (major 195, as NVIDIA's). Slurm only stat()s them; nothing opens
# them. Where mknod is not allowed (a container without CAP_MKNOD), symlinks
# to distinct character devices every system has do the same job.
make_fake_gpus() {
  local i dev spare=(/dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty)
  for ((i = 0; i < NODES * GPUS; i++)); do
    dev=$RUN_DIR/gpu/fakegpu$i
    [[ -c $dev && ! -L $dev && $(stat -c '%t:%T' "$dev") == "c3:$(printf %x "$i")" ]] && continue
    rm -f "$dev"
    mknod -m 600 "$dev" c 195 "$i" 2>/dev/null && continue
    [[ -c ${spare[i]-} ]] ||
      die "cannot create $dev (mknod needs CAP_MKNOD) and no spare character device: use --gpus 0 or fewer GPUs"
    ((i)) || log "mknod not permitted: fake GPUs are symlinks to ${spare[*]:0:NODES*GPUS}"
    ln -s "${spare[i]}" "$dev"
  done
}

slurm_conf() {
  local acct tres="" i node gres="" task=task/affinity overmem=""
  if [[ $PROCTRACK == cgroup ]]; then
    task=task/cgroup,task/affinity
  else
    overmem="JobAcctGatherParams=OverMemoryKill"$'\n' # polls RSS: no cgroup to enforce --mem
  fi
  if ((ACCOUNTING)); then
    acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819"
    tres="AccountingStorageTRES=gres/gpu"
  else
    acct="AccountingStorageType=accounting_storage/none"
  fi
  cat <<EOF
$MARKER
ClusterName=hpcflow
SlurmctldHost=localhost
SlurmUser=slurm
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
# Short credential life: a requeued job waits this long (default 120 s) to run again.
AuthInfo=cred_expire=10
StateSaveLocation=$STATE_DIR/slurmctld
SlurmdSpoolDir=$STATE_DIR/slurmd/%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
ProctrackType=proctrack/$PROCTRACK
TaskPlugin=$task
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$DEF_MEM
EnforcePartLimits=ALL
$acct
${tres:+$tres
}JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=5
${overmem}JobCompType=jobcomp/filetxt
JobCompLoc=$LOG_DIR/jobcomp.log
MpiDefault=pmi2
MailProg=/bin/true
GresTypes=gpu
EOF
  for ((i = 1; i <= NODES; i++)); do
    node=n$i
    ((GPUS)) && gres=" Gres=gpu:$GPUS"
    echo "NodeName=$node NodeAddr=127.0.0.1 Port=$((17000 + i)) $CPU_LAYOUT RealMemory=$MEM_MB$gres State=UNKNOWN"
  done
  echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=60 State=UP"
}

gres_conf() {
  local i first
  echo "$MARKER"
  echo "AutoDetect=off"
  ((GPUS)) || return 0
  for ((i = 1; i <= NODES; i++)); do
    first=$(((i - 1) * GPUS))
    echo "NodeName=n$i Name=gpu File=$RUN_DIR/gpu/fakegpu[$first-$((first + GPUS - 1))]"
  done
}

slurmdbd_conf() {
  cat <<EOF
$MARKER
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=slurm
LogFile=$LOG_DIR/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(cat "$DB_PASSFILE")
StorageLoc=slurm_acct_db
EOF
}

# put_file PATH MODE OWNER < CONTENT: replace PATH only if the content differs
# (a file without our marker is kept once as PATH.orig-hpcflow).
put_file() {
  local path=$1 mode=$2 owner=$3 tmp first=""
  tmp=$(mktemp "$path.XXXXXX")
  cat >"$tmp"
  chmod "$mode" "$tmp"
  chown "$owner" "$tmp"
  if [[ -f $path ]] && cmp -s "$tmp" "$path"; then
    rm -f "$tmp"
    chmod "$mode" "$path"
    chown "$owner" "$path"
    return 0
  fi
  if [[ -s $path ]]; then
    read -r first <"$path" || true
    if [[ $first != "$MARKER" && ! -e $path.orig-hpcflow ]]; then
      log "keeping the previous $path as $path.orig-hpcflow"
      cp -p "$path" "$path.orig-hpcflow"
    fi
  fi
  mv -f "$tmp" "$path"
}

# hash_files FILE...: a short digest of the config dir and the files' content.
hash_files() {
  local h
  h=$({ echo "$CONF_DIR"; cat "$@" 2>/dev/null || true; } | sha256sum)
  echo "${h:0:16}"
}

write_configs() {
  local first=""
  slurm_conf | put_file "$CONF_DIR/slurm.conf" 644 root:root
  gres_conf | put_file "$CONF_DIR/gres.conf" 644 root:root
  if [[ $PROCTRACK == cgroup ]]; then
    printf '%s\nConstrainCores=yes\nConstrainRAMSpace=yes\n' "$MARKER" |
      put_file "$CONF_DIR/cgroup.conf" 644 root:root
  elif [[ -f $CONF_DIR/cgroup.conf ]]; then
    # Unused without cgroup plugins; only ours is removed.
    read -r first <"$CONF_DIR/cgroup.conf" || true
    [[ $first != "$MARKER" ]] || rm -f "$CONF_DIR/cgroup.conf"
  fi
  declare -gA WANT_HASH=()
  WANT_HASH[slurm]=$(hash_files "$CONF_DIR/slurm.conf" "$CONF_DIR/gres.conf" "$CONF_DIR/cgroup.conf")
  if ((ACCOUNTING)); then
    # The innodb flags silence slurmdbd's "settings not recommended" error.
    DB_ARGS=(--no-defaults --user=root "--datadir=$DB_DIR" "--socket=$DB_SOCK"
      "--pid-file=$(pidfile_of mariadbd)" --bind-address=127.0.0.1 "--port=$DB_PORT"
      "--log-error=$(logfile_of mariadbd)" --innodb-buffer-pool-size=512M --innodb-lock-wait-timeout=900)
    WANT_HASH[mariadbd]=$(hash_files <(printf '%s\n' "${DB_ARGS[@]}"))
    if [[ ! -s $DB_PASSFILE ]]; then
      head -c 24 /dev/urandom | base64 | tr -d '+/=\n' >"$DB_PASSFILE"
      chmod 600 "$DB_PASSFILE"
    fi
    slurmdbd_conf | put_file "$CONF_DIR/slurmdbd.conf" 600 slurm:slurm
    WANT_HASH[slurmdbd]=$(hash_files "$CONF_DIR/slurmdbd.conf")
  fi
}

hash_key_of() {
  case $1 in
    slurmctld | slurmd:*) echo slurm ;;
    *) echo "$1" ;;
  esac
}
hash_record_of() { echo "$RUN_DIR/hash.${1/:/-}"; }

# stop_changed: stop, all at once, the running daemons whose config changed
# since they started (or that we did not start), and slurmds of nodes that no
# longer exist. Their restart below picks up the new config.
stop_changed() {
  local name pid node want have pids=() names=()
  for name in mariadbd slurmdbd slurmctld; do
    pid=$(daemon_pid "$name") || continue
    want=${WANT_HASH[$(hash_key_of "$name")]-}
    [[ -n $want ]] || continue # accounting off: slurmdbd may keep running, unused
    have=$(cat "$(hash_record_of "$name")" 2>/dev/null || true)
    [[ $have == "$want" ]] || { pids+=("$pid"); names+=("$name"); }
  done
  while read -r pid node; do
    have=$(cat "$(hash_record_of "slurmd:$node")" 2>/dev/null || true)
    if [[ " ${NODE_NAMES[*]} " != *" $node "* || $have != "${WANT_HASH[slurm]}" ]]; then
      pids+=("$pid")
      names+=("slurmd:$node")
    fi
  done < <(slurmd_pids)
  ((${#pids[@]})) || return 0
  log "config changed, restarting: ${names[*]}"
  terminate 20 "${pids[@]}" || die "could not stop: ${names[*]}"
  for name in "${names[@]}"; do
    [[ $name == "slurmd:?" ]] || rm -f "$(pidfile_of "$name")" "$(hash_record_of "$name")"
  done
}

# launch NAME CMD...: start a daemon that puts itself in the background. Its
# stdio goes to a file: a daemon holding our stdout would hang a caller that
# reads it through a pipe.
launch() {
  local name=$1 out
  shift
  out=$RUN_DIR/launch-${name/:/-}.out
  remove_stale_pidfile "$name"
  "$@" </dev/null >"$out" 2>&1 ||
    { log "$name failed to start (exit $?)"; tail_logs "$out" "$(logfile_of "$name")"; exit 1; }
  if [[ -n ${WANT_HASH[$(hash_key_of "$name")]-} ]]; then
    echo "${WANT_HASH[$(hash_key_of "$name")]}" >"$(hash_record_of "$name")"
  fi
  STARTED+=("$name")
}

# wait_ready NAME CHECK...: until CHECK succeeds; fail with the log's tail at
# the deadline, or at once if the daemon died.
wait_ready() {
  local name=$1 deadline=$((SECONDS + TIMEOUT)) grace=$((SECONDS + 2))
  shift
  until "$@"; do
    if ((SECONDS >= grace)) && ! daemon_pid "$name" >/dev/null; then
      log "$name exited during startup"
      tail_logs "$RUN_DIR/launch-${name/:/-}.out" "$(logfile_of "$name")"
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      log "$name not ready after ${TIMEOUT}s"
      tail_logs "$RUN_DIR/launch-${name/:/-}.out" "$(logfile_of "$name")"
      exit 1
    fi
    sleep 0.1
  done
}

# ensure NAME CHECK CMD...: start NAME with CMD unless it runs; wait for CHECK.
ensure() {
  local name=$1 check=$2
  shift 2
  daemon_pid "$name" >/dev/null || launch "$name" "$@"
  wait_ready "$name" "$check"
}

db_ok() { timeout 5 mariadb-admin --socket="$DB_SOCK" ping >/dev/null 2>&1; }

start_mariadb() {
  local out=$RUN_DIR/launch-mariadb-install-db.out pass
  if ! daemon_pid mariadbd >/dev/null; then
    rm -f "$DB_SOCK" # left by a SIGKILL
    if [[ ! -d $DB_DIR/mysql ]]; then
      rm -rf "$DB_DIR"
      timeout 120 mariadb-install-db --no-defaults --user=root --datadir="$DB_DIR" \
        --auth-root-authentication-method=socket --skip-test-db >"$out" 2>&1 ||
        { rm -rf "$DB_DIR"; log "mariadb-install-db failed"; tail_logs "$out"; exit 1; }
    fi
  fi
  # setsid: mariadbd does not daemonize, and must not die with our session.
  ensure mariadbd db_ok setsid -f mariadbd "${DB_ARGS[@]}"
  pass=$(cat "$DB_PASSFILE")
  timeout 10 mariadb --socket="$DB_SOCK" -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1';
    ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" ||
    die "could not create the slurm user in MariaDB"
}

# A node is ready when slurmctld lists it in a usable state AND has heard
# from its slurmd since slurmctld started: a restarted slurmctld shows the
# state it saved (idle, say) but refuses jobs on the node ("Requested node
# configuration is not available") until the node registers, which shows as
# SlurmdStartTime=None. For a slurmd started just now, SlurmdStartTime must
# also have changed. A drain reason or DOWN state kept from an earlier run is
# resumed.
wait_nodes() {
  local deadline=$((SECONDS + TIMEOUT)) same_second=$((SECONDS + 5)) node state pending
  local -A states=() started=() resumed=()
  while :; do
    states=()
    while read -r node state; do states[$node]=$state; done < <(timeout 5 sinfo -h -N -o '%N %T' 2>/dev/null || true)
    started=()
    while read -r node state; do started[$node]=$state; done < <(node_start_times)
    pending=()
    for node in "${NODE_NAMES[@]}"; do
      state=${states[$node]-missing}
      case $state in
        idle | mixed | allocated | completing | planned | reserved)
          # (an unchanged time is accepted after 5 s: a restart within the same second)
          if [[ ${started[$node]-None} == None ]] ||
            { [[ ${started[$node]} == "${OLD_START[$node]-}" ]] && ((SECONDS < same_second)); }; then
            pending+=("$node:registering")
          fi
          ;;
        drain* | down)
          pending+=("$node:$state")
          [[ -n ${resumed[$node]-} ]] && continue
          log "resuming $node (was $state: $(timeout 5 sinfo -h -n "$node" -o %E 2>/dev/null || true))"
          timeout 5 scontrol update nodename="$node" state=resume || true
          resumed[$node]=1
          ;;
        inval*)
          log "node $node is INVAL: $(timeout 5 sinfo -h -n "$node" -o %E 2>/dev/null || true)"
          tail_logs "$(logfile_of "slurmd:$node")" "$LOG_DIR/slurmctld.log"
          exit 1
          ;;
        *) pending+=("$node:$state") ;;
      esac
    done
    ((${#pending[@]})) || return 0
    if ((SECONDS >= deadline)); then
      log "nodes not ready after ${TIMEOUT}s: ${pending[*]}"
      timeout 5 sinfo -N -o '%N %T %E' >&2 || true
      for node in "${NODE_NAMES[@]}"; do tail_logs "$(logfile_of "slurmd:$node")"; done
      tail_logs "$LOG_DIR/slurmctld.log"
      exit 1
    fi
    sleep 0.1
  done
}

# node_start_times: "NODE SlurmdStartTime" lines ("None" before it registers).
node_start_times() {
  local line node
  while read -r line; do
    [[ $line =~ NodeName=([^ ]+) ]] || continue
    node=${BASH_REMATCH[1]}
    [[ $line =~ SlurmdStartTime=([^ ]+) ]] && echo "$node ${BASH_REMATCH[1]}"
  done < <(timeout 5 scontrol -o show nodes 2>/dev/null || true)
}

start_slurmds() {
  local node time running=0
  declare -gA OLD_START=()
  while read -r node time; do OLD_START[$node]=$time; done < <(node_start_times)
  for node in "${NODE_NAMES[@]}"; do
    if daemon_pid "slurmd:$node" >/dev/null; then
      running=1
      unset "OLD_START[$node]"
      continue
    fi
    install -d -m 755 "$STATE_DIR/slurmd/$node" # else slurmd logs "Domain socket directory ... No such file"
    launch "slurmd:$node" slurmd -N "$node" -f "$SLURM_CONF"
  done
  # A slurmctld started just now would wait ~5 s before asking running slurmds
  # to register; a reconfigure makes them register at once.
  if ((running)) && [[ " ${STARTED[*]} " == *" slurmctld "* ]]; then
    timeout 10 scontrol reconfigure || log "scontrol reconfigure failed (nodes register within ~5 s anyway)"
  fi
}

write_cluster_env() {
  local tmp
  tmp=$(mktemp "$CLUSTER_ENV.XXXXXX")
  cat >"$tmp" <<EOF
SLURM_CONF=$SLURM_CONF
HPCFLOW_SLURM_NODES=$NODES
HPCFLOW_SLURM_NODE_NAMES=$(
    IFS=,
    echo "${NODE_NAMES[*]}"
  )
HPCFLOW_SLURM_CPUS_PER_NODE=$CPUS
HPCFLOW_SLURM_MEM_PER_NODE_MB=$MEM_MB
HPCFLOW_SLURM_GPUS_PER_NODE=$GPUS
HPCFLOW_SLURM_ACCOUNTING=$ACCOUNTING
HPCFLOW_SLURM_PROCTRACK=$PROCTRACK
HPCFLOW_SLURM_PARTITION=debug
HPCFLOW_SLURM_MAX_TIME_MIN=60
EOF
  chmod 644 "$tmp"
  mv -f "$tmp" "$CLUSTER_ENV"
}

main() {
  local t0
  t0=$(now_ms)
  parse_args "$@"
  require_root
  check_installed
  STARTED=()
  prepare_dirs
  ensure_munge_key
  detect_proctrack
  detect_hardware
  ((GPUS == 0)) || make_fake_gpus
  write_configs
  stop_changed
  ensure munged munge_ok runuser -u munge -- munged
  if ((ACCOUNTING)); then
    start_mariadb
    ensure slurmdbd dbd_ok slurmdbd
  fi
  ensure slurmctld ctld_ok slurmctld -f "$SLURM_CONF"
  start_slurmds
  wait_nodes
  write_cluster_env
  printf 'slurm: up in %ss: %s node(s) %s, %s CPUs + %s MB + %s GPU(s) each, accounting %s, proctrack/%s, conf %s; started: %s\n' \
    "$(since "$t0")" "$NODES" "$(IFS=,; echo "${NODE_NAMES[*]}")" "$CPUS" "$MEM_MB" "$GPUS" \
    "$( ((ACCOUNTING)) && echo on || echo off)" "$PROCTRACK" "$CONF_DIR" "${STARTED[*]:-nothing}"
}

main "$@"
