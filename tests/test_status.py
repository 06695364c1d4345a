"""``hpcflow status``: counts and failures of finished runs, live runs, killed runs."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from hpcflow.cli.load import load
from hpcflow.engine.runner import EngineConfig, run_workflow
from hpcflow.report.status import GONE, load_run, lock_held, run_status, status_json, status_text
from hpcflow.store.journal import Event, Journal, read_journal
from hpcflow.store.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "sweep" / "workflow.yaml"
pytestmark = pytest.mark.timeout(120)

FAILING = """\
name: failing
tasks:
  - id: prep
    shell: "echo preparing"
  - id: boom
    shell: "echo about to fail >&2; exit 3"
    args: {x: "${prep}"}
  - id: after
    shell: "echo never"
    args: {y: "${boom}"}
  - id: side
    shell: "echo fine {k}"
    sweep:
      product: {k: [1, 2, 3]}
"""


def run_spec(path: Path, workers: int = 2) -> Path:
    result = run_workflow(load(str(path)), EngineConfig(workers=workers, spec=str(path)))
    return Path(result.run_dir)


@pytest.fixture()
def failed_run(tmp_path) -> Path:
    spec = tmp_path / "failing.yaml"
    spec.write_text(FAILING)
    return run_spec(spec)


def test_succeeded_run(tmp_path):
    status = run_status(run_spec(EXAMPLE, workers=3))
    assert status.status == "succeeded" and status.total == 17
    assert status.counts == {"not started": 0, "running": 0, "done": 17, "failed": 0,
                             "skipped": 0, "retrying": 0}
    assert status.workers == 3 and status.engine == "local" and status.failures == []
    assert 0 < status.elapsed < 60
    text = status_text(status)
    assert "status   succeeded" in text and "17: 17 done, 0 failed" in text
    assert "next" not in text  # nothing to continue


def test_failed_run_names_the_task_its_error_and_log(failed_run):
    status = run_status(failed_run)
    assert status.status == "failed"
    c = status.counts
    assert (c["done"], c["failed"], c["skipped"], c["running"], c["not started"]) == (4, 1, 1, 0, 0)
    [failure] = status.failures
    assert failure["task"] == "boom" and "status 3" in failure["error"]
    assert Path(failure["log"]).read_text() == "about to fail\n"
    text = status_text(status)
    assert "FAILED   boom:" in text and f"log: {failure['log']}" in text
    assert text.endswith(f"next     hpcflow run --resume {failed_run} (once the causes are "
                         "fixed)\n")
    data = status_json(status)
    assert json.loads(json.dumps(data))["finished"] is True and data["failures_elided"] == 0


def _rewrite(run: Path, keep_events: int) -> list[tuple]:
    """Keep the journal's first ``keep_events`` events, one whole frame each."""
    events = list(read_journal(run / "journal.bin"))
    (run / "journal.bin").unlink()
    with Journal(run / "journal.bin") as journal:
        for event in events[:keep_events]:
            journal.record(*event)
            journal.flush()
    return events


def _tear(run: Path, keep_events: int) -> list[tuple]:
    """The journal as a coordinator killed mid-run leaves it: ``keep_events`` events in
    whole frames, then half a frame of the rest."""
    events = _rewrite(run, keep_events)
    payload = pickle.dumps(events[keep_events:])
    frame = struct.pack("<II", len(payload), zlib.crc32(payload)) + payload
    with open(run / "journal.bin", "ab") as fh:
        fh.write(frame[: len(frame) // 2])
    return events[:keep_events]


def test_torn_journal_without_end_says_coordinator_gone(tmp_path):
    run = run_spec(EXAMPLE)
    kept = _tear(run, 8)  # run, dispatch 0, done 0, dispatch 1-4 and a done
    assert kept[-1][0] != Event.END
    dispatched = {e[1] for e in kept if e[0] == Event.DISPATCH}
    finished = {e[1] for e in kept if e[0] == Event.DONE}
    status = run_status(run)
    assert status.status == GONE
    assert not status_json(status)["live"] and not status_json(status)["finished"]
    assert status.counts["done"] == len(finished)
    assert status.counts["running"] == len(dispatched - finished) > 0
    assert status.counts["not started"] == 17 - len(dispatched)
    assert status.elapsed >= 0
    text = status_text(status)
    assert text.endswith(f"next     hpcflow run --resume {status.run_dir}\n")
    assert "not finished (coordinator gone?)" in text and "in flight" in text


def test_live_run_while_its_lock_is_held(tmp_path):
    run = run_spec(EXAMPLE)
    _tear(run, 5)
    holder = RunDir(run)
    holder.lock()  # another open file: flock conflicts as with a live coordinator
    try:
        status = run_status(run)
        assert status.status == "running"
        assert status.elapsed > 0  # counted up to now
    finally:
        holder.unlock()
    assert run_status(run).status == GONE


def test_a_resume_clears_what_was_in_flight(tmp_path):
    run = run_spec(EXAMPLE)
    kept = _rewrite(run, 6)[:6]
    with Journal(run / "journal.bin") as journal:  # a new session begins, nothing sent yet
        journal.record(Event.RUN, {"engine": "local", "workers": 5, "time": time.time()})
    view = load_run(run)
    done = sum(1 for e in kept if e[0] == Event.DONE)
    assert view.counts()["running"] == 0 and view.counts()["done"] == done
    assert view.workers == 5 and len(view.sessions) == 2


def test_status_cli_json_exit_codes_and_not_a_run(tmp_path, failed_run):
    def status(*args):
        return subprocess.run([sys.executable, "-m", "hpcflow", "status", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)

    done = status("--json", str(failed_run))
    assert done.returncode == 1
    data = json.loads(done.stdout)
    assert data["status"] == "failed" and data["counts"]["failed"] == 1
    assert data["failures"][0]["task"] == "boom"
    by_name = status(failed_run.name)  # found under $HPCFLOW_RUNS
    assert by_name.returncode == 1 and "status   failed" in by_name.stdout
    missing = status(str(tmp_path))
    assert missing.returncode == 2 and "not a run folder" in missing.stderr


def test_job_state_hook(tmp_path):
    run = run_spec(EXAMPLE)
    info = json.loads((run / "run.json").read_text())
    info["slurm_job_id"] = "4242"
    (run / "run.json").write_text(json.dumps(info))
    status = run_status(run, job_state=lambda i: f"RUNNING ({i['slurm_job_id']})")
    assert status.job_state == "RUNNING (4242)"
    assert "job      RUNNING (4242)" in status_text(status)


def test_other_users_runs_are_read(tmp_path, monkeypatch):
    run = run_spec(EXAMPLE)
    monkeypatch.setattr(os, "getuid", lambda: os.stat(run).st_uid + 1)
    status = run_status(run)  # the journal is plain data: reading it runs nothing
    assert status.counts["done"] == status.total > 0


SLOW_SPEC = """\
name: slow
tasks:
  - id: nap
    shell: "sleep {s}"
    sweep:
      product: {s: [0.05, 0.05, 0.05, 0.05, 30, 30]}
"""


def _start_slow_run(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """``hpcflow run`` in its own session, once four quick tasks are journalled and two
    30-s tasks are running."""
    spec = tmp_path / "slow.yaml"
    spec.write_text(SLOW_SPEC)
    runs = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "hpcflow", "run", "--workers", "2", str(spec)],
                            cwd=tmp_path, env=dict(os.environ, HPCFLOW_RUNS=str(runs)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        return proc, _wait_for_done_events(runs, count=4, proc=proc)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        raise


def _gone_within(run: Path, seconds: float) -> str:
    deadline = time.monotonic() + seconds  # processes take a moment to die and unlock
    while lock_held(run) and time.monotonic() < deadline:
        time.sleep(0.05)
    return run_status(run).status


@pytest.mark.slow
def test_kill_9_of_a_real_run(tmp_path):
    """Live while the coordinator runs; 'coordinator gone' after kill -9 of its session."""
    psutil = pytest.importorskip("psutil")
    proc, run = _start_slow_run(tmp_path)
    tasks = psutil.Process(proc.pid).children(recursive=True)
    try:
        live = run_status(run)
        assert live.status == "running" and live.counts["done"] == 4
        assert live.counts["running"] == 2
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the coordinator and its workers: no END
        proc.wait(timeout=30)
        _kill(tasks)  # shell tasks run in sessions of their own
    assert _gone_within(run, 20) == GONE
    dead = run_status(run)
    assert dead.counts["running"] == 2 and dead.counts["done"] == 4


@pytest.mark.slow
def test_kill_9_of_the_coordinator_alone(tmp_path):
    """What the OOM killer does: only the coordinator dies; status must say so."""
    psutil = pytest.importorskip("psutil")
    proc, run = _start_slow_run(tmp_path)
    workers = psutil.Process(proc.pid).children(recursive=True)
    try:
        proc.kill()
        proc.wait(timeout=30)
        assert _gone_within(run, 3) == GONE
    finally:
        _kill(workers)


def _kill(processes: list) -> None:
    """SIGKILL these processes (this test's own, by pid) if they still live."""
    import psutil

    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def _wait_for_done_events(runs: Path, count: int, proc: subprocess.Popen) -> Path:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended early"
        for journal in runs.glob("slow-*/journal.bin"):
            if sum(1 for e in read_journal(journal) if e[0] == Event.DONE) >= count:
                return journal.parent
        time.sleep(0.05)
    raise AssertionError("the run did not record its first tasks within 60 s")


def test_status_after_a_resume_shows_only_the_new_outcome(tmp_path):
    import hpcflow as hf

    gate = tmp_path / "allow"

    def picky(x):
        if not gate.exists():
            raise RuntimeError("not yet")
        return x

    tasks = hf.task(picky, name="picky").sweep({"x": range(3)})
    wf = hf.workflow("resumed", outputs=[tasks.all()])
    first = hf.run(wf, workers=1, check=False, runs_root=str(tmp_path / "runs"))
    assert run_status(first.run_dir).counts["failed"] == 3
    gate.write_text("ok")
    second = hf.run(wf, workers=1, resume=first.run_dir)
    assert second.status == "succeeded"
    after = run_status(first.run_dir)
    assert after.counts["done"] == 3 and after.counts["failed"] == 0 and not after.failures
