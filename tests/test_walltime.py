"""The allocation's end: no task starts that cannot fit, SIGUSR1 drains, exit code 75,
stopped tasks rerun on resume; and (slurm + slow) a continuation chain on the local Slurm."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import hpcflow as hf
from hpcflow.engine import walltime
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
    first = hf.run(mod.build(30, 0.5, estimate=1), workers=2, run_dir=run, deadline=40,
                   check=False)
    assert first.status == "walltime" and 0 < first.done < 30
    assert time.monotonic() - start < 20  # drained at the grace time, 30 s before the end
    again = hf.run(mod.build(30, 0.5, estimate=1), workers=2, resume=run)
    assert again.outputs["all"] == list(range(30))
    assert set(_counts(log).values()) == {1}


def test_past_the_grace_time_running_tasks_are_stopped_and_rerun(naps, tmp_path):
    mod, _log = naps
    run = str(tmp_path / "run")
    start = time.monotonic()
    first = hf.run(mod.build(2, 60, estimate=None), workers=2, run_dir=run, deadline=33,
                   check=False)
    assert first.status == "walltime" and first.done == 0
    assert time.monotonic() - start < 15
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


# -- a continuation chain on the local Slurm ---------------------------------------------

def _slurm_ready() -> str | None:
    if not shutil.which("sbatch"):
        return "needs the local Slurm (slurm/start.sh) with sbatch on PATH"
    try:
        up = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "scontrol ping failed: start the local Slurm with slurm/start.sh"
    return None if "UP" in up.stdout else "slurmctld is not up: run slurm/start.sh"


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_walltime_continuation_chain_on_slurm(tmp_path):
    """``--time=1 --signal=B:USR1@30``: sleep tasks needing ~3 minutes of allocation time
    (the sizing is told they take 1 s, so that it accepts one minute) need several jobs;
    each stops at the signal (exit 75), submits its continuation, and the last one
    finishes the run. Only tasks given up at an allocation's end ran twice."""
    reason = _slurm_ready()
    if reason:
        pytest.skip(reason)
    log = tmp_path / "log"
    log.mkdir()
    (tmp_path / "naps.py").write_text(TASKS)
    spec = tmp_path / "wf.py"
    spec.write_text(textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(tmp_path)!r})
        os.environ.setdefault("HF_WT_LOG", {str(log)!r})
        import naps
        wf = naps.build(20, 8.0, estimate=1)
    """))
    run = tmp_path / "run"
    profile = tmp_path / "profile.yaml"
    discovered = subprocess.run([sys.executable, "-m", "hpcflow", "cluster", "discover", "-o",
                                 str(profile)], capture_output=True, text=True, timeout=60)
    assert discovered.returncode == 0, discovered.stderr
    text = profile.read_text().replace("margin_seconds: 60", "margin_seconds: 0")
    profile.write_text(text.replace("margin_fraction: 0.1", "margin_fraction: 0.0"))
    submitted = subprocess.run(
        [sys.executable, "-m", "hpcflow", "submit", f"{spec}:wf", "--time", "1m",
         "--profile", str(profile), "--engine", "local", "--run-dir", str(run), "--json",
         "--no-test-only"], capture_output=True, text=True, timeout=120)
    assert submitted.returncode == 0, submitted.stderr
    deadline = time.monotonic() + 780
    while time.monotonic() < deadline:
        info = json.loads((run / "run.json").read_text())
        if info.get("status") in ("succeeded", "failed"):
            break
        time.sleep(5)
    info = json.loads((run / "run.json").read_text())
    assert info.get("status") == "succeeded", info
    assert info.get("resumes", 0) >= 1
    assert len(_counts(log)) == 20
    assert _stopped_reruns_only(run, log)


def _stopped_reruns_only(run: Path, log: Path) -> bool:
    """Only tasks journalled as stopped (given up at an allocation's end) ran twice."""
    names = {g["start"] + k: f"nap-{k}" for g in json.loads((run / "groups.json").read_text())
             for k in range(g["size"])}
    stopped = {names[e[1]] for e in read_journal(run / "journal.bin") if e[0] == Event.STOPPED}
    twice = {name for name, count in _counts(log).items() if count > 1}
    return twice <= stopped
