"""Following a submitted run's batch job politely: its state, and cancelling it.

:func:`job_state` answers "what is Slurm doing with this run's job" for ``hpcflow
status`` (and tests). The job is the latest of the run's chain (:func:`chain`): run.json
names the jobs that ran it (``slurm_jobs``, then ``slurm_job_id``: the engine records a
continuation job when it starts), and each job that submitted a continuation left its id
in ``batch/next.<job>`` (the batch script writes it, and removes it when it cancels that
job), so a continuation still pending is followed too. Politeness is a budget of one
Slurm query per :data:`POLL_INTERVAL` (10 s) per run, kept across processes: the last
answer is cached in ``<run>/batch/state.json`` and returned while it is fresh, so a user
running ``watch hpcflow status RUN`` does not hammer the controller. A job in a final
state (COMPLETED, FAILED, ...) is never asked about again.

Where the answer comes from, in order: ``sacct`` (accounting knows pending, running and
finished jobs in one call); if accounting is off (remembered in the cache, so it is
tried once) or has not recorded the job yet, ``squeue --states=all``; if the job has
left the controller too, ``scontrol show job``; else the state is ``UNKNOWN``. Slurm
being unreachable is an answer too (``UNKNOWN`` with ``error``): status never fails
because of it.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpcflow.scheduler.slurm._cmd import Runner, run_slurm, said
from hpcflow.scheduler.slurm.errors import SlurmError
from hpcflow.scheduler.slurm.script import BATCH_FOLDER, NEXT_NAME
from hpcflow.store.rundir import write_atomic

POLL_INTERVAL = 10.0
"""At most one Slurm query per this many seconds per run (docs: "polite")."""

FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY",
                          "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "REVOKED"})
_SACCT_FIELDS = "JobID,State,ExitCode,Elapsed,NNodes,AllocTRES,NodeList,Reason"
_CACHE = "state.json"
_MAX_CHAIN = 1000


def job_state(run_info: Mapping[str, Any], *, min_interval: float = POLL_INTERVAL,
              run: Runner = run_slurm, now: float | None = None) -> dict[str, Any]:
    """The Slurm state of the run's job, as a dict (empty if run.json names no job).

    Keys: ``job_id``, ``state`` (Slurm's word: PENDING, RUNNING, COMPLETED, ... or
    UNKNOWN), ``final`` (the state will not change), ``reason`` (why pending, or None),
    ``exit_code``, ``elapsed``, ``nodes``, ``node_list``, ``tres`` (allocated, where
    known), ``source`` (sacct, squeue or scontrol), ``checked`` (epoch seconds of the
    query), ``cached`` (True when this is an earlier answer), ``error`` (when Slurm could
    not be asked), ``chain`` (the run's jobs, this one last)."""
    jobs = chain(run_info)
    if not jobs:
        return {}
    job = jobs[-1]
    now = time.time() if now is None else now
    cache_path = _cache_path(run_info)
    cached = _read_cache(cache_path, job)
    if cached and (cached.get("final") or now - float(cached.get("checked", 0)) < min_interval):
        return {**cached, "cached": True, "chain": jobs}
    accounting = bool(cached.get("accounting", True)) if cached else True
    try:
        answer, accounting = _query(job, run, accounting)
    except SlurmError as exc:
        answer = {"state": "UNKNOWN", "error": str(exc)}
    result = {"job_id": job, "reason": None, "exit_code": None, "elapsed": None, "nodes": None,
              "node_list": None, "tres": None, "source": None, "error": None, **answer,
              "checked": now, "cached": False, "accounting": accounting}
    result["final"] = result["state"] in FINAL_STATES
    _write_cache(cache_path, result)
    return {**result, "chain": jobs}


def chain(run_info: Mapping[str, Any]) -> list[str]:
    """The run's batch jobs, first to latest (see the module docstring); empty if none."""
    jobs = [str(j) for j in run_info.get("slurm_jobs", [])]
    if run_info.get("slurm_job_id"):
        jobs.append(str(run_info["slurm_job_id"]))
    folder = run_info.get("run_dir")
    while jobs and folder and len(jobs) < _MAX_CHAIN:
        try:
            following = (Path(folder) / BATCH_FOLDER / NEXT_NAME.format(job=jobs[-1])).read_text()
        except OSError:
            break
        if not following.strip().isdigit() or following.strip() in jobs:
            break
        jobs.append(following.strip())
    return jobs


def describe(state: Mapping[str, Any]) -> str:
    """One line for people, e.g. ``Slurm job 12: RUNNING on 2 node(s) n[1-2], 00:01:10
    (squeue)``; empty for a run without a job."""
    if not state:
        return ""
    parts = [f"Slurm job {state.get('job_id')}: {state.get('state')}"]
    if state.get("reason"):
        parts.append(f"({state['reason']})")
    if state.get("nodes"):
        parts.append(f"on {state['nodes']} node(s) {state.get('node_list') or ''}".rstrip())
    if state.get("elapsed"):
        parts.append(f"after {state['elapsed']}")
    if state.get("exit_code") and state.get("final"):
        parts.append(f"exit {state['exit_code']}")
    jobs = state.get("chain") or []
    if len(jobs) > 1:
        parts.append(f"(job {len(jobs)} of its chain: {', '.join(jobs)})")
    text = " ".join(parts) + (f" [{state['source']}]" if state.get("source") else "")
    return f"{text}; {state['error']}" if state.get("error") else text


def cancel_job(run_info: Mapping[str, Any], run: Runner = run_slurm) -> str:
    """Cancel the run's job and the continuation it submitted, if any (``scancel``: a
    finished one is passed over); what Slurm said, or a SlurmError."""
    job = str(run_info.get("slurm_job_id") or "")
    if not job:
        raise SlurmError("this run was not submitted to Slurm (run.json has no slurm_job_id)")
    jobs = chain(run_info)
    jobs = jobs[jobs.index(job):]
    done = run(["scancel", *jobs])
    if done.returncode != 0:
        raise SlurmError(f"scancel {' '.join(jobs)} failed: {said(done)}",
                         command=["scancel", *jobs], output=said(done))
    path = _cache_path(run_info)
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink()
    return said(done) or f"cancel requested for job {', '.join(jobs)}"


def _query(job: str, run: Runner, accounting: bool) -> tuple[dict[str, Any], bool]:
    """One answer: sacct, else squeue, else scontrol (see the module docstring)."""
    if accounting:
        done = run(["sacct", "-j", job, "-X", "-n", "-P", f"--format={_SACCT_FIELDS}"])
        text = said(done)
        if done.returncode != 0 or "accounting storage is disabled" in text.lower():
            accounting = False
        else:
            rows = [line.split("|") for line in done.stdout.splitlines() if line.strip()]
            rows = [r for r in rows if len(r) == 8 and r[0] == job]
            if rows:
                r = rows[-1]
                return {"state": r[1].split()[0], "exit_code": r[2], "elapsed": r[3],
                        "nodes": _int(r[4]), "tres": r[5] or None, "node_list": r[6] or None,
                        "reason": None if r[7] in ("None", "") else r[7],
                        "source": "sacct"}, accounting
    done = run(["squeue", "-h", "-j", job, "--states=all", "-o", "%i|%T|%r|%M|%D|%N"])
    rows = [line.split("|") for line in done.stdout.splitlines() if line.startswith(f"{job}|")]
    if done.returncode == 0 and rows:
        r = rows[0]
        return {"state": r[1], "reason": None if r[2] in ("None", "") else r[2], "elapsed": r[3],
                "nodes": _int(r[4]), "node_list": r[5] or None, "source": "squeue"}, accounting
    return _scontrol(job, run), accounting


def _scontrol(job: str, run: Runner) -> dict[str, Any]:
    done = run(["scontrol", "show", "job", "-o", job])
    fields = dict(w.split("=", 1) for w in done.stdout.split() if "=" in w)
    if done.returncode != 0 or "JobState" not in fields:
        return {"state": "UNKNOWN", "source": "scontrol",
                "error": f"Slurm no longer knows job {job} ({said(done) or 'no answer'}) and "
                         "accounting (sacct) is not available"}
    return {"state": fields["JobState"], "reason": None if fields.get("Reason") == "None"
            else fields.get("Reason"), "exit_code": fields.get("ExitCode"),
            "elapsed": fields.get("RunTime"), "nodes": _int(fields.get("NumNodes", "")),
            "node_list": fields.get("NodeList"), "tres": fields.get("TRES"), "source": "scontrol"}


def _int(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _cache_path(run_info: Mapping[str, Any]) -> Path | None:
    folder = run_info.get("run_dir")
    return Path(folder) / BATCH_FOLDER / _CACHE if folder else None


def _read_cache(path: Path | None, job: str) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("job_id") == job else None


def _write_cache(path: Path | None, result: Mapping[str, Any]) -> None:
    if path is None or not path.parent.is_dir():
        return
    with contextlib.suppress(OSError):
        write_atomic(path, json.dumps(dict(result)).encode())
