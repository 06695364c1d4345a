"""The ``hpcflow`` command. Each sub-command is a short function over the layers below.

Exit codes (also in the README):
  0  success
  1  the run finished with failed tasks (each named with its log)
  2  bad input: the spec, an option, a run folder (nothing ran)
  3  the engine could not run (MPI, a backend, the batch system)
  130 interrupted (Ctrl-C / SIGTERM)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from hpcflow.errors import HpcflowError

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_ENGINE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpcflow", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    target_help = "a YAML spec, or FILE.py[:NAME] defining a Workflow"

    p = sub.add_parser("validate", help="check a workflow; nothing runs")
    p.add_argument("workflow", help=target_help)

    p = sub.add_parser("plan", help="show the flattened plan: tasks, levels, critical path, demand")
    p.add_argument("workflow", help=target_help)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("run", help="run a workflow (locally, or under mpiexec with --engine mpi)")
    p.add_argument("workflow", help=target_help)
    p.add_argument("--engine", default="local", help="local (default) or mpi")
    p.add_argument("--workers", type=int, help="worker processes / ranks (default: cores)")
    p.add_argument("--gpus", default="", help="GPU ids to share among workers, e.g. 0,1")
    p.add_argument("--run-dir", help="folder for this run (default: a new one under --runs-root)")
    p.add_argument("--runs-root", help="where new run folders go (default: $HPCFLOW_RUNS or "
                   "./hpcflow-runs)")
    p.add_argument("--stop-on-failure", action="store_true",
                   help="stop at the first failed task (default: finish independent branches)")
    p.add_argument("--fsync", action="store_true", help="fsync the journal (survives power loss)")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")

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
    return parser


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
        print(f"hpcflow {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"hpcflow {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def print_json(data: object) -> None:
    print(json.dumps(data, indent=2, default=str))
