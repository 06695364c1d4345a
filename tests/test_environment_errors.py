"""A failure of the environment is one line with the documented exit status, never a
traceback: a run folder or runs root that cannot be written (2), a command whose extra
is not installed (3). Read-only folders are real: a read-only bind mount when the tests
run as root (root ignores permission bits), else a folder without write permission."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WF = """\
name: tiny
tasks:
  - id: hello
    shell: "echo hello"
    stdout: true
outputs: {said: "${hello}"}
"""


def _env(tmp_path: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, HPCFLOW_RUNS=str(tmp_path / "runs"))


def _hpcflow(tmp_path: Path, *args: str, hide: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    code = (f"import sys; sys.modules.update(dict.fromkeys({hide!r})); "
            "from hpcflow.cli import main; sys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def read_only() -> Iterator[Callable[[Path], Path]]:
    mounted: list[Path] = []
    locked: list[Path] = []

    def make(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            folder.chmod(0o555)
            locked.append(folder)
            return folder
        done = subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)],
                              capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            pytest.skip("needs a read-only folder: run the tests as a normal user, or as root "
                        f"where `mount --bind -o ro` is allowed ({done.stderr.strip()})")
        mounted.append(folder)
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", str(folder)], capture_output=True, timeout=30)
    for folder in locked:
        folder.chmod(0o755)


def test_a_read_only_runs_root_is_one_line_and_exit_2(tmp_path, read_only):
    (tmp_path / "wf.yaml").write_text(WF)
    root = read_only(tmp_path / "ro")
    done = _hpcflow(tmp_path, "run", "--runs-root", str(root / "runs"), "wf.yaml")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"hpcflow run: cannot write {root / 'runs'}: {os.strerror(_errno(root))}; choose another "
        "--runs-root (or make it writable)"]
    assert not (root / "runs").exists()


def test_a_read_only_run_dir_is_one_line_and_exit_2(tmp_path, read_only):
    (tmp_path / "wf.yaml").write_text(WF)
    folder = read_only(tmp_path / "ro")
    done = _hpcflow(tmp_path, "run", "--run-dir", str(folder), "wf.yaml")
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"hpcflow run: cannot write {folder}/")
    assert done.stderr.rstrip().endswith("choose another --run-dir (or make it writable)")


def test_resuming_a_read_only_run_is_one_line_and_the_run_is_kept(tmp_path, read_only):
    (tmp_path / "wf.yaml").write_text(WF)
    first = _hpcflow(tmp_path, "run", "-q", "--json", "wf.yaml")
    assert first.returncode == 0, first.stderr
    (run,) = (tmp_path / "runs").iterdir()
    before = sorted(p.name for p in run.iterdir())
    read_only(run)
    done = _hpcflow(tmp_path, "run", "--resume", str(run))
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"hpcflow run: cannot write {run}/")
    assert "a resume writes into its run folder: make it writable" in done.stderr
    assert sorted(p.name for p in run.iterdir()) == before


def _errno(folder: Path) -> int:
    import errno

    return errno.EROFS if os.geteuid() == 0 else errno.EACCES


@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="needs mpiexec: pip install -e '.[mpich]'")
def test_under_mpiexec_rank_0_alone_says_it(tmp_path, read_only):
    (tmp_path / "wf.yaml").write_text(WF)
    root = read_only(tmp_path / "ro")
    done = subprocess.run(["timeout", "-k", "5", "90", "mpiexec", "-n", "3", sys.executable, "-m",
                           "hpcflow", "run", "--runs-root", str(root / "runs"), "wf.yaml"],
                          cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"hpcflow run: cannot write {root / 'runs'}: {os.strerror(_errno(root))}; choose another "
        "--runs-root (or make it writable)"]


@pytest.mark.parametrize("args", [
    ("cluster", "wait", "dask", "--scheduler-file", "none.json", "--timeout", "5"),
    ("cluster", "stop", "dask", "--scheduler-file", "none.json"),
])
def test_a_command_without_its_extra_is_one_line_and_exit_3(tmp_path, args):
    done = _hpcflow(tmp_path, *args, hide=("dask", "distributed"))
    assert done.returncode == 3
    assert done.stderr.splitlines() == [
        "hpcflow cluster: this needs the Python package 'distributed', which is not installed: "
        "pip install 'hpcflow-mpi[dask]'"]


def test_report_without_jinja2_is_one_line(tmp_path):
    (tmp_path / "wf.yaml").write_text(WF)
    assert _hpcflow(tmp_path, "run", "-q", "wf.yaml").returncode == 0
    (run,) = (tmp_path / "runs").iterdir()
    done = _hpcflow(tmp_path, "report", str(run), hide=("jinja2",))
    assert done.returncode in (2, 3)
    assert len(done.stderr.splitlines()) == 1 and "pip install 'hpcflow-mpi[report]'" in done.stderr
