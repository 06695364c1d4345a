"""What ``hpcflow plan`` prints: a plan's shape, critical path and demand, as text or JSON.

Both forms are bounded whatever the plan's size: long lists (groups, the critical path)
keep their head and tail and say how much was left out, so a million-task plan still
prints a screenful. Times are shown as Slurm writes them, memory as ``4G``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hpcflow.model.resources import format_memory, format_slurm_time
from hpcflow.plan.analyse import Analysis
from hpcflow.plan.estimates import Estimate, GroupEstimate, format_seconds
from hpcflow.plan.plan import Plan

_TEXT_GROUPS = 8
_TEXT_PATH = 6
_JSON_GROUPS = 1000
_JSON_PATH = 1000

SCHEMA_VERSION = 1


def summary_json(plan: Plan, analysis: Analysis) -> dict[str, Any]:
    """The summary as plain JSON types. Keys (stable; new ones may be added):

    - ``schema``: 1; ``workflow``: name; ``tasks``, ``edges``, ``levels``: counts;
    - ``groups``: ``{"count", "listed": [{"name", "start", "size"}], "elided"}``, the
      groups in id order, the first 1000 listed and ``elided`` the rest's count;
    - ``critical_path``: ``{"seconds", "length", "tasks": [names], "elided"}``: the
      names from the source to the sink, or the first and last 500 when longer and
      ``elided`` the count left out between them;
    - ``demand``: the fields of :class:`~hpcflow.plan.analyse.Demand`: ``tasks``,
      ``work_seconds``, ``core_hours``, ``gpu_hours``, ``peak_cores``, ``peak_gpus``,
      ``peak_memory`` (bytes), ``widest_level``, ``max_cores``, ``max_gpus``,
      ``max_memory`` (bytes), ``max_ranks``.
    """
    groups = plan.groups[:_JSON_GROUPS]
    head, tail, elided = _ends(analysis.critical_path, _JSON_PATH // 2)
    demand = analysis.demand
    return {
        "schema": SCHEMA_VERSION,
        "workflow": plan.workflow,
        "tasks": plan.n,
        "edges": plan.n_edges,
        "levels": analysis.n_levels,
        "groups": {
            "count": len(plan.groups),
            "listed": [{"name": g.name, "start": g.start, "size": g.size} for g in groups],
            "elided": len(plan.groups) - len(groups),
        },
        "critical_path": {
            "seconds": analysis.critical_time,
            "length": int(analysis.critical_path.size),
            "tasks": [plan.name(i) for i in (*head, *tail)],
            "elided": elided,
        },
        "demand": {name: getattr(demand, name) for name in demand.__dataclass_fields__},
    }


def summary_text(plan: Plan, analysis: Analysis) -> str:
    """A screenful for people: counts, groups, critical path, demand, work; each line,
    the last included, ends with a newline."""
    d = analysis.demand
    lines = [
        f"workflow {plan.workflow}: {plan.n:,} tasks in {len(plan.groups):,} groups, "
        f"{plan.n_edges:,} edges, {analysis.n_levels:,} levels (widest {d.widest_level:,})",
        f"groups: {_groups_text(plan)}",
        f"critical path: {analysis.critical_path.size:,} tasks, "
        f"{_duration(analysis.critical_time)}",
        f"  {_path_text(plan, analysis.critical_path)}",
        f"peak demand if nothing limits it: {d.peak_cores:,} cores, {d.peak_gpus:,} GPUs, "
        f"{_memory(d.peak_memory)} memory",
        f"largest task: {_plural(d.max_cores, 'core')}, {_plural(d.max_gpus, 'GPU')}, "
        f"{_memory(d.max_memory)} memory per rank; up to {_plural(d.max_ranks, 'rank')}",
        f"work: {_duration(d.work_seconds)} of task time, {d.core_hours:,.1f} core-hours, "
        f"{d.gpu_hours:,.1f} GPU-hours",
    ]
    return "\n".join(lines) + "\n"


def _groups_text(plan: Plan) -> str:
    shown = [f"{g.name} ({g.size:,})" for g in plan.groups[:_TEXT_GROUPS]]
    more = len(plan.groups) - len(shown)
    if more:
        shown.append(f"... {more:,} more")
    return ", ".join(shown) if shown else "none"


def _path_text(plan: Plan, path: np.ndarray) -> str:
    head, tail, elided = _ends(path, _TEXT_PATH // 2)
    names = [plan.name(i) for i in head]
    if elided:
        names.append(f"... {elided:,} more ...")
    names.extend(plan.name(i) for i in tail)
    return " -> ".join(names) if names else "(empty plan)"


def _ends(ids: np.ndarray, keep: int) -> tuple[list[int], list[int], int]:
    """All ids, or the first and last ``keep`` and how many lie between them."""
    if ids.size <= 2 * keep:
        return ids.tolist(), [], 0
    return ids[:keep].tolist(), ids[-keep:].tolist(), int(ids.size) - 2 * keep


def _duration(seconds: float) -> str:
    return f"{format_slurm_time(seconds)} ({seconds:,.6g} s)"


def _memory(nbytes: int) -> str:
    return format_memory(nbytes) if nbytes else "0"


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}" if count == 1 else f"{count:,} {word}s"


def estimates_text(estimates: Sequence[GroupEstimate]) -> str:
    """Per group, the time (and learned memory) the plan uses and where it comes from,
    then one warning per group whose declaration is far from what was measured."""
    lines = ["estimates (per task):"]
    lines += [f"  {estimate_line(e)}" for e in estimates[:_TEXT_GROUPS]]
    if len(estimates) > _TEXT_GROUPS:
        lines.append(f"  ... {len(estimates) - _TEXT_GROUPS:,} more groups")
    lines += [f"warning: {w}" for e in estimates for w in e.warnings()]
    return "\n".join(lines) + "\n"


def estimate_line(e: GroupEstimate) -> str:
    """One group's line of :func:`estimates_text`."""
    d, m = e.duration, e.memory
    text = f"{e.name}: time {format_seconds(e.time)} {e.source}"
    if e.source == "learned" and d is not None:
        text += (f": {_plural(d.count, 'sample')}, median {format_seconds(d.median)}, "
                 f"p95 {format_seconds(d.high)}")
        if d.bound:
            text += f", at least {format_seconds(d.bound)} (timed out)"
        if e.members:
            text += f"; {_plural(len(e.members), 'member')} by their own samples"
    if m is not None:
        text += (f"; memory {format_memory(int(m.request))} learned: peak median "
                 f"{format_memory(int(m.median))}, p95 {format_memory(int(m.high))}")
    elif e.declared_memory:
        text += f"; memory {format_memory(e.declared_memory)} declared"
    return text


def estimates_json(estimates: Sequence[GroupEstimate]) -> list[dict[str, Any]]:
    """Per group (the first 1000): ``name``, ``definition``, ``source`` of the time,
    ``time`` (seconds used), ``declared_time``, ``declared_memory``, ``duration`` and
    ``memory`` (the learned :class:`Estimate` fields, or null), ``warnings``."""
    return [{"name": e.name, "definition": e.definition, "source": e.source, "time": e.time,
             "declared_time": e.declared_time, "declared_memory": e.declared_memory,
             "duration": _estimate_json(e.duration), "memory": _estimate_json(e.memory),
             "warnings": e.warnings()} for e in estimates[:_JSON_GROUPS]]


def _estimate_json(estimate: Estimate | None) -> dict[str, float] | None:
    if estimate is None:
        return None
    return {name: getattr(estimate, name) for name in estimate.__dataclass_fields__}
