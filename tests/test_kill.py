"""kill -9 at random points, then resume: results equal a clean run's, and no task whose
completion the journal recorded runs again (tasks in flight at a kill may).

Python time-outs and crashes (a segfault fails its task alone, with or without
``--isolate``) are tested last.
Each run is a separate subprocess with a timeout. CI runs a few kill points
(``HPCFLOW_KILL_POINTS`` sets how many; seeded by ``HPCFLOW_KILL_SEED``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from hpcflow.store.journal import Event, read_journal

N = 500  # two sweeps of N tasks, then one sum: 1,001 tasks
KILL_POINTS = int(os.environ.get("HPCFLOW_KILL_POINTS", "5"))
SEED = int(os.environ.get("HPCFLOW_KILL_SEED", "1234"))

DRIVER = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    import hpcflow as hf

    LOG = Path(os.environ["HF_KILL_LOG"])

    def mark(name):
        with open(LOG / name, "a") as fh:
            fh.write(name + "\\n")

    def first(x):
        mark(f"first-{x}")
        time.sleep(0.01)
        return x * 3 + 1

    def second(v, x):
        mark(f"second-{x}")
        time.sleep(0.01)
        return v * v - x

    def total(values):
        mark("total")
        return sum(values)

    N = int(os.environ["HF_KILL_N"])
    a = hf.task(first, name="first").sweep({"x": range(N)})
    b = hf.task(second, name="second").sweep({"v": a.each(), "x": range(N)}, mode="zip")
    wf = hf.workflow("killme", outputs={"total": hf.task(total, name="total")(b.all())})

    if __name__ == "__main__":
        run, engine, resume = sys.argv[1], sys.argv[2], sys.argv[3] == "resume"
        options = {"resume": run} if resume else {"run_dir": run}
        result = hf.run(wf, engine=engine, workers=2, check=False, **options)
        if result.outputs:
            Path(run, "outputs.json").write_text(json.dumps(result.outputs))
""")


def _expected() -> int:
    return sum((x * 3 + 1) ** 2 - x for x in range(N))


@pytest.fixture
def kill_env(tmp_path, monkeypatch):
    log = tmp_path / "log"
    log.mkdir()
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    monkeypatch.setenv("HF_KILL_LOG", str(log))
    monkeypatch.setenv("HF_KILL_N", str(N))
    return driver, log, tmp_path / "run"


def _start(driver: Path, run: Path, engine: str = "local", mpi: int = 0) -> subprocess.Popen:
    resume = "resume" if (run / "journal.bin").exists() else "new"
    argv = [sys.executable, str(driver), str(run), engine, resume]
    if mpi:
        argv = ["mpiexec", "-n", str(mpi), *argv]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"run did not end within {timeout} s:\n{out.decode()[-3000:]}")
    return proc.returncode, out.decode()


def _counts(log: Path) -> dict[str, int]:
    return {p.name: len(p.read_text().splitlines()) for p in log.iterdir()}


def _journal_state(run: Path) -> tuple[set[str], int]:
    """Names of the tasks the journal records as done, and how many are in flight
    (dispatched in the last session without a DONE or FAIL)."""
    names = _names(run)
    done: set[int] = set()
    flight: set[int] = set()
    for event in read_journal(run / "journal.bin"):
        if event[0] == Event.RUN:
            flight = set()
        elif event[0] == Event.DISPATCH:
            flight.add(event[1])
            done.discard(event[1])
        elif event[0] in (Event.DONE, Event.FAIL):
            flight.discard(event[1])
            if event[0] == Event.DONE:
                done.add(event[1])
    return {names[i] for i in done}, len(flight)


def _names(run: Path) -> dict[int, str]:
    names = {}
    for g in json.loads((run / "groups.json").read_text()):
        for k in range(g["size"]):
            names[g["start"] + k] = f"{g['name']}-{k}" if g["name"] != "total" else "total"
    return names


def _check_no_rerun(log: Path, snapshots: list[tuple[set[str], dict[str, int]]]) -> None:
    final = _counts(log)
    for done, counts in snapshots:
        again = sorted(t for t in done if final.get(t, 0) != counts.get(t, 0))
        assert not again, f"tasks whose DONE was journalled ran again: {again[:10]}"


def _resume_to_end(driver: Path, run: Path, log: Path, engine: str = "local", mpi: int = 0,
                   ) -> None:
    code, out = _finish(_start(driver, run, engine, mpi))
    assert code == 0, out[-3000:]
    assert json.loads((run / "outputs.json").read_text()) == {"total": _expected()}
    counts = _counts(log)
    assert set(counts) == {f"first-{x}" for x in range(N)} | {f"second-{x}" for x in range(N)} \
        | {"total"}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_kill_coordinator_at_random_points_then_resume(kill_env):
    driver, log, run = kill_env
    rng = random.Random(SEED)
    snapshots: list[tuple[set[str], dict[str, int]]] = []
    in_flight = landed = 0
    for _ in range(KILL_POINTS):
        proc = _start(driver, run)
        time.sleep(rng.uniform(0.3, 1.2))  # start-up (~0.3 s) + part of the ~5 s run
        with_pid = proc.poll() is None
        if with_pid:
            os.killpg(proc.pid, signal.SIGKILL)  # the coordinator and its workers, as -9
        _finish(proc, 60)
        if (run / "journal.bin").exists():
            done, flight = _journal_state(run)
            in_flight += flight
            snapshots.append((done, _counts(log)))
            print(f"kill: {len(done)} done, {flight} in flight")
            landed += 0 < len(done) < 2 * N + 1
        if (run / "outputs.json").exists():
            break
    assert landed >= min(2, KILL_POINTS), "the kills should land while tasks run"
    _resume_to_end(driver, run, log)
    _check_no_rerun(log, snapshots)
    extra = sum(_counts(log).values()) - (2 * N + 1)
    assert extra <= in_flight, f"{extra} extra runs, but only {in_flight} were in flight"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_kill_a_local_worker_then_resume(kill_env):
    driver, log, run = kill_env
    proc = _start(driver, run)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(log.iterdir()):
        time.sleep(0.05)
    workers = psutil.Process(proc.pid).children()
    assert workers, "no worker process to kill"
    workers[0].kill()
    code, out = _finish(proc, 120)
    assert code == 0, out[-2000:]  # check=False: the task it ran fails alone, the run ends
    errors = [e[6] for e in read_journal(run / "journal.bin") if e[0] == Event.FAIL]
    assert (run / "outputs.json").exists() or any("died of SIGKILL" in e for e in errors), errors
    done, _ = _journal_state(run)
    snapshots = [(done, _counts(log))]
    _resume_to_end(driver, run, log)
    _check_no_rerun(log, snapshots)


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(shutil.which("mpiexec") is None,
                    reason="needs mpiexec (pip install mpich mpi4py)")
def test_kill_an_mpi_rank_then_resume(kill_env):
    driver, log, run = kill_env
    proc = _start(driver, run, engine="mpi", mpi=3)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(log.iterdir()):
        time.sleep(0.05)
    ours = [p for p in psutil.Process(proc.pid).children(recursive=True)
            if str(driver) in " ".join(p.cmdline())]
    pids = {p.pid for p in ours}
    ranks = [p for p in ours if p.ppid() not in pids]  # not a rank's task process
    assert len(ranks) == 3, "expected three ranks"
    victim = max(ranks, key=lambda p: p.pid)  # not rank 0's pid in general: any worker rank
    victim.kill()
    code, out = _finish(proc, 120)
    assert code != 0 or (run / "outputs.json").exists(), out[-2000:]
    done, _ = _journal_state(run)
    snapshots = [(done, _counts(log))]
    _resume_to_end(driver, run, log, engine="mpi", mpi=3)
    _check_no_rerun(log, snapshots)


# -- time-outs and isolation of Python tasks (quick; not marked slow) ----------------------

def _crash(x):
    if x == 1:  # pytest's faulthandler, inherited, is pointed at the task's log by the worker
        os.kill(os.getpid(), signal.SIGSEGV)
    return x


def _sleeper(x, pidfile):
    if x == 0:
        child = subprocess.Popen(["sleep", "300"])
        Path(pidfile).write_text(str(child.pid))
        time.sleep(300)
    return x


@pytest.mark.timeout(60)
@pytest.mark.parametrize("isolate", [False, True])
def test_a_crash_fails_alone_and_the_run_goes_on(capfd, isolate):
    import hpcflow as hf

    wf = hf.workflow("w", outputs=[hf.task(_crash, name="crash").sweep({"x": range(4)}).all()])
    result = hf.run(wf, workers=2, isolate=isolate, check=False)
    assert result.status == "failed" and result.done == 3
    assert [f.task for f in result.failures] == ["crash[1]"]
    assert "crash[1]" in result.failures[0].error and "SIGSEGV" in result.failures[0].error
    assert "Fatal Python error" not in capfd.readouterr().err


@pytest.mark.timeout(60)
def test_python_timeout_ends_the_task_tree(tmp_path):
    import hpcflow as hf

    pidfile = tmp_path / "grandchild.pid"
    task = hf.task(_sleeper, name="sleeper", timeout=1.5)
    wf = hf.workflow("w", outputs=[task.sweep({"x": range(3)}, pidfile=str(pidfile)).all()])
    start = time.monotonic()
    result = hf.run(wf, workers=2, check=False)
    assert time.monotonic() - start < 20
    assert [f.task for f in result.failures] == ["sleeper[0]"]
    assert result.failures[0].error == "timed out after 1.5 s; its processes were ended"
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while psutil.pid_exists(grandchild) and time.monotonic() < deadline:
        if psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE:
            break
        time.sleep(0.05)
    assert not psutil.pid_exists(grandchild) or \
        psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE
