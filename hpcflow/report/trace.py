"""``hpcflow trace``: one row per task attempt, as a tab-separated file for pandas, R or a
spreadsheet (the role of Nextflow's ``trace.txt``), replayed from the run's journal.

Where ``hpcflow status`` and the report keep each task's last state, the trace keeps
every attempt of every session (a resume is a new session): a retried task has a row
per try, a task run again by a resume a row in each session that ran it. Rows come in
the order their attempts began. An attempt that was dispatched but never reported is
``running`` while its coordinator lives, else ``lost`` (the coordinator died, or the
allocation ended: ``stopped``); a task not run because an input failed is one
``skipped`` row. Names follow each session's own plan (ids shift when a resumed
workflow grew), as the resume does.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator, Mapping
from dataclasses import astuple, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hpcflow.report.status import journal_events, last_line, lock_held, worker_nodes
from hpcflow.store.journal import Event
from hpcflow.store.resume import TaskNames
from hpcflow.store.rundir import RunDir


@dataclass
class Attempt:
    """One row of the trace."""

    session: int
    task: str
    id: int
    attempt: int
    status: str  # done | failed | retried | running | lost | stopped | skipped
    worker: int | str = ""
    node: str = ""
    submit: str = ""
    start: str = ""
    end: str = ""
    seconds: str = ""  # end - start, 6 decimals
    peak_rss: int | str = ""
    rss_kind: str = ""  # exact | bound (engine/memory.py)
    error: str = ""
    log: str = ""


COLUMNS = [f.name for f in fields(Attempt)]


def trace_rows(path: str | os.PathLike[str]) -> list[Attempt]:
    """Every attempt recorded in the run folder ``path``, in the order they began."""
    run = RunDir.open(path)
    info = run.read_info()
    rows = list(_replay(journal_events(run.journal, info), TaskNames.from_file(run.path / "groups.json"),
                        info))
    if lock_held(run.path):  # a live run: what is in flight is running, not lost
        for row in rows:
            if row.status == "lost":
                row.status = "running"
    return rows


def _replay(events: Iterator[tuple[Any, ...]], names: TaskNames,
            info: Mapping[str, Any]) -> Iterator[Attempt]:
    session, nodes = 0, worker_nodes({}, info)
    open_: dict[int, Attempt] = {}  # task id -> its attempt in flight
    done: list[Attempt] = []
    for event in events:
        kind = event[0]
        if kind == Event.RUN:
            yield from _close(open_, done)
            session += 1
            run_info = dict(event[1]) if isinstance(event[1], dict) else {}
            nodes = worker_nodes(run_info, info)
            if "groups" in run_info:
                names = TaskNames(run_info["groups"], run_info.get("defs"))
        elif kind == Event.DISPATCH:
            _, i, attempt, worker, at = event[:5]
            open_[i] = Attempt(max(session, 1), names(i)[0], i, attempt + 1, "lost", worker,
                               _node(nodes, worker), _iso(at))
        elif kind in (Event.DONE, Event.FAIL):
            row = open_.pop(event[1], None) or Attempt(
                max(session, 1), names(event[1])[0], event[1], event[2] + 1, "")
            _finished(row, event, nodes)
            done.append(row)
        elif kind == Event.RETRY and event[1] in open_:
            row = open_.pop(event[1])
            row.status = "retried"
            if len(event) > 6:
                row.error, row.log = last_line(event[4]), event[5] or ""
                _timed(row, event[6], event[7])
            done.append(row)
        elif kind == Event.STOPPED and event[1] in open_:
            open_[event[1]].status = "stopped"
        elif kind == Event.SKIP:
            done.append(Attempt(max(session, 1), names(event[1])[0], event[1], 0, "skipped"))
        elif kind == Event.END:  # what was in flight when the session ended was stopped
            for row in open_.values():
                row.status = "stopped"
    yield from _close(open_, done)


def _finished(row: Attempt, event: tuple[Any, ...], nodes: list[str]) -> None:
    """Fill ``row`` from a DONE or FAIL event."""
    _, _, _, worker, start, end = event[:6]
    failed = event[0] == Event.FAIL
    extra = (event[8] if failed and len(event) > 8 else event[7] if not failed else None) or {}
    row.status = "failed" if failed else "done"
    row.worker, row.node = worker, extra.get("node") or _node(nodes, worker) or row.node
    _timed(row, start, end)
    peak = extra.get("peak_rss") or extra.get("peak_rss_bound")
    if peak:
        row.peak_rss, row.rss_kind = int(peak), "exact" if extra.get("peak_rss") else "bound"
    if failed:
        row.error, row.log = last_line(event[6]), event[7] or ""


def _timed(row: Attempt, start: float, end: float) -> None:
    row.start, row.end, row.seconds = _iso(start), _iso(end), f"{end - start:.6f}"


def _close(open_: dict[int, Attempt], done: list[Attempt]) -> Iterator[Attempt]:
    """The rows of a session, in the order their attempts began (skipped tasks last)."""
    rows = done + list(open_.values())
    open_.clear()
    done.clear()
    yield from sorted(rows, key=lambda r: (r.submit or r.start or "~", r.id))


def _node(nodes: list[str], worker: int) -> str:
    return nodes[worker] if 0 <= worker < len(nodes) else ""


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")


def trace_text(rows: list[Attempt]) -> str:
    """The rows as tab-separated text with a header line (tabs and newlines in the error
    text are quoted the csv way)."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter="\t", lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(astuple(row) for row in rows)
    return out.getvalue()


def write_trace(run_path: str | os.PathLike[str], output: str | os.PathLike[str] | None = None
                ) -> Path:
    """Write the trace of ``run_path`` to ``output`` (default ``<run>/trace.tsv``)."""
    target = Path(output) if output else Path(run_path) / "trace.tsv"
    target.write_text(trace_text(trace_rows(run_path)))
    return target
