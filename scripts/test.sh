#!/usr/bin/env bash
# The whole test suite, as CI runs it: the normal pytest run (unit tests, the local
# engine, parent-side MPI tests that launch mpiexec themselves, Slurm tests), then the
# MPI suite under mpiexec at 2, 3 and 4 ranks. Extra arguments go to the first run
# (e.g. `scripts/test.sh -m "not slow"` for the quick suite).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pytest "$@"
if [ -d tests/mpi ]; then
  for n in 2 3 4; do
    echo "== MPI suite at $n ranks"
    # timeout on mpiexec itself: a hang in one rank must not block the others forever
    timeout -k 10 600 mpiexec -n "$n" python -m pytest --with-mpi -q -p no:cacheprovider tests/mpi
  done
fi
