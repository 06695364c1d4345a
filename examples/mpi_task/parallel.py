"""Task code of the MPI task example.

``sum_of_squares`` is an MPI-parallel Python task: with ``resources: {ranks: 2}`` the
MPI engine runs it on two worker ranks at once and passes each a communicator of
exactly those ranks as the keyword argument ``comm`` (because the function has a
parameter of that name). Rank 0's return value is the task's value. Called without a
communicator (``comm=None``: a plain call, a test) it does all the work alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def sum_of_squares(n: int, comm=None) -> dict:
    """0² + 1² + ... + (n-1)², each rank summing every size-th term, then an allreduce."""
    rank, size = (comm.rank, comm.size) if comm is not None else (0, 1)
    terms = np.arange(rank, n, size, dtype=np.int64)
    mine = int(np.sum(terms * terms))
    total = comm.allreduce(mine) if comm is not None else mine
    per_rank = comm.allgather(mine) if comm is not None else [mine]
    return {"total": total, "ranks": size, "per_rank": per_rank}


def check(result: dict, n: int) -> int:
    """The closed form n(n-1)(2n-1)/6; fails the task if the parallel sum differs."""
    expected = n * (n - 1) * (2 * n - 1) // 6
    if result["total"] != expected or sum(result["per_rank"]) != expected:
        raise ValueError(f"parallel sum {result['total']} != {expected}")
    return expected


def program(script: str) -> dict:
    """The interpreter running this worker and the absolute path of ``script`` (beside
    this file): a shell task runs in its own folder, where a relative path would not
    reach the script, and ``python`` on PATH may not be the one with mpi4py."""
    path = Path(__file__).resolve().parent / script
    if not path.is_file():
        raise FileNotFoundError(f"no such script: {path}")
    return {"python": sys.executable, "script": str(path)}
