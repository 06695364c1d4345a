"""``hpcflow runs``: the run folders under a runs root, newest last, from their run.json
alone (no journal is replayed, so a root of many large runs lists at once): which run to
``status``, ``report``, ``trace`` or ``--resume``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hpcflow.report.status import lock_held
from hpcflow.store.rundir import runs_root


@dataclass
class RunSummary:
    folder: str
    workflow: str
    status: str  # run.json's; "gone" for "running" without a live coordinator
    tasks: int
    reused: int
    engine: str
    started: float | None
    ended: float | None  # its last session's end; None while it runs
    slurm_job_id: str | None


def list_runs(root: str | os.PathLike[str] | None = None) -> list[RunSummary]:
    """The user's own run folders under ``root`` (default: :func:`runs_root`'s), oldest
    first."""
    base = runs_root(root)
    found = []
    for folder in base.iterdir() if base.is_dir() else ():
        info = _info(folder)
        if info is not None:
            found.append(_summary(folder, info))
    return sorted(found, key=lambda r: (r.started or 0.0, r.folder))


def _info(folder: Path) -> dict[str, Any] | None:
    try:
        if folder.stat().st_uid != os.getuid():
            return None
        return json.loads((folder / "run.json").read_text())
    except (OSError, ValueError):
        return None


def _summary(folder: Path, info: dict[str, Any]) -> RunSummary:
    status = str(info.get("status", "?"))
    if status == "running" and not lock_held(folder):
        status = "gone"
    ended = info.get("finished") if status != "running" else None
    return RunSummary(str(folder.resolve()), str(info.get("workflow", "?")), status,
                      int(info.get("tasks") or 0), int(info.get("reused") or 0),
                      str(info.get("engine", "?")), info.get("created"), ended,
                      info.get("slurm_job_id"))


def runs_text(runs: list[RunSummary]) -> str:
    """A table of ``runs`` for the terminal."""
    if not runs:
        return "no runs\n"
    rows = [("run", "status", "tasks", "engine", "started", "ended")]
    for run in runs:
        tasks = f"{run.tasks} ({run.reused} reused)" if run.reused else str(run.tasks)
        engine = f"{run.engine}, job {run.slurm_job_id}" if run.slurm_job_id else run.engine
        rows.append((Path(run.folder).name, run.status, tasks, engine, _when(run.started),
                     _when(run.ended) if run.status != "running" else "-"))
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    return "".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                   + "\n" for row in rows)


def _when(seconds: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds else "?"


def runs_json(runs: list[RunSummary]) -> list[dict[str, Any]]:
    return [asdict(run) for run in runs]
