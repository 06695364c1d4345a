#!/usr/bin/env bash
# Stop the local Slurm cluster that start.sh started, completely: jobs first
# (stopping the daemons alone leaves jobs running), then all Slurm daemons at
# once, then MariaDB, then munged. Every wait is bounded; what ignores SIGTERM
# gets SIGKILL. Stale pid files are removed. See README.md.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PURGE=0

usage() {
  cat <<EOF
usage: $0 [--purge]
  --purge  also wipe slurmctld state, slurmd spool and the accounting database
           (the next start is a fresh cluster: job IDs restart at 1)
exit: 0 everything stopped, 1 something survived SIGKILL, 2 bad usage
EOF
}

cancel_jobs() {
  local ids deadline=$((SECONDS + 10))
  ctld_ok || return 0
  ids=$(timeout 10 squeue -h -o %i 2>/dev/null || true)
  [[ -n $ids ]] || return 0
  log "cancelling jobs: $(echo "$ids" | tr '\n' ' ')"
  # shellcheck disable=SC2086 # one job ID per word
  timeout 10 scancel $ids || true
  # Let slurmd kill the job steps while it still runs; leftovers get SIGKILL below.
  while [[ -n $(timeout 5 squeue -h -o %i 2>/dev/null || true) ]] && ((SECONDS < deadline)); do
    sleep 0.2
  done
}

# pids_of NAME...: "PID" lines of the running daemons among NAME.
pids_of() {
  local name
  for name; do daemon_pid "$name" || true; done
}

# job_cgroup_pids: processes still in our nodes' job cgroups (proctrack/cgroup
# puts each job under /sys/fs/cgroup/<controller>/slurm_<node>/). Without
# cgroups a job's orphans cannot be told apart from anything else.
job_cgroup_pids() {
  local f
  for f in /sys/fs/cgroup/freezer/slurm_n[0-9]*/uid_*/job_*/step_*/cgroup.procs; do
    [[ -r $f ]] && cat "$f"
  done
  return 0
}

stop_all() {
  local pids=() pid failed=0
  mapfile -t pids < <(pids_of slurmctld slurmdbd)
  while read -r pid _; do pids+=("$pid"); done < <(slurmd_pids)
  terminate 15 "${pids[@]}" || failed=1
  # A slurmstepd stuck after a failed launch outlives slurmd (and keeps it
  # from exiting on SIGTERM); its job's processes outlive it.
  mapfile -t pids < <(scan_pids slurmstepd; job_cgroup_pids)
  if ((${#pids[@]})); then
    log "killing leftover slurmstepd and job processes: ${pids[*]}"
    kill -KILL "${pids[@]}" 2>/dev/null || true
    wait_gone 5 "${pids[@]}" || failed=1
  fi
  mapfile -t pids < <(pids_of mariadbd)
  terminate 30 "${pids[@]}" || failed=1
  mapfile -t pids < <(pids_of munged)
  terminate 10 "${pids[@]}" || failed=1
  return "$failed"
}

cleanup_files() {
  local f name
  for name in munged mariadbd slurmdbd slurmctld; do remove_stale_pidfile "$name"; done
  for f in /run/slurmd-*.pid; do
    [[ -e $f ]] || continue
    name=${f#/run/slurmd-}
    remove_stale_pidfile "slurmd:${name%.pid}"
  done
  daemon_pid mariadbd >/dev/null || rm -f "$DB_SOCK"
  rm -f "$RUN_DIR"/hash.* "$CLUSTER_ENV"
}

purge() {
  log "purging slurmctld state, slurmd spool and the accounting database"
  rm -rf "${STATE_DIR:?}/slurmctld" "${STATE_DIR:?}/slurmd" "${DB_DIR:?}"
  install -d -o slurm -g slurm -m 755 "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd"
}

main() {
  local t0 rc=0 left=()
  t0=$(now_ms)
  while (($#)); do
    case $1 in
      --purge) PURGE=1; shift ;;
      -h | --help) usage; exit 0 ;;
      *) usage >&2; exit 2 ;;
    esac
  done
  require_root
  cancel_jobs
  stop_all || rc=1
  cleanup_files
  mapfile -t left < <(pids_of munged mariadbd slurmdbd slurmctld; slurmd_pids)
  if ((${#left[@]})); then
    log "error: still running: ${left[*]}"
    exit 1
  fi
  ((PURGE)) && purge
  echo "slurm: stopped in $(since "$t0")s$( ((PURGE)) && echo ', state purged')"
  return "$rc"
}

main "$@"
