#!/usr/bin/env bash
# The whole test suite, as CI runs it: the normal pytest run (unit tests, the local
# engine, parent-side MPI tests that launch mpiexec themselves, Slurm tests), then the
# MPI suite under mpiexec at 2, 3 and 4 ranks. Extra arguments go to the first run
# (e.g. `scripts/test.sh -m "not slow"` for the quick suite).
#
# Every part runs whatever the others did; the last line sums them up, with the first
# run's pytest counts as a plain `N passed, N failed` line, and the exit status is
# non-zero if any part failed. HPCFLOW_MPI_SUITE names another folder for the MPI part
# (default tests/mpi).
set -uo pipefail
cd "$(dirname "$0")/.."
summary_file=$(mktemp)
trap 'rm -f "$summary_file"' EXIT

python -m pytest "$@" 2>&1 | tee "$summary_file"
first=${PIPESTATUS[0]}
counts=$(grep -E '^(=+ )?[0-9]+ (passed|failed|errors?|skipped|deselected)\b.* in [0-9.]+s' \
  "$summary_file" | tail -n 1 | sed -E 's/^=+ //; s/ in [0-9.]+s.*//')
[ "$first" -eq 0 ] || [ -n "$counts" ] || counts="pytest exited with status $first"

mpi_suite=${HPCFLOW_MPI_SUITE:-tests/mpi}
mpi_parts=()
mpi_failed=0
if [ -d "$mpi_suite" ]; then
  for n in 2 3 4; do
    echo "== MPI suite at $n ranks"
    # timeout on mpiexec itself: a hang in one rank must not block the others forever
    if timeout -k 10 600 mpiexec -n "$n" python -m pytest --with-mpi -q -p no:cacheprovider "$mpi_suite"
    then
      mpi_parts+=("$n ranks ok")
    else
      mpi_parts+=("$n ranks failed")
      mpi_failed=1
    fi
  done
fi

mpi_text=$(printf '%s, ' "${mpi_parts[@]}")
mpi_text=${mpi_text%, }
echo "tests: ${counts:-no tests ran}; MPI suite: ${mpi_text:-not found ($mpi_suite)}"
[ "$first" -eq 0 ] && [ "$mpi_failed" -eq 0 ]
