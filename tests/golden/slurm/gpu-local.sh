#!/bin/bash
#SBATCH --job-name=gpu-sweep
#SBATCH --partition=debug
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=2
#SBATCH --cpus-per-task=1
#SBATCH --mem=9000M
#SBATCH --gpus-per-node=2
#SBATCH --time=00:46:00
#SBATCH --signal=B:USR1@120
#SBATCH --output=/scratch/alice/runs/gpu-sweep-20260101-000000-1/batch/slurm-%j.out
#SBATCH --error=/scratch/alice/runs/gpu-sweep-20260101-000000-1/batch/slurm-%j.err

# hpcflow: this one job runs workflow gpu-sweep from start to end; the engine inside
# it places the tasks on the job's ranks (docs/architecture.md, "Slurm"). The values
# above were checked against allow-lists; every word below is quoted.
set -eu
# (no set-up commands in the cluster profile)
set +e

# USR1 from Slurm (--signal above) goes on to the engine, which stops cleanly.
step=
usr1=
trap 'usr1=1; if [ -n "${step}" ]; then kill -USR1 "${step}" 2>/dev/null || true; fi' USR1
srun --mpi=pmi2 --cpu-bind=none /opt/venv/bin/python -m hpcflow run --engine mpi --run-dir /scratch/alice/runs/gpu-sweep-20260101-000000-1 /home/alice/flows/gpu.yaml &
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
exit "${status}"
