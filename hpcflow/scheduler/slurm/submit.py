"""Submitting a workflow run as one batch job, and checking the request first.

:func:`submit` makes the run folder (private, 0700), writes the script and the sizing
into ``<run>/batch/`` and ``run.json`` with status ``submitted``, asks Slurm whether it
would accept the request (``sbatch --test-only``, when the profile says so), then
submits with ``sbatch --parsable --hold``, records the job id in ``run.json`` and only
then releases the job (``scontrol release``). The hold closes a race: a job that started
before its id was recorded would copy a ``run.json`` without it (the engine keeps what
``submit`` wrote; ``RunDir.create`` accepts a folder in state ``submitted``). Anything
refused before ``sbatch`` removes the run folder again: nothing is submitted and
nothing is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from hpcflow.errors import RunDirError
from hpcflow.plan.plan import Plan
from hpcflow.report.status import lock_held
from hpcflow.scheduler.slurm._cmd import Runner, run_slurm, said, sbatch_env
from hpcflow.scheduler.slurm.errors import SlurmError, SlurmRejected
from hpcflow.scheduler.slurm.follow import job_state
from hpcflow.scheduler.slurm.profile import Profile
from hpcflow.scheduler.slurm.script import BATCH_FOLDER, SCRIPT_NAME, batch_job, render_script
from hpcflow.scheduler.slurm.sizing import Sizing
from hpcflow.scheduler.slurm.view import sizing_json
from hpcflow.store import rundir
from hpcflow.store.resume import forced_ids, record_force
from hpcflow.store.rundir import RunDir, write_atomic

_JOB_ID = re.compile(r"^(\d+)(;\S+)?$")


@dataclass(frozen=True)
class Request:
    """What the user asked for beyond the sizing: the spec to run and directive options."""

    spec: str
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    engine: str | None = None
    python: str | None = None
    test_only: bool = True


@dataclass(frozen=True)
class Submitted:
    job_id: str
    run_dir: str
    script: str
    checked: str | None  # what sbatch --test-only said, None if not asked


def script_for(plan: Plan, sizing: Sizing, profile: Profile, request: Request, run_dir: str) -> str:
    """The batch script for running ``plan`` in ``run_dir``."""
    job = batch_job(sizing, profile, workflow=plan.workflow, run_dir=run_dir, spec=request.spec,
                    account=request.account, qos=request.qos, constraint=request.constraint,
                    engine=request.engine, python=request.python)
    return render_script(job)


def test_only(script: str | os.PathLike[str], run: Runner | None = None) -> str:
    """Ask Slurm whether it would run ``script`` (``sbatch --test-only``): its answer, or
    :class:`SlurmRejected` with Slurm's message."""
    run = run or partial(run_slurm, env=sbatch_env())
    done = run(["sbatch", "--test-only", str(script)])
    answer = said(done)
    if done.returncode != 0:
        raise SlurmRejected(f"Slurm would not accept this request (sbatch --test-only): "
                            f"{answer}; nothing was submitted", output=said(done))
    return answer


def dry_run(plan: Plan, sizing: Sizing, profile: Profile, request: Request, run_dir: str,
            run: Runner | None = None) -> tuple[str, str | None]:
    """The script ``submit`` would write, and what ``sbatch --test-only`` says of it (None
    when not asked or Slurm is not here). Creates nothing but a temporary file."""
    text = script_for(plan, sizing, profile, request, run_dir)
    if not (request.test_only and profile.test_only) or (run is None and not shutil.which("sbatch")):
        return text, None
    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="hpcflow-") as fh:
        fh.write(text)
        fh.flush()
        return text, test_only(fh.name, run)


def submit(plan: Plan, sizing: Sizing, profile: Profile, request: Request, *,
           runs_root: str | None = None, run_dir: str | None = None, run: Runner | None = None,
           argv: Sequence[str] | None = None) -> Submitted:
    """Prepare the run folder, check, submit held, record the job id, release."""
    run = run or partial(run_slurm, env=sbatch_env())
    folder = RunDir.create(plan.workflow, root=runs_root, path=run_dir)
    with _removed_on_error(folder.path):
        (folder.path / BATCH_FOLDER).mkdir(mode=0o700)
        info = _run_info(plan, sizing, request.spec, request.engine or profile.engine, folder.path,
                         argv)
        folder.write_info(info)
        script_path, checked, job_id = _held_job(folder, plan, sizing, profile, request, run)
    return _released(folder, info, job_id, script_path, checked, run)


def resubmit(plan: Plan, sizing: Sizing, profile: Profile, request: Request, run_path: str, *,
             force: Sequence[str] = (), run: Runner | None = None,
             argv: Sequence[str] | None = None) -> Submitted:
    """A new batch job that continues the run in ``run_path`` (``submit --resume``): its
    finished, unchanged tasks are reused, as by ``run --resume``. Refused while the run's
    coordinator lives or its last job is not over; the folder is never removed, and its
    run.json changes only once Slurm has taken the job. ``force`` names tasks to run
    again (as ``run --resume --force``), journalled while the job is held."""
    run = run or partial(run_slurm, env=sbatch_env())
    forced = forced_ids(plan, force) if force else set()
    folder = RunDir.open(run_path)
    old = folder.read_info()
    _check_idle(folder, old, run)
    batch = folder.path / BATCH_FOLDER
    batch.mkdir(mode=0o700, exist_ok=True)
    earlier = list(old.get("slurm_jobs", []))  # every job that worked on this run before
    if old.get("slurm_job_id"):
        earlier.append(old["slurm_job_id"])
        if (batch / SCRIPT_NAME).is_file():  # what those jobs ran: kept beside the new one
            shutil.copy2(batch / SCRIPT_NAME, batch / f"job-{old['slurm_job_id']}.sh")
    info = {**old, **_run_info(plan, sizing, request.spec, request.engine or profile.engine,
                               folder.path, argv),
            "created": old.get("created", time.time()), "slurm_jobs": earlier}
    script_path, checked, job_id = _held_job(folder, plan, sizing, profile, request, run)
    if forced:  # the job is held: nobody else writes the journal now
        folder.lock()
        try:
            record_force(folder, plan, forced)
        finally:
            folder.unlock()
    return _released(folder, info, job_id, script_path, checked, run)


def _check_idle(folder: RunDir, info: dict[str, Any], run: Runner) -> None:
    """Refuse to add a job to a run whose coordinator lives or whose last job is not over
    (a job Slurm no longer knows, ``UNKNOWN`` without an error, is long over)."""
    if lock_held(folder.path):
        raise RunDirError(f"{folder.path} is in use by a live run; wait for it, or stop it")
    if not info.get("slurm_job_id"):
        return
    state = job_state(info, min_interval=0, run=run)
    forgotten = state.get("state") == "UNKNOWN" and not state.get("error")
    if state and not state.get("final") and not forgotten:
        raise SlurmError(f"job {info['slurm_job_id']} of {folder.path} is still "
                         f"{state.get('state')}: wait for it, or cancel it (hpcflow cancel "
                         f"{folder.path}), then submit again; nothing was submitted")


def _held_job(folder: RunDir, plan: Plan, sizing: Sizing, profile: Profile, request: Request,
              run: Runner) -> tuple[Path, str | None, str]:
    """Write the script and sizing into ``batch/``, check, submit on hold."""
    script_path = folder.path / BATCH_FOLDER / SCRIPT_NAME
    write_atomic(script_path, script_for(plan, sizing, profile, request, str(folder.path)).encode())
    script_path.chmod(0o700)
    write_atomic(folder.path / BATCH_FOLDER / "sizing.json",
                 json.dumps(sizing_json(sizing), indent=2).encode())
    checked = test_only(script_path, run) if request.test_only and profile.test_only else None
    return script_path, checked, _sbatch(script_path, run)


def _released(folder: RunDir, info: dict[str, Any], job_id: str, script_path: Path,
              checked: str | None, run: Runner) -> Submitted:
    """Record the held job's id in run.json, then let it start."""
    info["slurm_job_id"] = job_id
    folder.write_info(info)
    done = run(["scontrol", "release", job_id])
    if done.returncode != 0:
        raise SlurmError(f"job {job_id} was submitted on hold but could not be released: "
                         f"{said(done)}; release it with: scontrol release {job_id}")
    return Submitted(job_id, str(folder.path), str(script_path), checked)


def _sbatch(script: Path, run: Runner) -> str:
    done = run(["sbatch", "--parsable", "--hold", str(script)])
    match = _JOB_ID.match(done.stdout.strip()) if done.returncode == 0 else None
    if match is None:
        raise SlurmRejected(f"sbatch refused the job: {said(done) or 'no job id'}; nothing was "
                            "submitted", output=said(done))
    return match.group(1)


def _run_info(plan: Plan, sizing: Sizing, spec: str, engine: str, path: Path,
              argv: Sequence[str] | None) -> dict[str, Any]:
    shape = sizing.shape
    return {"workflow": plan.workflow, "spec": spec, "engine": engine,
            "created": time.time(), "host": socket.gethostname(),
            "argv": list(argv if argv is not None else sys.argv), "tasks": plan.n,
            "status": "submitted", "run_dir": str(path),
            "slurm": {"partition": sizing.partition.name, **asdict(shape),
                      "time": sizing.time, "script": str(path / BATCH_FOLDER / SCRIPT_NAME)}}


@contextlib.contextmanager
def _removed_on_error(path: Path) -> Any:
    """Remove the run folder we just made if anything before the submission fails."""
    try:
        yield
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise


def planned_run_dir(workflow: str, runs_root: str | None, run_dir: str | None) -> str:
    """Where a run folder would be made (for --dry-run, which makes none)."""
    if run_dir:
        return str(Path(run_dir).resolve())
    root = rundir.runs_root(runs_root).resolve()
    return str(root / f"{workflow}-{time.strftime('%Y%m%d-%H%M%S')}-1")

