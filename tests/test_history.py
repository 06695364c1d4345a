"""The history of measured attempts: the estimator on recorded samples, the SQLite file
(bounds, locking, concurrent writers), and real runs recorded then planned again."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import hpcflow as hf
from hpcflow.plan.estimates import (
    MARGIN,
    GroupEstimate,
    Sample,
    duration_estimate,
    estimate,
    member_times,
    memory_estimate,
)
from hpcflow.plan.flatten import flatten
from hpcflow.store import history as store
from hpcflow.store.history import Attempt, History, Measured, history_path
from hpcflow.store.learned import with_learned
from hpcflow.store.measured import outcome_of, wait_for_recording

G = 2**30


def done(seconds: float, memory: int = 0) -> Sample:
    return Sample(seconds, memory, "done")


# -- the estimator -------------------------------------------------------------------

def test_median_quantile_and_a_margin_that_shrinks_with_samples():
    one = estimate([100.0])
    assert one is not None and one.median == one.high == 100.0
    assert one.request == pytest.approx(100.0 * (1 + MARGIN))
    many = estimate([float(v) for v in range(1, 101)])
    assert many is not None and many.median == pytest.approx(50.5)
    assert many.high == pytest.approx(95.05)
    assert many.request == pytest.approx(95.05 * (1 + MARGIN / 10))
    assert estimate([], []) is None


def test_a_timeout_is_a_lower_bound_that_never_lowers_the_estimate():
    samples = [done(10.0), done(12.0), done(11.0), Sample(60.0, 0, "timeout")]
    d = duration_estimate(samples)
    assert d is not None and d.count == 3 and d.bound == 60.0
    assert d.median >= 60.0 and d.request >= 60.0
    short_bound = duration_estimate([done(10.0), done(12.0), Sample(5.0, 0, "timeout")])
    assert short_bound is not None and short_bound.median == pytest.approx(11.0)


def test_only_killed_attempts_give_at_least_their_bound():
    d = duration_estimate([Sample(30.0, 0, "timeout"), Sample(45.0, 0, "timeout")])
    assert d is not None and d.count == 0 and d.median == 45.0 and d.request > 45.0


def test_an_oom_kill_bounds_memory_from_below_but_not_the_duration():
    samples = [done(10.0, 2 * G), done(11.0, 2 * G), Sample(3.0, 8 * G, "oom")]
    m = memory_estimate(samples)
    assert m is not None and m.count == 2 and m.median == 8 * G and m.request >= 8 * G
    d = duration_estimate(samples)
    assert d is not None and d.count == 2 and d.median == pytest.approx(10.5)


def test_unmeasured_memory_is_left_out():
    assert memory_estimate([done(1.0), done(2.0)]) is None


def test_outcome_of_the_engines_error_texts():
    assert outcome_of("timed out after 5 s; its processes were ended") == "timeout"
    assert outcome_of("died of SIGKILL") == "oom"
    assert outcome_of("MemoryError: cannot allocate") == "oom"
    assert outcome_of("ValueError: bad input") == "failed"


def test_warns_where_the_declaration_is_far_from_the_measurements():
    d = duration_estimate([done(360.0)] * 12)
    near = GroupEstimate("sim", "h", "learned", 360.0, 600.0, 0, d)
    far = GroupEstimate("sim", "h", "learned", 360.0, 7200.0, 0, d)
    assert near.warnings() == []
    assert far.warnings() == ["sim: declared time 2h, measured 6m median, at most 6m over "
                              "12 attempts"]
    m = memory_estimate([done(1.0, 31 * G)] * 3)
    assert GroupEstimate("sim", "h", "learned", 1.0, None, 4 * G, None, m).warnings() == [
        "sim: declared memory 4G, measured peak 31G over 3 attempts"]


# -- the file ------------------------------------------------------------------------

def _measured(name: str, durations: list[float], definition: str | None = None) -> Measured:
    attempts = [Attempt(done(d, G), 1000.0 + k, "local", 4, False)
                for k, d in enumerate(durations)]
    return Measured(definition or f"hash-{name}", name, "wf", len(durations), attempts)


def test_path_option_then_environment_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("HPCFLOW_HISTORY", str(tmp_path / "env.sqlite"))
    assert history_path(tmp_path / "opt.sqlite") == tmp_path / "opt.sqlite"
    assert history_path() == tmp_path / "env.sqlite"
    monkeypatch.delenv("HPCFLOW_HISTORY")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert history_path() == tmp_path / "xdg" / "hpcflow" / "history.sqlite"


def test_rollback_journal_not_wal(tmp_path):
    with History(tmp_path / "h.sqlite") as history:
        mode = history._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "delete"


def test_keeps_the_newest_samples_and_counts_instances(tmp_path):
    with History(tmp_path / "h.sqlite") as history:
        history.record([_measured("sim", [float(k) for k in range(80)])])
        history.record([_measured("sim", [float(k) for k in range(80, 160)])])
        samples = history.samples("hash-sim")
        assert len(samples) == store.KEEP
        assert [s.duration for s in samples] == [float(k) for k in range(60, 160)]
        (entry,) = history.entries("sim")
        assert (entry.runs, entry.samples, entry.instances) == (2, store.KEEP, 80)
        assert history.instances("hash-sim") == 80


def test_the_longest_unseen_definitions_go_beyond_the_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "MAX_DEFINITIONS", 3)
    with History(tmp_path / "h.sqlite") as history:
        for k, name in enumerate("abcde"):
            history.record([_measured(name, [1.0])], now=1000.0 + k)
        assert [e.name for e in history.entries()] == ["e", "d", "c"]
        count = history._db.execute("SELECT COUNT(*) FROM attempts").fetchone()[0]
    assert count == 3


def test_forget_by_name_or_hash_prefix(tmp_path):
    with History(tmp_path / "h.sqlite") as history:
        history.record([_measured("a", [1.0], "aaaa1"), _measured("b", [2.0], "bbbb2")])
        assert history.forget([e.definition for e in history.entries("bbb")]) == 1
        assert [e.name for e in history.entries()] == ["a"]
        assert history.samples("bbbb2") == []


def test_an_unwritable_place_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(store.HistoryError, match="cannot open the history"):
        History(blocker / "sub" / "h.sqlite")


def _writer(path: str, k: int, rounds: int) -> None:
    with History(path) as history:
        for r in range(rounds):
            history.record([_measured(f"w{k}", [float(r)]), _measured("shared", [float(k)])])


@pytest.mark.timeout(120)
def test_concurrent_writer_processes_lose_nothing(tmp_path):
    path, writers, rounds = str(tmp_path / "h.sqlite"), 4, 30
    History(path).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, k, rounds)) for k in range(writers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(100)
    assert [p.exitcode for p in procs] == [0] * writers
    with History(path) as history:
        runs = {e.name: e.runs for e in history.entries()}
        assert runs == {"shared": writers * rounds, **{f"w{k}": rounds for k in range(writers)}}
        assert len(history.samples("hash-shared")) == store.KEEP
        assert all(len(history.samples(f"hash-w{k}")) == rounds for k in range(writers))
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# -- real runs -----------------------------------------------------------------------

def nap(x: int, seconds: float = 0.2) -> int:
    time.sleep(seconds)
    return x


def _workflow(declared: str = "10m") -> hf.Workflow:
    sim = hf.task(nap, name="sim", time=declared, memory="8G").sweep({"x": range(4)})
    return hf.workflow("naps", outputs={"all": sim.all()})


@pytest.mark.timeout(120)
def test_a_run_is_recorded_and_the_next_plan_uses_what_it_measured(tmp_path):
    path = str(tmp_path / "h.sqlite")
    hf.run(_workflow(), engine="local", workers=2, runs_root=str(tmp_path), history_path=path)
    wait_for_recording()
    with History(path) as history:
        (entry,) = history.entries("sim")
        attempts = history.attempts(entry.definition)
        assert entry.instances == 4 and len(attempts) == 4
        assert all(0.19 < a.sample.duration < 2.0 and a.sample.outcome == "done"
                   for a in attempts)
        assert attempts[0].engine == "local" and attempts[0].cores == 2
        plan, (est,) = with_learned(flatten(_workflow()), history)
    assert est.source == "learned" and est.duration is not None and est.duration.count == 4
    assert np.allclose(plan.time, est.time) and 0.19 < est.time < 2.0
    assert plan.memory.max() < 8 * G  # learned downward: a sleeping task holds ~50 MB
    declared, (d,) = with_learned(flatten(_workflow()), None)
    assert d.source == "declared" and np.allclose(declared.time, 600.0)


@pytest.mark.timeout(120)
def test_history_false_records_nothing(tmp_path):
    path = tmp_path / "h.sqlite"
    hf.run(_workflow(), engine="local", workers=2, runs_root=str(tmp_path), history=False,
           history_path=str(path))
    wait_for_recording()
    assert not path.exists()


@pytest.mark.timeout(120)
def test_a_timed_out_attempt_is_recorded_as_a_lower_bound(tmp_path):
    path = str(tmp_path / "h.sqlite")
    slow = hf.task(nap, name="slow", timeout=0.5)(1, seconds=5.0)
    with pytest.raises(hf.RunFailed):
        hf.run(hf.workflow("slow", outputs={"x": slow}), engine="local", workers=1,
               runs_root=str(tmp_path), history_path=path)
    wait_for_recording()
    with History(path) as history:
        (entry,) = history.entries("slow")
        (sample,) = history.samples(entry.definition)
    assert sample.outcome == "timeout" and sample.duration >= 0.5
    d = duration_estimate([done(0.1), sample])
    assert d is not None and d.median >= 0.5


WORKFLOW_PY = '''
import time
import hpcflow as hf

def nap(x):
    time.sleep(0.3)
    return x

sim = hf.task(nap, name="sim", time="2h").sweep({"x": range(4)})
wf = hf.workflow("naps", outputs={"all": sim.all()})
'''


def _cli(*args: str, cwd: Path, history: Path) -> subprocess.CompletedProcess[str]:
    import os

    env = {**os.environ, "HPCFLOW_HISTORY": str(history), "HPCFLOW_RUNS": str(cwd / "runs")}
    return subprocess.run([sys.executable, "-m", "hpcflow", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=90)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_cli_run_then_plan_shows_learned_values_and_warns_once(tmp_path):
    (tmp_path / "wf.py").write_text(WORKFLOW_PY)
    history = tmp_path / "h.sqlite"
    for _ in range(2):
        assert _cli("run", "wf.py:wf", "-q", "--workers", "2", cwd=tmp_path,
                    history=history).returncode == 0
    out = _cli("plan", "wf.py:wf", cwd=tmp_path, history=history)
    assert out.returncode == 0, out.stderr
    assert "sim: time 0.3" in out.stdout and "learned: 8 samples, median 0.3" in out.stdout
    assert out.stdout.count("warning: sim: declared time 2h") == 1
    data = json.loads(_cli("plan", "wf.py:wf", "--json", cwd=tmp_path, history=history).stdout)
    (group,) = data["estimates"]
    assert group["source"] == "learned" and 0.29 < group["time"] < 1.0
    assert data["critical_path"]["seconds"] < 5.0
    plain = _cli("plan", "wf.py:wf", "--no-history", cwd=tmp_path, history=history)
    assert "sim: time 2h declared" in plain.stdout and "warning" not in plain.stdout
    shown = _cli("history", "show", "sim", cwd=tmp_path, history=history)
    assert shown.returncode == 0 and shown.stdout.count("done") == 8
    listed = json.loads(_cli("history", "--json", cwd=tmp_path, history=history).stdout)
    assert [(e["name"], e["runs"], e["samples"]) for e in listed] == [("sim", 2, 8)]
    assert "forgot 1" in _cli("history", "forget", "--all", cwd=tmp_path, history=history).stdout
    again = _cli("plan", "wf.py:wf", cwd=tmp_path, history=history)
    assert "sim: time 2h declared" in again.stdout


def test_cli_history_show_of_an_unknown_name_is_bad_input(tmp_path):
    out = _cli("history", "show", "nothing", cwd=tmp_path, history=tmp_path / "h.sqlite")
    assert out.returncode == 2 and "no history for 'nothing'" in out.stderr


def test_plan_with_an_unreadable_history_warns_and_plans_as_declared(tmp_path):
    (tmp_path / "wf.py").write_text(WORKFLOW_PY)
    broken = tmp_path / "h.sqlite"
    broken.write_text("not a database " * 100)
    out = _cli("plan", "wf.py:wf", cwd=tmp_path, history=broken)
    assert out.returncode == 0 and "sim: time 2h declared" in out.stdout
    assert "planning with the declared values" in out.stderr


def test_plan_creates_no_history(tmp_path):
    (tmp_path / "wf.py").write_text(WORKFLOW_PY)
    out = _cli("plan", "wf.py:wf", cwd=tmp_path, history=tmp_path / "none" / "h.sqlite")
    assert out.returncode == 0 and not (tmp_path / "none").exists()


def test_a_failed_attempt_counts_for_nothing():
    samples = [done(100.0, G), done(110.0, G), Sample(0.01, 10, "failed")]
    d, m = duration_estimate(samples), memory_estimate(samples)
    assert d is not None and d.count == 2 and d.median == pytest.approx(105.0)
    assert m is not None and m.count == 2 and m.median == G
    assert duration_estimate([Sample(0.01, 0, "failed")]) is None


def greedy(x: int) -> int:
    raise MemoryError(f"cannot hold {x} GiB")


@pytest.mark.timeout(120)
def test_a_task_out_of_memory_is_recorded_as_oom(tmp_path):
    path = str(tmp_path / "h.sqlite")
    with pytest.raises(hf.RunFailed):
        hf.run(hf.workflow("oom", outputs={"x": hf.task(greedy, name="greedy")(64)}),
               engine="local", workers=1, runs_root=str(tmp_path), history_path=path)
    wait_for_recording()
    with History(path) as history:
        (entry,) = history.entries("greedy")
        assert [s.outcome for s in history.samples(entry.definition)] == ["oom"]


@pytest.mark.timeout(120)
def test_cli_history_option_wins_over_the_environment_and_forget_by_name(tmp_path):
    (tmp_path / "wf.py").write_text(WORKFLOW_PY.replace("range(4)", "range(1)"))
    env_file, option_file = tmp_path / "env.sqlite", tmp_path / "option.sqlite"
    ran = _cli("run", "wf.py:wf", "-q", "--history", str(option_file), cwd=tmp_path,
               history=env_file)
    assert ran.returncode == 0, ran.stderr
    assert option_file.exists() and not env_file.exists()
    listed = _cli("history", "--history", str(option_file), cwd=tmp_path, history=env_file)
    assert "sim " in listed.stdout and "1 attempt, 1 run, 1 instance," in listed.stdout
    gone = _cli("history", "forget", "sim", "--history", str(option_file), cwd=tmp_path,
                history=env_file)
    assert "forgot 1" in gone.stdout
    with History(option_file) as history:
        assert history.entries() == []


def test_a_member_whose_own_samples_differ_clearly_keeps_them():
    group = duration_estimate([done(10.0)] * 6 + [done(100.0)] * 3)
    assert group is not None and group.median == 10.0
    members = {0: [done(10.0)] * 3, 1: [done(11.0)] * 3, 2: [done(100.0)] * 3,
               3: [done(100.0)] * 2}
    assert member_times(group, members) == {2: 100.0}  # member 3: too few samples


def sized(x: int, seconds: float) -> int:
    time.sleep(seconds)
    return x


@pytest.mark.timeout(180)
def test_sweep_members_with_their_own_durations_are_planned_with_them(tmp_path):
    path = str(tmp_path / "h.sqlite")

    def workflow() -> hf.Workflow:
        runs = hf.task(sized, name="sized").sweep({"x": [0, 1, 2], "seconds": [0.02, 0.6]},
                                                  mode="product")
        return hf.workflow("sized", outputs={"all": runs.all()})

    for _ in range(3):
        hf.run(workflow(), engine="local", workers=2, runs_root=str(tmp_path), history_path=path)
        wait_for_recording()
    with History(path) as history:
        plan, (est,) = with_learned(flatten(workflow()), history)
    assert sorted(est.members) == [0, 1, 2, 3, 4, 5]
    short, long_ = plan.time[[0, 2, 4]], plan.time[[1, 3, 5]]
    assert (short < 0.3).all() and (long_ > 0.55).all(), plan.time


def test_a_request_never_takes_more_than_the_declared_values_unless_asked(tmp_path):
    """The design brief: declared values are what the user allows; learned ones may lower
    a request but raise only the prediction, unless --above-declared."""
    plan = flatten(_workflow("10s"))
    (group,) = plan.groups
    from hpcflow.store.resume import definition_hash

    definition = definition_hash(group, plan.groups, plan.python_path)
    with History(str(tmp_path / "h.sqlite")) as history:
        attempts = [Attempt(done(d, 12 * G), 1000.0 + k, "local", 4, False)
                    for k, d in enumerate([30.0, 31.0, 29.0])]
        history.record([Measured(definition, "sim", "wf", 3, attempts)])
        predicted, _ = with_learned(plan, history)
        request, (est,) = with_learned(plan, history, within_declared=True)
    assert np.allclose(predicted.time, 30.0) and predicted.memory.max() > 8 * G
    assert np.allclose(request.time, 10.0) and request.memory.max() == 8 * G
    assert est.time == 10.0
    faster = flatten(_workflow("10m"))
    with History(str(tmp_path / "h.sqlite")) as history:
        lowered, _ = with_learned(faster, history, within_declared=True)
    assert np.allclose(lowered.time, 30.0)  # below the declared 10 min: learned wins


def test_a_history_from_before_sweep_members_were_kept_is_upgraded_in_place(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE definitions (hash TEXT PRIMARY KEY, name TEXT NOT NULL, workflow TEXT NOT
            NULL, instances INTEGER NOT NULL, runs INTEGER NOT NULL, seen REAL NOT NULL);
        CREATE TABLE attempts (id INTEGER PRIMARY KEY, hash TEXT NOT NULL, at REAL NOT NULL,
            duration REAL NOT NULL, memory INTEGER NOT NULL, outcome TEXT NOT NULL,
            engine TEXT NOT NULL, cores INTEGER NOT NULL, gpu INTEGER NOT NULL);
        INSERT INTO definitions VALUES ('hash-old', 'old', 'wf', 1, 1, 1.0);
        INSERT INTO attempts VALUES (1, 'hash-old', 1.0, 7.0, 1024, 'done', 'local', 2, 0);
    """)
    db.commit()
    db.close()
    with History(str(path)) as history:
        history.record([_measured("sim", [3.0])])
        assert [s.duration for s in history.samples("hash-sim")] == [3.0]
        assert [s.duration for s in history.samples("hash-old")] == [7.0]
