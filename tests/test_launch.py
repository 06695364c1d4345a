"""One launch, one run: under ``mpiexec -n 3`` (real, with a timeout), ``hpcflow run WF``
and ``hf.run(wf)`` run once on the MPI engine; another engine is refused in one line; an
interrupt says once how to resume. The detection itself reads the launcher's variables
(real file descriptors stand in for PMI's connection)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hpcflow.engine.launched import (
    IN_RUN,
    Launch,
    LaunchConflict,
    choose_engine,
    marked_as_running,
    mpi_launch,
)

REPO = Path(__file__).resolve().parents[1]
MPIEXEC = shutil.which("mpiexec")
needs_mpiexec = pytest.mark.skipif(MPIEXEC is None, reason="needs mpiexec: pip install -e '.[mpich]'")

SWEEP = """\
name: three
tasks:
  - id: square
    python: funcs.py:square
    sweep: {product: {x: [1, 2, 3, 4]}}
  - id: total
    python: funcs.py:total
    args: {values: "${square[*]}"}
outputs: {total: "${total}"}
"""
FUNCS = "def square(x):\n    return x * x\n\ndef total(values):\n    return sum(values)\n"


# -- detection ---------------------------------------------------------------------------

@pytest.fixture
def open_fd():
    read, write = os.pipe()
    yield str(read)
    os.close(read)
    os.close(write)


def test_hydra_ranks_are_found_while_their_pmi_connection_is_open(open_fd):
    assert mpi_launch({"PMI_SIZE": "3", "PMI_RANK": "2", "PMI_FD": open_fd}) == Launch("mpiexec", 3, 2)
    assert mpi_launch({"PMI_SIZE": "3", "PMI_RANK": "1", "PMI_PORT": "host:1234"}) == \
        Launch("mpiexec", 3, 1)
    closed = os.open(os.devnull, os.O_RDONLY)
    os.close(closed)
    assert mpi_launch({"PMI_SIZE": "3", "PMI_RANK": "0", "PMI_FD": str(closed)}) is None


def test_other_launchers_and_what_is_not_a_launch(open_fd):
    assert mpi_launch({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "3"}) == Launch("mpirun", 4, 3)
    step = {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1"}
    assert mpi_launch(step) == Launch("srun", 2, 1)
    assert mpi_launch({**step, "PMI_SIZE": "2", "PMI_RANK": "1", "PMI_FD": open_fd}) == Launch("srun", 2, 1)
    batch = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "3", "SLURM_PROCID": "0"}  # the batch script
    assert mpi_launch(batch) is None
    assert mpi_launch({"PMI_SIZE": "1", "PMI_RANK": "0", "PMI_FD": open_fd}) is None
    assert mpi_launch({**step, IN_RUN: "1"}) is None  # a task's process inside a run


def test_choose_engine_and_the_refusal():
    step = {"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "3", "SLURM_PROCID": "0"}
    assert choose_engine(None, {}) == "local" and choose_engine("dask", {}) == "dask"
    assert choose_engine(None, step) == "mpi" and choose_engine("mpi", step) == "mpi"
    with pytest.raises(LaunchConflict) as caught:
        choose_engine("local", step)
    assert caught.value.exit_code == 2 and caught.value.launch == Launch("srun", 3, 0)
    assert str(caught.value).startswith("srun started 3 ranks, and the local engine would run "
                                        "the workflow once on each")
    with pytest.raises(LaunchConflict) as caught:
        choose_engine("ray", {**step, "SLURM_PROCID": "2"})
    assert caught.value.launch.rank == 2 and caught.value.engine == "ray"


def test_the_run_mark_is_put_back():
    before = os.environ.get(IN_RUN)
    with marked_as_running():
        assert os.environ[IN_RUN] == "1"
    assert os.environ.get(IN_RUN) == before


# -- real mpiexec --------------------------------------------------------------------------

def _folder(tmp_path: Path) -> Path:
    (tmp_path / "funcs.py").write_text(FUNCS)
    (tmp_path / "wf.yaml").write_text(SWEEP)
    return tmp_path


def _env(tmp_path: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, HPCFLOW_RUNS=str(tmp_path / "runs"))


def _mpiexec(tmp_path: Path, *command: str, limit: int = 90) -> subprocess.CompletedProcess[str]:
    assert MPIEXEC is not None
    return subprocess.run(["timeout", "-k", "5", str(limit), MPIEXEC, "-n", "3", *command],
                          cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True,
                          timeout=limit + 15)


def _runs(tmp_path: Path) -> list[Path]:
    root = tmp_path / "runs"
    return sorted(root.iterdir()) if root.is_dir() else []


@needs_mpiexec
def test_hpcflow_run_under_mpiexec_is_one_mpi_run(tmp_path):
    folder = _folder(tmp_path)
    done = _mpiexec(folder, sys.executable, "-m", "hpcflow", "run", "-q", "wf.yaml")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("succeeded: 5 task(s) done") == 1
    assert "output total = 30" in done.stdout
    (run,) = _runs(folder)
    assert '"engine": "mpi"' in (run / "run.json").read_text()


@needs_mpiexec
def test_another_engine_under_mpiexec_is_refused_in_one_line(tmp_path):
    folder = _folder(tmp_path)
    done = _mpiexec(folder, sys.executable, "-m", "hpcflow", "run", "--engine", "local", "wf.yaml")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "hpcflow run: mpiexec started 3 ranks, and the local engine would run the workflow once on "
        "each: leave the engine out (or ask for mpi) to run it once on these ranks, or start "
        "hpcflow without mpiexec"]
    assert _runs(folder) == []


@needs_mpiexec
def test_hf_run_in_a_script_under_mpiexec_is_one_mpi_run(tmp_path):
    folder = _folder(tmp_path)
    (folder / "script.py").write_text(textwrap.dedent("""\
        import hpcflow as hf
        from mpi4py import MPI
        from funcs import square, total

        squares = hf.task(square).sweep({"x": [1, 2, 3, 4]})
        result = hf.run(hf.workflow("script", outputs={"total": hf.task(total)(squares.all())}))
        rank = MPI.COMM_WORLD.rank
        with open(f"rank-{rank}.txt", "w") as out:  # one file each: ranks' prints interleave
            print(rank, result.outputs["total"], result.run_dir, file=out)
        """))
    done = _mpiexec(folder, sys.executable, "script.py")
    assert done.returncode == 0, done.stderr
    (run,) = _runs(folder)
    said = [(folder / f"rank-{rank}.txt").read_text() for rank in range(3)]
    assert said == [f"{rank} 30 {run}\n" for rank in range(3)]


@needs_mpiexec
def test_a_task_that_runs_hpcflow_is_not_taken_for_a_rank(tmp_path):
    folder = _folder(tmp_path)
    (folder / "outer.yaml").write_text(textwrap.dedent(f"""\
        name: outer
        tasks:
          - id: inner
            shell: "{sys.executable} -m hpcflow run -q --runs-root inner-runs {folder / 'wf.yaml'}"
            stdout: true
        outputs: {{log: "${{inner}}"}}
        """))
    done = _mpiexec(folder, sys.executable, "-m", "hpcflow", "run", "-q", "--json", "outer.yaml")
    assert done.returncode == 0, done.stderr
    assert "succeeded: 5 task(s) done" in done.stdout and "output total = 30" in done.stdout


@needs_mpiexec
@pytest.mark.slow
def test_ctrl_c_under_mpiexec_says_once_how_to_resume(tmp_path):
    folder = _folder(tmp_path)
    (folder / "slow.yaml").write_text(
        "name: slow\ntasks:\n  - id: nap\n    shell: 'sleep {s}'\n    args: {s: 60}\n"
        "    sweep: {product: {i: [1, 2, 3]}}\n")
    assert MPIEXEC is not None
    proc = subprocess.Popen([MPIEXEC, "-n", "3", sys.executable, "-m", "hpcflow", "run", "-q",
                             "slow.yaml"], cwd=folder, env=_env(folder), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for_journal(folder, 60)
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole process group
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    (run,) = _runs(folder)
    assert proc.returncode == 130
    assert err.splitlines() == [f"hpcflow run: interrupted; what finished is kept: continue with "
                                f"hpcflow run --resume {run}"], out
    assert "Traceback" not in out + err and "Assertion" not in out + err


def _wait_for_journal(folder: Path, limit: float) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if any(folder.glob("runs/*/tasks/nap*")):
            time.sleep(1.0)
            return
        time.sleep(0.1)
    raise AssertionError("the run did not start its tasks")


@pytest.mark.slurm
@pytest.mark.slow
def test_srun_with_three_tasks_is_one_mpi_run(tmp_path):
    status = subprocess.run([str(REPO / "slurm" / "status.sh")], capture_output=True, text=True,
                            timeout=30)
    if status.returncode != 0:
        pytest.skip("local Slurm cluster not up: start it with: sudo slurm/install.sh && "
                    "sudo slurm/start.sh")
    folder = _folder(tmp_path)
    script = folder / "job.sh"
    script.write_text(f"#!/bin/bash\nsrun --mpi=pmi2 -n 3 {sys.executable} -m hpcflow run -q wf.yaml\n")
    done = subprocess.run(["timeout", "-k", "5", "150", "sbatch", "--wait", "-n", "3",
                           "--time=2", "-o", "job.out", "--chdir", str(folder), str(script)],
                          cwd=folder, env=_env(folder), capture_output=True, text=True, timeout=170)
    out = (folder / "job.out").read_text() if (folder / "job.out").exists() else ""
    assert done.returncode == 0, done.stderr + out
    assert out.count("succeeded: 5 task(s) done") == 1, out
    (run,) = _runs(folder)
    assert '"engine": "mpi"' in (run / "run.json").read_text()
