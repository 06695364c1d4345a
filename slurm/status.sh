#!/usr/bin/env bash
# Is the local Slurm cluster usable right now? For tests deciding between
# skip and fail, and for people. Needs no root: it asks the Slurm clients, and
# (for a cluster start.sh made) checks that each slurmd process still runs,
# because slurmctld keeps showing a dead node idle for minutes.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

QUIET=0
ENV=0

usage() {
  cat <<EOF
usage: $0 [-q] [--env]
  -q     print nothing, only the exit status
  --env  when up, also print start.sh's facts as KEY=VALUE lines
         (SLURM_CONF, HPCFLOW_SLURM_NODES, HPCFLOW_SLURM_GPUS_PER_NODE, ...)
exit: 0 up (jobs can be submitted), 1 not up (the first line says why), 2 bad usage
EOF
}

down() {
  ((QUIET)) || echo "slurm: down: $*"
  exit 1
}

main() {
  local out node state bad=() names=() accounting=""
  local -A facts=()
  while (($#)); do
    case $1 in
      -q) QUIET=1; shift ;;
      --env) ENV=1; shift ;;
      -h | --help) usage; exit 0 ;;
      *) usage >&2; exit 2 ;;
    esac
  done
  command -v sinfo >/dev/null || down "Slurm is not installed (run: sudo slurm/install.sh && sudo slurm/start.sh)"
  munge_ok || down "munged is not answering (run: sudo slurm/start.sh)"
  ctld_ok || down "slurmctld is not answering (run: sudo slurm/start.sh)"
  if [[ -r $CLUSTER_ENV ]]; then
    while IFS='=' read -r node state; do facts[$node]=$state; done <"$CLUSTER_ENV"
  fi
  out=$(timeout 5 sinfo -h -N -o '%N %T' 2>/dev/null) || down "sinfo failed"
  while read -r node state; do
    [[ -n $node ]] || continue
    names+=("$node")
    case $state in
      idle | mixed | allocated | completing | planned | reserved) ;;
      *) bad+=("$node=$state") ;;
    esac
    if [[ -n ${facts[HPCFLOW_SLURM_NODES]-} ]] && ! daemon_pid "slurmd:$node" >/dev/null; then
      bad+=("$node=no-slurmd")
    fi
  done <<<"$out"
  ((${#names[@]})) || down "no nodes"
  ((${#bad[@]} == 0)) || down "nodes not usable: ${bad[*]} (run: sudo slurm/start.sh)"
  if [[ ${facts[HPCFLOW_SLURM_ACCOUNTING]-} == 1 ]]; then
    dbd_ok || down "slurmdbd is not answering (run: sudo slurm/start.sh)"
    accounting=", accounting on"
  elif [[ ${facts[HPCFLOW_SLURM_ACCOUNTING]-} == 0 ]]; then
    accounting=", accounting off"
  fi
  if ((!QUIET)); then
    echo "slurm: up: ${#names[@]} node(s) ${names[*]}${facts[HPCFLOW_SLURM_GPUS_PER_NODE]:+, ${facts[HPCFLOW_SLURM_GPUS_PER_NODE]} GPU(s) each}$accounting, conf $SLURM_CONF"
    if ((ENV)) && [[ -r $CLUSTER_ENV ]]; then cat "$CLUSTER_ENV"; fi
  fi
}

main "$@"
