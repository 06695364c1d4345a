"""``hpcflow status``: what a run folder says about its run, live or dead.

Everything comes from the run folder (docs/architecture.md, "Store"): ``run.json`` (what
ran), ``groups.json`` (task names) and the journal, replayed event by event into a few
per-task numpy arrays (:class:`RunView`; the HTML report reads the same view). The
journal may be growing while we read it, or end in a torn frame after ``kill -9``:
:func:`~hpcflow.store.journal.read_journal` stops at the last complete frame, so we
always see a consistent prefix.

Whether the run is still alive is not in the journal: a run without an ``end`` event
is live only while its coordinator holds ``<run>/lock`` (``flock``), which the kernel
releases when the process dies, however it dies. We test the lock without blocking.

The batch job's own state (for runs submitted to Slurm) is outside the folder: pass a
``job_state`` probe to :func:`run_status` (see :data:`JobStateProbe`); the CLI passes
:func:`batch_job_state`, which is where the scheduler adapter plugs in.
"""

from __future__ import annotations

import bisect
import fcntl
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpcflow.engine.walltime import IDLE_JOBS
from hpcflow.report.progress import format_seconds
from hpcflow.store.journal import CorruptJournal, Event, read_journal
from hpcflow.store.rundir import RunDir

NOT_STARTED, RUNNING, DONE, FAILED, SKIPPED, RETRYING = range(6)
STATES = ("not started", "running", "done", "failed", "skipped", "retrying")
"""State names, indexed by the codes above (``RunView.state``)."""
GONE = "not finished (coordinator gone?)"
_TEXT_FAILURES = 20
STALLED = "stalled"
"""A continuation chain whose last jobs finished no task stopped itself (walltime.py)."""
_RESUMABLE = ("failed", "stopped", "walltime", STALLED, GONE)
"""Statuses after which ``status`` names the command that continues the run."""
_JSON_FAILURES = 1000

JobStateProbe = Callable[[Mapping[str, Any]], "str | None"]
"""Given run.json's contents, the batch job's state (``PENDING``, ``RUNNING``,
``TIMEOUT``...), or None when the run has no batch job or the state is unknown."""


@dataclass(eq=False)
class RunView:
    """A run folder replayed: per-task arrays indexed by task id, and the run's events.

    ``worker``/``start``/``end`` hold the last attempt that reached a worker (-1 and NaN
    before that); ``failures`` maps a failed id to ``(error, log)``; ``extra`` the DONE
    (or FAIL) event's extra dict where it is not empty (measured memory, node: when the
    engine records them); ``sessions`` the RUN event infos (one more per resume)."""

    path: Path
    info: dict[str, Any]
    groups: list[dict[str, Any]]
    state: np.ndarray
    worker: np.ndarray
    start: np.ndarray
    end: np.ndarray
    attempts: np.ndarray
    failures: dict[int, tuple[str | None, str | None]] = field(default_factory=dict)
    extra: dict[int, dict[str, Any]] = field(default_factory=dict)
    sessions: list[dict[str, Any]] = field(default_factory=list)
    ended: tuple[str, float] | None = None
    last_time: float | None = None
    starts: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.starts = [g["start"] for g in self.groups]

    @property
    def n(self) -> int:
        return int(self.state.shape[0])

    def name(self, i: int) -> str:
        """Task instance name (``simulate[3]``) from groups.json's first ids."""
        k = bisect.bisect_right(self.starts, i) - 1
        group = self.groups[k]
        return f"{group['name']}[{i - group['start']}]" if group["size"] > 1 else group["name"]

    def counts(self) -> dict[str, int]:
        tally = np.bincount(self.state, minlength=len(STATES))
        return {name: int(tally[code]) for code, name in enumerate(STATES)}

    @property
    def workers(self) -> int:
        if self.sessions and self.sessions[-1].get("workers"):
            return int(self.sessions[-1]["workers"])
        return int(self.info.get("workers") or 0)


def load_run(path: str | os.PathLike[str]) -> RunView:
    """Read and replay a run folder, anyone's: its journal is plain data, and a result's
    sealed bytes are never unpickled here."""
    run = RunDir.open(path)
    info = run.read_info()
    try:
        groups = json.loads((run.path / "groups.json").read_text())
    except FileNotFoundError:
        groups = []
    n = int(info.get("tasks") or sum(g["size"] for g in groups))
    view = RunView(run.path, info, groups, np.zeros(n, np.int8), np.full(n, -1, np.int32),
                   np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, np.int32))
    for event in read_journal(run.journal):
        try:
            _apply(view, event)
        except MALFORMED as exc:
            raise malformed(run.journal, exc) from None
    return view


MALFORMED = (IndexError, KeyError, TypeError, ValueError)
"""What replaying an event that hpcflow did not write can raise (the journal is plain
data, so a planted frame is at worst nonsense): said in one line."""


def malformed(journal: Path, exc: Exception) -> CorruptJournal:
    return CorruptJournal(journal, f"{type(exc).__name__} replaying an event: {exc}")


def _apply(view: RunView, event: tuple[Any, ...]) -> None:
    """One journal event's effect on the per-task state (see ``journal.Event``)."""
    kind = event[0]
    if kind == Event.DISPATCH:
        _, i, attempt, worker, at = event[:5]
        view.state[i], view.attempts[i] = RUNNING, attempt + 1
        view.worker[i] = worker
        view.last_time = max(view.last_time or at, at)
    elif kind in (Event.DONE, Event.FAIL):
        _, i, _, worker, start, end = event[:6]
        view.worker[i], view.start[i], view.end[i] = worker, start, end
        view.last_time = max(view.last_time or end, end)
        view.extra.pop(i, None)
        if kind == Event.DONE:
            view.state[i] = DONE
            view.failures.pop(i, None)
            if len(event) > 7 and event[7]:
                view.extra[i] = dict(event[7])
        else:
            view.state[i] = FAILED
            view.failures[i] = (event[6], event[7])
            if len(event) > 8 and event[8]:
                view.extra[i] = dict(event[8])
    elif kind == Event.RETRY:
        view.state[event[1]] = RETRYING
    elif kind == Event.SKIP:
        view.state[event[1]] = SKIPPED
    elif kind == Event.STOPPED:  # given up at the allocation's end: runs again on resume
        view.state[event[1]] = NOT_STARTED
    elif kind == Event.RUN:
        _new_session(view, dict(event[1]))
    elif kind == Event.END:
        view.ended = (event[1], event[2])


def _new_session(view: RunView, info: dict[str, Any]) -> None:
    """A (re)start: what was in flight, failed or skipped in an earlier session is to be
    decided again by this one (a resume reruns failed tasks and their dependents)."""
    view.sessions.append(info)
    view.ended = None
    again = (view.state == RUNNING) | (view.state == RETRYING) | (view.state == FAILED) \
        | (view.state == SKIPPED)
    view.state[again] = NOT_STARTED
    for i in view.failures:  # a failure's measured memory goes with it
        view.extra.pop(i, None)
    view.failures.clear()


def worker_nodes(session: Mapping[str, Any], info: Mapping[str, Any]) -> list[str]:
    """Node of each worker where known: a RUN event's ``nodes``, or the host of a local
    run (``session`` is the RUN event's info, ``info`` run.json's)."""
    if session.get("nodes"):
        return [str(n) for n in session["nodes"]]
    if (info.get("engine") or session.get("engine")) == "local":
        host = str(session.get("host", info.get("host", "")))
        workers = int(session.get("workers") or info.get("workers") or 1)
        return [host] * max(workers, 1)
    return []


def lock_held(run_path: Path) -> bool:
    """True while a live coordinator holds ``<run>/lock`` (never creates the file)."""
    try:
        fd = os.open(run_path / "lock", os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops our shared lock if we got it
    return False


def batch_job_state(info: Mapping[str, Any]) -> str | None:
    """The default :data:`JobStateProbe`: the scheduler adapter's ``job_state(info)``
    for runs whose run.json names a batch job (``slurm_job_id``), else None. For a chain
    of jobs it is the latest one's, a continuation still pending included."""
    if "slurm_job_id" not in info:
        return None
    try:
        from hpcflow.scheduler import slurm
    except ImportError:
        return None
    state = slurm.job_state(info)
    return slurm.describe_job(state) if state else None


@dataclass(frozen=True)
class RunStatus:
    """What ``hpcflow status`` prints (see :func:`status_of` for ``status``)."""

    run_dir: str
    workflow: str
    status: str
    counts: dict[str, int]
    total: int
    started: float | None
    elapsed: float
    engine: str | None
    workers: int
    failures: list[dict[str, Any]]
    job_state: str | None = None


def run_status(path: str | os.PathLike[str], *, job_state: JobStateProbe | None = None,
               now: float | None = None) -> RunStatus:
    """The status of the run in ``path`` (see the module doc for live/dead)."""
    return status_of(load_run(path), job_state=job_state, now=now)


def status_of(view: RunView, *, job_state: JobStateProbe | None = None,
              now: float | None = None) -> RunStatus:
    """The status of an already replayed run (the HTML report's summary uses it too);
    ``status`` is succeeded, failed, stopped, walltime (a continuation goes on with it),
    stalled, running, error (nothing ran) or :data:`GONE`."""
    status, started, finished = _life(view, time.time() if now is None else now)
    failures = [{"task": view.name(i), "error": last_line(err), "log": log}
                for i, (err, log) in sorted(view.failures.items())]
    return RunStatus(str(view.path), str(view.info.get("workflow", "?")), status, view.counts(),
                     view.n, started, max(0.0, finished - started) if started else 0.0,
                     view.info.get("engine"), view.workers, failures,
                     job_state(view.info) if job_state is not None else None)


def _life(view: RunView, now: float) -> tuple[str, float | None, float]:
    """(status, first start, end or now): END says how it ended; without END the lock
    says whether the coordinator still lives; a dead run ends at its last event."""
    started = view.sessions[0].get("time") if view.sessions else view.info.get("created")
    if view.ended is not None:
        return view.ended[0], started, view.ended[1]
    if lock_held(view.path):
        return "running", started, now
    if not view.sessions and view.info.get("status") not in (None, "running"):
        return str(view.info["status"]), started, view.info.get("finished") or now
    return GONE, started, view.last_time or view.info.get("finished") or started or now


def last_line(text: str | None) -> str:
    """The line of an error text that says what went wrong (a traceback's last)."""
    lines = (text or "failed").strip().splitlines()
    return lines[-1] if lines else "failed"


def format_elapsed(seconds: float) -> str:
    """``4.2 s`` below a minute, else ``0:01:05`` (see ``progress.format_seconds``)."""
    return f"{seconds:.1f} s" if seconds < 60 else format_seconds(seconds)


def _next_command(status: RunStatus) -> str | None:
    """What continues a run that did not finish: a resume here, or for a batch job's run
    that failed or was stopped, a new job (a walltime stop continues by itself)."""
    if status.job_state is None:
        return "hpcflow run --resume" if status.status in _RESUMABLE else None
    return "hpcflow submit --resume" if status.status in ("failed", "stopped", STALLED) else None


def status_json(status: RunStatus) -> dict[str, Any]:
    """``--json``: the fields of :class:`RunStatus`; ``failures`` capped at 1000 (then
    ``failures_elided`` says how many more); ``finished`` (an end was recorded) and
    ``live`` (its coordinator holds the lock): neither means the coordinator is gone."""
    data = dict(status.__dict__)
    data["failures"] = status.failures[:_JSON_FAILURES]
    data["failures_elided"] = max(0, len(status.failures) - _JSON_FAILURES)
    data["finished"] = status.status in ("succeeded", "failed", "stopped", STALLED, "error")
    data["live"] = status.status == "running"
    return data


def status_text(status: RunStatus) -> str:
    """A few lines for people: status, counts, elapsed, then each failed task and its log."""
    c = status.counts
    counts = (f"{c['done']:,} done, {c['failed']:,} failed, {c['running']:,} running, "
              f"{c['skipped']:,} skipped, {c['not started']:,} not started")
    if c["retrying"]:
        counts += f", {c['retrying']:,} waiting to retry"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status.started)) \
        if status.started else "?"
    lines = [f"run      {status.run_dir}",
             f"workflow {status.workflow} (engine {status.engine or '?'}, "
             f"{status.workers} workers)",
             f"status   {status.status}",
             f"tasks    {status.total:,}: {counts}",
             f"elapsed  {format_elapsed(status.elapsed)} (started {started}"
             f"{'; until its last journal event' if status.status == GONE else ''})"]
    if status.job_state:
        lines.append(f"job      {status.job_state}")
    if status.status == STALLED:
        lines.append(f"why      {IDLE_JOBS} jobs of its chain in a row finished no task, so it "
                     "stopped: a task may need longer than one job gives, or than its time "
                     "estimate says (see the task logs); give it more --time or fix the estimate")
    if status.status == GONE and c["running"]:
        lines.append(f"         {c['running']:,} task(s) were in flight when it stopped; "
                     "resuming runs them again")
    for failure in status.failures[:_TEXT_FAILURES]:
        lines.append(f"FAILED   {failure['task']}: {failure['error']}")
        if failure["log"]:
            lines.append(f"         log: {failure['log']}")
    if len(status.failures) > _TEXT_FAILURES:
        lines.append(f"         ... {len(status.failures) - _TEXT_FAILURES:,} more failed "
                     "(--json lists them)")
    how = _next_command(status)
    if how:
        lines.append(f"next     {how} {status.run_dir}"
                     + (" (once the causes are fixed)" if status.failures else ""))
    return "\n".join(lines) + "\n"
