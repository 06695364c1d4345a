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

srun --mpi=pmi2 --cpu-bind=none /opt/venv/bin/python -m hpcflow run --engine mpi --resume /scratch/alice/runs/oscillator-sweep-20260101-000000-1 /home/alice/flows/sweep.yaml &
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
if [ "${status}" -eq 75 ]; then  # handed over: the next job goes on
  continue_run && status=0
elif [ -n "${cont}" ]; then  # finished, failed or stalled within this job: no next job
  scancel "${cont}" 2>/dev/null || true
  rm -f "${batch}/next.${SLURM_JOB_ID}"
fi
exit "${status}"
