"""The batch script: one function (:func:`render_script`) from one validated record.

:func:`batch_job` gathers what a script needs from the sizing, the profile and the run
(directives in a fixed order, set-up commands as words, the launch as words);
:func:`render_script` turns that record into text through :mod:`.template`. It trusts
nothing it is given: every directive value is matched against its allow-list
(:func:`.safety.check_directive`; a refusal is an :class:`UnsafeValueError` naming the
field) and every word of the body is ``shlex.quote``\\d. The golden files under
``tests/golden/slurm/`` pin the output.
"""

from __future__ import annotations

import re
import string
import sys
from dataclasses import dataclass

from hpcflow.engine.walltime import EXIT_WALLTIME
from hpcflow.model.resources import format_slurm_time
from hpcflow.scheduler.slurm import template
from hpcflow.scheduler.slurm.profile import Profile
from hpcflow.scheduler.slurm.safety import (
    check_directive,
    check_env_name,
    check_path,
    quote_words,
    split_command,
)
from hpcflow.scheduler.slurm.shape import gpu_request, memory_request
from hpcflow.scheduler.slurm.sizing import Sizing

BATCH_FOLDER = "batch"
"""Inside the run folder: the script, Slurm's output files, the sizing, the state cache."""
SCRIPT_NAME = "job.sh"
MAX_CHAIN = 50
"""At most this many continuation jobs follow one another (a run that never progresses
must not resubmit itself for ever)."""


@dataclass(frozen=True)
class BatchJob:
    """Everything a script says, before checking. ``directives``: ``(name, value)`` for
    ``#SBATCH --name=value`` in order; ``setup``: commands as words; ``env``: exported
    variables; ``launch``: the launch command as words."""

    job_name: str
    directives: tuple[tuple[str, str], ...]
    setup: tuple[tuple[str, ...], ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    launch: tuple[str, ...] = ()
    script: str = ""
    """Where the script itself lies (the run's batch folder): a continuation resubmits it."""


def job_name(workflow: str) -> str:
    """A Slurm job name from a workflow name: characters outside ``A-Za-z0-9_.+-``
    become ``_``; at most 64 characters."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", workflow)[:64] or "hpcflow"


def batch_job(sizing: Sizing, profile: Profile, *, workflow: str, run_dir: str, spec: str,
              account: str | None = None, qos: str | None = None, constraint: str | None = None,
              engine: str | None = None, python: str | None = None) -> BatchJob:
    """The record for one workflow run in ``run_dir`` (an absolute path)."""
    check_path(run_dir, "run folder")
    shape, defaults = sizing.shape, profile.defaults
    directives: list[tuple[str, object | None]] = [
        ("job-name", job_name(workflow)),
        ("partition", sizing.partition.name),
        ("account", account or defaults.account),
        ("qos", qos or defaults.qos),
        ("constraint", constraint or defaults.constraint),
        ("nodes", shape.nodes),
        ("ntasks-per-node", shape.ntasks_per_node),
        ("cpus-per-task", shape.cpus_per_task),
        _memory_directive(sizing, profile),
        gpu_request(shape, profile.gpus) or ("gpus", None),
        ("time", format_slurm_time(sizing.time) if sizing.time else None),
        ("signal", f"B:USR1@{_grace(sizing.time, profile)}" if sizing.time else None),
        ("output", f"{run_dir}/{BATCH_FOLDER}/slurm-%j.out"),
        ("error", f"{run_dir}/{BATCH_FOLDER}/slurm-%j.err"),
    ]
    setup = tuple(split_command(line, f"defaults.setup[{k}]") for k, line in enumerate(defaults.setup))
    return BatchJob(
        job_name=job_name(workflow),
        directives=tuple((n, str(v)) for n, v in directives if v is not None),
        setup=setup, env=tuple(defaults.env.items()),
        launch=_launch(sizing, profile, engine or profile.engine, python, run_dir, spec),
        script=f"{run_dir}/{BATCH_FOLDER}/{SCRIPT_NAME}")


def render_script(job: BatchJob) -> str:
    """The batch script of ``job``: directive values checked, body words quoted."""
    lines = [f"#SBATCH --{name}={check_directive(name, value)}" for name, value in job.directives]
    names = [name for name, _ in job.directives]
    for required in ("job-name", "nodes", "ntasks-per-node", "output", "error"):
        if required not in names:
            raise ValueError(f"a batch job needs --{required}")
    setup = [quote_words(words) for words in job.setup]
    setup += [f"export {check_env_name(k, f'defaults.env.{k}')}={quote_words([v])}"
              for k, v in job.env]
    if not job.launch:
        raise ValueError("a batch job needs a launch command")
    return string.Template(template.SCRIPT).substitute(
        directives="\n".join(lines),
        job_name=check_directive("job-name", job.job_name),
        setup="\n".join(setup) if setup else template.NO_SETUP,
        launch=quote_words(job.launch), script=quote_words([job.script or "$0"]),
        walltime_code=str(EXIT_WALLTIME), max_chain=str(MAX_CHAIN))


def _memory_directive(sizing: Sizing, profile: Profile) -> tuple[str, str]:
    name, megabytes = memory_request(sizing.shape, profile.memory)
    return name, f"{megabytes}M"


def _grace(time: float, profile: Profile) -> int:
    """USR1 this many seconds before the end: the profile's grace, at most half the job."""
    return max(10, min(profile.signal_grace, int(time // 2)))


def _launch(sizing: Sizing, profile: Profile, engine: str, python: str | None, run_dir: str,
            spec: str) -> tuple[str, ...]:
    """The launch as words: the engine under srun or mpiexec, or the local engine alone."""
    shape = sizing.shape
    command = [python or profile.python or sys.executable, "-m", "hpcflow", "run",
               "--engine", engine]
    # --resume: the first job starts the folder `hpcflow submit` prepared, a continuation
    # job goes on with it (the same words serve both)
    if engine == "local":
        return (*command, "--workers", str(shape.workers), "--resume", run_dir, spec)
    command += ["--resume", run_dir, spec]
    if profile.launcher == "mpiexec":
        return (profile.mpiexec, "-n", str(shape.nodes * shape.ntasks_per_node), *command)
    mpi = [f"--mpi={profile.srun_mpi}"] if profile.srun_mpi else []
    return ("srun", *mpi, "--cpu-bind=none", *command)
