"""A task whose process dies (a segfault, an abort) fails alone, by default: the run goes
on, the crash is reported FAILED with the task's name, the signal and its log, and a
resume runs it after everything else.

Every run is ``python -m hpcflow`` in a subprocess with a timeout (the MPI engine's
under the ``mpiexec -n 3`` that the CLI starts), so what a user sees is what is checked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hpcflow.store.journal import Event, read_journal

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(180)

MODULE = textwrap.dedent("""
    import ctypes, os, pathlib
    import hpcflow as hf

    def work(x):
        if x == 3:
            ctypes.string_at(0)  # a segfault
        if x == 5:
            os.abort()
        return x * 2

    def head(x):
        if not pathlib.Path(os.environ["HF_FIXED"]).exists():
            os.kill(os.getpid(), 11)
        return x

    def build():
        return hf.workflow("crashy", outputs={"each": hf.task(work, name="work")
                                              .sweep({"x": range(12)}).all()})

    def chain():
        first = hf.task(head, name="head")(1)
        tail = hf.task(work, name="tail")(first)
        others = hf.task(work, name="other").sweep({"x": [0, 1, 2, 4, 6, 7]})
        return hf.workflow("chain", outputs={"tail": tail, "others": others.all()})
""")


def _cli(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               HF_FIXED=str(tmp_path / "fixed"))
    return subprocess.run([sys.executable, "-m", "hpcflow", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _states(run: Path) -> dict[int, str]:
    names = {Event.DONE: "DONE", Event.FAIL: "FAIL", Event.SKIP: "SKIP"}
    last: dict[int, str] = {}
    for event in read_journal(run / "journal.bin"):
        if event[0] in names:
            last[event[1]] = names[event[0]]
    return last


ENGINES = ["local", pytest.param("mpi", id="mpiexec", marks=[  # pytest-mpi skips ids "mpi"
    pytest.mark.slow, pytest.mark.skipif(shutil.which("mpiexec") is None,
                                         reason="needs mpiexec: pip install -e '.[mpich]'")])]


@pytest.mark.parametrize("engine", ENGINES)
def test_segfault_and_abort_fail_alone_naming_signal_and_log(tmp_path, engine):
    (tmp_path / "wf.py").write_text(MODULE)
    run = tmp_path / "run"
    proc = _cli(tmp_path, "run", "wf.py:build", "--engine", engine, "--workers", "2",
                "--run-dir", str(run))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Fatal Python error" not in out and "Traceback" not in out, out
    assert "FAILED work[3]: task work[3] crashed: its process died of SIGSEGV" in out
    assert "FAILED work[5]: task work[5] crashed: its process died of SIGABRT" in out
    assert "10 task(s) done, 2 failed" in out
    states = _states(run)
    assert {i: s for i, s in states.items() if s != "DONE"} == {3: "FAIL", 5: "FAIL"}
    assert len(states) == 12
    log = run / "tasks" / "work[3]" / "error.log"
    assert f"log: {log}" in out
    text = log.read_text()
    assert text.startswith("task work[3] crashed: its process died of SIGSEGV")
    assert "wf.py" in text and "in work" in text  # the Python traceback at the crash
    status = _cli(tmp_path, "status", str(run))
    assert status.returncode == 1
    assert "10 done, 2 failed" in status.stdout and "died of SIGABRT" in status.stdout
    assert str(log) in status.stdout
    assert _cli(tmp_path, "trace", str(run)).returncode == 0
    rows = [r.split("\t") for r in (run / "trace.tsv").read_text().splitlines()]
    failed = {r[1]: r for r in rows if r[4] == "failed"}
    assert set(failed) == {"work[3]", "work[5]"}
    assert "died of SIGSEGV" in " ".join(failed["work[3]"]) and str(log) in failed["work[3]"]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_resume_runs_the_task_that_crashed_after_everything_else(tmp_path, engine):
    (tmp_path / "wf.py").write_text(MODULE)
    run = tmp_path / "run"
    first = _cli(tmp_path, "run", "wf.py:chain", "--engine", engine, "--workers", "1",
                 "--stop-on-failure", "--run-dir", str(run))
    assert first.returncode == 1, first.stderr
    assert "FAILED head: task head crashed: its process died of SIGSEGV" in first.stderr
    (tmp_path / "fixed").touch()
    second = _cli(tmp_path, "run", "--resume", str(run), "--engine", engine, "--workers", "1")
    assert second.returncode == 0, second.stderr
    events = list(read_journal(run / "journal.bin"))
    session = max(k for k, e in enumerate(events) if e[0] == Event.RUN)
    groups = {g[0]: range(g[1], g[1] + g[2]) for g in events[session][1]["groups"]}
    order = [e[1] for e in events[session:] if e[0] == Event.DISPATCH]
    head, others = groups["head"][0], [i for i in groups["other"] if i in order]
    assert others and order.index(head) > max(order.index(i) for i in others), order
    assert _states(run)[head] == "DONE" and _states(run)[groups["tail"][0]] == "DONE"


def _crash_at(x: int) -> int:
    if x == 1500:
        os.kill(os.getpid(), 11)
    return x


@pytest.mark.timeout(60)
def test_a_crash_inside_a_run_of_short_tasks_fails_that_member_alone():
    import hpcflow as hf

    wf = hf.workflow("w", outputs=[hf.task(_crash_at, name="short").sweep({"x": range(3000)}).all()])
    result = hf.run(wf, workers=2, check=False)
    assert [f.task for f in result.failures] == ["short[1500]"]
    assert result.done == 2999
    events = list(read_journal(Path(result.run_dir) / "journal.bin"))
    done = [e[1] for e in events if e[0] == Event.DONE]
    assert sorted(set(done)) == [i for i in range(3000) if i != 1500]


def _crash_once(marker: str) -> str:
    path = Path(marker)
    if not path.exists():
        path.touch()
        os.kill(os.getpid(), 9)  # as the out-of-memory killer would
    return "second try"


@pytest.mark.timeout(60)
def test_a_crash_counts_as_one_failed_try(tmp_path):
    import hpcflow as hf

    task = hf.task(_crash_once, name="flaky", retries=1)(str(tmp_path / "tried"))
    result = hf.run(hf.workflow("w", outputs={"out": task}), workers=1, check=False)
    assert result.status == "succeeded" and result.outputs == {"out": "second try"}
    retries = [e for e in read_journal(Path(result.run_dir) / "journal.bin") if e[0] == Event.RETRY]
    assert len(retries) == 1 and retries[0][4] == "task flaky crashed: its process died of SIGKILL"
