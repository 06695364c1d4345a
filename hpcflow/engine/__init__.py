"""Execution engine layer: the shared core (ready queue, priorities, dependency counts,
retries, journal) and the backends that place ready tasks on workers (local, mpi)."""
