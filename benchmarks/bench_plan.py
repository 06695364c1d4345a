"""Planner benchmark: plan a layered DAG through the Python API, beside graphlib.

For each ``--tasks`` n: a layered DAG of width 1000 (n/1000 layers; task i of a layer
reads tasks i and i+1 mod 1000 of the layer before), the graph of
``../shared/bench-floor/plan_anchor.py``. It is written compactly, one zip sweep per
layer, and planned: the API calls, ``workflow()``, ``flatten``, ``check_order`` and
``analyse`` (levels, priorities, critical path, demand). In the same run
``graphlib.TopologicalSorter(dict).static_order()`` orders the same graph (building the
dict included, as plan_anchor.py does). Times are medians of ``--repeat`` runs; peak
bytes per task come from tracemalloc in a child process, so that tracing does not
slow the timed runs.

Then, as a separate and lower figure, the same graph built one task object at a time
(one plain call per task) at 10^5 tasks, and at 10^6 when 10^5 took under 6 s (or at
the sizes given to ``--one-at-a-time``); and the
simulated schedule of the 10^5 compact plan (random task times) on 64 slots.

    python benchmarks/bench_plan.py --tasks 10000 100000 1000000

Each figure is printed as a ``RESULT key=value ...`` line.
"""

from __future__ import annotations

import argparse
import dataclasses
import graphlib
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

import hpcflow.model.api as hf
from hpcflow.plan import analyse, check_order, flatten, simulate
from hpcflow.plan.policy import Slot

WIDTH = 1000
CPU: dict[str, float] = {}  # median CPU seconds of the last timed() of each function
ONE_AT_A_TIME_LIMIT = 60.0  # seconds a 10^6 one-object run may take (estimated as 10x 10^5)


@hf.task
def step(a: Any = None, b: Any = None) -> None:
    """Never runs: only the plan is built."""


def compact(n: int) -> hf.TaskRef:
    """One zip sweep per layer: member i reads members i and i+1 (mod W) of the last."""
    shift = np.roll(np.arange(WIDTH), -1)
    layer = step.sweep({"a": range(WIDTH)})
    for _ in range(n // WIDTH - 1):
        layer = step.sweep({"a": layer.each(), "b": layer.each(index=shift)}, mode="zip")
    return layer


def one_at_a_time(n: int) -> list[hf.TaskRef]:
    """The same graph, one plain call per task."""
    layer = [step() for _ in range(WIDTH)]
    for _ in range(n // WIDTH - 1):
        layer = [step(layer[i], layer[(i + 1) % WIDTH]) for i in range(WIDTH)]
    return layer


def plan_compact(n: int) -> Any:
    plan = flatten(hf.workflow("layered", [compact(n)]))
    check_order(plan)
    return plan, analyse(plan)


def plan_one_at_a_time(n: int) -> Any:
    plan = flatten(hf.workflow("layered", one_at_a_time(n)))
    check_order(plan)
    return plan, analyse(plan)


def graphlib_order(n: int) -> list[int]:
    """plan_anchor.py's ``layered`` dict and static_order."""
    graph = {i: ((i - WIDTH, i - WIDTH + 1 if (i % WIDTH) < WIDTH - 1 else i - WIDTH)
                 if i >= WIDTH else ()) for i in range(n)}
    return list(graphlib.TopologicalSorter(graph).static_order())


WORKLOADS: dict[str, Callable[[int], Any]] = {
    "compact": plan_compact, "one-at-a-time": plan_one_at_a_time, "graphlib": graphlib_order}


def timed(fn: Callable[[int], Any], n: int, repeat: int) -> float:
    """Median wall time of ``fn(n)``; each result is dropped before the next run. The
    CPU time of the same runs is kept in ``CPU`` (less disturbed on a shared machine)."""
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn(n)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        del result
    CPU[fn.__name__] = statistics.median(cpus)
    return statistics.median(walls)


def traced_peak(workload: str, n: int) -> float:
    """Peak traced bytes per task of one run, measured in a fresh child process."""
    out = subprocess.run([sys.executable, __file__, "--trace", workload, str(n)],
                         check=True, capture_output=True, text=True).stdout
    return float(out.split()[-1])


def _trace_child(workload: str, n: int) -> None:
    tracemalloc.start()
    result = WORKLOADS[workload](n)
    peak = tracemalloc.get_traced_memory()[1]
    del result
    print(f"peak_bytes_per_task {peak / n:.1f}")


def bench_compact(n: int, repeat: int) -> None:
    ours, theirs = timed(plan_compact, n, repeat), timed(graphlib_order, n, repeat)
    ours_b, theirs_b = traced_peak("compact", n), traced_peak("graphlib", n)
    print(f"RESULT runner=graphlib workload=toposort n={n} seconds={theirs:.3f} "
          f"cpu_seconds={CPU['graphlib_order']:.3f} peak_bytes_per_task={theirs_b:.0f}")
    print(f"RESULT runner=hpcflow workload=plan-compact n={n} seconds={ours:.3f} "
          f"cpu_seconds={CPU['plan_compact']:.3f} peak_bytes_per_task={ours_b:.0f} "
          f"ratio_vs_graphlib={ours / theirs:.2f}", flush=True)


def bench_one_at_a_time(n: int, repeat: int) -> float:
    seconds = timed(plan_one_at_a_time, n, repeat)
    theirs = timed(graphlib_order, n, repeat)
    per_task = traced_peak("one-at-a-time", n)
    print(f"RESULT runner=hpcflow workload=plan-one-at-a-time n={n} seconds={seconds:.3f} "
          f"cpu_seconds={CPU['plan_one_at_a_time']:.3f} peak_bytes_per_task={per_task:.0f} "
          f"ratio_vs_graphlib={seconds / theirs:.2f}", flush=True)
    return seconds


def bench_simulate(n: int, slots: int, repeat: int) -> None:
    plan, _ = plan_compact(n)
    times = np.random.default_rng(0).uniform(1.0, 10.0, plan.n)
    plan = dataclasses.replace(plan, time=times)
    analysis = analyse(plan)
    workers = [Slot(k, "node0") for k in range(slots)]

    def simulated(_: int) -> Any:
        return simulate(plan, analysis, workers)

    seconds = timed(simulated, n, repeat)
    makespan = simulated(n).makespan
    print(f"RESULT runner=hpcflow workload=simulate n={n} slots={slots} seconds={seconds:.3f} "
          f"cpu_seconds={CPU['simulated']:.3f} us_per_task={seconds / n * 1e6:.1f} "
          f"makespan={makespan:.0f}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per figure (median)")
    parser.add_argument("--one-at-a-time", type=int, nargs="*", metavar="N",
                        help="sizes for the one-object-at-a-time figure (default: 10^5, and "
                        "10^6 if 10^5 took under a tenth of a minute; none: skip it)")
    parser.add_argument("--trace", nargs=2, metavar=("WORKLOAD", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.trace:
        _trace_child(args.trace[0], int(args.trace[1]))
        return
    for n in args.tasks:
        bench_compact(n, args.repeat)
    if args.one_at_a_time is None:
        first = bench_one_at_a_time(100_000, args.repeat)
        if first * 10 < ONE_AT_A_TIME_LIMIT:
            bench_one_at_a_time(1_000_000, 1)
        else:
            print(f"# one-at-a-time 10^6 skipped: 10^5 took {first:.1f} s "
                  "(ask for it with --one-at-a-time 1000000)", flush=True)
    for n in args.one_at_a_time or ():
        bench_one_at_a_time(n, args.repeat if n <= 100_000 else 1)
    bench_simulate(100_000, 64, args.repeat)


if __name__ == "__main__":
    main()
