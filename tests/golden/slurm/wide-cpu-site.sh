#!/bin/bash
#SBATCH --job-name=wide-sweep
#SBATCH --partition=standard
#SBATCH --account=proj042
#SBATCH --qos=normal
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=128
#SBATCH --cpus-per-task=1
#SBATCH --mem-per-cpu=2000M
#SBATCH --time=12:27:00
#SBATCH --signal=B:USR1@300
#SBATCH --output=/scratch/alice/runs/wide-sweep-20260101-000000-1/batch/slurm-%j.out
#SBATCH --error=/scratch/alice/runs/wide-sweep-20260101-000000-1/batch/slurm-%j.err

# hpcflow: this one job runs workflow wide-sweep from start to end; the engine inside
# it places the tasks on the job's ranks (docs/architecture.md, "Slurm"). The values
# above were checked against allow-lists; every word below is quoted.
set -eu
module purge
module load python/3.11 openmpi/4.1.5
source /home/alice/venvs/hpcflow/bin/activate
export OMP_NUM_THREADS=1
set +e

# USR1 from Slurm (--signal above) goes on to the engine, which stops cleanly.
# It also submits, once, the job that continues this run after this one ends, however
# it ends (afterany: the run's lock is free by then); a run that finishes cancels it.
step=
usr1=
cont=
continue_run() {
  [ -n "${cont}" ] && return 0
  n=${HPCFLOW_CONTINUATION:-0}
  if [ "${n}" -ge 50 ]; then
    echo "hpcflow: 50 continuation jobs ran; resume by hand: hpcflow run --resume" >&2
    return 0
  fi
  export HPCFLOW_CONTINUATION=$((n + 1))
  cont=$(sbatch --parsable --dependency="afterany:${SLURM_JOB_ID}" /scratch/alice/runs/wide-sweep-20260101-000000-1/batch/job.sh) ||
    { cont=; echo "hpcflow: could not submit the continuation job" >&2; }
}
trap 'usr1=1; continue_run; if [ -n "${step}" ]; then kill -USR1 "${step}" 2>/dev/null || true; fi' USR1
srun --mpi=pmix --cpu-bind=none python -m hpcflow run --engine mpi --resume /scratch/alice/runs/wide-sweep-20260101-000000-1 /home/alice/flows/wide.yaml &
step=$!
wait "${step}"
status=$?
while [ -n "${usr1}" ]; do  # that wait was cut short by USR1: wait for the real end
  usr1=
  wait "${step}"
  code=$?
  [ "${code}" -eq 127 ] && break  # its end was already collected above
  status=${code}
done
if [ "${status}" -eq 75 ]; then  # stopped for the walltime: continue
  continue_run
elif [ -n "${cont}" ]; then  # finished (or failed) within this job after all
  scancel "${cont}" 2>/dev/null || true
fi
exit "${status}"
