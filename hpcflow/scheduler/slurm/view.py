"""What ``hpcflow plan --slurm`` and ``hpcflow submit`` print about a sizing.

The front shows, per partition, each allocation the sizing simulated: its shape, the
predicted makespan, the ``--time`` it would request, its cost in the site's unit and its
parallel efficiency (the work over what is charged); the chosen row is starred,
followed by the choice in words and why.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from hpcflow.model.resources import format_memory, format_slurm_time
from hpcflow.scheduler.slurm.shape import cost
from hpcflow.scheduler.slurm.sizing import Candidate, Sizing

_HEAD = ("nodes", "ranks/node", "workers", "GPUs/node", "mem/node", "makespan", "--time",
         "cost", "efficiency", "fits")


def sizing_text(sizing: Sizing) -> str:
    """The front searched, the choice and the reason, for people."""
    parts = list(dict.fromkeys(c.partition for c in sizing.candidates))
    lines = []
    for part in parts:
        limit = format_slurm_time(part.max_seconds) if part.max_seconds else "none"
        whole = "; whole nodes" if part.whole_nodes else ""
        lines.append(f"Slurm: partition {part.name}: {part.nodes} node(s) of {part.shape()}; "
                     f"max time {limit}{whole}")
        lines += _table([c for c in sizing.candidates if c.partition is part], sizing)
    lines += [f"    ({c.shape.nodes} node(s): {c.note})" for c in sizing.candidates
              if c.note and c.makespan is None and c.bound is None]
    if any(c.bound is not None for c in sizing.candidates):
        lines.append("    (>=: not simulated; even its lower bound, the critical path or the work "
                     "spread over its cores, cannot fit or be within the tolerance)")
    lines.append(f"chosen: {_described(sizing)}")
    lines.append(f"why: {sizing.reason}")
    lines += [f"warning: {w}" for w in sizing.warnings]
    return "\n".join(lines) + "\n"


def _table(candidates: list[Candidate], sizing: Sizing) -> list[str]:
    rows = [_row(c) for c in candidates]
    widths = [max(len(h), *(len(r[k]) for r in rows)) for k, h in enumerate(_HEAD)]
    lines = ["    " + "  ".join(h.rjust(w) for h, w in zip(_HEAD, widths, strict=True))]
    for cand, row in zip(candidates, rows, strict=True):
        mark = "  * " if cand is sizing.chosen else "    "
        lines.append(mark + "  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))
    return lines


def sizing_json(sizing: Sizing) -> dict[str, Any]:
    """The same as plain JSON types (seconds and bytes); ``front`` is every candidate."""
    part = sizing.partition

    def candidate(c: Candidate) -> dict[str, Any]:
        return {"partition": c.partition.name, **asdict(c.shape), "workers": c.shape.workers,
                "makespan": c.makespan, "time": c.time, "cost": c.cost, "unit": c.unit,
                "efficiency": c.efficiency, "fits": c.fits, "note": c.note, "bound": c.bound}

    front = [candidate(c) for c in sizing.candidates]
    return {
        "partition": {**part.model_dump(mode="json"), "memory_bytes": part.memory,
                      "max_seconds": part.max_seconds},
        "candidates": front, "front": front,
        "chosen": sizing.candidates.index(sizing.chosen),
        "fastest": (sizing.candidates.index(sizing.fastest)
                    if sizing.fastest in sizing.candidates else None),
        "time": sizing.time, "limit": sizing.limit, "limit_source": sizing.limit_source,
        "signal_lead": sizing.signal_lead, "chain_jobs": sizing.chain_jobs,
        "reason": sizing.reason, "warnings": list(sizing.warnings),
    }


def _row(c: Candidate) -> tuple[str, ...]:
    """A table row; a candidate not simulated shows its lower bound as ``>=``."""
    s = c.shape
    if c.makespan is None and c.bound is not None:
        makespan = f">={format_slurm_time(c.bound)}"
        money = f">={cost(s, c.partition, c.bound):.3g} {c.unit}"
    else:
        makespan = format_slurm_time(c.makespan) if c.makespan is not None else "-"
        money = f"{c.cost:.3g} {c.unit}" if c.cost is not None else "-"
    fits = ("yes" if c.fits else "-" if c.bound is not None
            else "no" if c.makespan is not None else "no (below)")
    return (str(s.nodes), str(s.ntasks_per_node), str(s.workers), str(s.gpus_per_node),
            format_memory(s.memory_per_node), makespan,
            format_slurm_time(c.time) if c.time is not None else "-", money,
            f"{c.efficiency:.0%}" if c.efficiency is not None else "-", fits)


def _described(sizing: Sizing) -> str:
    s = sizing.shape
    gpus = f"{s.gpus_per_node} GPU(s) per node" if s.gpus_per_node else "no GPUs"
    time = f"--time {format_slurm_time(sizing.time)}" if sizing.time else "no --time"
    return (f"partition {sizing.partition.name}, {s.nodes} node(s) x {s.ntasks_per_node} ranks "
            f"x {s.cpus_per_task} core(s): 1 coordinator + {s.workers} worker(s), "
            f"{format_memory(s.memory_per_node)} memory per node, {gpus}, {time}, USR1 "
            f"{sizing.signal_lead} s before the end")
