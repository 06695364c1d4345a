"""Starting MPI processes: the engine itself, and the ranks of a multi-rank shell task.

*The engine.* ``hpcflow run --engine mpi --workers K`` started without ``mpiexec``
re-executes itself as ``mpiexec -n K+1 python -m hpcflow run ...`` (:func:`relaunch`).
Dynamic process spawning (``MPI_Comm_spawn``) is never used: it is fragile with the
MPICH wheel and does not work under Slurm's PMI2. The child runs in its own session, and
SIGINT/SIGTERM/SIGHUP received by the parent are passed on to it once (``mpiexec``
forwards them to every rank, and the engine stops cleanly); a Ctrl-C at a terminal
thus reaches ``mpiexec`` once, not twice (a second one makes Hydra abort).

*Shell tasks with* ``ranks: k``. The task's leader rank starts the program with a
launcher prefix (:func:`task_launcher`):

- outside Slurm, ``mpiexec -n k`` (Hydra nested inside an ``mpiexec``'d rank works with
  nothing removed from the environment);
- inside an allocation, ``srun --overlap --mem=0 -N 1 -n k --nodelist=$SLURMD_NODENAME
  --cpu-bind=none``: a plain nested ``srun`` or ``mpiexec`` waits forever for CPUs the
  outer step holds; ``--overlap`` shares them, ``--mem=0`` stops a per-CPU memory request
  from counting memory the outer step holds, ``-N 1 --nodelist`` keeps every rank on the
  leader's node (where the engine reserved the slots) and ``--cpu-bind=none`` lifts the
  outer step's binding (see the project's notes on nested launches);
- ``HPCFLOW_LAUNCHER`` replaces either (``{ranks}`` is the rank count).

Give multi-rank shell tasks a ``timeout``: a launcher that cannot start its ranks may
wait without a word, and the task's timeout ends it with its whole process tree.

*Plain children.* After ``MPI_Init`` a worker removes ``PMI_FD`` and ``PMI_PORT`` from
its environment (:func:`forget_pmi`): a single-process MPI program started by a shell
task would otherwise try to talk to the worker's own process manager and fail.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, MutableMapping, Sequence

from hpcflow.engine.mpi.settings import Settings
from hpcflow.errors import EngineError

RELAUNCHED = "HPCFLOW_RELAUNCHED"
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def relaunch_command(argv: Sequence[str], workers: int, settings: Settings | None = None) -> list[str]:
    """``mpiexec -n workers+1 python -m hpcflow <argv[1:]>``; ``argv`` is ``sys.argv``."""
    if workers < 1:
        raise EngineError(f"--workers must be at least 1 for the MPI engine, got {workers}")
    mpiexec = (settings or Settings.from_env()).mpiexec_path()
    return [mpiexec, "-n", str(workers + 1), sys.executable, "-m", "hpcflow", *argv[1:]]


def relaunch(argv: Sequence[str], workers: int, timeout: float | None = None) -> int:
    """Run the CLI command ``argv`` (``sys.argv``) again under ``mpiexec`` with one
    coordinator and ``workers`` worker ranks; return its exit status (128+N if
    ``mpiexec`` died of signal N)."""
    if os.environ.get(RELAUNCHED):
        raise EngineError("relaunched under mpiexec, yet MPI sees a single rank: mpi4py is "
                          "probably built against another MPI than this mpiexec "
                          "(set HPCFLOW_MPIEXEC to the matching one)")
    command = relaunch_command(argv, workers)
    proc = subprocess.Popen(command, env=dict(os.environ, **{RELAUNCHED: "1"}),
                            start_new_session=True)
    previous = {}
    sent: set[int] = set()

    def forward(signum: int, _frame: object) -> None:
        if signum not in sent:  # once: a second signal makes Hydra abort at once
            sent.add(signum)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

    with contextlib.suppress(ValueError):  # not the main thread: nothing to forward
        for signum in _FORWARDED:
            previous[signum] = signal.signal(signum, forward)
    try:
        code = proc.wait(timeout=timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        proc.wait()
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 128 - code if code < 0 else code


def in_allocation(env: Mapping[str, str]) -> bool:
    """True inside a Slurm job step on a node (where a nested launch needs the recipe)."""
    return bool(env.get("SLURM_JOB_ID") and env.get("SLURMD_NODENAME"))


def task_launcher(settings: Settings, env: Mapping[str, str] | None = None
                  ) -> Callable[[int], list[str]]:
    """The prefix that starts ``ranks`` processes of a shell task on this node."""
    env = os.environ if env is None else env
    if settings.launcher:
        words = shlex.split(settings.launcher)
        return lambda ranks: [w.replace("{ranks}", str(ranks)) for w in words]
    if in_allocation(env) and shutil.which("srun"):
        node = env["SLURMD_NODENAME"]
        return lambda ranks: ["srun", "--overlap", "--mem=0", "-N", "1", "-n", str(ranks),
                              f"--nodelist={node}", "--cpu-bind=none"]
    return lambda ranks: [settings.mpiexec_path(), "-n", str(ranks)]


def forget_pmi(env: MutableMapping[str, str]) -> None:
    """Drop the variables through which a child would reach this rank's process manager."""
    for name in ("PMI_FD", "PMI_PORT"):
        env.pop(name, None)
