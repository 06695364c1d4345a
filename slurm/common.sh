# shellcheck shell=bash disable=SC2034 # the variables are for the scripts that source this
# Shared by install.sh, start.sh, stop.sh and status.sh: the layout, logging, and
# the process checks. Sourced, never run. See README.md for the layout.
#
# Process checks read /proc rather than trusting `kill -0`: PID 1 on these
# machines is not an init, so an exited daemon stays a zombie and `kill -0`
# still succeeds; and a stale pid file can name a PID that now belongs to
# another program, so the command name (/proc/PID/comm) must match too.

umask 022
# The daemons live in /usr/sbin, which a caller's PATH (a test's subprocess) may lack.
case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH=$PATH:/usr/sbin:/sbin ;; esac

CONF_DIR=${HPCFLOW_SLURM_CONF_DIR:-/etc/slurm}
# Clients, slurmdbd, and the gres.conf/cgroup.conf lookups all follow SLURM_CONF.
export SLURM_CONF=$CONF_DIR/slurm.conf
RUN_DIR=/run/hpcflow-slurm          # our records: config hashes, cluster.env, fake GPUs, DB socket
STATE_DIR=/var/lib/slurm            # slurmctld state, slurmd spool, MariaDB data
LOG_DIR=/var/log/slurm
DB_DIR=$STATE_DIR/mariadb
DB_PASSFILE=$STATE_DIR/slurmdbd.pass
DB_SOCK=$RUN_DIR/mysqld.sock
# Not 3306: a system MariaDB/MySQL (CI runners ship one) must not collide with ours.
DB_PORT=${HPCFLOW_SLURM_DB_PORT:-3307}
TIMEOUT=${HPCFLOW_SLURM_TIMEOUT:-30}
CLUSTER_ENV=$RUN_DIR/cluster.env
MARKER="# Written by hpcflow slurm/start.sh; edits are overwritten at the next start."

PROG=$(basename "$0" .sh)
MY_PIDNS=$(readlink /proc/self/ns/pid 2>/dev/null || true)

log() { printf 'slurm/%s: %s\n' "$PROG" "$*" >&2; }
die() { log "error: $*"; exit 1; }

require_root() {
  [[ $EUID -eq 0 ]] || die "must run as root (it manages system daemons and packages); try: sudo $0"
}

# now_ms: wall clock in milliseconds (EPOCHREALTIME's separator follows the locale).
now_ms() { local t=${EPOCHREALTIME//[!0-9]/}; echo $((t / 1000)); }
# since T0_MS: elapsed seconds with one decimal.
since() { local ms=$(($(now_ms) - $1)); printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)); }

# pid_gone PID: true when PID no longer runs (missing, or a zombie nobody reaps).
pid_gone() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  stat=${stat##*) }
  [[ ${stat:0:1} == [ZX] ]]
}

# pid_alive PID COMM: PID runs, is not a zombie, and is the program COMM.
pid_alive() {
  local pid=$1 comm=$2 c
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  read -r c 2>/dev/null <"/proc/$pid/comm" || return 1
  [[ $c == "$comm" ]] && ! pid_gone "$pid"
}

# scan_pids COMM [SUBSTRING]: live PIDs in our PID namespace (so never a
# container's daemons) named COMM whose space-joined argv contains SUBSTRING.
scan_pids() {
  local comm=$1 want=${2:-} d c args
  for d in /proc/[0-9]*; do
    read -r c 2>/dev/null <"$d/comm" || continue
    [[ $c == "$comm" ]] || continue
    [[ -z $MY_PIDNS || $(readlink "$d/ns/pid" 2>/dev/null) == "$MY_PIDNS" ]] || continue
    pid_gone "${d#/proc/}" && continue
    if [[ -n $want ]]; then
      args=$(tr '\0' ' ' <"$d/cmdline" 2>/dev/null) || continue
      [[ " $args" == *"$want"* ]] || continue
    fi
    echo "${d#/proc/}"
  done
}

# Daemon names: munged mariadbd slurmdbd slurmctld slurmd:NODE.
pidfile_of() {
  case $1 in
    munged) echo /run/munge/munged.pid ;;
    mariadbd) echo "$RUN_DIR/mariadbd.pid" ;;
    slurmdbd) echo /run/slurmdbd.pid ;;
    slurmctld) echo /run/slurmctld.pid ;;
    slurmd:*) echo "/run/slurmd-${1#slurmd:}.pid" ;;
  esac
}

logfile_of() {
  case $1 in
    munged) echo /var/log/munge/munged.log ;;
    mariadbd) echo "$LOG_DIR/mariadbd.log" ;;
    slurmd:*) echo "$LOG_DIR/slurmd-${1#slurmd:}.log" ;;
    *) echo "$LOG_DIR/$1.log" ;;
  esac
}

# What identifies our instance among processes of the same name.
argv_mark_of() {
  case $1 in
    mariadbd) echo "--datadir=$DB_DIR " ;;
    slurmd:*) echo " -N ${1#slurmd:} " ;;
    *) echo "" ;;
  esac
}

# daemon_pid NAME: print the PID of the running daemon NAME; false if none.
# The pid file first; a scan covers a daemon whose pid file was deleted.
daemon_pid() {
  local name=$1 comm=${1%%:*} file pid pids
  file=$(pidfile_of "$name")
  if [[ -r $file ]] && read -r pid <"$file" 2>/dev/null && pid_alive "$pid" "$comm"; then
    echo "$pid"
    return 0
  fi
  mapfile -t pids < <(scan_pids "$comm" "$(argv_mark_of "$name")")
  ((${#pids[@]})) || return 1
  echo "${pids[0]}"
}

# slurmd_pids: "PID NODE" for every slurmd in our namespace (NODE "?" without -N).
slurmd_pids() {
  local pid args node
  for pid in $(scan_pids slurmd); do
    args=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || continue
    node="?"
    [[ " $args" =~ \ -N\ ?([^ ]+) ]] && node=${BASH_REMATCH[1]}
    echo "$pid $node"
  done
}

# wait_gone SECONDS PID...: true once every PID is gone, false at the deadline.
wait_gone() {
  local deadline=$((SECONDS + $1)) p left
  shift
  while :; do
    left=0
    for p; do pid_gone "$p" || left=1; done
    ((left)) || return 0
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

# terminate SECONDS PID...: SIGTERM all at once (each Slurm daemon needs ~2 s
# to exit, so they overlap), SIGKILL what is left after SECONDS.
# False only if something survives SIGKILL.
terminate() {
  local wait=$1 p survivors=()
  shift
  (($#)) || return 0
  kill -TERM "$@" 2>/dev/null || true
  wait_gone "$wait" "$@" && return 0
  for p; do pid_gone "$p" || survivors+=("$p"); done
  log "still running after ${wait}s, sending SIGKILL: ${survivors[*]}"
  kill -KILL "${survivors[@]}" 2>/dev/null || true
  wait_gone 5 "${survivors[@]}"
}

# remove_stale_pidfile NAME: a pid file left by a dead daemon. slurmctld and
# slurmdbd cannot delete theirs (they drop to user slurm, /run is root's), and
# a restarted slurmctld kills whatever process now holds the recorded PID.
remove_stale_pidfile() {
  local file pid
  file=$(pidfile_of "$1")
  [[ -e $file ]] || return 0
  if read -r pid <"$file" 2>/dev/null && pid_alive "$pid" "${1%%:*}"; then
    return 0
  fi
  rm -f "$file"
}

# tail_logs FILE...: the end of each log, for a failure message.
tail_logs() {
  local f
  for f; do
    [[ -s $f ]] || continue
    printf -- '--- last lines of %s ---\n' "$f" >&2
    tail -n 25 "$f" >&2
  done
}

ensure_munge_key() {
  local key=/etc/munge/munge.key
  if [[ ! -s $key ]]; then
    # Images built without a baked-in key (as they should be) get a fresh one here.
    log "creating $key"
    install -d -o munge -g munge -m 700 /etc/munge
    if command -v mungekey >/dev/null; then
      mungekey --create --keyfile="$key" --force
    else
      dd if=/dev/urandom of="$key" bs=1024 count=1 status=none
    fi
  fi
  # munged refuses a key that others can read or that it does not own.
  chown munge:munge "$key"
  chmod 400 "$key"
}

# munge_ok: a credential round trip works (munged is up and has the key).
munge_ok() {
  local cred
  cred=$(timeout 5 munge -n 2>/dev/null) && timeout 5 unmunge <<<"$cred" >/dev/null 2>&1
}

# ctld_ok: slurmctld answers.
ctld_ok() {
  local out
  out=$(timeout 5 scontrol ping 2>/dev/null) && [[ $out == *" is UP"* ]]
}

# dbd_ok: slurmdbd answers (a raw TCP probe of its port only logs errors there).
dbd_ok() { timeout 10 sacctmgr -n show cluster >/dev/null 2>&1; }
