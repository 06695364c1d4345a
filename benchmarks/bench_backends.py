"""hpcflow on Dask, Ray and Spark beside each framework's own API written by hand.

    python benchmarks/bench_backends.py [--engines dask,ray,spark] [--workers 2]
        [--repeat 3] [--tasks 2000] [--layers 20] [--width 100] [--spark-scale 0.1]
        [--mpi | --no-mpi] [--per-task] [--json FILE]

Each engine runs in a child process of its own (so no two frameworks share the machine),
which starts the framework once (a Dask ``LocalCluster`` of ``--workers`` one-thread
workers declaring ``cores``, ``ray.init(num_cpus=workers)``, ``local[workers]``), warms
both sides up, then times, ``--repeat`` times and interleaved:

- ``noop``: ``--tasks`` independent tasks returning their argument, all results
  gathered; ours is a sweep through ``hf.run``, native is ``client.submit`` + ``gather``
  (Dask), ``f.remote`` + ``ray.get`` (Ray), and one one-partition job per task from a
  thread pool of the same size as ours (Spark: the pattern our backend uses);
- ``dag``: ``--layers`` x ``--width`` tasks, each adding two tasks of the layer above
  (the MPI benchmark's layered DAG); native submits the whole graph up front with
  futures / ``ObjectRef`` arguments (Dask, Ray), or starts each task's job from the
  done-callbacks of its inputs' (Spark).

Ours is the wall time of the whole ``hf.run`` (planning, run folder, connecting, the
journal on); ``core`` is the shared core's loop alone (``RunResult.elapsed``). Spark's
per-job cost is about 100 ms here, so its sizes are scaled by ``--spark-scale``. With
``--mpi`` (default when ``mpiexec`` is found) the MPI engine's figure for the same
workloads comes from ``run_hpcflow.py`` under ``mpiexec -n workers+1``. With
``--per-task`` each repeat also times ours on Dask and Ray with one framework task per
task (no bundles, no runs: what the backends do for tasks of 10 ms or more), against the
same native time (rows "..., per task"). Medians are printed as a Markdown table, with
ours/native. Every child has a timeout.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import hpcflow as hf  # noqa: E402

TIMEOUT = 900.0


# -- the work ---------------------------------------------------------------------------
def noop(x: int) -> int:
    return x


def source(i: int) -> int:
    return i


def add(a: int, b: int) -> int:
    return (a + b) % 1000003


def expected_last(layers: int, width: int) -> list[int]:
    row = list(range(width))
    for _ in range(1, layers):
        row = [add(row[i], row[(i + 1) % width]) for i in range(width)]
    return row


def noop_workflow(n: int) -> hf.Workflow:
    return hf.workflow("noop", outputs={"all": hf.task(noop).sweep({"x": range(n)}).all()})


def dag_workflow(layers: int, width: int) -> hf.Workflow:
    shifted = [(i + 1) % width for i in range(width)]
    prev = hf.task(source, name="layer0").sweep({"i": range(width)})
    for k in range(1, layers):
        prev = hf.task(add, name=f"layer{k}").sweep(
            {"a": prev.each(), "b": prev.each(shifted)}, mode="zip")
    return hf.workflow("dag", outputs={"last": prev.all()})


# -- the frameworks by hand --------------------------------------------------------------
class DaskNative:
    def __init__(self, workers: int) -> None:
        import logging

        import distributed

        self.cluster = distributed.LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, resources={"cores": 1},
            dashboard_address=None, silence_logs=logging.ERROR)
        self.client = distributed.Client(self.cluster)
        self.address = self.cluster.scheduler_address

    def noop(self, n: int) -> list[int]:
        return self.client.gather([self.client.submit(noop, i, pure=False) for i in range(n)])

    def dag(self, layers: int, width: int) -> list[int]:
        submit = self.client.submit
        row = [submit(source, i, pure=False) for i in range(width)]
        for _ in range(1, layers):
            row = [submit(add, row[i], row[(i + 1) % width], pure=False) for i in range(width)]
        return self.client.gather(row)

    def close(self) -> None:
        self.client.close()
        self.cluster.close()


class RayNative:
    address = None

    def __init__(self, workers: int) -> None:
        import logging

        import ray

        ray.init(address="local", num_cpus=workers, include_dashboard=False,
                 logging_level=logging.WARNING)
        self.ray = ray
        self.noop_task, self.source_task, self.add_task = map(ray.remote, (noop, source, add))

    def noop(self, n: int) -> list[int]:
        return self.ray.get([self.noop_task.remote(i) for i in range(n)])

    def dag(self, layers: int, width: int) -> list[int]:
        row = [self.source_task.remote(i) for i in range(width)]
        for _ in range(1, layers):
            row = [self.add_task.remote(row[i], row[(i + 1) % width]) for i in range(width)]
        return self.ray.get(row)

    def close(self) -> None:
        self.ray.shutdown()


class SparkNative:
    """One one-partition job per task from a thread pool, as the backend runs them."""

    address = None

    def __init__(self, workers: int) -> None:
        from hpcflow.engine.backends.spark import THREADS_PER_SLOT, start_context

        self.sc = start_context(f"local[{workers}]")
        self.pool = ThreadPoolExecutor(workers * THREADS_PER_SLOT)

    def job(self, fn: Callable[..., int], *args: int) -> int:
        return self.sc.parallelize([args], 1).map(lambda a: fn(*a)).collect()[0]

    def noop(self, n: int) -> list[int]:
        return list(self.pool.map(lambda i: self.job(noop, i), range(n)))

    def dag(self, layers: int, width: int) -> list[int]:
        """Each task's job starts from the callback of its last input's."""
        values: dict[tuple[int, int], int] = {}
        waiting = {(k, i): 2 for k in range(1, layers) for i in range(width)}
        lock, done = threading.Lock(), threading.Event()

        def finished(key: tuple[int, int], value: int) -> None:
            k, i = key
            ready = []
            with lock:
                values[key] = value
                if k + 1 == layers:
                    if sum(1 for kk, _ in values if kk == k) == width:
                        done.set()
                    return
                for j in {i, (i - 1) % width}:
                    waiting[(k + 1, j)] -= 1
                    if waiting[(k + 1, j)] == 0:
                        ready.append((k + 1, j))
            for nk, j in ready:
                start(nk, j, add, values[(nk - 1, j)], values[(nk - 1, (j + 1) % width)])

        def start(k: int, i: int, fn: Callable[..., int], *args: int) -> None:
            future = self.pool.submit(self.job, fn, *args)
            future.add_done_callback(lambda f: finished((k, i), f.result()))

        for i in range(width):
            start(0, i, source, i)
        done.wait(TIMEOUT)
        return [values[(layers - 1, i)] for i in range(width)]

    def close(self) -> None:
        self.pool.shutdown()
        self.sc.stop()


NATIVE = {"dask": DaskNative, "ray": RayNative, "spark": SparkNative}


# -- one engine, in a child process -------------------------------------------------------
def child(args: argparse.Namespace) -> None:
    engine = args.child
    scale = args.spark_scale if engine == "spark" else 1.0
    n = max(10, int(args.tasks * scale))
    layers = max(3, int(args.layers * scale ** 0.5))
    width = max(10, int(args.width * scale ** 0.5))
    native = NATIVE[engine](args.workers)
    os.environ["HPCFLOW_RUNS"] = tempfile.mkdtemp(prefix="bench-backends-")

    def ours(wf: hf.Workflow) -> tuple[float, float, dict[str, Any]]:
        t0 = time.perf_counter()
        result = hf.run(wf, engine=engine, workers=args.workers, address=native.address)
        return time.perf_counter() - t0, result.elapsed, result.outputs

    ours(noop_workflow(4))
    native.noop(4)
    per_task = args.per_task and engine in PER_TASK
    try:
        for _ in range(args.repeat):
            seconds, core, out = ours(noop_workflow(n))
            assert out["all"] == list(range(n))
            t0 = time.perf_counter()
            assert native.noop(n) == list(range(n))
            emit(engine, "noop", n, seconds, core, native_s := time.perf_counter() - t0)
            if per_task:
                with one_task_each(engine):
                    seconds, core, out = ours(noop_workflow(n))
                assert out["all"] == list(range(n))
                emit(engine, "noop, per task", n, seconds, core, native_s)
            seconds, core, out = ours(dag_workflow(layers, width))
            assert out["last"] == expected_last(layers, width)
            t0 = time.perf_counter()
            assert native.dag(layers, width) == expected_last(layers, width)
            dag = f"dag{layers}x{width}"
            emit(engine, dag, layers * width, seconds, core, native_s := time.perf_counter() - t0)
            if per_task:
                with one_task_each(engine):
                    seconds, core, out = ours(dag_workflow(layers, width))
                assert out["last"] == expected_last(layers, width)
                emit(engine, f"{dag}, per task", layers * width, seconds, core, native_s)
    finally:
        native.close()
        shutil.rmtree(os.environ["HPCFLOW_RUNS"], ignore_errors=True)


PER_TASK = {"dask": "DaskBackend", "ray": "RayBackend"}


@contextmanager
def one_task_each(engine: str) -> Iterator[None]:
    """The backend with one framework task per task (no bundles, no runs): what it does
    for tasks of 10 ms or more, where the core queues one call per slot."""
    from hpcflow.engine.backends import bundle

    backend = getattr(importlib.import_module(f"hpcflow.engine.backends.{engine}"),
                      PER_TASK[engine])
    saved = bundle.BUNDLE, backend.runs
    bundle.BUNDLE, backend.runs = 1, False
    try:
        yield
    finally:
        bundle.BUNDLE, backend.runs = saved


def emit(engine: str, workload: str, n: int, ours: float, core: float, native: float) -> None:
    print("RESULT " + json.dumps({"engine": engine, "workload": workload, "n": n,
                                  "ours": ours, "core": core, "native": native}), flush=True)


# -- the parent: children, the MPI figure, the table ---------------------------------------
def run_child(engine: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    argv = [sys.executable, __file__, "--child", engine, "--workers", str(args.workers),
            "--repeat", str(args.repeat), "--tasks", str(args.tasks), "--layers",
            str(args.layers), "--width", str(args.width), "--spark-scale", str(args.spark_scale),
            *(["--per-task"] if args.per_task else [])]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        print(f"{engine}: timed out after {TIMEOUT:g} s", file=sys.stderr)
        return []
    rows = [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode:
        print(f"{engine}: exit {proc.returncode}\n{proc.stderr[-3000:]}", file=sys.stderr)
    return rows


def run_mpi(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The MPI engine on the same workloads (run_hpcflow.py, ``repeat`` times each)."""
    mpiexec = shutil.which("mpiexec")
    if not mpiexec:
        return []
    rows = []
    env = dict(os.environ, HPCFLOW_RUNS=tempfile.mkdtemp(prefix="bench-backends-mpi-"))
    for workload in (["noop", str(args.tasks)], ["dag", str(args.layers), str(args.width)]):
        for _ in range(args.repeat):
            try:
                proc = subprocess.run([mpiexec, "-n", str(args.workers + 1), sys.executable,
                                       "run_hpcflow.py", *workload], cwd=HERE, env=env,
                                      capture_output=True, text=True, timeout=300)
            except subprocess.TimeoutExpired:
                continue
            for line in proc.stdout.splitlines():
                if line.startswith("RESULT "):
                    got = json.loads(line[7:])
                    rows.append({"engine": "mpi", "workload": got["workload"], "n": got["n"],
                                 "ours": got["seconds"], "core": got["core_seconds"]})
    shutil.rmtree(env["HPCFLOW_RUNS"], ignore_errors=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """Medians per (engine, workload). The ratios are the medians of each repeat's own
    ratio (ours and native ran back to back), with their range: on a shared machine
    that is steadier than a ratio of medians."""
    lines = ["| engine | workload | tasks | hpcflow (s) | native (s) | hpcflow / native (range) "
             "| core / native | hpcflow tasks/s |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["engine"], row["workload"]), []).append(row)
    for (engine, workload), group in groups.items():
        ours = statistics.median(r["ours"] for r in group)
        if "native" in group[0]:
            ratios = [r["ours"] / r["native"] for r in group]
            cells = (f"{statistics.median(r['native'] for r in group):.2f} | "
                     f"**{statistics.median(ratios):.2f}** ({min(ratios):.2f}-{max(ratios):.2f}) | "
                     f"{statistics.median(r['core'] / r['native'] for r in group):.2f}")
        else:
            cells = "— | — | —"
        lines.append(f"| {engine} | {workload} | {group[0]['n']} | {ours:.2f} | {cells} | "
                     f"{group[0]['n'] / ours:,.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="dask,ray,spark")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--layers", type=int, default=20)
    parser.add_argument("--width", type=int, default=100)
    parser.add_argument("--spark-scale", type=float, default=0.1)
    parser.add_argument("--mpi", action=argparse.BooleanOptionalAction,
                        default=shutil.which("mpiexec") is not None)
    parser.add_argument("--per-task", action="store_true", help="also time Dask and Ray "
                        "with one framework task per task (no bundles, no runs)")
    parser.add_argument("--json", help="also write every measurement to this file")
    parser.add_argument("--table", help="only print the table of these --json files "
                        "(comma-separated), measuring nothing")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return
    if args.table:
        print(table([r for f in args.table.split(",") for r in json.loads(Path(f).read_text())]))
        return
    rows: list[dict[str, Any]] = []
    for engine in args.engines.split(","):
        rows.extend(run_child(engine, args))
    if args.mpi:
        rows.extend(run_mpi(args))
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
