"""The allocation's end, without Slurm: no task starts that cannot fit, the signal is a
warning where the end is known (and drains where it is not), exit code 75, stopped tasks
rerun on resume, a chain that makes no progress stalls. The same on the real Slurm:
tests/test_slurm_walltime.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import hpcflow as hf
from hpcflow.engine import walltime
from hpcflow.report.status import run_status, status_text
from hpcflow.store.journal import Event, read_journal

pytestmark = pytest.mark.timeout(120)

TASKS = """
import os, time
from pathlib import Path
import hpcflow as hf

def nap(x, seconds):
    with open(Path(os.environ["HF_WT_LOG"]) / f"nap-{x}", "a") as fh:
        fh.write("x\\n")
    time.sleep(seconds)
    return x

def build(n, seconds, estimate=None):
    extra = {"time": estimate} if estimate else {}
    naps = hf.task(nap, name="nap", **extra).sweep({"x": range(n)}, seconds=seconds)
    return hf.workflow("naps", outputs={"all": naps.all()})
"""


@pytest.fixture
def naps(tmp_path, monkeypatch):
    log = tmp_path / "log"
    log.mkdir()
    monkeypatch.setenv("HF_WT_LOG", str(log))
    module = tmp_path / "naps.py"
    module.write_text(TASKS)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    import naps as mod  # type: ignore[import-not-found]

    importlib.reload(mod)
    return mod, log


def _counts(log: Path) -> dict[str, int]:
    return {p.name: len(p.read_text().splitlines()) for p in log.iterdir()}


def _kinds(run: str) -> list[str]:
    return [e[0] for e in read_journal(Path(run) / "journal.bin")]


def test_allocation_end_sources(monkeypatch):
    assert walltime.allocation_end(60, env={}) == pytest.approx(time.time() + 60, abs=1)
    assert walltime.allocation_end(None, env={"SLURM_JOB_END_TIME": "1900000000"}) == 1.9e9
    assert walltime.allocation_end(None, env={}) is None
    monkeypatch.setenv("PATH", "/nonexistent")  # no squeue: no end known, no error
    assert walltime.allocation_end(None, env={"SLURM_JOB_ID": "1"}) is None


def test_tasks_that_cannot_fit_wait_for_the_next_allocation(naps, tmp_path):
    mod, log = naps
    run = str(tmp_path / "run")
    start = time.monotonic()
    first = hf.run(mod.build(30, 0.5, estimate=1), workers=2, run_dir=run,
                   deadline=walltime.GRACE + 10, check=False)
    assert first.status == "walltime" and 0 < first.done < 30
    assert time.monotonic() - start < 10  # drained before the grace time
    again = hf.run(mod.build(30, 0.5, estimate=1), workers=2, resume=run)
    assert again.outputs["all"] == list(range(30))
    assert set(_counts(log).values()) == {1}


def test_past_the_grace_time_running_tasks_are_stopped_and_rerun(naps, tmp_path):
    mod, _log = naps
    run = str(tmp_path / "run")
    start = time.monotonic()
    first = hf.run(mod.build(2, 60, estimate=None), workers=2, run_dir=run,
                   deadline=walltime.GRACE + 3, check=False)
    assert first.status == "walltime" and first.done == 0
    assert time.monotonic() - start < 10
    assert _kinds(run).count(Event.STOPPED) == 2
    plan_text = hf.run(mod.build(2, 0, estimate=None), workers=2, resume=run)
    assert plan_text.outputs["all"] == [0, 1]


def test_usr1_drains_then_exits_75_and_resume_finishes(naps, tmp_path):
    _, log = naps
    run = tmp_path / "run"
    spec = tmp_path / "wf.py"
    spec.write_text("import naps\nwf = naps.build(12, 1.0)\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    argv = [sys.executable, "-m", "hpcflow", "run", f"{spec}:wf", "--workers", "2"]
    proc = subprocess.Popen([*argv, "--run-dir", str(run)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(list(log.iterdir())) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == walltime.EXIT_WALLTIME, out.decode()
    assert "hpcflow run --resume" in out.decode()
    kinds = _kinds(str(run))
    assert Event.STOPPED not in kinds  # running tasks were let finish (grace)
    assert kinds.count(Event.DISPATCH) == kinds.count(Event.DONE) < 12
    done = subprocess.run([*argv, "--resume", str(run)], env=env, capture_output=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    assert set(_counts(log).values()) == {1} and len(_counts(log)) == 12


# -- the rules, one by one ----------------------------------------------------------------

def test_with_an_end_known_the_signal_is_a_warning():
    wt = walltime.Walltime(end=time.time() + walltime.GRACE + 50)
    wt.on_signal(signal.SIGUSR1, None)
    assert not wt.draining and not wt.past_grace()
    assert wt.fits(40) and not wt.fits(50)  # with MARGIN (5 s)
    assert not wt.fits(None)  # after the signal, no estimate is the planner's default (60 s)
    early = walltime.Walltime(end=time.time() + walltime.GRACE + 50)
    assert early.fits(None) and early.fits(40)  # before it, no estimate says nothing


def test_without_an_end_the_signal_drains_and_the_grace_counts_from_it():
    wt = walltime.Walltime()
    assert not wt.draining and wt.fits(1e9)
    wt.on_signal(signal.SIGUSR1, None)
    assert wt.draining and not wt.past_grace()
    wt.signalled_at = time.time() - walltime.GRACE_NO_END
    assert wt.past_grace()


def test_past_the_end_minus_grace_everything_stops():
    wt = walltime.Walltime(end=time.time() + walltime.GRACE - 1)
    assert wt.draining and wt.past_grace() and not wt.fits(0)


def test_the_marker_file_is_the_signal_and_is_looked_at_once_a_second(tmp_path):
    marker = walltime.signal_marker(tmp_path, "17")
    assert marker == tmp_path / walltime.MARKER_FOLDER / "usr1.17"
    wt = walltime.Walltime(end=time.time() + 3600, marker=marker)
    assert not wt.draining and wt.signalled_at is None  # looked: no marker yet
    marker.parent.mkdir()
    marker.write_text("1\n")
    wt.look()
    assert wt.signalled_at is None  # within the second after the last look
    time.sleep(walltime.LOOK_INTERVAL)
    assert not wt.draining  # an end is known: the signal does not drain
    assert wt.signalled_at == marker.stat().st_mtime


def _journal(path: Path, sessions: list[int]) -> None:
    from hpcflow.store.journal import Journal

    with Journal(path) as journal:
        task = 0
        for done in sessions:
            journal.record(Event.RUN, {})
            for _ in range(done):
                journal.record(Event.DISPATCH, task, 0, 0, 0.0)
                journal.record(Event.DONE, task, 0, 0, 0.0, 1.0, ("inline", task), {})
                task += 1
            journal.record(Event.END, "walltime", 1.0)


def test_idle_jobs_counts_the_sessions_at_the_end_that_finished_nothing(tmp_path):
    _journal(tmp_path / "j", [3, 0, 2, 0, 0])
    assert walltime.idle_jobs(tmp_path / "j") == 2
    assert walltime.idle_jobs(tmp_path / "none") == 0


@pytest.mark.parametrize("position,before,stalls", [
    ("2", [1, 0, 0], True),  # the third job of a chain, after two idle ones
    ("2", [0, 0, 1], False),  # the job before made progress
    ("1", [0, 0, 0], False),  # a resume outside this chain counts no further back
    (None, [0, 0, 0], False),  # not a continuation job: never stalls
    ("junk", [0, 0, 0], False),
])
def test_a_chain_stalls_after_three_idle_jobs_in_a_row(tmp_path, position, before, stalls):
    journal = tmp_path / "journal.bin"
    _journal(journal, before)  # tasks each earlier job finished; this one finishes none
    env = {walltime.CHAIN_VARIABLE: position} if position else {}
    wt = walltime.for_run(tmp_path, journal, deadline=100, env=env)
    assert wt.stalls(0) is stalls
    assert not wt.stalls(1)


def _sign_when_started(run: Path, log: Path, job: str) -> threading.Thread:
    """Writes the batch script's marker once a task has started."""
    def sign() -> None:
        deadline = time.monotonic() + 30
        while not any(log.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.02)
        marker = walltime.signal_marker(run, job)
        marker.parent.mkdir(exist_ok=True)
        marker.write_text(f"{int(time.time())}\n")

    thread = threading.Thread(target=sign, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("estimate", [1, None])
def test_after_the_signal_tasks_that_fit_keep_starting(naps, tmp_path, monkeypatch, estimate):
    """An end 60 s away: 1 s tasks all run after the signal; tasks without an estimate
    (the default 60 s: no longer fits) stop starting once the signal is seen."""
    mod, log = naps
    monkeypatch.setenv("SLURM_JOB_ID", "31")
    run = tmp_path / "run"
    signer = _sign_when_started(run, log, "31")
    result = hf.run(mod.build(8, 1.0, estimate=estimate), workers=2, run_dir=str(run),
                    deadline=60, check=False)
    signer.join(5)
    if estimate:
        assert result.status == "succeeded" and result.done == 8
    else:
        assert result.status == "walltime" and 0 < result.done < 8
        assert Event.STOPPED not in _kinds(str(run))
    assert set(_counts(log).values()) == {1}


def test_a_chain_job_that_cannot_start_anything_after_two_idle_ones_stalls(naps, tmp_path,
                                                                        monkeypatch):
    mod, _ = naps
    run = str(tmp_path / "run")
    wf = mod.build(2, 0, estimate=3600)  # never fits a 60 s allocation
    for k in range(3):
        monkeypatch.setenv(walltime.CHAIN_VARIABLE, str(k))
        result = (hf.run(wf, workers=2, run_dir=run, deadline=60, check=False) if k == 0 else
                  hf.run(wf, workers=2, resume=run, deadline=60, check=False))
        assert result.done == 0 and result.status == ("stalled" if k == 2 else "walltime")
    assert _kinds(run).count(Event.RUN) == 3
    shown = status_text(run_status(run, job_state=lambda _info: "Slurm job 9: COMPLETED"))
    assert "status   stalled" in shown and "3 jobs of its chain in a row finished no task" in shown
    assert f"next     hpcflow submit --resume {run}" in shown
