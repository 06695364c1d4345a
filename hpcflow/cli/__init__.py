"""The ``hpcflow`` command. Each sub-command is a short function over the layers below.

Exit codes (also in the README):
  0  success
  1  the run finished with failed tasks (each named with its log)
  2  bad input: the spec, an option, a run folder or runs root that is missing, locked
     or not writable (nothing ran)
  3  the engine could not run (MPI, a backend, the batch system, an extra that is not
     installed: one line naming the pip command)
  75 the allocation's walltime ended the run first; resume it (`run --resume RUN`; a
     Slurm job does so itself in a continuation job)
  130 interrupted (Ctrl-C / SIGTERM)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from hpcflow.errors import HpcflowError

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_ENGINE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_WALLTIME = 75  # hpcflow.engine.walltime.EXIT_WALLTIME


def _parser() -> argparse.ArgumentParser:
    from hpcflow.cli.history import add_history_command

    parser = argparse.ArgumentParser(
        prog="hpcflow", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Define, check, plan and run workflows of tasks on a workstation, "
                    "under MPI, or in one Slurm job.",
        epilog="exit codes: 0 success, 1 tasks failed, 2 bad input (nothing ran), "
               "3 engine error, 75 stopped for the walltime (resume it), 130 interrupted")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    target_help = "a YAML spec, or FILE.py[:NAME] defining a Workflow"

    p = sub.add_parser("validate", help="check a workflow; nothing runs")
    p.add_argument("workflow", help=target_help)

    p = sub.add_parser("plan", help="show the flattened plan: tasks, levels, critical path, demand")
    p.add_argument("workflow", help=target_help)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--slurm", action="store_true",
                   help="also size one Slurm job for it: candidates, choice and why")
    _sizing_options(p)
    _history_options(p)

    _run_command(sub, target_help)

    p = sub.add_parser("graph", help="print the task graph as DOT, Mermaid or SVG")
    p.add_argument("workflow", help=target_help)
    p.add_argument("--format", choices=["dot", "mermaid", "svg"], default="dot")
    p.add_argument("--instances", action="store_true", help="one node per task instance")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")

    run_help = "a run folder (or its name under $HPCFLOW_RUNS / ./hpcflow-runs)"
    p = sub.add_parser("status", help="task counts, elapsed time and failures of a run, live or not")
    p.add_argument("run", help=run_help)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("report", help="write a self-contained HTML report of a run")
    p.add_argument("run", help=run_help)
    p.add_argument("-o", "--output", help="the HTML file (default: <run>/report.html)")

    p = sub.add_parser("runs", help="the run folders under the runs root, oldest first: status, "
                       "tasks, engine, start, end")
    p.add_argument("--runs-root", help="where to look (default: $HPCFLOW_RUNS or ./hpcflow-runs)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("trace", help="one tab-separated row per task attempt of a run (for "
                       "pandas, R, a spreadsheet)")
    p.add_argument("run", help=run_help)
    p.add_argument("-o", "--output", help="the file (default: <run>/trace.tsv; - for stdout)")
    _slurm_commands(sub, target_help, run_help)
    add_history_command(sub)
    return parser


def _run_command(sub: argparse._SubParsersAction, target_help: str) -> None:
    """``hpcflow run`` and its options: engine, workers, run folder, resume, durability."""
    p = sub.add_parser("run", help="run a workflow (locally, or under mpiexec with --engine mpi)")
    p.add_argument("workflow", nargs="?", help=target_help + " (with --resume: default, the "
                   "run's own spec)")
    p.add_argument("--resume", metavar="RUN", help="continue this run folder: completed tasks "
                   "whose definition and inputs are unchanged are reused")
    p.add_argument("--dry-run", action="store_true",
                   help="with --resume: list what would run again and why; run nothing")
    p.add_argument("--force", action="append", default=[], metavar="TASK",
                   help="with --resume: run TASK again (a task id, one instance 'sim[3]', or a "
                   "nested workflow's id) and everything downstream of it; repeatable")
    p.add_argument("--engine",
                   help="local, mpi, dask, ray or spark (the last three need the extra of that "
                   "name: pip install 'hpcflow-mpi[dask]'). Default: mpi when started by "
                   "mpiexec or srun with several ranks, else local")
    p.add_argument("--workers", type=int, help="worker processes / ranks (default: cores)")
    p.add_argument("--address", "--master", dest="address", metavar="URL",
                   help="dask: a scheduler (tcp://host:8786); ray: a cluster (host:6379 or "
                   "auto); spark: a master (spark://host:7077). Default: start one here")
    p.add_argument("--gpus", default="", help="GPU ids to share among workers, e.g. 0,1")
    p.add_argument("--run-dir", help="folder for this run (default: a new one under --runs-root)")
    p.add_argument("--runs-root", help="where new run folders go (default: $HPCFLOW_RUNS or "
                   "./hpcflow-runs)")
    p.add_argument("--stop-on-failure", action="store_true",
                   help="stop at the first failed task (default: finish independent branches)")
    p.add_argument("--fsync", action="store_true", help="fsync the journal (survives power loss)")
    p.add_argument("--deadline", help="the allocation ends this long from now, e.g. 50m "
                   "(default: from Slurm); no task starts that its `time` says cannot finish")
    p.add_argument("--isolate", action="store_true", help="run each Python task in a fresh "
                   "process of its own: nothing carries over between tasks, and each task's "
                   "peak memory is its own (a crashing task fails alone without it too)")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line on stderr")
    _history_options(p)


def _history_options(p: argparse.ArgumentParser) -> None:
    from hpcflow.cli.history import add_history_options

    add_history_options(p)


def _sizing_options(p: argparse.ArgumentParser) -> None:
    """Options that fix part of a Slurm request (``plan --slurm`` and ``submit``)."""
    g = p.add_argument_group("Slurm request (each overrides the sizing)")
    g.add_argument("--profile", help="cluster profile YAML (default: $HPCFLOW_SLURM_PROFILE, "
                   "~/.config/hpcflow/slurm.yaml, else discovered from the cluster)")
    g.add_argument("--partition", help="partition (default: every one the tasks fit, searched)")
    g.add_argument("--nodes", type=int, help="node count (default: chosen by simulation)")
    g.add_argument("--ntasks", type=int, help="ranks in all, coordinator included (rounded up "
                   "to the same count on every node)")
    g.add_argument("--ntasks-per-node", type=int, help="ranks per node, coordinator included")
    g.add_argument("--cpus-per-task", type=int, help="cores per rank (default 1)")
    g.add_argument("--gpus-per-node", type=int, help="GPUs per node")
    g.add_argument("--mem", help="memory per node, e.g. 4G (written in the profile's style)")
    g.add_argument("--time", help="wall time to request, e.g. 2h or 01:30:00 "
                   "('none': the partition's default, where the profile allows it)")
    g.add_argument("--above-declared", action="store_true", help="let time and memory "
                   "learned from earlier runs ask for more than the tasks declare (default: a "
                   "declared value is the most the request takes)")
    g.add_argument("--deadline", help="the run must finish within this run time, e.g. 30m: "
                   "the cheapest allocation that does (default: the cheapest within the "
                   "profile's tolerance, 5%%, of the fastest)")
    g.add_argument("--engine", choices=["mpi", "local", "dask", "ray"],
                   help="engine inside the job (default: the profile's, mpi); dask and ray: "
                   "the job starts that cluster across its allocation first")


def _slurm_commands(sub: Any, target_help: str, run_help: str) -> None:
    p = sub.add_parser("submit", help="run a workflow as ONE Slurm batch job (sbatch)")
    p.add_argument("workflow", nargs="?", help=target_help + " (with --resume: default, the "
                   "run's own spec)")
    p.add_argument("--resume", metavar="RUN", help="a new job that continues this run folder "
                   "(a failed or stopped run's): finished, unchanged tasks are reused")
    p.add_argument("--force", action="append", default=[], metavar="TASK",
                   help="with --resume: the job runs TASK again and everything downstream of "
                   "it (as run --resume --force); repeatable")
    p.add_argument("--dry-run", action="store_true",
                   help="print the batch script (and check it with sbatch --test-only); submit nothing")
    _sizing_options(p)
    p.add_argument("--account", help="Slurm account (default: the profile's)")
    p.add_argument("--qos", help="Slurm QoS (default: the profile's)")
    p.add_argument("--constraint", help="node features (default: the profile's)")
    p.add_argument("--python", help="interpreter inside the job (default: this one)")
    p.add_argument("--no-test-only", action="store_true", help="skip the sbatch --test-only check")
    p.add_argument("--run-dir", help="folder for this run (default: a new one under --runs-root)")
    p.add_argument("--runs-root", help="where new run folders go (default: $HPCFLOW_RUNS or "
                   "./hpcflow-runs)")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    _history_options(p)

    p = sub.add_parser("cancel", help="cancel the Slurm job of a submitted run (scancel)")
    p.add_argument("run", help=run_help)

    p = sub.add_parser("cluster", help="cluster profiles for Slurm")
    cluster = p.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")
    d = cluster.add_parser("discover", help="write a profile from what the cluster reports")
    d.add_argument("-o", "--output", help="write the profile YAML here (default: print it)")
    d.add_argument("--name", default="cluster", help="the profile's name")
    w = cluster.add_parser("wait", help="inside a batch job: wait until the Dask or Ray cluster "
                           "it started is up, then print its address (the script of "
                           "submit --engine dask|ray runs this)")
    w.add_argument("engine", choices=["dask", "ray"])
    w.add_argument("--scheduler-file", help="dask: the file the scheduler writes")
    w.add_argument("--workers", type=int, default=1, help="dask: workers to wait for")
    w.add_argument("--temp-dir", help="ray: the head's --temp-dir (print its address)")
    w.add_argument("--address", help="ray: the cluster to count the nodes of")
    w.add_argument("--nodes", type=int, default=1, help="ray: live nodes to wait for")
    w.add_argument("--timeout", type=float, default=300.0, help="seconds (default 300)")
    w.add_argument("--watch", action="append", metavar="NAME=PID",
                   help="a part of the cluster; its exit ends the wait at once (repeatable)")
    s = cluster.add_parser("stop", help="inside a batch job: close the Dask scheduler and its "
                           "workers (the script of submit --engine dask runs this)")
    s.add_argument("engine", choices=["dask"])
    s.add_argument("--scheduler-file", required=True, help="the file the scheduler wrote")
    s.add_argument("--timeout", type=float, default=30.0, help="seconds to reach it (default 30)")


def _version() -> str:
    from hpcflow import __version__

    return f"hpcflow {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from hpcflow.cli import commands

    handler = getattr(commands, f"cmd_{args.command}")
    try:
        return handler(args)
    except HpcflowError as exc:
        if _first_rank():  # under mpiexec every rank has the same error: rank 0 says it
            print(f"hpcflow {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        run_dir = getattr(exc, "run_dir", None)  # RunInterrupted: a run folder to resume
        then = f"; what finished is kept: continue with hpcflow run --resume {run_dir}" \
            if run_dir else ""
        if _first_rank():
            print(f"hpcflow {args.command}: interrupted{then}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ImportError as exc:
        extra = _extra_providing(exc.name)
        if extra is None:
            raise
        print(f"hpcflow {args.command}: this needs the Python package '{exc.name}', which is not "
              f"installed: pip install 'hpcflow-mpi[{extra}]'", file=sys.stderr)
        return EXIT_ENGINE
    except BrokenPipeError:  # `hpcflow ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _extra_providing(module: str | None) -> str | None:
    """The extra of this distribution that installs ``module`` (its top-level package),
    read from the installed metadata; None for anything else."""
    from importlib import metadata

    if not module:
        return None
    wanted = module.partition(".")[0].lower().replace("_", "-")
    try:
        requirements = metadata.requires("hpcflow-mpi") or []
    except metadata.PackageNotFoundError:
        return None
    for line in requirements:
        found = re.match(r"^([A-Za-z0-9_.-]+).*;\s*extra\s*==\s*\"([^\"]+)\"", line)
        if found and found[1].lower().replace("_", "-") == wanted and found[2] != "test":
            return found[2]
    return None


def _first_rank() -> bool:
    """False on the other ranks of an MPI launch (rank 0 speaks for the run)."""
    from hpcflow.engine.launched import launch_rank

    return launch_rank() == 0


def print_json(data: object) -> None:
    print(json.dumps(data, indent=2, default=str))
