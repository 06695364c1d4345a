"""The floor: hand-written mpi4py master/worker loops, one task per message.

Rank 0 is the master, the other ranks work; each prints one ``RESULT {json}`` line.

    mpiexec -n W+1 python ref_raw.py noop N [SECONDS]   # N independent tasks
    mpiexec -n W+1 python ref_raw.py dag L W            # layered DAG, two inputs each
    mpiexec -n W+1 python ref_raw.py data MB F          # fan-out/fan-in of MB-sized arrays
    mpiexec -n 2   python ref_raw.py pingpong MB        # buffer Send/Recv, 0 -> 1 -> 0
    mpiexec -n 2   python ref_raw.py pingpong MB fresh  # the same into a new array each time

``noop`` is the loop of ``bench-floor/raw_loop.py`` (run both to check they agree).
``data`` moves numpy arrays with buffer ``Send``/``Recv`` into freshly allocated arrays
(as any system that hands arrays to tasks must), ``pingpong`` reuses one buffer (the
bandwidth ceiling, as ``bench-floor/raw_bandwidth.py``) or, with ``fresh``, receives
into a new array each time (what a message that becomes a task's value costs).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from mpi4py import MPI

comm = MPI.COMM_WORLD
STOP = None


def report(**fields: object) -> None:
    print("RESULT " + json.dumps({"runner": "raw", **fields}), flush=True)


def serve(work) -> None:  # type: ignore[no-untyped-def]
    while True:
        item = comm.recv(source=0)
        if item is STOP:
            return
        comm.send(work(item), dest=0)


def noop_master(n: int) -> None:
    status = MPI.Status()
    t0 = time.perf_counter()
    nxt = done = total = 0
    for w in range(1, comm.size):
        comm.send(nxt, dest=w)
        nxt += 1
    while done < n:
        total += comm.recv(source=MPI.ANY_SOURCE, status=status)
        done += 1
        comm.send(nxt if nxt < n else STOP, dest=status.Get_source())
        nxt += 1
    dt = time.perf_counter() - t0
    assert total == n * (n - 1) // 2
    report(workload="noop", n=n, seconds=dt, tasks_per_s=n / dt)


def add(a: int, b: int) -> int:
    return (a + b) % 1000003


def dag_master(layers: int, width: int) -> None:
    """Task (k, i) adds (k-1, i) and (k-1, (i+1) % width); a task goes out when both are in."""
    status = MPI.Status()
    t0 = time.perf_counter()
    vals = {(0, i): i for i in range(width)}
    waiting: dict[tuple[int, int], int] = {}
    ready = [(1, i) for i in range(width)]
    idle = list(range(1, comm.size))
    busy: dict[int, tuple[int, int]] = {}
    remaining = (layers - 1) * width
    while remaining:
        while ready and idle:
            k, i = ready.pop()
            w = idle.pop()
            busy[w] = (k, i)
            comm.send((vals[(k - 1, i)], vals[(k - 1, (i + 1) % width)]), dest=w)
        value = comm.recv(source=MPI.ANY_SOURCE, status=status)
        w = status.Get_source()
        k, i = busy.pop(w)
        idle.append(w)
        vals[(k, i)] = value
        remaining -= 1
        if k + 1 < layers:
            for child in ((k + 1, i), (k + 1, (i - 1) % width)):
                waiting[child] = waiting.get(child, 0) + 1
                if waiting[child] == 2:
                    ready.append(child)
    dt = time.perf_counter() - t0
    for w in range(1, comm.size):
        comm.send(STOP, dest=w)
    row = list(range(width))
    for _ in range(1, layers):
        row = [add(row[i], row[(i + 1) % width]) for i in range(width)]
    assert [vals[(layers - 1, i)] for i in range(width)] == row
    n = (layers - 1) * width
    report(workload=f"dag{layers}x{width}", n=n, seconds=dt, tasks_per_s=n / dt)


def recv_array(source: int, nbytes: int) -> np.ndarray:
    buf = np.empty(nbytes // 8)
    comm.Recv(buf, source=source)
    return buf


def data_master(mb: int, fan: int) -> None:
    """make -> fan x touch -> total, every array through the master (as the engine does)."""
    nbytes = mb * 2**20
    workers = comm.size - 1
    t0 = time.perf_counter()
    comm.send(("make", nbytes), dest=1)
    src = recv_array(1, nbytes)
    outs = []
    for k in range(0, fan, workers):
        batch = range(k, min(fan, k + workers))
        for j, _ in enumerate(batch):
            comm.send(("touch", nbytes), dest=1 + j)
            comm.Send(src, dest=1 + j)
        outs.extend(recv_array(1 + j, nbytes) for j, _ in enumerate(batch))
    comm.send(("total", (fan, nbytes)), dest=1)
    for a in outs:
        comm.Send(a, dest=1)
    total = comm.recv(source=1)
    dt = time.perf_counter() - t0
    for w in range(1, comm.size):
        comm.send(STOP, dest=w)
    assert total == float(fan)
    moved = nbytes * (1 + 3 * fan)
    report(workload=f"data{mb}MB", n=2 + fan, seconds=dt, gb_per_s=moved / dt / 1e9)


def data_worker() -> None:
    while True:
        item = comm.recv(source=0)
        if item is STOP:
            return
        kind, arg = item
        if kind == "make":
            comm.Send(np.ones(arg // 8), dest=0)
        elif kind == "touch":
            comm.Send(recv_array(0, arg), dest=0)
        else:
            fan, nbytes = arg
            comm.send(float(sum(recv_array(0, nbytes)[0] for _ in range(fan))), dest=0)


def pingpong(mb: int, fresh: bool) -> None:
    reps = max(10, 1024 // mb)  # at least 1 GiB each way
    a = np.ones(mb * 2**20 // 8)
    comm.Barrier()
    t0 = time.perf_counter()
    for _ in range(reps):
        if comm.rank == 0:
            comm.Send(a, dest=1)
            a = np.empty_like(a) if fresh else a
            comm.Recv(a, source=1)
        elif comm.rank == 1:
            a = np.empty_like(a) if fresh else a
            comm.Recv(a, source=0)
            comm.Send(a, dest=0)
    dt = time.perf_counter() - t0
    if comm.rank == 0:
        report(workload=f"pingpong{mb}MB" + ("-fresh" if fresh else ""), n=2 * reps,
               seconds=dt, gb_per_s=2 * reps * a.nbytes / dt / 1e9)


def main(argv: list[str]) -> None:
    kind = argv[0]
    if kind == "pingpong":
        pingpong(int(argv[1]), fresh=argv[2:] == ["fresh"])
    elif kind == "data":
        data_master(int(argv[1]), int(argv[2])) if comm.rank == 0 else data_worker()
    elif kind == "dag":
        dag_master(int(argv[1]), int(argv[2])) if comm.rank == 0 else serve(lambda ab: add(*ab))
    elif comm.rank == 0:
        noop_master(int(argv[1]))
    else:
        seconds = float(argv[2]) if len(argv) > 2 else 0.0
        serve((lambda x: time.sleep(seconds) or x) if seconds else (lambda x: x))


if __name__ == "__main__":
    main(sys.argv[1:])
