"""``hpcflow report``: one self-contained HTML file that shows a run, and works offline.

Inputs are the run folder only (plan.npz, groups.json, run.json, the journal, replayed by
:func:`hpcflow.report.status.load_run`). This module turns them into plain geometry and
rows; the Jinja2 templates in ``templates/`` draw them as inline SVG and an HTML table,
and inline their CSS and the small script (sort, filter, zoom). No script or style is
fetched from anywhere: the file opens from a cluster's scratch disk or an email.

Why SVG drawn here and not a charting library: the three charts are rectangles on a
time axis (the timeline), a step area (utilization) and boxes in columns (the DAG).
Plotly would inline ~4 MB of JavaScript into every report and a ~15 MB package into
the install; the SVG costs a few dozen lines, is in the DOM (a test can count the
bars), prints, and stays light. Names and error texts reach the page only through
Jinja2's autoescaping.

- **Critical path**: the planner's analysis (:func:`hpcflow.plan.analyse.analyse`) run on
  the plan's graph with each task's *measured* run time in place of its estimate: the
  chain of dependent tasks whose measured durations add up to the most (tasks that
  did not run count 0). Queueing gaps between tasks are not part of it.
- **Utilization**: busy workers over the run, averaged in ``UTIL_BINS`` bins; a task
  counts on its leader worker (the journal does not record held slots).
- **Large runs**: the timeline draws at most ``MAX_BARS`` tasks and the table lists at
  most ``MAX_ROWS`` (a browser takes seconds per 10,000 table rows): every failed task,
  the critical path, then the longest; the page says so.
- **Measured memory**: a DONE or FAIL event's ``peak_rss`` (or ``peak_rss_bound``: "at
  most"; see ``engine/memory.py`` for what each kind of task measures) beside the
  request; above the request it is marked ``over``, under a quarter of it ``under``.
"""

from __future__ import annotations

import dataclasses
import os
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from hpcflow.errors import HpcflowError, RunDirError
from hpcflow.model.resources import format_memory, format_slurm_time
from hpcflow.plan.analyse import analyse
from hpcflow.plan.plan import Plan
from hpcflow.report.status import (
    DONE,
    FAILED,
    NOT_STARTED,
    SKIPPED,
    STATES,
    RunView,
    format_elapsed,
    last_line,
    load_run,
    status_of,
    worker_nodes,
)
from hpcflow.store.rundir import RunDir

MAX_BARS = 20_000
MAX_ROWS = 5_000
MAX_DAG_GROUPS = 300
UTIL_BINS = 400
WIDTH = 1000.0
"""Width of the time axis in SVG units (the SVG is stretched to the page's width)."""
_DASH = "—"
_CSS = ("not-started", "running", "done", "failed", "skipped", "retrying")
"""CSS class of each state code (``status.STATES`` has spaces)."""
_STATUS_CSS = ("succeeded", "failed", "stopped", "running", "error")


class MissingExtra(HpcflowError):
    """An optional dependency is not installed; the message names the extra."""

    exit_code = 2


def write_report(run_path: str | os.PathLike[str], output: str | os.PathLike[str] | None = None,
                 *, max_bars: int = MAX_BARS, max_rows: int = MAX_ROWS) -> Path:
    """Write the report of the run in ``run_path`` to ``output`` (default
    ``<run>/report.html``); returns its path."""
    env = _environment()
    view = load_run(run_path)
    out = Path(output) if output else view.path / "report.html"
    data = report_data(view, _load_graph(view.path), out.resolve().parent, max_bars, max_rows)
    html = env.get_template("report.html.j2").render(**data)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, out)
    return out


def _environment() -> Any:
    try:
        import jinja2
    except ImportError:
        raise MissingExtra("the HTML report needs jinja2: pip install 'hpcflow-mpi[report]'") \
            from None
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
        autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)


def _load_graph(run_path: Path) -> Plan:
    """The plan's graph and resources from plan.npz (no actions, no groups: not needed)."""
    try:
        with np.load(run_path / "plan.npz") as npz:
            a = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise RunDirError(f"{run_path} has no plan.npz: the run stopped before it began") from None
    n = a["group_of"].shape[0]
    dst = np.repeat(np.arange(n, dtype=np.int32), np.diff(a["pred_ptr"]))
    order = np.argsort(a["pred"], kind="stable")
    succ_ptr = np.concatenate(([0], np.cumsum(np.bincount(a["pred"], minlength=n)))).astype(np.int64)
    return Plan("", [], a["group_of"], a["pred_ptr"], a["pred"], succ_ptr, dst[order],
                a["cores"], a["gpus"], a["ranks"], a["memory"], a["time"])


def report_data(view: RunView, graph: Plan, out_dir: Path, max_bars: int = MAX_BARS,
                max_rows: int = MAX_ROWS) -> dict[str, Any]:
    """Everything the template shows, as plain values (see the module doc)."""
    duration = np.nan_to_num(view.end - view.start, nan=0.0)
    critical = measured_critical_path(graph, duration)
    crit = set(critical.tolist())
    drawn = _select(view, duration, critical, max_bars)
    listed = _select(view, duration, critical, max_rows)
    status = status_of(view)
    origin = status.started or float(np.nanmin(view.start, initial=0.0))
    span = max(status.elapsed, float(np.nanmax(view.end, initial=origin)) - origin, 1e-6)
    workers = max(view.workers, int(view.worker.max(initial=-1)) + 1, 1)
    busy = float(duration.sum())
    return {
        "title": f"{status.workflow}: {status.status}",
        "workflow": status.workflow, "status": status.status,
        "status_css": status.status if status.status in _STATUS_CSS else "gone",
        "summary": _summary(view, status, critical, duration, busy / (workers * span))
                   + _memory_summary(view, graph),
        "counts": status.counts,
        "failures": status.failures[:100],
        "drawn": len(drawn), "listed": len(listed), "total": view.n,
        "timeline": _timeline(view, drawn, crit, origin, span, workers),
        "utilization": _utilization(view, origin, span, workers),
        "ticks": _ticks(span),
        "rows": _rows(view, graph, listed, duration, crit, origin, out_dir),
        "dag": _dag(view, graph, critical),
        "max_dag_groups": MAX_DAG_GROUPS,
        "states": STATES,
    }


def measured_critical_path(graph: Plan, duration: np.ndarray) -> np.ndarray:
    """Ids of the longest chain by measured durations (see the module doc)."""
    if graph.n == 0:
        return np.empty(0, np.int64)
    return analyse(dataclasses.replace(graph, time=duration.astype(np.float64))).critical_path


def _summary(view: RunView, status: Any, critical: np.ndarray, duration: np.ndarray,
             utilization: float) -> list[tuple[str, str]]:
    info, session = view.info, (view.sessions[-1] if view.sessions else {})
    c = status.counts
    return [
        ("workflow", status.workflow), ("status", status.status),
        ("tasks", f"{view.n:,}: {c['done']:,} done, {c['failed']:,} failed, "
                  f"{c['running'] + c['retrying']:,} running, {c['skipped']:,} skipped, "
                  f"{c['not started']:,} not started"),
        ("elapsed", format_elapsed(status.elapsed)),
        ("engine", f"{status.engine or '?'} on {session.get('host', info.get('host', '?'))}"),
        ("workers", f"{status.workers:,}"),
        ("utilization", f"{utilization:.0%} of worker time busy"),
        ("critical path", f"{critical.size:,} task{'' if critical.size == 1 else 's'}, "
                          f"{_seconds(float(duration[critical].sum()))} measured"),
        ("spec", str(info.get("spec") or _DASH)), ("run folder", str(view.path)),
    ]


def _select(view: RunView, duration: np.ndarray, critical: np.ndarray, cap: int) -> np.ndarray:
    """All ids, or ``cap`` of them: failed first, then the critical path, then longest."""
    if view.n <= cap:
        return np.arange(view.n)
    failed = np.flatnonzero(view.state == FAILED)
    longest = np.argsort(-duration, kind="stable")
    ordered = np.concatenate((failed, critical, longest))
    _, first = np.unique(ordered, return_index=True)
    return np.sort(ordered[np.sort(first)][:cap])


def _timeline(view: RunView, ids: np.ndarray, crit: set[int], origin: float, span: float,
              workers: int) -> dict[str, Any]:
    """Bars ``(x, y, w, css class, tooltip)`` per task that ran, one row per worker."""
    row = float(min(22, max(3, 440 // workers)))
    scale = WIDTH / span
    bars = []
    for i in ids.tolist():
        start, end, w = view.start[i], view.end[i], int(view.worker[i])
        if np.isnan(start) or w < 0:
            continue
        css = "bar " + _CSS[view.state[i]] + (" crit" if i in crit else "")
        tip = f"{view.name(i)} on worker {w}: {_seconds(end - start)} from {_seconds(start - origin)}"
        bars.append(((start - origin) * scale, w * row + 1, max((end - start) * scale, 0.8),
                     css, tip))
    every = max(1, int(12 // row))
    labels = [(w * row + row / 2, f"w{w}") for w in range(0, workers, every)]
    return {"bars": bars, "row": row, "height": row * workers, "labels": labels,
            "rows": workers}


def _utilization(view: RunView, origin: float, span: float, workers: int) -> dict[str, Any]:
    """Mean busy workers per bin: integrate the busy count with sorted starts and ends."""
    ran = ~np.isnan(view.start)
    starts, ends = np.sort(view.start[ran] - origin), np.sort(view.end[ran] - origin)
    edges = np.linspace(0.0, span, UTIL_BINS + 1)

    def integral(points: np.ndarray) -> np.ndarray:  # sum over points p <= t of (t - p)
        count = np.searchsorted(points, edges, side="right")
        prefix = np.concatenate(([0.0], np.cumsum(points)))
        return count * edges - prefix[count]

    busy = np.diff(integral(starts) - integral(ends)) / (span / UTIL_BINS) / workers
    x = edges * (WIDTH / span)
    y = 100.0 - 100.0 * np.clip(busy, 0.0, 1.0)
    points = ["0,100"] + [f"{x[k]:.2f},{y[k]:.2f} {x[k + 1]:.2f},{y[k]:.2f}"
                          for k in range(UTIL_BINS)] + [f"{WIDTH:.0f},100"]
    return {"points": " ".join(points), "peak": float(busy.max(initial=0.0)),
            "mean": float(busy.mean()) if busy.size else 0.0}


def _ticks(span: float) -> list[tuple[float, float, str]]:
    """About eight round time marks: ``(x in SVG units, percent, label)``."""
    raw = span / 8
    magnitude = 10 ** np.floor(np.log10(raw))
    step = float(min((m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw),
                     default=10 * magnitude))
    marks = np.arange(0.0, span + step / 2, step)
    return [(t / span * WIDTH, t / span * 100, _seconds(t)) for t in marks.tolist() if t <= span]


def _rows(view: RunView, graph: Plan, ids: np.ndarray, duration: np.ndarray, crit: set[int],
          origin: float, out_dir: Path) -> list[dict[str, Any]]:
    """The task table's rows; numbers carry a sort key beside their text."""
    run, nodes = RunDir(view.path), _nodes(view)
    rows = []
    for i in ids.tolist():
        state, w = int(view.state[i]), int(view.worker[i])
        extra = view.extra.get(i, {})
        name = view.name(i)
        error, log = view.failures.get(i, (None, None))
        folder = run.task_dir(name, create=False)
        link = log or (str(folder) if folder.is_dir() else None)
        ran = state in (DONE, FAILED)
        rows.append({
            "id": i, "name": name, "state": STATES[state], "css": _CSS[state], "crit": i in crit,
            "worker": w if w >= 0 else None,
            "node": extra.get("node") or (nodes[w] if 0 <= w < len(nodes) else _DASH),
            "dur": float(duration[i]) if ran else None, "dur_text": _seconds(duration[i]) if ran else _DASH,
            "start": float(view.start[i] - origin) if ran else None,
            "time": float(graph.time[i]), "time_text": format_slurm_time(float(graph.time[i])),
            "mem": int(graph.memory[i]),
            "mem_text": format_memory(int(graph.memory[i])) if graph.memory[i] else _DASH,
            **_measured_memory(extra, int(graph.memory[i])),
            "error": last_line(error) if state == FAILED else None,
            "log": os.path.relpath(link, out_dir) if link else None,
        })
    return rows


def _measured_memory(extra: dict[str, Any], requested: int) -> dict[str, Any]:
    """The measured-memory cell: sort value, text, CSS class and tooltip."""
    peak, bound = extra.get("peak_rss"), extra.get("peak_rss_bound")
    if not peak and not bound:
        return {"rss": None, "rss_text": _DASH, "rss_css": None, "rss_tip": None}
    value = int(peak or bound)
    if peak:
        text = format_size(value)
        base = extra.get("base_rss")
        tip = ("peak of the command's largest process" if base is None else
               f"peak of the process that ran it: {format_size(int(base))} resident when the "
               f"task began (the worker's own), {format_size(max(0, value - int(base)))} "
               "more at its peak")
    else:
        text = f"≤ {format_size(value)}"
        tip = ("at most this: the command stayed below the worker's own size when it "
               "started it, beneath which the kernel's accounting cannot see")
    versus = _versus_request(value, bool(peak), requested)
    if requested:
        tip += f"; {value / requested:.0%} of the {format_memory(requested)} requested"
    return {"rss": value, "rss_text": text, "rss_css": versus and f"mem-{versus}",
            "rss_tip": tip}


def _versus_request(value: int, exact: bool, requested: int) -> str | None:
    """``over`` the request (an exact peak above it), ``under`` (below a quarter of it),
    or None (no request, or in between)."""
    if not requested:
        return None
    if exact and value > requested:
        return "over"
    return "under" if value < requested / 4 else None


def _memory_summary(view: RunView, graph: Plan) -> list[tuple[str, str]]:
    """One summary line when memory was measured: the largest peak, and how many tasks
    went over their request or used under a quarter of it."""
    top, top_id, over, under = 0, -1, 0, 0
    for i, extra in view.extra.items():
        peak, bound = extra.get("peak_rss"), extra.get("peak_rss_bound")
        value = int(peak or bound or 0)
        if not value:
            continue
        if peak and value > top:
            top, top_id = value, i
        versus = _versus_request(value, bool(peak), int(graph.memory[i]) if i < graph.n else 0)
        over += versus == "over"
        under += versus == "under"
    if top_id < 0:
        return []
    text = f"largest {format_size(top)} ({view.name(top_id)})"
    if over or under:
        text += (f"; {over:,} task{'' if over == 1 else 's'} above {'its' if over == 1 else 'their'}"
                 f" request, {under:,} under a quarter of {'it' if under == 1 else 'theirs'}")
    return [("peak memory", text)]


def format_size(nbytes: int) -> str:
    """A measured size in the units of requests (``K``, ``M``, ``G``, ``T``: powers of
    1024), to three significant digits: ``212M``, ``1.21G``."""
    value = nbytes / 1024
    for unit in ("K", "M", "G"):
        if value < 999.5:
            return f"{value:.3g}{unit}"
        value /= 1024
    return f"{value:.3g}T"


def _nodes(view: RunView) -> list[str]:
    """Node of each worker where known (the last session's)."""
    return worker_nodes(view.sessions[-1] if view.sessions else {}, view.info)


def _dag(view: RunView, graph: Plan, critical: np.ndarray) -> dict[str, Any] | None:
    """Group-level DAG laid out by levels (longest path from a source), left to right; the
    critical path marks its groups and the edges between its consecutive groups."""
    groups = view.groups
    if not groups or len(groups) > MAX_DAG_GROUPS:
        return None
    dst = np.repeat(graph.group_of, np.diff(graph.pred_ptr))
    codes = np.unique(graph.group_of[graph.pred].astype(np.int64) * len(groups) + dst)
    edges = [divmod(int(c), len(groups)) for c in codes.tolist()]
    level = [0] * len(groups)
    for a, b in edges:  # sorted by source; group ids are a topological order
        level[b] = max(level[b], level[a] + 1)
    columns: list[list[int]] = [[] for _ in range(max(level) + 1)]
    for g in range(len(groups)):
        columns[level[g]].append(g)
    on_path = graph.group_of[critical].tolist()
    crit_groups, crit_edges = set(on_path), set(pairwise(on_path))
    boxes, pos = _place(groups, columns, view, crit_groups)
    lines = []
    for a, b in edges:
        (xa, ya, wa), (xb, yb, _) = pos[a], pos[b]
        x1, y1, x2, y2 = xa + wa, ya + 14, xb, yb + 14
        mid = (x1 + x2) / 2
        css = "edge crit" if (a, b) in crit_edges else "edge"
        lines.append((f"M{x1:.0f},{y1:.0f} C{mid:.0f},{y1:.0f} {mid:.0f},{y2:.0f} {x2:.0f},{y2:.0f}", css))
    width = max(x + w for x, _, w in pos.values()) + 10
    height = max(y for _, y, _ in pos.values()) + 40
    return {"boxes": boxes, "edges": lines, "width": width, "height": height}


def _place(groups: list[dict[str, Any]], columns: list[list[int]], view: RunView,
           crit_groups: set[int]) -> tuple[list[dict[str, Any]], dict[int, tuple[float, float, float]]]:
    """Boxes in columns, 40 units apart; a column as wide as its longest label."""
    boxes, pos, x = [], {}, 10.0
    for column in columns:
        labels = {g: _group_label(groups[g]) for g in column}
        width = min(260.0, max(8.0 * len(t) + 20 for t in labels.values()))
        for k, g in enumerate(column):
            y = 10.0 + 40.0 * k
            start, size = groups[g]["start"], groups[g]["size"]
            tally = np.bincount(view.state[start : start + size], minlength=len(STATES))
            state = _group_state(tally)
            text = labels[g] if len(labels[g]) * 8 + 20 <= width else labels[g][: int(width / 8) - 3] + "…"
            tip = f"{groups[g]['name']}: " + ", ".join(f"{int(tally[c])} {s}" for c, s in
                                                         enumerate(STATES) if tally[c])
            boxes.append({"x": x, "y": y, "w": width, "text": text, "tip": tip,
                          "css": f"node {state}" + (" crit" if g in crit_groups else "")})
            pos[g] = (x, y, width)
        x += width + 60
    return boxes, pos


def _group_label(group: dict[str, Any]) -> str:
    return group["name"] if group["size"] == 1 else f"{group['name']} \u00d7{group['size']:,}"


def _group_state(tally: np.ndarray) -> str:
    """CSS class of a group: failed if any member failed, else a state all share."""
    if tally[FAILED]:
        return "failed"
    for code in (DONE, SKIPPED, NOT_STARTED):
        if tally[code] == tally.sum():
            return _CSS[code]
    return "partial"


def _seconds(value: float) -> str:
    value = float(value)
    if value == 0:
        return "0 s"
    if value < 1e-3:
        return f"{value * 1e6:.3g} µs"
    if value < 1:
        return f"{value * 1000:.3g} ms"
    return f"{value:.3g} s" if value < 60 else format_elapsed(value)
