"""hpcflow's MPI engine on the benchmark workloads (started by ``bench_engine.py``).

    mpiexec -n W+1 python run_hpcflow.py noop N [SECONDS]
    mpiexec -n W+1 python run_hpcflow.py dag L W
    mpiexec -n W+1 python run_hpcflow.py data MB F
    mpiexec -n W+1 python run_hpcflow.py makespan TASKS SEED
    mpiexec -n 2   python run_hpcflow.py pingpong MB     # the engine's message channel alone

Every rank runs this script and calls ``hf.run(wf, engine="mpi")``, as a user's script
does. The journal is on (it always is) and run folders go under ``$HPCFLOW_RUNS``. One
one-task run warms the ranks up first (imports, first messages), as the futures
reference warms its pool; then ``seconds`` is the wall time of the whole ``hf.run``
call (planning, run folder, set-up and final broadcast included) and ``core_seconds``
the shared core's loop alone. Rank 0 prints one ``RESULT {json}`` line.
"""

from __future__ import annotations

import json
import random
import sys
import time

import numpy as np
from mpi4py import MPI

import hpcflow as hf

RANK = MPI.COMM_WORLD.rank


def report(**fields: object) -> None:
    if RANK == 0:
        print("RESULT " + json.dumps({"runner": "hpcflow", **fields}), flush=True)


def timed(wf: hf.Workflow) -> tuple[hf.RunResult, float]:
    MPI.COMM_WORLD.Barrier()
    t0 = time.perf_counter()
    result = hf.run(wf, engine="mpi")
    return result, time.perf_counter() - t0


def noop(x: int, seconds: float = 0.0) -> int:
    if seconds:
        time.sleep(seconds)
    return x


def run_noop(n: int, seconds: float) -> None:
    tasks = hf.task(noop).sweep({"x": range(n)}, seconds=seconds)
    result, dt = timed(hf.workflow("noop", outputs={"all": tasks.all()}))
    assert result.outputs["all"] == list(range(n))
    report(workload="noop", n=n, seconds=dt, core_seconds=result.elapsed, tasks_per_s=n / dt)


def source(i: int) -> int:
    return i


def add(a: int, b: int) -> int:
    return (a + b) % 1000003


def run_dag(layers: int, width: int) -> None:
    """Layer k's task i adds layer k-1's tasks i and (i+1) % width: each layer a zip sweep."""
    shifted = [(i + 1) % width for i in range(width)]
    prev = hf.task(source, name="layer0").sweep({"i": range(width)})
    for k in range(1, layers):
        prev = hf.task(add, name=f"layer{k}").sweep(
            {"a": prev.each(), "b": prev.each(shifted)}, mode="zip")
    result, dt = timed(hf.workflow("dag", outputs={"last": prev.all()}))
    row = list(range(width))
    for _ in range(1, layers):
        row = [add(row[i], row[(i + 1) % width]) for i in range(width)]
    assert result.outputs["last"] == row
    n = layers * width
    report(workload=f"dag{layers}x{width}", n=n, seconds=dt, core_seconds=result.elapsed,
           tasks_per_s=n / dt)


def make(nbytes: int) -> np.ndarray:
    return np.ones(nbytes // 8)


def touch(a: np.ndarray, k: int) -> np.ndarray:
    return a


def total(arrays: list[np.ndarray]) -> float:
    return float(sum(a[0] for a in arrays))


def run_data(mb: int, fan: int) -> None:
    nbytes = mb * 2**20
    src = hf.task(make)(nbytes)
    outs = hf.task(touch).sweep({"k": range(fan)}, a=src)
    result, dt = timed(hf.workflow("data", outputs={"total": hf.task(total)(outs)}))
    assert result.outputs["total"] == float(fan)
    report(workload=f"data{mb}MB", n=2 + fan, seconds=dt, core_seconds=result.elapsed,
           gb_per_s=nbytes * (1 + 3 * fan) / dt / 1e9)


def nap(seconds: float, *inputs: object) -> float:
    time.sleep(seconds)
    return seconds


def sleep_dag(tasks: int, seed: int) -> hf.Workflow:
    """Uneven sleeps (10-150 ms, declared as ``time``), each after 0-3 earlier tasks."""
    rng = random.Random(seed)
    refs = []
    for i in range(tasks):
        seconds = round(rng.uniform(0.01, 0.15), 4)
        preds = rng.sample(range(i), min(i, rng.randint(0, 3)))
        refs.append(hf.task(nap, name=f"t{i}", time=seconds)(seconds, *[refs[p] for p in preds]))
    return hf.workflow("makespan", outputs={f"t{i}": r for i, r in enumerate(refs)})


def run_makespan(tasks: int, seed: int) -> None:
    from hpcflow.plan.analyse import analyse
    from hpcflow.plan.flatten import flatten
    from hpcflow.plan.policy import Slot
    from hpcflow.plan.simulate import lower_bound, simulate

    wf = sleep_dag(tasks, seed)
    result, dt = timed(wf)
    workers = MPI.COMM_WORLD.size - 1
    plan = flatten(wf)
    analysis = analyse(plan)
    bound = lower_bound(plan, analysis, workers)
    ideal = simulate(plan, analysis, [Slot(i, "node") for i in range(workers)]).makespan
    report(workload="makespan", n=tasks, seconds=dt, makespan=result.elapsed,
           lower_bound=bound, list_schedule=ideal)


def run_pingpong(mb: int) -> None:
    """A numpy array 0 -> 1 -> 0 through the engine's :class:`Channel`: out of band, each
    receive a new array (as a task's argument or result arrives), its memory recycled
    from the channel's pool once the previous array is gone."""
    from hpcflow.engine.mpi.channel import Channel

    world = MPI.COMM_WORLD
    channel = Channel(world.Dup())
    reps = max(10, 1024 // mb)  # at least 1 GiB each way, as ref_raw.py
    a = np.ones(mb * 2**20 // 8)

    def receive(source: int) -> np.ndarray:
        while (got := channel.poll(source, 1)) is None:
            pass
        return got[0]

    def bounce(a: np.ndarray) -> np.ndarray:
        if RANK == 0:
            MPI.Request.Waitall(channel.isend(a, 1, 1))
            return receive(1)
        a = receive(0)
        MPI.Request.Waitall(channel.isend(a, 0, 1))
        return a

    for _ in range(2):  # steady state: the receive buffers exist (raw allocates its one too)
        a = bounce(a)
    world.Barrier()
    t0 = time.perf_counter()
    for _ in range(reps):
        a = bounce(a)
    dt = time.perf_counter() - t0
    channel.free()
    report(workload=f"pingpong{mb}MB", n=2 * reps, seconds=dt,
           gb_per_s=2 * reps * a.nbytes / dt / 1e9)


def main(argv: list[str]) -> None:
    if argv[0] == "pingpong":
        run_pingpong(int(argv[1]))
        return
    hf.run(hf.workflow("warmup", outputs=[hf.task(noop)(0)]), engine="mpi")
    kind, args = argv[0], argv[1:]
    if kind == "dag":
        run_dag(int(args[0]), int(args[1]))
    elif kind == "data":
        run_data(int(args[0]), int(args[1]))
    elif kind == "makespan":
        run_makespan(int(args[0]), int(args[1]))
    else:
        run_noop(int(args[0]), float(args[1]) if len(args) > 1 else 0.0)


if __name__ == "__main__":
    main(sys.argv[1:])
