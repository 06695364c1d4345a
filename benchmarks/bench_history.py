"""What recording the history costs a run: no-op throughput with it on and off.

    python benchmarks/bench_history.py [--engine mpi] [--workers 2] [--tasks 20000]
                                       [--repeat 5]

Each (mode, repeat) is its own process (under ``mpiexec -n workers+1`` for the MPI
engine), interleaved on/off, with a one-task warm-up run first. ``seconds`` is the wall
time of the ``hf.run`` call, as ``bench_engine.py`` measures it; ``record_seconds`` is
how long the history thread took after it (reading the journal and writing SQLite),
paid before the process exits, not by the run. Medians are printed, and the ratio of
throughputs on/off. Every launch has a timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TIMEOUT = 300.0


def noop(x: int) -> int:
    return x


def one(mode: str, tasks: int, engine: str, workers: int) -> None:
    """One measured run (every rank calls this under MPI; rank 0 prints)."""
    import hpcflow as hf
    from hpcflow.engine.launched import launch_rank
    from hpcflow.store.measured import wait_for_recording

    history = mode == "on"
    warm = hf.task(noop).sweep({"x": range(1)})
    hf.run(hf.workflow("warm", outputs={"all": warm.all()}), engine=engine, workers=workers,
           history=False)
    wf = hf.workflow("noop", outputs={"all": hf.task(noop).sweep({"x": range(tasks)}).all()})
    t0 = time.perf_counter()
    result = hf.run(wf, engine=engine, workers=workers, history=history)
    seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    wait_for_recording(TIMEOUT)
    if launch_rank() == 0:
        assert result.outputs["all"] == list(range(tasks))
        print("RESULT " + json.dumps({"mode": mode, "seconds": seconds,
                                      "record_seconds": time.perf_counter() - t1}), flush=True)


def launch(mode: str, args: argparse.Namespace, env: dict[str, str]) -> dict | None:
    argv = [sys.executable, __file__, "--one", mode, "--tasks", str(args.tasks), "--engine",
            args.engine, "--workers", str(args.workers)]
    if args.engine == "mpi":
        argv = [shutil.which("mpiexec") or "mpiexec", "-n", str(args.workers + 1), *argv]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, env=env)
    except subprocess.TimeoutExpired:
        print(f"  timed out: {mode}", file=sys.stderr)
        return None
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    print(f"  failed ({proc.returncode}): {mode}\n{proc.stderr[-2000:]}", file=sys.stderr)
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", default="mpi", choices=["local", "mpi"])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--tasks", type=int, default=20000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--one", choices=["on", "off"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        one(args.one, args.tasks, args.engine, args.workers)
        return
    scratch = Path(tempfile.mkdtemp(prefix="bench-history-"))
    env = dict(os.environ, HPCFLOW_RUNS=str(scratch / "runs"),
               HPCFLOW_HISTORY=str(scratch / "history.sqlite"))
    got: dict[str, list[dict]] = {"on": [], "off": []}
    for _ in range(args.repeat):
        for mode in ("on", "off"):
            result = launch(mode, args, env)
            if result:
                got[mode].append(result)
    shutil.rmtree(scratch, ignore_errors=True)
    rate = {m: statistics.median(args.tasks / r["seconds"] for r in rs) for m, rs in got.items() if rs}
    print(f"{args.engine} engine, {args.workers} workers, {args.tasks} no-op tasks, medians of "
          f"{len(got['on'])} (on) and {len(got['off'])} (off) runs:")
    for mode, rows in got.items():
        if rows:
            print(f"  history {mode:>3}: {rate[mode]:,.0f} tasks/s; recording after the run "
                  f"{statistics.median(r['record_seconds'] for r in rows):.3f} s")
    if len(rate) == 2:
        print(f"  on/off throughput: {rate['on'] / rate['off']:.3f}")


if __name__ == "__main__":
    main()
