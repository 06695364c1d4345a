"""Run a workflow: flatten, check, make the run folder, start a backend, drive the core.

This is the one entry point the CLI and the Python API share; backends are chosen by
name (``local``, ``mpi``, ...) and built by small factories so that importing this
module never imports an optional engine's package.
"""

from __future__ import annotations

import errno
import functools
import importlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from hpcflow.engine.core import Backend, Core, ProgressSink, RunOptions, RunResult, _output_ids, check_fits
from hpcflow.engine.launched import choose_engine, marked_as_running
from hpcflow.engine.local import LocalBackend, machine_shares
from hpcflow.engine.walltime import STALLED, for_run, watching
from hpcflow.errors import EngineError, RunDirError, RunInterrupted, SpecError
from hpcflow.model.workflow import Workflow
from hpcflow.plan.analyse import analyse
from hpcflow.plan.flatten import flatten
from hpcflow.plan.plan import Plan
from hpcflow.plan.policy import Slot
from hpcflow.store.journal import truncate_torn
from hpcflow.store.measured import record_in_background, wait_for_recording
from hpcflow.store.resume import Decision, forced_ids, plan_resume, record_force
from hpcflow.store.rundir import RunDir


@dataclass
class EngineConfig:
    """How to run: which engine, how many workers, which GPUs, where the run folder goes."""

    engine: str | None = None
    """local, mpi, dask, ray or spark; None: mpi under a launch of several ranks
    (``mpiexec -n N``), else local (see launched.py)."""
    workers: int | None = None
    gpus: Sequence[str] = ()
    memory: int | None = None
    run_dir: str | None = None
    runs_root: str | None = None
    options: RunOptions = field(default_factory=RunOptions)
    spec: str | None = None
    address: str | None = None
    """The cluster to use: a Dask scheduler (``tcp://host:8786``), a Ray cluster
    (``host:6379``, ``auto``) or a Spark master (``spark://host:7077``); None starts one
    on this machine. Other engines ignore it."""
    resume: str | None = None
    """An earlier run folder to continue: its completed, unchanged tasks are reused."""
    force: Sequence[str] = ()
    """With ``resume``: tasks to run again (names, ``sim[3]``, a nested workflow's id),
    and everything downstream of them, whatever their fingerprints say; journalled, so
    that a resume of this run interrupted before they ran reruns them too."""
    isolate: bool = False
    """Every Python task in its own child process (sets ``options.isolate``)."""
    deadline: float | None = None
    """Seconds from now until the allocation ends (default: from Slurm; see walltime.py)."""
    progress: Callable[[int], ProgressSink] | None = None
    """Makes the progress reporter from the number of tasks (the CLI gives the report
    layer's live line); None reports nothing."""
    history: bool = True
    """Add the run's measured attempts to the history at its end (store/measured.py)."""
    history_path: str | None = None
    """The history file (default: $HPCFLOW_HISTORY, else the XDG data folder)."""


BackendFactory = Callable[[Plan, RunDir, EngineConfig], tuple[Backend, list[Slot]]]


def _local_factory(plan: Plan, run: RunDir, config: EngineConfig) -> tuple[Backend, list[Slot]]:
    workers = config.workers or os.cpu_count() or 1
    slots = machine_shares(workers, config.gpus, config.memory)
    check_fits(plan, slots)
    return LocalBackend(plan, str(run.path), slots), slots


def _mpi_factory(plan: Plan, run: RunDir, config: EngineConfig) -> tuple[Backend, list[Slot]]:
    from hpcflow.engine.mpi.backend import start_backend

    return start_backend(plan, run, config)


def _cluster_factory(engine: str, *packages: str) -> BackendFactory:
    """The factory of ``hpcflow.engine.backends.<engine>``, which imports that module (and
    so Dask, Ray or PySpark) only when the engine is chosen: a missing package is one
    line naming the extra to install (EngineError), never a traceback."""
    def factory(plan: Plan, run: RunDir, config: EngineConfig) -> tuple[Backend, list[Slot]]:
        from hpcflow.engine.backends.remote import require

        require(engine, *packages)
        module = importlib.import_module(f"hpcflow.engine.backends.{engine}")
        return module.start_backend(plan, run, config)

    return factory


BACKENDS: dict[str, BackendFactory] = {
    "local": _local_factory, "mpi": _mpi_factory,
    "dask": _cluster_factory("dask", "dask", "distributed"),
    "ray": _cluster_factory("ray", "ray"),
    "spark": _cluster_factory("spark", "pyspark"),
}


def run_workflow(workflow: Workflow | Plan, config: EngineConfig | None = None) -> RunResult:
    """Run ``workflow`` to the end and return its outcome (outputs, failures, run folder)."""
    config = config or EngineConfig()
    config.engine = choose_engine(config.engine)
    after: list[Callable[[], object]] = []  # the history's recording, once the run is over
    coordinate = functools.partial(_coordinate, after=after)
    with marked_as_running():
        if config.engine == "mpi":  # every rank calls this; only rank 0 comes back to _coordinate
            from hpcflow.engine.mpi import session

            result = session.run(workflow, config, coordinate)
        else:
            result = coordinate(workflow, config)
    for start in after:
        start()
    return result


def _coordinate(workflow: Workflow | Plan, config: EngineConfig,
                after: list[Callable[[], object]]) -> RunResult:
    plan = workflow if isinstance(workflow, Plan) else flatten(workflow)
    if config.engine not in BACKENDS:
        raise EngineError(f"unknown engine '{config.engine}' (known: {', '.join(sorted(BACKENDS))})")
    analysis = analyse(plan)
    wait_for_recording()  # an earlier run's history thread ends before workers are forked
    config.options.isolate = config.options.isolate or config.isolate
    forced = _forced(plan, config)
    with _writable_run_folder(config):
        run, info = _open_run(plan, config)
    with _writable_run_folder(config, run):
        decision, values = (plan_resume(plan, run, set(_output_ids(plan)), forced) if config.resume
                            else (Decision(), {}))
        record_force(run, plan, forced)  # a later resume reruns them too, until they have run
        info["reused"] = len(decision.reuse)
        run.write_info(info)
        run.save_plan(plan)
    try:
        backend, slots = BACKENDS[config.engine](plan, run, config)
    except BaseException:  # refused before anything ran (resources, engine): leave no trace
        run.unlock()
        run.discard()
        raise
    info["workers"] = len(slots)
    status = "error"
    try:
        with _sigterm_stops():
            core = Core(plan, analysis.priority.tolist(), backend, run, config.options)
            if config.progress is not None:
                core.progress = config.progress(plan.n)
            core.seed(values, decision.hashes, decision.candidates,
                      [i for i, why in decision.reasons.items() if why == "failed"])
            with watching(for_run(run.path, run.journal, config.deadline)) as core.walltime:
                result = core.run()
            status = result.status
            if status == "stalled":
                print(STALLED.format(run=run.path), file=sys.stderr)
    except KeyboardInterrupt as exc:
        status = "stopped"
        raise RunInterrupted(str(run.path)) from exc
    finally:
        backend.shutdown()
        info.update(status=status, finished=time.time())
        run.write_info(info)
        run.unlock()
    if config.history:
        after.append(functools.partial(record_in_background, run.journal, plan.workflow,
                                       config.engine, slots, config.history_path))
    return result


def _open_run(plan: Plan, config: EngineConfig) -> tuple[RunDir, dict[str, Any]]:
    """A new run folder, or (resume) the earlier one, locked, its journal's torn tail cut."""
    info: dict[str, Any] = {"workflow": plan.workflow, "spec": config.spec,
                            "engine": config.engine, "created": time.time(),
                            "host": socket.gethostname(), "argv": sys.argv,
                            "tasks": plan.n, "status": "running"}
    if not config.resume:
        run = RunDir.create(plan.workflow, root=config.runs_root, path=config.run_dir)
        run.lock()
        return run, info
    run = RunDir.open(config.resume)
    run.lock()
    truncate_torn(run.journal)
    old = run.read_info()
    run._prepared = old  # keep what earlier sessions wrote (slurm_job_id...); never discard
    info.update(created=old.get("created", info["created"]), spec=config.spec or old.get("spec"),
                resumes=int(old.get("resumes", 0)) + int(run.journal.exists()), resumed=time.time())
    job, earlier = os.environ.get("SLURM_JOB_ID"), old.get("slurm_job_id")
    if job and job != earlier:  # a continuation job: `hpcflow status` follows it
        info["slurm_job_id"] = job
        if earlier:
            info["slurm_jobs"] = [*old.get("slurm_jobs", []), earlier]
    return run, info


@contextmanager
def _writable_run_folder(config: EngineConfig, run: RunDir | None = None) -> Iterator[None]:
    """A run folder (or runs root) that cannot be written is bad input, said in one line
    before anything ran; a folder this run locked is let go again."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        if run is not None:
            run.unlock()
        fix = ("a resume writes into its run folder: make it writable" if config.resume else
               f"choose another {'--run-dir' if config.run_dir else '--runs-root'} (or make it "
               "writable)")
        raise RunDirError(f"cannot write {exc.filename}: {exc.strerror}; {fix}") from None


def resume_preview(workflow: Workflow | Plan, run_path: str,
                   force: Sequence[str] = ()) -> tuple[Plan, Decision]:
    """What ``--resume RUN --dry-run`` shows: the decision, with nothing locked or run."""
    plan = workflow if isinstance(workflow, Plan) else flatten(workflow)
    forced = frozenset(forced_ids(plan, force))
    decision, _ = plan_resume(plan, RunDir.open(run_path), set(_output_ids(plan)), forced)
    return plan, decision


def _forced(plan: Plan, config: EngineConfig) -> frozenset[int]:
    """The ids ``force`` names, checked before a run folder is touched."""
    if config.force and not config.resume:
        raise SpecError("force names tasks to run again in an earlier run: it needs "
                        "resume=RUN (--resume RUN); a new run runs every task anyway",
                        field="--force")
    return frozenset(forced_ids(plan, config.force))


@contextmanager
def _sigterm_stops() -> Iterator[None]:
    """SIGTERM ends the run like Ctrl-C (journal ``end stopped``, workers stopped), unless
    someone (the MPI session) already handles it, or this is not the main thread."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
