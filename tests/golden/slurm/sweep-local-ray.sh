#!/bin/bash
#SBATCH --job-name=oscillator-sweep
#SBATCH --partition=debug
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=2
#SBATCH --cpus-per-task=1
#SBATCH --mem=9000M
#SBATCH --time=00:08:00
#SBATCH --signal=B:USR1@80
#SBATCH --output=/scratch/alice/runs/oscillator-sweep-20260101-000000-1/batch/slurm-%j.out
#SBATCH --error=/scratch/alice/runs/oscillator-sweep-20260101-000000-1/batch/slurm-%j.err

# hpcflow: this one job runs workflow oscillator-sweep from start to end; the engine inside
# it places the tasks on the job's ranks (docs/architecture.md, "Slurm"). The values
# above were checked against allow-lists; every word below is quoted.

# USR1 (Slurm's --signal above, up to a minute early) is a warning, not the end: the trap,
# set first, notes it for the engine in a marker file and submits, once, the job that
# continues this run after this one ends, however it ends (afterany: the run's lock is
# free by then); a run that finishes cancels it. The step never gets the signal.
batch=/scratch/alice/runs/oscillator-sweep-20260101-000000-1/batch
step=
cont=
cut=
usr1=
note() {  # write $2 into the file $1 whole: aside, then renamed
  { printf '%s\n' "$2" >"$1.tmp" && mv -f "$1.tmp" "$1"; } 2>/dev/null ||
    echo "hpcflow: could not write $1" >&2
}
continue_run() {
  [ -n "${cont}" ] && return 0
  n=${HPCFLOW_CONTINUATION:-0}
  if [ "${n}" -ge 50 ]; then
    echo "hpcflow: 50 continuation jobs ran; resume by hand: hpcflow submit --resume" >&2
    return 1
  fi
  cont=$(HPCFLOW_CONTINUATION=$((n + 1)) sbatch --parsable \
    --dependency="afterany:${SLURM_JOB_ID}" /scratch/alice/runs/oscillator-sweep-20260101-000000-1/batch/job.sh) ||
    { cont=; echo "hpcflow: could not submit the continuation job" >&2; return 1; }
  note "${batch}/next.${SLURM_JOB_ID}" "${cont}"
}
on_usr1() {  # a second USR1 (even one during this function) only cuts the wait short
  cut=1
  [ -n "${usr1}" ] && return 0
  usr1=1
  note "${batch}/usr1.${SLURM_JOB_ID}" "$(date +%s)"
  continue_run || true
}
trap on_usr1 USR1
set -eu
# (no set-up commands in the cluster profile)
set +e

# Ray in this allocation (docs/architecture.md, "Slurm"): the head here, on the batch host,
# and one `ray start --block` on each other node (srun, one task per node), each declaring
# its worker slots' CPUs, GPUs and memory. Ray's files go under /tmp (its socket paths
# must stay short). If the cluster is not up within 300 s, the job stops here
# (exit 3). After the run each --block process gets TERM and ends its node's Ray
# processes; `ray stop` is not used: it would end every Ray process of the user on the node.
gone() {  # wait up to $1 s for the pids that follow to end; false if some did not
  local pid left n=$(($1 * 2))
  shift
  while [ "${n}" -gt 0 ]; do
    left=
    for pid in "$@"; do [ -n "${pid}" ] && kill -0 "${pid}" 2>/dev/null && left=1; done
    [ -z "${left}" ] && return 0
    n=$((n - 1))
    sleep 0.5
  done
  return 1
}
stop_cluster() {  # TERM to the pids given (to an srun: Slurm ends its step), 30 s, then KILL
  local pid
  for pid in "$@"; do [ -n "${pid}" ] && kill -TERM "${pid}" 2>/dev/null; done
  gone 30 "$@" && return 0
  echo "hpcflow: cluster processes did not end within 30 s of TERM: killed" >&2
  for pid in "$@"; do [ -n "${pid}" ] && kill -KILL "${pid}" 2>/dev/null; done
  return 0
}
term_steps() {  # TERM to the tasks of this job's steps named $1, which then end themselves
  local id name
  timeout 30 squeue --noheader --steps --jobs="${SLURM_JOB_ID}" --format="%i %j" 2>/dev/null |
    while read -r id name; do
      [ "${name}" = "$1" ] && timeout 30 scancel --signal=TERM "${id}" 2>/dev/null
    done
}
cluster_failed() {  # nothing ran: stop what did start, keep its logs
  echo "hpcflow: the ray cluster did not come up (see above); the workflow did not run" >&2
  stop_cluster "${pid_nodes}" "${pid_head}"
  exit 3
}
# Ray's token authentication with a token of this job's own (in the environment of its
# processes only): ~/.ray/auth_token is shared by every Ray cluster of the user.
RAY_AUTH_TOKEN=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN
pid_head= pid_nodes=
ray_dir=/tmp/hpcflow-ray-"${SLURM_JOB_ID}"
rm -rf -- "${ray_dir}"
/opt/venv/bin/python -m ray.scripts.scripts start --head --port=0 --temp-dir="${ray_dir}" --num-cpus=1 --num-gpus=0 --memory=9437184000 --object-store-memory=1887436800 --include-dashboard=false --dashboard-agent-listen-port=0 --disable-usage-stats --block >/scratch/alice/runs/oscillator-sweep-20260101-000000-1/batch/ray-head-"${SLURM_JOB_ID}".log 2>&1 &
pid_head=$!
address=$(timeout --kill-after=10 330 /opt/venv/bin/python -m hpcflow cluster wait ray --temp-dir="${ray_dir}" --timeout=300 --watch=head="${pid_head}") || cluster_failed
srun --job-name=hpcflow-ray-nodes --nodes=1 --ntasks=1 --ntasks-per-node=1 --exclude="${SLURMD_NODENAME}" --cpus-per-task=2 --cpu-bind=none --output=/scratch/alice/runs/oscillator-sweep-20260101-000000-1/batch/ray-node-%j.%s.%t.log /opt/venv/bin/python -m ray.scripts.scripts start --address="${address}" --temp-dir="${ray_dir}"-nodes --num-cpus=2 --num-gpus=0 --memory=9437184000 --object-store-memory=1887436800 --dashboard-agent-listen-port=0 --disable-usage-stats --block &
pid_nodes=$!
address=$(timeout --kill-after=10 330 /opt/venv/bin/python -m hpcflow cluster wait ray --address="${address}" --nodes=2 --timeout=300 --watch=head="${pid_head}" --watch=nodes="${pid_nodes}") || cluster_failed

/opt/venv/bin/python -m hpcflow run --engine ray --address "${address}" --resume /scratch/alice/runs/oscillator-sweep-20260101-000000-1 /home/alice/flows/sweep.yaml &
step=$!
wait "${step}"
status=$?
while [ -n "${cut}" ]; do  # that wait was cut short by USR1: wait for the real end
  cut=
  wait "${step}"
  code=$?
  [ "${code}" -eq 127 ] && break  # its end was already collected above
  status=${code}
done
trap '' USR1
term_steps hpcflow-ray-nodes
gone 30 "${pid_nodes}" || stop_cluster "${pid_nodes}"
stop_cluster "${pid_head}"
timeout 60 srun --nodes=1 --ntasks=1 --ntasks-per-node=1 --exclude="${SLURMD_NODENAME}" rm -rf -- "${ray_dir}"-nodes
rm -rf -- "${ray_dir}"
echo "hpcflow: the ray cluster stopped" >&2
if [ "${status}" -eq 75 ]; then  # handed over: the next job goes on
  continue_run && status=0
elif [ -n "${cont}" ]; then  # finished, failed or stalled within this job: no next job
  scancel "${cont}" 2>/dev/null || true
  rm -f "${batch}/next.${SLURM_JOB_ID}"
fi
exit "${status}"
