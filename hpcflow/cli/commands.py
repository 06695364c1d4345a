"""The sub-commands: each loads what it needs, calls one layer, and prints for people."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from hpcflow.cli import EXIT_FAILED, EXIT_OK, print_json
from hpcflow.cli.load import load_plan


def cmd_validate(args: argparse.Namespace) -> int:
    plan = load_plan(args.workflow)
    print(f"{args.workflow}: ok: workflow '{plan.workflow}', {plan.n} task(s) in "
          f"{len(plan.groups)} group(s), {plan.n_edges} dependencies")
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    from hpcflow.plan.analyse import analyse
    from hpcflow.plan.summary import summary_json, summary_text

    plan = load_plan(args.workflow)
    analysis = analyse(plan)
    if args.json:
        print_json(summary_json(plan, analysis))
    else:
        print(summary_text(plan, analysis), end="")
    return EXIT_OK


def cmd_graph(args: argparse.Namespace) -> int:
    from hpcflow.report import graph

    plan = load_plan(args.workflow)
    render = {"dot": graph.to_dot, "mermaid": graph.to_mermaid, "svg": graph.to_svg}[args.format]
    try:
        text = render(plan, instances=args.instances)
    except (ValueError, RuntimeError) as exc:
        print(f"hpcflow graph: {exc}", file=sys.stderr)
        return 2
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from hpcflow.engine.core import RunOptions
    from hpcflow.engine.runner import EngineConfig, run_workflow

    if args.engine == "mpi" and _mpi_size() == 1 and args.workers:
        from hpcflow.engine.mpi.launch import relaunch

        return relaunch(sys.argv, args.workers)
    plan = load_plan(args.workflow)
    config = EngineConfig(
        engine=args.engine, workers=args.workers,
        gpus=tuple(g for g in args.gpus.split(",") if g), run_dir=args.run_dir,
        runs_root=args.runs_root, spec=str(Path(args.workflow).resolve()),
        options=RunOptions(keep_going=not args.stop_on_failure, fsync=args.fsync),
    )
    result = run_workflow(plan, config)
    if args.engine == "mpi" and _mpi_rank() != 0:
        return EXIT_OK if result.status == "succeeded" else EXIT_FAILED
    _report(result, args.json)
    return EXIT_OK if result.status == "succeeded" else EXIT_FAILED


def _report(result: Any, as_json: bool) -> None:
    if as_json:
        print_json({"status": result.status, "run_dir": result.run_dir, "done": result.done,
                    "failed": [{"task": f.task, "error": f.error, "log": f.log}
                               for f in result.failures],
                    "skipped": result.skipped, "elapsed": result.elapsed,
                    "outputs": {k: repr(v) for k, v in result.outputs.items()}})
        return
    print(f"{result.status}: {result.done} task(s) done, {len(result.failures)} failed, "
          f"{result.skipped} not run, in {result.elapsed:.1f} s")
    print(f"run folder: {result.run_dir}")
    for name, value in result.outputs.items():
        text = repr(value)
        print(f"  output {name} = {text if len(text) <= 200 else text[:197] + '...'}")
    for failure in result.failures:
        print(f"  FAILED {failure.task}: {failure.error}", file=sys.stderr)
        if failure.log:
            print(f"         log: {failure.log}", file=sys.stderr)
    if result.failures:
        print("Fix the cause (see the logs above), then run again; tasks that do not depend "
              "on a failed one have finished.", file=sys.stderr)


def _mpi_size() -> int:
    if not any(k in os.environ for k in ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE",
                                         "SLURM_STEP_ID", "PMI_FD")):
        return 1
    from mpi4py import MPI

    return MPI.COMM_WORLD.size


def _mpi_rank() -> int:
    from mpi4py import MPI

    return MPI.COMM_WORLD.rank


def cmd_status(args: argparse.Namespace) -> int:
    from hpcflow.report.status import batch_job_state, run_status, status_json, status_text

    status = run_status(_run_folder(args.run), job_state=batch_job_state)
    if args.json:
        print_json(status_json(status))
    else:
        sys.stdout.write(status_text(status))
    return EXIT_FAILED if status.status == "failed" else EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from hpcflow.report.html import write_report

    path = write_report(_run_folder(args.run), args.output)
    print(f"report: {path}")
    return EXIT_OK


def _run_folder(name: str) -> str:
    """``name`` as given, or the run of that name under the runs root (as ``run`` makes them)."""
    if Path(name).exists():
        return name
    for root in (os.environ.get("HPCFLOW_RUNS"), "hpcflow-runs"):
        if root and (Path(root) / name).is_dir():
            return str(Path(root) / name)
    return name
