"""The peer: ``mpi4py.futures.MPIPoolExecutor`` on the same workloads.

    mpiexec -n W+1 python -m mpi4py.futures ref_futures.py noop N [SECONDS]
    mpiexec -n W+1 python -m mpi4py.futures ref_futures.py dag L W
    mpiexec -n W+1 python -m mpi4py.futures ref_futures.py data MB F

As ``bench-floor/futures_noop.py`` (submit, then gather) and ``futures_dag.py`` (a task
is submitted from a done-callback as soon as both of its inputs are in). Prints one
``RESULT {json}`` line.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import numpy as np
from mpi4py.futures import MPIPoolExecutor


def report(**fields: object) -> None:
    print("RESULT " + json.dumps({"runner": "futures", **fields}), flush=True)


def noop(x: int, seconds: float = 0.0) -> int:
    if seconds:
        time.sleep(seconds)
    return x


def add(a: int, b: int) -> int:
    return (a + b) % 1000003


def make(nbytes: int) -> np.ndarray:
    return np.ones(nbytes // 8)


def touch(a: np.ndarray, k: int) -> np.ndarray:
    return a


def total(arrays: list[np.ndarray]) -> float:
    return float(sum(a[0] for a in arrays))


def run_noop(ex: MPIPoolExecutor, n: int, seconds: float) -> None:
    t0 = time.perf_counter()
    futures = [ex.submit(noop, i, seconds) for i in range(n)]
    got = sum(f.result() for f in futures)
    dt = time.perf_counter() - t0
    assert got == n * (n - 1) // 2
    report(workload="noop", n=n, seconds=dt, tasks_per_s=n / dt)


def run_dag(ex: MPIPoolExecutor, layers: int, width: int) -> None:
    t0 = time.perf_counter()
    vals: dict[tuple[int, int], int] = {}
    waiting: dict[tuple[int, int], int] = {}
    lock, done = threading.Lock(), threading.Event()
    remaining = [layers * width]

    def finish(key: tuple[int, int], value: int) -> None:
        k, i = key
        ready = []
        with lock:
            vals[key] = value
            remaining[0] -= 1
            if remaining[0] == 0:
                done.set()
            if k + 1 < layers:
                for child in ((k + 1, i), (k + 1, (i - 1) % width)):
                    waiting[child] = waiting.get(child, 0) + 1
                    if waiting[child] == 2:
                        ready.append(child)
        for child in ready:
            submit(child)

    def submit(key: tuple[int, int]) -> None:
        k, i = key
        future = ex.submit(add, vals[(k - 1, i)], vals[(k - 1, (i + 1) % width)])
        future.add_done_callback(lambda f, key=key: finish(key, f.result()))

    for i in range(width):
        finish((0, i), i)
    done.wait()
    dt = time.perf_counter() - t0
    row = list(range(width))
    for _ in range(1, layers):
        row = [add(row[i], row[(i + 1) % width]) for i in range(width)]
    assert [vals[(layers - 1, i)] for i in range(width)] == row
    n = (layers - 1) * width
    report(workload=f"dag{layers}x{width}", n=n, seconds=dt, tasks_per_s=n / dt)


def run_data(ex: MPIPoolExecutor, mb: int, fan: int) -> None:
    nbytes = mb * 2**20
    t0 = time.perf_counter()
    src = ex.submit(make, nbytes).result()
    outs = [f.result() for f in [ex.submit(touch, src, k) for k in range(fan)]]
    got = ex.submit(total, outs).result()
    dt = time.perf_counter() - t0
    assert got == float(fan)
    report(workload=f"data{mb}MB", n=2 + fan, seconds=dt,
           gb_per_s=nbytes * (1 + 3 * fan) / dt / 1e9)


def main(argv: list[str]) -> None:
    with MPIPoolExecutor() as ex:
        ex.submit(noop, 0).result()  # workers up
        if argv[0] == "dag":
            run_dag(ex, int(argv[1]), int(argv[2]))
        elif argv[0] == "data":
            run_data(ex, int(argv[1]), int(argv[2]))
        else:
            run_noop(ex, int(argv[1]), float(argv[2]) if len(argv) > 2 else 0.0)


if __name__ == "__main__":
    main(sys.argv[1:])
