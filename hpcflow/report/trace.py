"""``hpcflow trace``: one row per task attempt, as a tab-separated file for pandas, R or a
spreadsheet (the role of Nextflow's ``trace.txt``), replayed from the run's journal.

Where ``hpcflow status`` and the report keep each task's last state, the trace keeps
every attempt of every session (a resume is a new session): a retried task has a row
per try, a task run again by a resume a row in each session that ran it. Rows come in
the order their attempts were dispatched; a task not run because an input failed is
one ``skipped`` row, where its skip was recorded. An attempt never reported is
``running`` while its coordinator lives, ``stopped`` when its session ended without it
(Ctrl-C, the allocation's end), else ``lost`` (the coordinator died). Names follow each
session's own plan (ids shift when a resumed workflow grew), as the resume does.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from hpcflow.report.status import MALFORMED, last_line, lock_held, malformed, worker_nodes
from hpcflow.store.journal import Event, read_journal
from hpcflow.store.resume import TaskNames
from hpcflow.store.rundir import RunDir


@dataclass(slots=True)
class Attempt:
    """One row of the trace; times are seconds since the epoch (UTC ISO 8601 in the file)."""

    session: int
    task: str
    id: int
    attempt: int
    status: str  # done | failed | retried | running | lost | stopped | skipped
    worker: int | None = None
    node: str = ""
    submit: float | None = None
    start: float | None = None
    end: float | None = None
    peak_rss: int | None = None
    rss_kind: str = ""  # exact | bound (engine/memory.py)
    error: str = ""
    log: str = ""

    @property
    def seconds(self) -> float | None:
        return None if self.start is None or self.end is None else self.end - self.start


COLUMNS = ["session", "task", "id", "attempt", "status", "worker", "node", "submit", "start",
           "end", "seconds", "peak_rss", "rss_kind", "error", "log"]


def trace_rows(path: str | os.PathLike[str]) -> list[Attempt]:
    """Every attempt recorded in the run folder ``path``, in the order they began."""
    return list(iter_rows(path))


def iter_rows(path: str | os.PathLike[str]) -> Iterator[Attempt]:
    """:func:`trace_rows`, a session at a time (a million-task run is not held whole);
    a path that is not a run folder fails here, before any row is asked for."""
    run = RunDir.open(path)
    info = run.read_info()
    names = TaskNames.from_file(run.path / "groups.json")
    rows = _guarded(run.journal, names, info)
    if not lock_held(run.path):
        return rows
    return (_live(row) for row in rows)  # a live run: what is in flight is running


def _guarded(journal: Path, names: TaskNames, info: dict[str, Any]) -> Iterator[Attempt]:
    """:func:`_replay`, with an event that hpcflow did not write said in one line."""
    try:
        yield from _replay(read_journal(journal), names, info)
    except MALFORMED as exc:
        raise malformed(journal, exc) from None


def _live(row: Attempt) -> Attempt:
    if row.status == "lost":
        row.status = "running"
    return row


def _replay(events: Iterator[tuple[Any, ...]], names: TaskNames,
            info: Mapping[str, Any]) -> Iterator[Attempt]:
    session, nodes = 1, worker_nodes({}, info)
    rows: list[Attempt] = []  # this session's, in the order their attempts began
    open_: dict[int, Attempt] = {}  # task id -> its attempt in flight
    for event in events:
        kind = event[0]
        if kind == Event.RUN:
            if rows:
                yield from rows
                session += 1
            rows, open_ = [], {}
            run_info = dict(event[1]) if isinstance(event[1], dict) else {}
            nodes = worker_nodes(run_info, info)
            if "groups" in run_info:
                names = TaskNames(run_info["groups"], run_info.get("defs"))
        elif kind == Event.DISPATCH:
            _, i, attempt, worker, at = event[:5]
            open_[i] = row = Attempt(session, names(i)[0], i, attempt + 1, "lost", worker,
                                     _node(nodes, worker), at)
            rows.append(row)
        elif kind in (Event.DONE, Event.FAIL):
            row = open_.pop(event[1], None)
            if row is None:  # an outcome without its dispatch (a torn journal's edge)
                row = Attempt(session, names(event[1])[0], event[1], event[2] + 1, "")
                rows.append(row)
            _finished(row, event, nodes)
        elif kind == Event.RETRY and event[1] in open_:
            row = open_.pop(event[1])
            row.status = "retried"
            if len(event) > 6:
                row.error, row.log = last_line(event[4]), event[5] or ""
                row.start, row.end = event[6], event[7]
        elif kind == Event.STOPPED and event[1] in open_:
            open_[event[1]].status = "stopped"
        elif kind == Event.SKIP:
            rows.append(Attempt(session, names(event[1])[0], event[1], 0, "skipped"))
        elif kind == Event.END:  # what was in flight when the session ended was stopped
            for row in open_.values():
                row.status = "stopped"
    yield from rows


def _finished(row: Attempt, event: tuple[Any, ...], nodes: list[str]) -> None:
    """Fill ``row`` from a DONE or FAIL event."""
    _, _, _, worker, start, end = event[:6]
    failed = event[0] == Event.FAIL
    extra = (event[8] if failed and len(event) > 8 else event[7] if not failed else None) or {}
    row.status = "failed" if failed else "done"
    row.worker, row.node = worker, extra.get("node") or _node(nodes, worker) or row.node
    row.start, row.end = start, end
    peak = extra.get("peak_rss") or extra.get("peak_rss_bound")
    if peak:
        row.peak_rss, row.rss_kind = int(peak), "exact" if extra.get("peak_rss") else "bound"
    if failed:
        row.error, row.log = last_line(event[6]), event[7] or ""


def _node(nodes: list[str], worker: int) -> str:
    return nodes[worker] if 0 <= worker < len(nodes) else ""


def _cells(row: Attempt) -> list[Any]:
    seconds = row.seconds
    return [row.session, row.task, row.id, row.attempt, row.status,
            "" if row.worker is None else row.worker, row.node, _iso(row.submit),
            _iso(row.start), _iso(row.end), "" if seconds is None else f"{seconds:.6f}",
            "" if row.peak_rss is None else row.peak_rss, row.rss_kind, row.error, row.log]


def _iso(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")


def write_rows(rows: Iterable[Attempt], out: TextIO) -> None:
    """``rows`` as tab-separated text with a header line (a tab or newline in an error
    text is quoted the csv way)."""
    writer = csv.writer(out, delimiter="\t", lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(_cells(row) for row in rows)


def write_trace(run_path: str | os.PathLike[str], output: str | os.PathLike[str] | None = None
                ) -> Path:
    """Write the trace of ``run_path`` to ``output`` (default ``<run>/trace.tsv``), aside
    and renamed, so a reader never sees half a file."""
    rows = iter_rows(run_path)
    target = Path(output) if output else Path(run_path) / "trace.tsv"
    partial = target.with_name(f".{target.name}.partial")
    with open(partial, "w", newline="") as out:
        write_rows(rows, out)
    os.replace(partial, target)
    return target
