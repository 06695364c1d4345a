"""hpcflow's MPI engine beside mpi4py.futures and a hand-written mpi4py loop, one command.

    python benchmarks/bench_engine.py [--workers 2] [--repeat 3] [--tasks 20000]
                                      [--task-seconds 0] [--only noop,dag,data,makespan]
                                      [--in-rank]

Every runner gets the same ranks (``mpiexec -n workers+1``) and the same workloads;
Dask distributed (``ref_dask.py``: a ``LocalCluster`` of as many one-thread worker
processes, futures passed to dependents; ``--no-dask`` leaves it out) runs the no-op
workload at ``--dask-tasks`` tasks and the DAG:

- ``noop``: ``--tasks`` independent tasks that sleep ``--task-seconds`` (0: return at once);
- ``dag``: a layered DAG, 50 layers x 200 tasks, each adding two tasks of the layer
  above (futures: submitted from done-callbacks, as ``bench-floor/futures_dag.py``);
- ``data``: fan-out/fan-in of 1 MB and 64 MB numpy arrays (make -> 2 x workers
  touch -> total, every array through rank 0, every result persisted): effective GB/s
  over the bytes that cross ranks;
- ``pingpong``: the same arrays 0 -> 1 -> 0 through the engine's message channel,
  beside raw buffer ``Send``/``Recv`` (buffer reused: the ceiling, as
  ``bench-floor/raw_bandwidth.py``; and into a fresh array each time);
- ``makespan``: a DAG of 60 sleeps of uneven length (10-150 ms, declared as ``time``)
  against ``max(critical path, work / workers)`` and the planner's list schedule.

``--in-rank`` adds hpcflow with its tasks run in the worker ranks themselves
(``HPCFLOW_MPI_TASK_PROCESS=0``) beside the default, where each rank runs them in a task
process of its own so that a crash fails one task (``engine/child.py``).

hpcflow runs with its journal on and its run folders in a temporary folder. Each
(runner, workload) is repeated ``--repeat`` times, interleaved, and the median is
shown, with the ratios ours/futures and ours/raw. If ``bench-floor/raw_loop.py`` is
found (``--floor``, default ``../shared/bench-floor``) it runs beside ours to check that
our floor loop measures the same. Every launch has a timeout.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TIMEOUT = 300.0


def launch(ranks: int, argv: list[str], env: dict[str, str]) -> dict | None:
    """Run ``argv`` under ``mpiexec -n ranks`` (0: as it is); its ``RESULT`` line, or None
    on failure."""
    mpiexec = [shutil.which("mpiexec") or "mpiexec", "-n", str(ranks)] if ranks else []
    try:
        proc = subprocess.run([*mpiexec, *argv], capture_output=True, text=True,
                              timeout=TIMEOUT, env=env, cwd=HERE)
    except subprocess.TimeoutExpired:
        print(f"  timed out: {' '.join(argv)}", file=sys.stderr)
        return None
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return _parse(line[len("RESULT "):])
    print(f"  failed ({proc.returncode}): {' '.join(argv)}\n{proc.stderr[-2000:]}", file=sys.stderr)
    return None


def _parse(body: str) -> dict:
    """Our scripts print JSON; the bench-floor scripts print ``key=value`` pairs."""
    if body.startswith("{"):
        return json.loads(body)
    return {k: _number(v) for k, v in (item.split("=", 1) for item in body.split())}


def _number(text: str) -> object:
    try:
        return float(text)
    except ValueError:
        return text


def jobs(args: argparse.Namespace) -> dict[tuple[str, str], tuple[int, list[str]]]:
    """(workload, runner) -> (ranks, argv) for everything this invocation measures."""
    py, ranks, only = sys.executable, args.workers + 1, set(args.only.split(","))
    fut = [py, "-m", "mpi4py.futures", "ref_futures.py"]
    workers = str(args.workers)
    dask = [py, "ref_dask.py"] if importlib.util.find_spec("distributed") and args.dask else None
    table: dict[tuple[str, str], tuple[int, list[str]]] = {}
    noop = ["noop", str(args.tasks), str(args.task_seconds)]
    if "noop" in only:
        table[("noop", "hpcflow")] = (ranks, [py, "run_hpcflow.py", *noop])
        table[("noop", "futures")] = (ranks, [*fut, *noop])
        table[("noop", "raw")] = (ranks, [py, "ref_raw.py", *noop])
        floor = Path(args.floor) / "raw_loop.py"
        if floor.is_file() and not args.task_seconds:
            table[("noop", "bench-floor raw_loop.py")] = (ranks, [py, str(floor), str(args.tasks)])
        if dask and not args.task_seconds:
            table[("noop", "dask distributed")] = (0, [*dask, "noop", str(args.dask_tasks), workers])
    in_rank = ["env", "HPCFLOW_MPI_TASK_PROCESS=0", py, "run_hpcflow.py"]
    if "noop" in only and args.in_rank:
        table[("noop", "hpcflow, tasks in the ranks")] = (ranks, [*in_rank, *noop])
    if "dag" in only:
        for runner, argv in (("hpcflow", [py, "run_hpcflow.py"]), ("futures", fut),
                             ("raw", [py, "ref_raw.py"])):
            table[("dag50x200", runner)] = (ranks, [*argv, "dag", "50", "200"])
        if args.in_rank:
            table[("dag50x200", "hpcflow, tasks in the ranks")] = (ranks, [*in_rank, "dag", "50",
                                                                           "200"])
        if dask:
            table[("dag50x200", "dask distributed")] = (0, [*dask, "dag", "50", "200", workers])
    if "data" in only:
        fan = str(2 * args.workers)
        for mb in ("1", "64"):
            for runner, argv in (("hpcflow", [py, "run_hpcflow.py"]), ("futures", fut),
                                 ("raw", [py, "ref_raw.py"])):
                table[(f"data{mb}MB", runner)] = (ranks, [*argv, "data", mb, fan])
            ping = f"pingpong{mb}MB"
            table[(ping, "hpcflow")] = (2, [py, "run_hpcflow.py", "pingpong", mb])
            table[(ping, "raw")] = (2, [py, "ref_raw.py", "pingpong", mb])
            table[(ping, "raw, fresh buffers")] = (2, [py, "ref_raw.py", "pingpong", mb, "fresh"])
    if "makespan" in only:
        table[("makespan", "hpcflow")] = (ranks, [py, "run_hpcflow.py", "makespan", "60", "1"])
    return table


def measure(args: argparse.Namespace) -> dict[tuple[str, str], list[dict]]:
    table = jobs(args)
    results: dict[tuple[str, str], list[dict]] = {key: [] for key in table}
    with tempfile.TemporaryDirectory(prefix="hpcflow-bench-") as runs:
        env = dict(os.environ, HPCFLOW_RUNS=runs, PYTHONPATH=f"{HERE.parent}{os.pathsep}"
                   f"{os.environ.get('PYTHONPATH', '')}")
        for rep in range(args.repeat):
            for key, (ranks, argv) in table.items():
                print(f"[{rep + 1}/{args.repeat}] {key[0]:10s} {key[1]}", file=sys.stderr)
                got = launch(ranks, argv, env)
                if got is not None:
                    results[key].append(got)
                shutil.rmtree(Path(runs), ignore_errors=True)
                Path(runs).mkdir(exist_ok=True)
    return results


def median(rows: list[dict], field: str) -> float | None:
    values = [float(r[field]) for r in rows if field in r]
    return statistics.median(values) if values else None


def report(results: dict[tuple[str, str], list[dict]], args: argparse.Namespace) -> list[str]:
    lines = [f"workers={args.workers} repeat={args.repeat} (medians); python {sys.version.split()[0]}",
             "", "| workload | runner | median | unit | ours / this |", "|---|---|---|---|---|"]
    for workload in dict.fromkeys(w for w, _ in results):
        field, unit = _metric(workload)
        ours = median(results.get((workload, "hpcflow"), []), field)
        for (w, runner), rows in results.items():
            value = median(rows, field)
            if w != workload or value is None:
                continue
            ratio = "" if runner == "hpcflow" or ours is None or not value else f"{ours / value:.2f}x"
            lines.append(f"| {workload} | {runner} | {value:,.{_digits(unit)}f} | {unit} | {ratio} |")
        if workload == "makespan":
            lines.extend(_makespan_lines(results.get((workload, "hpcflow"), [])))
    return lines


def _metric(workload: str) -> tuple[str, str]:
    if workload.startswith(("data", "pingpong")):
        return "gb_per_s", "GB/s"
    if workload == "makespan":
        return "makespan", "s"
    return "tasks_per_s", "tasks/s"


def _digits(unit: str) -> int:
    return 0 if unit == "tasks/s" else 3


def _makespan_lines(rows: list[dict]) -> list[str]:
    measured = median(rows, "makespan")
    bound, ideal = median(rows, "lower_bound"), median(rows, "list_schedule")
    if measured is None or not bound or not ideal:
        return []
    return [f"| makespan | lower bound max(critical path, work/workers) | {bound:.3f} | s | "
            f"{measured / bound:.3f}x |",
            f"| makespan | planner's list schedule (simulate) | {ideal:.3f} | s | "
            f"{measured / ideal:.3f}x |"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--task-seconds", type=float, default=0.0)
    parser.add_argument("--only", default="noop,dag,data,makespan")
    parser.add_argument("--floor", default=str(HERE.parent.parent / "shared" / "bench-floor"))
    parser.add_argument("--no-dask", dest="dask", action="store_false",
                        help="leave out the Dask distributed reference (it needs the dask extra)")
    parser.add_argument("--dask-tasks", type=int, default=5000,
                        help="no-op tasks for Dask (its rate does not depend on the count)")
    parser.add_argument("--in-rank", action="store_true",
                        help="also run hpcflow with its tasks in the worker ranks "
                             "(HPCFLOW_MPI_TASK_PROCESS=0): what the crash-safe task process costs")
    parser.add_argument("--json", help="also write every measurement to this file")
    args = parser.parse_args(argv)
    results = measure(args)
    print("\n".join(report(results, args)))
    if args.json:
        Path(args.json).write_text(json.dumps({f"{w}|{r}": rows for (w, r), rows in results.items()},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
