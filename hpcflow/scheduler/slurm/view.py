"""What ``hpcflow plan --slurm`` and ``hpcflow submit`` print about a sizing.

The candidates table shows, for each node count simulated, the allocation's shape, the
simulated makespan, the ``--time`` it would request (makespan plus the margin) and its
node-hours; the chosen row is starred, followed by the choice in words and why.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from hpcflow.model.resources import format_memory, format_slurm_time
from hpcflow.scheduler.slurm.sizing import Candidate, Sizing

_HEAD = ("nodes", "ranks/node", "workers", "GPUs/node", "mem/node", "makespan", "--time",
         "node-hours", "fits")


def sizing_text(sizing: Sizing) -> str:
    """The candidates table, the choice and the reason, for people."""
    part = sizing.partition
    limit = format_slurm_time(part.max_seconds) if part.max_seconds else "none"
    rows = [_row(c, part.cores_per_node) for c in sizing.candidates]
    widths = [max(len(h), *(len(r[k]) for r in rows)) for k, h in enumerate(_HEAD)]
    lines = [f"Slurm: partition {part.name}: {part.nodes} node(s) of {part.shape()}; "
             f"max time {limit}",
             "    " + "  ".join(h.rjust(w) for h, w in zip(_HEAD, widths, strict=True))]
    for cand, row in zip(sizing.candidates, rows, strict=True):
        mark = "  * " if cand is sizing.chosen else "    "
        lines.append(mark + "  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))
    lines += [f"    ({c.shape.nodes} node(s): {c.note})" for c in sizing.candidates
              if c.note and c.makespan is None and c.bound is None]
    if any(c.bound is not None for c in sizing.candidates):
        lines.append("    (>=: not simulated; even its lower bound, the critical path or the work "
                     "spread over its cores, cannot fit or save node-hours)")
    lines.append(f"chosen: {_described(sizing)}")
    lines.append(f"why: {sizing.reason}")
    lines += [f"warning: {w}" for w in sizing.warnings]
    return "\n".join(lines) + "\n"


def sizing_json(sizing: Sizing) -> dict[str, Any]:
    """The same as plain JSON types (seconds and bytes)."""
    part = sizing.partition
    return {
        "partition": {**part.model_dump(mode="json"), "memory_bytes": part.memory,
                      "max_seconds": part.max_seconds},
        "candidates": [{**asdict(c.shape), "workers": c.shape.workers, "makespan": c.makespan,
                        "time": c.time, "node_hours": c.node_hours, "fits": c.fits, "note": c.note}
                       for c in sizing.candidates],
        "chosen": sizing.candidates.index(sizing.chosen),
        "time": sizing.time, "limit": sizing.limit, "limit_source": sizing.limit_source,
        "reason": sizing.reason, "warnings": list(sizing.warnings),
    }


def _row(c: Candidate, cores_per_node: int) -> tuple[str, ...]:
    """A table row; a candidate not simulated shows its lower bound as ``>=``."""
    s = c.shape
    if c.makespan is None and c.bound is not None:
        fraction = min(1.0, s.ntasks_per_node * s.cpus_per_task / cores_per_node)
        makespan = f">={format_slurm_time(c.bound)}"
        hours = f">={s.nodes * fraction * c.bound / 3600:.3f}"
    else:
        makespan = format_slurm_time(c.makespan) if c.makespan is not None else "-"
        hours = f"{c.node_hours:.3f}" if c.node_hours is not None else "-"
    fits = ("yes" if c.fits else "-" if "saves no" in c.note
            else "no" if c.makespan is not None or c.bound is not None else "no (below)")
    return (str(s.nodes), str(s.ntasks_per_node), str(s.workers), str(s.gpus_per_node),
            format_memory(s.memory_per_node), makespan,
            format_slurm_time(c.time) if c.time is not None else "-", hours, fits)


def _described(sizing: Sizing) -> str:
    s = sizing.shape
    gpus = f"{s.gpus_per_node} GPU(s) per node" if s.gpus_per_node else "no GPUs"
    time = f"--time {format_slurm_time(sizing.time)}" if sizing.time else "no --time"
    return (f"{s.nodes} node(s) x {s.ntasks_per_node} ranks x {s.cpus_per_task} core(s): "
            f"1 coordinator + {s.workers} worker(s), {format_memory(s.memory_per_node)} memory "
            f"per node, {gpus}, {time}")
