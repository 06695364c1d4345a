"""The batch script's end, run by bash outside Slurm: USR1 is noted, never passed on.

The rendered script runs with a stand-in launcher (it records a USR1 if one reaches it,
sleeps, and exits with the status it is told) and stand-ins for ``sbatch`` and
``scancel`` on ``PATH`` that record their arguments. This pins the script's logic; that
submission and signals work on a real Slurm is shown by tests/test_slurm_integration.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from hpcflow.engine.walltime import EXIT_WALLTIME, signal_marker
from hpcflow.plan.analyse import analyse
from hpcflow.scheduler.slurm.profile import load_profile
from hpcflow.scheduler.slurm.script import BATCH_FOLDER, NEXT_NAME, batch_job, render_script
from hpcflow.scheduler.slurm.sizing import size
from hpcflow.spec.loader import load_plan

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
JOB = "4242"
NEXT = "4243"


def _tools(tmp_path: Path, sbatch_status: int = 0) -> Path:
    """A launcher and sbatch/scancel stand-ins, in ``tmp_path/bin``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "launcher": f"""\
            trap 'echo usr1 >> "{tmp_path}/step-got-usr1"' USR1
            touch "{tmp_path}/step-started"
            sleep "${{FAKE_SLEEP:-0}}" & wait $!
            sleep 0.2 & wait $!
            exit "${{FAKE_EXIT:-0}}"
            """,
        "sbatch": f"""\
            echo "$HPCFLOW_CONTINUATION $*" >> "{tmp_path}/sbatch-calls"
            [ {sbatch_status} -eq 0 ] && echo {NEXT}
            exit {sbatch_status}
            """,
        "scancel": f"""echo "$*" >> "{tmp_path}/scancel-calls"\n""",
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text("#!/bin/bash\n" + textwrap.dedent(body))
        path.chmod(0o755)
    return bin_dir


def _script(tmp_path: Path, setup: list[str]) -> Path:
    profile = load_profile(ROOT / "examples" / "clusters" / "local.yaml")
    profile = profile.model_copy(update={
        "launcher": "mpiexec", "mpiexec": str(tmp_path / "bin" / "launcher"),
        "defaults": profile.defaults.model_copy(update={"setup": setup})})
    plan = load_plan(str(ROOT / "examples" / "sweep" / "workflow.yaml"))
    run_dir = tmp_path / "run"
    (run_dir / BATCH_FOLDER).mkdir(parents=True)
    job = batch_job(size(plan, analyse(plan), profile), profile, workflow="wf",
                    run_dir=str(run_dir), spec="/s.yaml")
    script = run_dir / BATCH_FOLDER / "job.sh"
    script.write_text(render_script(job))
    return script


def _start(tmp_path: Path, *, sleep: float, exit_code: int, setup: list[str] | None = None,
           sbatch_status: int = 0) -> subprocess.Popen[str]:
    bin_dir = _tools(tmp_path, sbatch_status)
    script = _script(tmp_path, setup or [])
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", SLURM_JOB_ID=JOB,
               FAKE_SLEEP=str(sleep), FAKE_EXIT=str(exit_code))
    env.pop("HPCFLOW_CONTINUATION", None)
    return subprocess.Popen(["bash", str(script)], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} did not appear"
        time.sleep(0.02)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


def test_usr1_during_set_up_and_twice_during_the_step_kills_nothing_and_hands_over(tmp_path):
    proc = _start(tmp_path, sleep=1.5, exit_code=EXIT_WALLTIME, setup=["sleep 1"])
    time.sleep(0.3)  # the set-up's sleep runs in the foreground: the trap waits for it
    proc.send_signal(signal.SIGUSR1)
    _wait_for(tmp_path / "step-started")
    for _ in range(2):
        time.sleep(0.3)
        proc.send_signal(signal.SIGUSR1)
    code, err = _finish(proc)
    run = tmp_path / "run"
    assert code == 0, err  # handed over: the job ends COMPLETED
    assert not (tmp_path / "step-got-usr1").exists()  # the step never got the signal
    assert signal_marker(run, JOB).read_text().strip().isdigit()
    assert _lines(tmp_path / "sbatch-calls") == [
        f"1 --parsable --dependency=afterany:{JOB} {run / BATCH_FOLDER / 'job.sh'}"]
    assert (run / BATCH_FOLDER / NEXT_NAME.format(job=JOB)).read_text().strip() == NEXT
    assert not (tmp_path / "scancel-calls").exists()


def test_a_run_that_finishes_after_the_signal_cancels_its_continuation(tmp_path):
    proc = _start(tmp_path, sleep=1.0, exit_code=0)
    _wait_for(tmp_path / "step-started")
    proc.send_signal(signal.SIGUSR1)
    code, err = _finish(proc)
    assert code == 0, err
    assert len(_lines(tmp_path / "sbatch-calls")) == 1
    assert _lines(tmp_path / "scancel-calls") == [NEXT]
    assert not (tmp_path / "run" / BATCH_FOLDER / NEXT_NAME.format(job=JOB)).exists()


def test_a_failed_step_keeps_its_status_and_a_handover_without_signal_submits_once(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    code, _ = _finish(_start(tmp_path / "a", sleep=0, exit_code=3))
    assert code == 3 and not (tmp_path / "a" / "sbatch-calls").exists()
    handed = _start(tmp_path / "b", sleep=0, exit_code=EXIT_WALLTIME)
    code, err = _finish(handed)
    assert code == 0, err
    assert len(_lines(tmp_path / "b" / "sbatch-calls")) == 1


def test_a_handover_whose_continuation_cannot_be_submitted_fails_the_job(tmp_path):
    proc = _start(tmp_path, sleep=0, exit_code=EXIT_WALLTIME, sbatch_status=1)
    code, err = _finish(proc)
    assert code == EXIT_WALLTIME
    assert "could not submit the continuation job" in err
