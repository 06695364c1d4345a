"""``hpcflow history`` and the history options of ``run``, ``plan`` and ``submit``."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import Any

from hpcflow.cli import EXIT_OK, print_json
from hpcflow.errors import SpecError


def add_history_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-history", action="store_true",
                   help="neither read nor add to the history of measured tasks (plan with the "
                   "declared time and memory)")
    p.add_argument("--history", metavar="FILE", help="the history file (default: "
                   "$HPCFLOW_HISTORY, else $XDG_DATA_HOME/hpcflow/history.sqlite)")


def add_history_command(sub: Any) -> None:
    p = sub.add_parser("history", help="the measured durations and memory of earlier runs, "
                       "per task definition: list, show, forget")
    p.add_argument("action", nargs="?", choices=["list", "show", "forget"], default="list")
    p.add_argument("name", nargs="?", help="a task name or definition hash (prefix)")
    p.add_argument("--all", action="store_true", help="with forget: forget every entry")
    p.add_argument("--history", metavar="FILE", help="the history file (default: "
                   "$HPCFLOW_HISTORY, else $XDG_DATA_HOME/hpcflow/history.sqlite)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def learned_plan(plan: Any, args: argparse.Namespace, *, request: bool = False
                 ) -> tuple[Any, list[Any]]:
    """``plan`` with learned time and memory (none with ``--no-history``), and the
    estimate of each group; ``request``: for a Slurm request, where a declared value is
    the most a learned one may ask for unless ``--above-declared``."""
    from hpcflow.store.history import History, HistoryError, history_path
    from hpcflow.store.learned import with_learned

    path = history_path(getattr(args, "history", None))
    if getattr(args, "no_history", False) or not path.exists():
        return with_learned(plan, None)
    within = request and not getattr(args, "above_declared", False)
    try:
        with History(path) as history:
            return with_learned(plan, history, within_declared=within)
    except HistoryError as exc:
        print(f"hpcflow {args.command}: {exc}; planning with the declared values",
              file=sys.stderr)
        return with_learned(plan, None)


def cmd_history(args: argparse.Namespace) -> int:
    from hpcflow.store.history import History

    if args.action != "list" and not (args.name or (args.action == "forget" and args.all)):
        raise SpecError(f"history {args.action} needs a task name or hash"
                        + (" (or --all)" if args.action == "forget" else ""), field="name")
    with History(args.history) as history:
        if args.action == "forget":
            entries = history.entries(None if args.all else args.name)
            gone = history.forget([e.definition for e in entries])
            print(f"forgot {gone} definition(s) in {history.path}")
            return EXIT_OK
        entries = history.entries(args.name)
        if args.action == "show" and not entries:
            raise SpecError(f"no history for '{args.name}' in {history.path}", field="name")
        if args.json:
            print_json([_entry_json(history, e, args.action == "show") for e in entries])
        elif args.action == "show":
            sys.stdout.write("".join(_show_text(history, e) for e in entries))
        else:
            sys.stdout.write(_list_text(history.path, entries))
    return EXIT_OK


def _list_text(path: Any, entries: list[Any]) -> str:
    lines = [f"history: {path}"]
    if not entries:
        lines.append("  (empty: runs add to it when they end)")
    lines += [f"  {e.name:<24} {e.definition[:12]}  {_count(e.samples, 'attempt')}, "
              f"{_count(e.runs, 'run')}, {_count(e.instances, 'instance')}, workflow "
              f"{e.workflow}, last {_date(e.seen)}" for e in entries]
    return "\n".join(lines) + "\n"


def _show_text(history: Any, entry: Any) -> str:
    from hpcflow.model.resources import format_memory
    from hpcflow.plan.estimates import (
        GroupEstimate,
        duration_estimate,
        format_seconds,
        memory_estimate,
    )
    from hpcflow.plan.summary import estimate_line

    attempts = history.attempts(entry.definition)
    samples = [a.sample for a in attempts]
    d = duration_estimate(samples)
    estimate = GroupEstimate(entry.name, entry.definition, "learned" if d else "default",
                             d.median if d else 0.0, None, 0, d, memory_estimate(samples),
                             len(samples))
    lines = [f"{entry.name} ({entry.definition}), workflow {entry.workflow}, "
             f"{_count(entry.instances, 'instance')}, {_count(entry.runs, 'run')}",
             estimate_line(estimate)]
    lines += [f"  {_date(a.at)}  {a.sample.outcome:<7} {format_seconds(a.sample.duration):>8} "
              f"{format_memory(a.sample.memory) if a.sample.memory else '-':>6}  {a.engine}, "
              f"{a.cores} cores{', GPU' if a.gpu else ''}" for a in attempts[-20:]]
    if len(attempts) > 20:
        lines.append(f"  ... and {len(attempts) - 20} older (--json lists them all)")
    return "\n".join(lines) + "\n"


def _entry_json(history: Any, entry: Any, attempts: bool) -> dict[str, Any]:
    data: dict[str, Any] = {"definition": entry.definition, "name": entry.name,
                            "workflow": entry.workflow, "instances": entry.instances,
                            "runs": entry.runs, "samples": entry.samples, "seen": entry.seen}
    if attempts:
        data["attempts"] = [{"at": a.at, "duration": a.sample.duration, "memory": a.sample.memory,
                             "outcome": a.sample.outcome, "engine": a.engine, "cores": a.cores,
                             "gpu": a.gpu} for a in history.attempts(entry.definition)]
    return data


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _date(seconds: float) -> str:
    return datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M")
