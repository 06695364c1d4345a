"""What measuring a task's memory costs a worker (hpcflow/engine/memory.py).

    python benchmarks/bench_memory.py [--tasks 200000] [--repeat 7]

- ``workload=noop``: ``Executor.run`` of a no-op Python task in the worker, per task:
  the path every short task takes (not measured: one comparison). Run the same script
  on a checkout from before the measurement to see the difference (it then prints only
  this line).
- ``workload=measured``: the same task forced onto the measured path (reset the
  high-water mark, read the RSS and the peak), per task, and ``extra_us`` over noop:
  what a task of 1 ms or more pays.
- ``workload=primitives``: each system call alone (clear_refs write, statm read,
  getrusage, the /proc/self/status read used when getrusage cannot be trusted).
- ``workload=wire``: pickling an Outcome as the MPI worker sends it (a plain tuple),
  per record.

Each figure is the best of ``--repeat`` runs (the machine is shared). One
``RESULT {json}`` line per workload.
"""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import tempfile
import time
import timeit

from hpcflow.engine.execute import Call, Executor
from hpcflow.model.task import PythonCall


def noop(x: int) -> int:
    return x


def report(**fields: object) -> None:
    print("RESULT " + json.dumps(fields), flush=True)


def per_task(executor: Executor, calls: list[Call], repeat: int, watch: bool | None) -> float:
    """Best seconds per ``executor.run`` over ``calls``."""
    best = float("inf")
    for _ in range(repeat):
        if watch is not None:
            executor._watch = [watch]
        t0 = time.perf_counter()
        for call in calls:
            executor.run(call)
        best = min(best, (time.perf_counter() - t0) / len(calls))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    executor = Executor([PythonCall(noop)], tempfile.mkdtemp(), [])
    calls = [Call(i, 0, 0, f"noop[{i}]", (i,), {}) for i in range(args.tasks)]
    executor.run(calls[0])  # imports the target
    plain = per_task(executor, calls, args.repeat, None)
    report(workload="noop", tasks=args.tasks, us_per_task=round(plain * 1e6, 3))
    try:
        from hpcflow.engine.memory import WATCH_AFTER, process_meter
    except ImportError:  # a checkout from before the measurement
        return
    meter = process_meter()
    if meter is None or not meter.can_reset:
        report(workload="measured", error="no /proc/self/clear_refs here: nothing measured")
        return
    import hpcflow.engine.execute as execute

    execute.WATCH_AFTER = 0.0  # keep every task on the measured path
    few = calls[: max(1, args.tasks // 10)]
    measured = per_task(executor, few, args.repeat, True)
    execute.WATCH_AFTER = WATCH_AFTER
    report(workload="measured", tasks=len(few), us_per_task=round(measured * 1e6, 3),
           extra_us=round((measured - plain) * 1e6, 3))
    n = 100_000
    clear, statm, status = meter._clear, meter._statm, meter._status
    space = {"os": __import__("os"), "resource": resource, "meter": meter}
    prims = {}
    for name, stmt in (("clear_refs_write", "os.write(clear, b'5')"),
                       ("statm_rss", "meter.rss()"),
                       ("getrusage", "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss"),
                       ("status_vmhwm", "meter.hwm()"),
                       ("start_plus_peak", "meter.start(); meter.peak()")):
        space.update(clear=clear, statm=statm, status=status)
        count = n // 10 if name == "status_vmhwm" else n
        best = min(timeit.repeat(stmt, globals=space, number=count, repeat=args.repeat))
        prims[name] = round(best / count * 1e6, 3)
    report(workload="primitives", us=prims)
    outcome = tuple(executor.run(calls[1]))
    count = 200_000
    best = min(timeit.repeat("dumps(o, 5)", globals={"dumps": pickle.dumps, "o": outcome},
                             number=count, repeat=args.repeat))
    report(workload="wire", fields=len(outcome), us_per_record=round(best / count * 1e6, 3))


if __name__ == "__main__":
    main()
