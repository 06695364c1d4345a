#!/usr/bin/env bash
# Build the hpcflow image with podman and test it: the MPI tests at 2 ranks,
# the bundled example under mpiexec, and a real Slurm job inside the container.
#
#   containers/build-and-test.sh [--no-cache] [--clean]
#     --no-cache  rebuild every layer of the project image (a clean release image)
#     --clean     at the end remove the project image and the base image
#
# Runs as root on Debian (CI, a VM). No container registry is needed: the
# base image localhost/debian:bookworm is made with debootstrap from the
# machine's apt mirror when it is missing. The machine's CA bundle is handed
# to the build as a build secret (pip needs it behind a TLS-intercepting
# proxy); nothing of it lands in the image. Background and the failures
# behind each flag: ../shared/notes/containers.md; usage: containers/README.md.
#
# Environment: HPCFLOW_BASE_IMAGE (localhost/debian:bookworm), HPCFLOW_IMAGE
# (localhost/hpcflow-mpi:test), HPCFLOW_BUILD_CA (/etc/ssl/certs/ca-certificates.crt;
# empty = none), HPCFLOW_MIRROR (the Debian mirror for debootstrap; default:
# the machine's apt source).
# Exit: 0 all passed, 1 a step failed (its log tail is printed), 2 bad usage.
set -euo pipefail

BASE=${HPCFLOW_BASE_IMAGE:-localhost/debian:bookworm}
IMAGE=${HPCFLOW_IMAGE:-localhost/hpcflow-mpi:test}
CA=${HPCFLOW_BUILD_CA-/etc/ssl/certs/ca-certificates.crt}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NO_CACHE=0
CLEAN=0
# crun rejects the mixed cgroup layout of these machines, and root here may
# not raise its hard limits (runc then fails "setting rlimit type 7").
RUN_FLAGS=(--rm --runtime runc --ulimit nofile=20000:20000 --ulimit nproc=32768:32768)
NAME_PREFIX=hpcflow-bt-$$
CONTAINERS=()
TIMINGS=()
FAILED=()

usage() { sed -n '5,7p' "$0" | sed 's/^# \{0,1\}//'; }

while (($#)); do
  case $1 in
    --no-cache) NO_CACHE=1 ;;
    --clean) CLEAN=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
  shift
done

log() { printf '== %s\n' "$*"; }
now_ms() { local t=${EPOCHREALTIME//[!0-9]/}; echo $((t / 1000)); }
secs() { local ms=$1; printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)); }
T_ALL=$(now_ms)
WORK=$(mktemp -d /tmp/hpcflow-build-and-test.XXXXXX)

cleanup() {
  local rc=$? c
  # A timed-out `podman run` leaves its container running: remove ours by name.
  for c in "${CONTAINERS[@]}"; do podman rm -f -t 0 "$c" >/dev/null 2>&1 || true; done
  if [[ -n ${ROOTFS:-} ]]; then rm -rf "$ROOTFS"; fi
  if ((rc)); then
    echo "logs kept in $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

# step NAME CMD...: run CMD (which sets its own time limits) with its output
# in a log; record the time; on failure print the log's tail. Returns CMD's status.
step() {
  local name=$1 t0 rc=0 logf
  shift
  logf=$WORK/${name//[^a-zA-Z0-9]/_}.log
  log "$name"
  t0=$(now_ms)
  "$@" >"$logf" 2>&1 || rc=$?
  TIMINGS+=("$(printf '%-28s %6ss  %s' "$name" "$(secs $(($(now_ms) - t0)))" \
    "$( ((rc == 0)) && echo ok || echo "FAILED (exit $rc$( ((rc == 124 || rc == 137)) && echo ": timed out"))")")")
  if ((rc)); then
    FAILED+=("$name")
    echo "-- $name failed (exit $rc); last lines of its log:" >&2
    tail -n 40 "$logf" >&2
  else
    tail -n 4 "$logf" | sed 's/^/   /'
  fi
  return "$rc"
}

summary() {
  log "timings"
  printf '   %s\n' "${TIMINGS[@]}"
  printf '   %-28s %6ss\n' total "$(secs $(($(now_ms) - T_ALL)))"
}

need_tools() {
  local t missing=()
  for t in podman buildah runc debootstrap; do command -v "$t" >/dev/null || missing+=("$t"); done
  ((${#missing[@]})) || return 0
  # One apt command: podman then takes runc for its runtime and crun stays out.
  export DEBIAN_FRONTEND=noninteractive
  timeout 300 apt-get update -q
  timeout 600 apt-get install -y -q podman buildah runc debootstrap
}

mirror() {
  if [[ -n ${HPCFLOW_MIRROR:-} ]]; then echo "$HPCFLOW_MIRROR"; return; fi
  local m
  m=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [[ -n $m ]] || m=$(awk '$1 == "deb" && $2 !~ /^\[/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  echo "${m:-http://deb.debian.org/debian}"
}

# The base image without a registry: a minimal bookworm from the machine's
# mirror, using the machine's apt sources (they add -updates and -security).
build_base() {
  ROOTFS=$(mktemp -d /var/tmp/hpcflow-rootfs.XXXXXX)
  timeout 600 debootstrap --variant=minbase bookworm "$ROOTFS" "$(mirror)"
  if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
    rm -f "$ROOTFS/etc/apt/sources.list"
    cp /etc/apt/sources.list.d/debian.sources "$ROOTFS/etc/apt/sources.list.d/"
  fi
  rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
  tar -C "$ROOTFS" -c . | timeout 300 podman import --change 'CMD ["/bin/bash"]' - "$BASE"
  rm -rf "$ROOTFS"
  ROOTFS=
}

build_image() {
  local args=(build --runtime runc --pull=never --build-arg "BASE=$BASE" -t "$IMAGE" -f "$ROOT/Dockerfile")
  ((NO_CACHE)) && args+=(--no-cache)
  # A build secret, not a -v mount: it leaves no placeholder file in the image,
  # and `docker build` takes the same form.
  [[ -n $CA && -r $CA ]] && args+=(--secret "id=pipcert,src=$CA" --build-arg PIP_CERT=/run/secrets/pipcert)
  timeout -k 10 600 podman "${args[@]}" "$ROOT"
}

# run_in NAME LIMIT CMD...: run CMD in a fresh, named container of the image,
# for at most LIMIT seconds (cleanup removes a container that outlives it).
run_in() {
  local name=$NAME_PREFIX-$1 limit=$2
  shift 2
  CONTAINERS+=("$name")
  timeout -k 10 "$limit" podman run "${RUN_FLAGS[@]}" --name "$name" "$IMAGE" "$@"
}

# The scripts below run inside the container (bash -c), hence quoted heredocs.

# The MPI suite when it exists, else the local-engine tests (before tests/mpi landed).
TESTS=$(cat <<'EOS'
if [ -d tests/mpi ]; then
  exec timeout -k 5 150 mpiexec -n 2 python -m pytest --with-mpi -q -p no:cacheprovider tests/mpi
else
  echo "tests/mpi missing: running tests/test_local_engine.py"
  exec python -m pytest -q -p no:cacheprovider tests/test_local_engine.py
fi
EOS
)

EXAMPLE=$(cat <<'EOS'
set -euo pipefail
timeout -k 5 100 mpiexec -n 3 hpcflow run --engine mpi examples/sweep/workflow.yaml | tee /tmp/out
grep -q "^succeeded: 17 task" /tmp/out
test -s hpcflow-runs/*/tasks/rank/fastest.csv
EOS
)

# After start-and-run brought Slurm up: one batch job running the example,
# a bounded poll, then the job's state and the run folder's results.
# `hpcflow submit` where the package has it; else a plain sbatch of the
# example under srun (-O, overcommit: 3 ranks on a node that may have 2 CPUs).
SLURM_JOB=$(cat <<'EOS'
set -euo pipefail
spec=/opt/hpcflow/examples/sweep/workflow.yaml
mkdir -p /tmp/job && cd /tmp/job
if hpcflow submit --help >/dev/null 2>&1; then
  hpcflow submit --json "$spec" >submit.json || { cat submit.json; exit 1; }
  read -r jid run < <(python -c 'import json; d = json.load(open("submit.json")); print(d["job_id"], d["run_dir"])')
  echo "hpcflow submit: job $jid, run folder $run"
else
  jid=$(sbatch --parsable -J example -n 3 -O -t 5 -o "/tmp/job/slurm-%j.out" \
    --wrap "timeout 120 srun --mpi=pmi2 -n 3 python -m hpcflow run --engine mpi $spec")
  echo "sbatch: job $jid (no hpcflow submit in this version)"
fi
state=
for _ in $(seq 600); do
  state=$(scontrol show job -o "$jid" | grep -o "JobState=[A-Z_]*" | cut -d= -f2)
  case $state in PENDING | CONFIGURING | RUNNING | COMPLETING | "") sleep 0.25 ;; *) break ;; esac
done
echo "job $jid: ${state:-unknown}"
if [ "$state" != COMPLETED ]; then
  scontrol show job "$jid" || true
  tail -n 30 /tmp/job/slurm-*.out "${run:-/nonexistent}"/batch/* /var/log/slurm/slurmctld.log \
    /var/log/slurm/slurmd-n1.log 2>/dev/null || true
  exit 1
fi
run=${run:-$(ls -d /tmp/job/hpcflow-runs/*)}
python -c 'import json, sys; s = json.load(open(sys.argv[1]))["status"]; print("run.json status:", s); sys.exit(s != "succeeded")' "$run/run.json"
test "$(wc -l <"$run/tasks/rank/fastest.csv")" -eq 3
echo "results: $run/tasks/rank/fastest.csv (3 rows)"
EOS
)

main() {
  local t0 old_id="" new_id
  [[ $EUID -eq 0 ]] || { echo "must run as root (podman storage, debootstrap)" >&2; exit 1; }
  step "tools" need_tools || { summary; exit 1; }
  if podman image exists "$BASE"; then
    TIMINGS+=("$(printf '%-28s %6s   %s' "base image" - "cached ($BASE)")")
  elif [[ $BASE == localhost/debian:bookworm ]]; then
    step "base image (debootstrap)" build_base || { summary; exit 1; }
  else
    timeout 600 podman pull "$BASE" || { echo "base image $BASE missing and not pullable" >&2; exit 1; }
  fi
  old_id=$(podman image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
  step "project image" build_image || { summary; exit 1; }
  new_id=$(podman image inspect -f '{{.Id}}' "$IMAGE")
  # A rebuild leaves the previous image untagged; drop it (unless in use), so
  # that repeated CI runs do not fill the disk.
  if [[ -n $old_id && $old_id != "$new_id" ]]; then podman rmi "$old_id" >/dev/null 2>&1 || true; fi
  echo "   $IMAGE: $(podman image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1 / 1e6}')"

  step "MPI tests (2 ranks)" run_in tests 180 bash -c "$TESTS" || true
  step "example (mpiexec -n 3)" run_in example 120 bash -c "$EXAMPLE" || true
  step "Slurm job in container" run_in slurm 240 start-and-run bash -c "$SLURM_JOB" || true

  if ((CLEAN)); then
    t0=$(now_ms)
    # Without -f: a base that other images still use stays (podman says so).
    podman rmi "$IMAGE" >/dev/null || true
    podman rmi "$BASE" >/dev/null || true
    TIMINGS+=("$(printf '%-28s %6ss  %s' "clean (images removed)" "$(secs $(($(now_ms) - t0)))" ok)")
  fi
  summary
  if ((${#FAILED[@]})); then
    echo "FAILED: ${FAILED[*]}" >&2
    exit 1
  fi
  log "all passed"
}

main
