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

import posixpath
import re
import string
import sys
from dataclasses import dataclass

from hpcflow.engine.walltime import EXIT_WALLTIME, MARKER_NAME
from hpcflow.errors import EngineError
from hpcflow.model.resources import format_slurm_time
from hpcflow.scheduler.slurm import frameworks, template
from hpcflow.scheduler.slurm.frameworks import Framework
from hpcflow.scheduler.slurm.profile import Profile
from hpcflow.scheduler.slurm.safety import (
    Var,
    Word,
    check_directive,
    check_env_name,
    check_path,
    quote_word,
    quote_words,
    split_command,
)
from hpcflow.scheduler.slurm.shape import allocation_slots, gpu_request, memory_request
from hpcflow.scheduler.slurm.sizing import Sizing

BATCH_FOLDER = "batch"
"""Inside the run folder: the script, Slurm's output files, the sizing, the state cache."""
SCRIPT_NAME = "job.sh"
NEXT_NAME = "next.{job}"
"""In the batch folder: the id of the continuation job that job ``job`` submitted."""
MAX_CHAIN = 50
"""At most this many continuation jobs follow one another (a run that never progresses
must not resubmit itself for ever)."""


@dataclass(frozen=True)
class BatchJob:
    """Everything a script says, before checking. ``directives``: ``(name, value)`` for
    ``#SBATCH --name=value`` in order; ``setup``: commands as words; ``env``: exported
    variables; ``launch``: the launch command as words; ``cluster``: the Dask or Ray
    cluster started before the launch and stopped after it (:mod:`.frameworks`)."""

    job_name: str
    directives: tuple[tuple[str, str], ...]
    setup: tuple[tuple[str, ...], ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    launch: tuple[Word, ...] = ()
    script: str = ""
    """Where the script itself lies (the run's batch folder): a continuation resubmits it."""
    cluster: Framework | None = None


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
        ("signal", f"B:USR1@{_grace(sizing)}" if sizing.time else None),
        ("output", f"{run_dir}/{BATCH_FOLDER}/slurm-%j.out"),
        ("error", f"{run_dir}/{BATCH_FOLDER}/slurm-%j.err"),
    ]
    setup = tuple(split_command(line, f"defaults.setup[{k}]") for k, line in enumerate(defaults.setup))
    engine = engine or profile.engine
    python = python or profile.python or sys.executable
    cluster = None
    if engine in frameworks.ENGINES:
        slots = allocation_slots(shape, sizing.partition, profile.memory)
        cluster = frameworks.framework(engine, shape, slots, python=python, run_dir=run_dir,
                                       timeout=profile.cluster_start_timeout,
                                       gpu_style=profile.gpus)
        launch = frameworks.launch(engine, python, run_dir, spec)
    else:
        launch = _launch(sizing, profile, engine, python, run_dir, spec)
    return BatchJob(
        job_name=job_name(workflow),
        directives=tuple((n, str(v)) for n, v in directives if v is not None),
        setup=setup, env=tuple(defaults.env.items()), launch=launch,
        script=f"{run_dir}/{BATCH_FOLDER}/{SCRIPT_NAME}", cluster=cluster)


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
    start, stop = _cluster_text(job.cluster) if job.cluster else ("", "")
    job_var = "${SLURM_JOB_ID}"
    return string.Template(template.SCRIPT).substitute(
        directives="\n".join(lines),
        job_name=check_directive("job-name", job.job_name),
        setup="\n".join(setup) if setup else template.NO_SETUP,
        launch=quote_words(job.launch), script=quote_words([job.script or "$0"]),
        batch=quote_word(posixpath.dirname(job.script) or "."),
        marker_name=MARKER_NAME.format(job=job_var), next_name=NEXT_NAME.format(job=job_var),
        walltime_code=str(EXIT_WALLTIME), max_chain=str(MAX_CHAIN),
        cluster_start=start, cluster_stop=stop)


def _cluster_text(cluster: Framework) -> tuple[str, str]:
    """The lines that start ``cluster`` (before the launch) and stop it (after the run)."""
    parts = cluster.parts
    pids = [quote_word(Var(p.pid)) for p in parts]
    start = [template.RAY_TOKEN] if cluster.engine == "ray" else []
    start += [" ".join(f"{check_env_name(p.pid, 'pid variable')}=" for p in parts)]
    start += [f"{check_env_name(name, 'variable')}={quote_word(value)}"
              for name, value in cluster.variables]
    start += [f"rm -rf -- {quote_words(cluster.fresh)}"] if cluster.fresh else []

    def background(part: frameworks.Part) -> list[str]:
        log = f" >{quote_word(part.log)} 2>&1" if part.log is not None else ""
        return [f"{quote_words(part.words)}{log} &", f"{part.pid}=$!"]

    def wait(words: tuple[Word, ...]) -> str:
        return f"address=$({quote_words(words)}) || cluster_failed"

    start += background(cluster.head)
    start += [wait(cluster.head_wait)] if cluster.head_wait else []
    for part in cluster.workers:
        start += background(part)
    start += [wait(cluster.wait)] if cluster.wait else []
    fields = {"engine": cluster.engine, "timeout": str(cluster.timeout),
              "engine_code": str(EngineError.exit_code)}
    about = string.Template(template.DASK_ABOUT if cluster.engine == "dask" else
                            template.RAY_ABOUT).substitute(fields)
    start_text = string.Template(template.CLUSTER_START).substitute(
        fields, about=about, stop_grace=str(template.STOP_GRACE), all_pids=" ".join(reversed(pids)),
        start="\n".join(start))
    if cluster.stop:  # the cluster stops itself; what is left then gets TERM, then KILL
        every = " ".join((*pids[1:], pids[0]))
        stop = [quote_words(cluster.stop),
                f"gone {template.STOP_GRACE} {every} || stop_cluster {every}"]
    else:  # TERM to the other nodes' parts (their steps' tasks), then to the head
        stop = [f"term_steps {quote_word(step)}" for step in dict.fromkeys(
            p.step for p in cluster.workers if p.step)]
        if cluster.workers:
            workers = " ".join(pids[1:])
            stop += [f"gone {template.STOP_GRACE} {workers} || stop_cluster {workers}"]
        stop += [f"stop_cluster {pids[0]}"]
    stop += [quote_words(words) for words in cluster.cleanup]
    stop_text = string.Template(template.CLUSTER_STOP).substitute(
        fields, stop="\n".join(stop))
    return start_text, stop_text


def _memory_directive(sizing: Sizing, profile: Profile) -> tuple[str, str]:
    name, megabytes = memory_request(sizing.shape, profile.memory)
    return name, f"{megabytes}M"


def _grace(sizing: Sizing) -> int:
    """USR1 this many seconds before the end: the sizing's lead, at most half the job."""
    return max(10, min(sizing.signal_lead, int((sizing.time or 0) // 2)))


def _launch(sizing: Sizing, profile: Profile, engine: str, python: str, run_dir: str,
            spec: str) -> tuple[str, ...]:
    """The launch as words: the engine under srun or mpiexec, or the local engine alone."""
    shape = sizing.shape
    command = [python, "-m", "hpcflow", "run", "--engine", engine]
    # --resume: the first job starts the folder `hpcflow submit` prepared, a continuation
    # job goes on with it (the same words serve both)
    if engine == "local":
        return (*command, "--workers", str(shape.workers), "--resume", run_dir, spec)
    command += ["--resume", run_dir, spec]
    if profile.launcher == "mpiexec":
        return (profile.mpiexec, "-n", str(shape.nodes * shape.ntasks_per_node), *command)
    mpi = [f"--mpi={profile.srun_mpi}"] if profile.srun_mpi else []
    return ("srun", *mpi, "--cpu-bind=none", *command)
