"""scripts/test.sh: the MPI part runs even when the first part fails, and the last line
sums up both. The script runs for real (pytest, then mpiexec at 2, 3 and 4 ranks) over
two tiny suites written here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "test.sh"

needs_mpiexec = pytest.mark.skipif(shutil.which("mpiexec") is None,
                                   reason="needs mpiexec: pip install -e '.[mpich]'")


def _suites(tmp_path: Path, first: str, mpi: str) -> tuple[Path, Path]:
    unit = tmp_path / "test_first.py"
    unit.write_text(first)
    mpi_dir = tmp_path / "mpi"
    mpi_dir.mkdir()
    (mpi_dir / "test_ranks.py").write_text(mpi)
    return unit, mpi_dir


def _run(unit: Path, mpi_dir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HPCFLOW_MPI_SUITE=str(mpi_dir))
    return subprocess.run(["bash", str(SCRIPT), "-p", "no:cacheprovider", str(unit)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@needs_mpiexec
def test_mpi_part_runs_after_a_failed_first_part(tmp_path):
    unit, mpi_dir = _suites(tmp_path, "def test_ok():\n    pass\n\n"
                                      "def test_broken():\n    assert 1 == 2\n",
                            "def test_rank():\n    pass\n")
    done = _run(unit, mpi_dir)
    last = done.stdout.strip().splitlines()[-1]
    assert done.returncode != 0
    assert done.stdout.count("== MPI suite at") == 3
    assert last == "tests: 1 failed, 1 passed; MPI suite: 2 ranks ok, 3 ranks ok, 4 ranks ok"


@pytest.mark.slow
@needs_mpiexec
def test_a_failed_mpi_part_fails_the_script(tmp_path):
    unit, mpi_dir = _suites(tmp_path, "def test_ok():\n    pass\n",
                            "from mpi4py import MPI\n\n"
                            "def test_size():\n    assert MPI.COMM_WORLD.size != 3\n")
    done = _run(unit, mpi_dir)
    last = done.stdout.strip().splitlines()[-1]
    assert done.returncode != 0
    assert last == "tests: 1 passed; MPI suite: 2 ranks ok, 3 ranks failed, 4 ranks ok"


def test_the_deliberate_crash_prints_no_fatal_error():
    """test_kill crashes a task on purpose (SIGSEGV); pytest's faulthandler, inherited
    by the task's process, must not print a report that reads as the suite crashing."""
    test = "tests/test_kill.py::test_a_crash_fails_alone_and_the_run_goes_on"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]
    assert "Fatal Python error" not in done.stdout + done.stderr


def test_the_mpi_suite_outside_mpiexec_says_how_to_run_it():
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           "tests/mpi/test_mpi_channel.py"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    skipped = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    assert done.returncode == 0 and skipped
    assert all("mpiexec -n 3 python -m pytest --with-mpi tests/mpi" in line for line in skipped)
