"""The allocation's end: start no task that cannot finish before it, and stop in good order.

The coordinator learns when its allocation ends once, at start: ``--deadline`` (seconds
from now) if given, else ``SLURM_JOB_END_TIME`` (epoch seconds, set by Slurm from 23.02;
22.05 has none), else ``squeue -h -j $SLURM_JOB_ID -o %e`` (one call, with a time-out).

With an end known, a task starts only if its ``time`` estimate, plus :data:`MARGIN`,
fits before the end minus :data:`GRACE`; one that does not waits for the next
allocation. At ``end - GRACE`` the running tasks are stopped and journalled as such (a
resume runs them again), and the run ends with status ``walltime``; the CLI then exits
with :data:`EXIT_WALLTIME`, on which the batch script hands over to its continuation job.

The pre-walltime signal (Slurm's ``--signal=B:USR1@N``, which may come up to a minute
early, or ``scancel --signal=USR1 --batch``) is a warning, not the end. The batch script
never passes it on to the step: it writes :func:`signal_marker`, which the coordinator
looks at at most once a second (:meth:`Walltime.look`); a real SIGUSR1 to the coordinator
counts too (:func:`arm`, :func:`watching`: for ``hpcflow run`` in a user's own batch
script). After it, with an end known, tasks without an estimate count as taking
:data:`~hpcflow.model.resources.DEFAULT_TIME_ESTIMATE` (they might not fit; one that
does not say must not be started on hope); only without a known end does the signal
stop dispatching, and the running tasks get :data:`GRACE_NO_END` seconds.

A continuation chain that makes no progress stops: :func:`idle_jobs` counts the chain's
latest jobs (journal sessions) that finished no task; after :data:`IDLE_JOBS` in a row
the run ends ``stalled`` instead of ``walltime`` (exit 1: the script submits no more).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from hpcflow.model.resources import DEFAULT_TIME_ESTIMATE
from hpcflow.store.journal import Event, read_journal

EXIT_WALLTIME = 75
"""The CLI's exit code when the run stopped for the allocation's end (EX_TEMPFAIL)."""
MARGIN = 5.0
"""Seconds kept free after a task's estimate (and before the grace time) for it to fit."""
GRACE = 20.0
"""Running tasks are stopped this many seconds before the allocation's end. It covers the
engine's stop (each worker's task tree ended: 1 s to leave, then TERM/KILL and 5 s), the
journal flush, the step's exit, a Dask/Ray cluster's stop (a few seconds when it closes
itself) and the continuation's ``sbatch``, with the coordinator's 1 s look interval and
the 1 s resolution of Slurm's end time. The sizing adds it to the requested time."""
GRACE_NO_END = 30.0
"""Without a known end: seconds after SIGUSR1 until running tasks are stopped."""
SQUEUE_TIMEOUT = 10.0
LOOK_INTERVAL = 1.0
"""The coordinator looks for the signal marker at most this often (seconds)."""
IDLE_JOBS = 3
"""A continuation chain stops after this many jobs in a row that finished no task."""
CHAIN_VARIABLE = "HPCFLOW_CONTINUATION"
"""Set by the batch script in a continuation job: how many jobs came before it."""
MARKER_FOLDER = "batch"
"""Inside the run folder: where the batch script writes :func:`signal_marker`."""
MARKER_NAME = "usr1.{job}"


def signal_marker(run_dir: str | os.PathLike[str], job: str) -> Path:
    """The file whose existence says that job ``job`` got the pre-walltime signal (the
    batch script writes it aside and renames it, so it appears whole)."""
    return Path(run_dir) / MARKER_FOLDER / MARKER_NAME.format(job=job)


@dataclass
class Walltime:
    """When the allocation ends (epoch seconds, None if unknown), whether the pre-walltime
    signal came, and where to look for it. The signal only sets a field; the core acts."""

    end: float | None = None
    signalled_at: float | None = None
    marker: Path | None = None
    idle_before: int = 0
    """This chain's jobs just before this one that finished no task (:func:`idle_jobs`)."""
    _next_look: float = field(default=0.0, repr=False)

    def look(self) -> None:
        """Note the batch script's signal marker, looking at most once a second."""
        if self.marker is None or self.signalled_at is not None:
            return
        now = time.monotonic()
        if now < self._next_look:
            return
        self._next_look = now + LOOK_INTERVAL
        with contextlib.suppress(OSError):
            self.signalled_at = self.marker.stat().st_mtime

    def fits(self, estimate: float | None) -> bool:
        """Whether a task of this estimate (None: none given) can still finish before the
        end; after the signal, a task without one counts as the planner's default."""
        if self.end is None:
            return True
        if estimate is None:
            if self.signalled_at is None:
                return True
            estimate = DEFAULT_TIME_ESTIMATE
        return time.time() + estimate + MARGIN <= self.end - GRACE

    @property
    def draining(self) -> bool:
        """Stop dispatching: the end is within the grace time, or (no end known) the
        signal came."""
        self.look()
        if self.end is not None:
            return time.time() >= self.end - GRACE
        return self.signalled_at is not None

    def past_grace(self) -> bool:
        """Running tasks must be stopped now."""
        now = time.time()
        if self.end is not None:
            return now >= self.end - GRACE
        return self.signalled_at is not None and now >= self.signalled_at + GRACE_NO_END

    def stalls(self, finished: int) -> bool:
        """Whether a job that finished ``finished`` tasks ends the chain (see IDLE_JOBS)."""
        return finished == 0 and self.idle_before + 1 >= IDLE_JOBS

    def on_signal(self, _signum: int, _frame: object) -> None:
        if self.signalled_at is None:
            self.signalled_at = time.time()


STALLED = (f"hpcflow: {IDLE_JOBS} jobs in a row finished no task, so the continuation chain "
           "stops here: a task may need longer than one job gives, or longer than its time "
           "estimate says (see the task logs). Give the job more --time or fix the estimate, "
           "then continue the run with: hpcflow submit --resume {run}")
"""What the batch log and ``hpcflow status`` say when a chain stalls."""


def allocation_end(deadline: float | None = None, env: Mapping[str, str] | None = None) -> float | None:
    """The allocation's end as epoch seconds (see the module docstring), or None."""
    env = os.environ if env is None else env
    if deadline is not None:
        return time.time() + deadline
    with contextlib.suppress(ValueError):
        if env.get("SLURM_JOB_END_TIME"):
            return float(env["SLURM_JOB_END_TIME"])
    job = env.get("SLURM_JOB_ID")
    return _squeue_end(job) if job else None


def _squeue_end(job: str) -> float | None:
    """``squeue -o %e`` once: the job's end in local time (``2026-11-25T14:35:00``)."""
    try:
        done = subprocess.run(["squeue", "-h", "-j", job, "-o", "%e"], capture_output=True,
                              text=True, timeout=SQUEUE_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    text = done.stdout.strip()
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").timestamp()
    except ValueError:  # "N/A", "Unknown", empty: no limit known
        return None


def for_run(run_dir: str | os.PathLike[str], journal: Path, deadline: float | None = None,
            env: Mapping[str, str] | None = None) -> Walltime:
    """The walltime of a run in ``run_dir``: its end, the marker of its batch job (if it
    runs in one) and, in the third or later job of a chain, the idle jobs before it."""
    env = os.environ if env is None else env
    job = env.get("SLURM_JOB_ID")
    wt = Walltime(allocation_end(deadline, env), marker=signal_marker(run_dir, job) if job else None)
    earlier = chain_position(env)
    if earlier >= IDLE_JOBS - 1:
        wt.idle_before = min(idle_jobs(journal), earlier)
    return wt


def chain_position(env: Mapping[str, str]) -> int:
    """How many jobs of this run's continuation chain came before this one."""
    try:
        return max(0, int(env.get(CHAIN_VARIABLE) or 0))
    except ValueError:
        return 0


def idle_jobs(journal: Path) -> int:
    """How many sessions at the journal's end (a session per job: its RUN event onwards)
    finished no task. A job killed at its limit counts by what its journal says."""
    finished: list[int] = []
    for event in read_journal(journal):
        if event[0] == Event.RUN:
            finished.append(0)
        elif event[0] == Event.DONE and finished:
            finished[-1] += 1
    idle = 0
    for count in reversed(finished):
        if count:
            break
        idle += 1
    return idle


_EARLY: list[float] = []
"""When SIGUSR1 came before the run's own handler was in place (see :func:`arm`)."""


def _record(_signum: int, _frame: object) -> None:
    if not _EARLY:
        _EARLY.append(time.time())


def arm() -> None:
    """Note SIGUSR1 from the process's start (the CLI calls this first): in a user's own
    batch script that passes Slurm's signal on, it may come during start-up or shut-down,
    and its default action would kill the process."""
    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGUSR1, _record)


@contextlib.contextmanager
def watching(walltime: Walltime) -> Iterator[Walltime]:
    """SIGUSR1 marks the walltime signal while the run lasts (main thread only); one that
    came before (see :func:`arm`) counts too."""
    if _EARLY:
        walltime.signalled_at = _EARLY[0]
    if threading.current_thread() is not threading.main_thread():
        yield walltime
        return
    previous = signal.signal(signal.SIGUSR1, walltime.on_signal)
    try:
        yield walltime
    finally:
        signal.signal(signal.SIGUSR1, previous)
