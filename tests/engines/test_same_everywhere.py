"""The engine-agnostic suite: the same workflows give the same outputs and failures on
every engine (local, mpi, dask, ray, spark), compared with the local engine's.

Failure reporting, retries and timeouts come from the shared core and the shared
Executor, which every backend runs on its workers; this suite is the proof.
"""

from __future__ import annotations

import time
from pathlib import Path

import engine_workflows
import pytest
from engine_workflows import (
    BAD,
    LAYERS,
    RETRIED,
    SHORT_SWEEP,
    WIDTH,
    expected_failing_dag,
    expected_layered,
    expected_random_dag,
)

from hpcflow.engine.runner import resume_preview
from hpcflow.report.status import load_run
from hpcflow.store.journal import Event, read_journal

pytestmark = pytest.mark.timeout(240)


def _journal(run_dir: str) -> list[tuple]:
    return list(read_journal(Path(run_dir) / "journal.bin"))


@pytest.mark.parametrize("builder", ["sweep_gather", "keyed", "method", "large"])
def test_outputs_match_local(engine, reference, builder, tmp_path):
    got = engine.run(builder, tmp_path)
    assert got.status == "succeeded"
    assert got == reference(builder, tmp_path)


def test_local_reference_is_right(reference, tmp_path):
    """The reference itself, against values computed by hand."""
    assert reference("sweep_gather", tmp_path).outputs == {
        "sum": "285", "all": repr([i * i for i in range(10)])}
    assert reference("keyed", tmp_path).outputs == {
        "sum_a": "6", "squares": "[0, 1, 4, 9]", "first_b": "[0, 1, 2, 3]"}
    assert reference("large", tmp_path).outputs == {"once": repr(19999900000.0),
                                                    "twice": repr(39999800000.0)}


def test_failure_skips_dependents_and_finishes_the_rest(engine, reference, tmp_path):
    got = engine.run("failing", tmp_path)
    assert got == reference("failing", tmp_path)
    assert got.status == "failed" and got.failures == [("fail_on[2]", "ValueError: refusing 2")]
    assert got.skipped == 1 and got.done == 6
    log = Path(got.run_dir) / "tasks" / "fail_on[2]" / "error.log"
    assert "Traceback" in log.read_text()


def test_retries_then_success(engine, tmp_path):
    got = engine.run("retries", tmp_path)
    assert got.status == "succeeded" and got.outputs == {"out0": "'ok'"}
    assert (tmp_path / "tries").read_text() == "3"
    kinds = [e[0] for e in _journal(got.run_dir)]
    assert kinds.count(Event.RETRY) == 2 and kinds.count(Event.DONE) == 1


def test_shell_outputs_logs_and_quoting(engine, reference, tmp_path):
    got = engine.run("shell_outputs", tmp_path)
    assert got == reference("shell_outputs", tmp_path)
    out = Path(got.run_dir) / "tasks" / "write" / "o.txt"
    assert out.read_text().startswith("x'; touch ")
    assert not (tmp_path / "pwned").exists()
    assert (out.parent / "stdout.log").read_text() == "done\n"


def test_each_task_s_environment_is_set_where_it_runs(engine, reference, tmp_path):
    got = engine.run("environments", tmp_path)
    assert got == reference("environments", tmp_path)
    home = str(Path.home())
    values = ["a value", "4", f"{home}/x:"]  # $NOPE is unset: empty, as in the shell
    assert got.outputs == {"python": repr(values), "forked": repr(values),
                           "shell": repr("|".join(values)), "method": repr(("a value", "4"))}


def test_shell_timeout_ends_the_process_tree(engine, reference, tmp_path):
    start = time.monotonic()
    got = engine.run("shell_timeout", tmp_path)
    assert time.monotonic() - start < 60
    assert got == reference("shell_timeout", tmp_path)
    assert "timed out" in got.failures[0][1]
    child = int((tmp_path / "child.pid").read_text())
    time.sleep(0.2)
    proc = Path(f"/proc/{child}/stat")
    assert not proc.exists() or proc.read_text().split()[2] == "Z"


def test_python_timeout(engine, reference, tmp_path):
    start = time.monotonic()
    got = engine.run("python_timeout", tmp_path)
    assert time.monotonic() - start < 60
    assert got == reference("python_timeout", tmp_path)
    assert got.failures[0][0] == "late" and "timed out" in got.failures[0][1]
    assert got.done == 1


def test_measured_memory_is_journalled(engine, tmp_path):
    """Every backend's workers measure through the shared Executor (engine/memory.py)."""
    got = engine.run("memory", tmp_path)
    assert got.status == "succeeded"
    view = load_run(got.run_dir)
    extra = {view.name(i): e for i, e in view.extra.items()}
    python, shell = extra["big_python"], extra["big_shell"]
    assert python["peak_rss"] - python["base_rss"] >= 195 * 2**20, python
    assert shell["peak_rss"] >= 200 * 2**20, shell


def test_large_results_are_written_by_workers_and_journalled(engine, tmp_path):
    got = engine.run("large", tmp_path)
    done = {e[1]: e[6] for e in _journal(got.run_dir) if e[0] == Event.DONE}
    kinds = sorted(stored[0] for stored in done.values())
    assert kinds == ["file", "inline", "inline"]
    [path] = [stored[1] for stored in done.values() if stored[0] == "file"]
    assert Path(path).is_file() and Path(path).parent.name == "results"


@pytest.mark.slow
def test_random_dag_matches_local_and_python(engine, reference, tmp_path):
    got = engine.run("random_dag", tmp_path, timeout=300)
    assert got == reference("random_dag", tmp_path)
    assert got.outputs["values"] == repr(expected_random_dag())


@pytest.mark.slow
def test_random_dag_with_failures_fails_the_same_way(engine, reference, tmp_path):
    got = engine.run("random_dag_failing", tmp_path, timeout=300)
    assert got == reference("random_dag_failing", tmp_path)
    failed, skipped = expected_failing_dag()
    assert {int(task[1:]) for task, _ in got.failures} == failed
    assert got.skipped == skipped


# -- many short tasks: runs and bundles (the local, MPI, Dask and Ray backends) ----------
def _runs(journal: list[tuple]) -> list[list[int]]:
    """DISPATCH events of one call (a run) share worker and time: consecutive ids so."""
    runs: list[list[int]] = []
    last = None
    for event in journal:
        if event[0] != Event.DISPATCH:
            continue
        key = (event[3], event[4])
        if runs and key == last and event[1] == runs[-1][-1] + 1:
            runs[-1].append(event[1])
        else:
            runs.append([event[1]])
        last = key
    return runs


@pytest.mark.engines("local", "mpi", "dask", "ray")  # Spark: no runs, ~100 ms a job
def test_short_sweep_travels_as_runs_and_resume_reuses_every_member(engine, reference,
                                                                     tmp_path):
    got = engine.run("short_sweep", tmp_path)
    assert got == reference("short_sweep", tmp_path)
    assert got.outputs["sum"] == repr(sum(x * x for x in range(SHORT_SWEEP)))
    journal = _journal(got.run_dir)
    kinds = [e[0] for e in journal]
    assert kinds.count(Event.DISPATCH) == kinds.count(Event.DONE) == SHORT_SWEEP + 1
    assert len({e[1] for e in journal if e[0] == Event.DONE}) == SHORT_SWEEP + 1
    assert max(len(r) for r in _runs(journal)) >= 8, "no run of several members was sent"
    _, decision = resume_preview(engine_workflows.short_sweep(), got.run_dir)
    assert decision.reasons == {}  # the workers' fingerprints are the coordinator's
    assert len(decision.reuse) == SHORT_SWEEP + 1


def _ran(folder: Path) -> set[tuple[int, int]]:
    return {tuple(int(x) for x in f.name.split("-")[1:]) for f in folder.glob("ran-*")}


def test_layered_dag_of_short_tasks_matches_local(engine, reference, tmp_path):
    got = engine.run("layered", tmp_path)
    assert got == reference("layered", tmp_path)
    last, ran = expected_layered(failing=False)
    assert got.outputs["last"] == repr(last)
    assert _ran(tmp_path) == ran


def test_a_failure_inside_a_dag_of_short_tasks_runs_none_of_its_descendants(
        engine, reference, tmp_path):
    got = engine.run("layered_failing", tmp_path)
    assert got == reference("layered_failing", tmp_path)
    _, ran = expected_layered(failing=True)
    assert got.failures == [(f"layer{BAD[0]}[{BAD[1]}]", "ValueError: step 3-7 fails on purpose")]
    assert got.skipped == LAYERS * WIDTH - WIDTH - len(ran)
    assert _ran(tmp_path) == ran  # each ran once, and no descendant of BAD ever started
    skipped = {e[1] for e in _journal(got.run_dir) if e[0] == Event.SKIP}
    started = {e[1] for e in _journal(got.run_dir) if e[0] == Event.DISPATCH}
    assert len(skipped) == got.skipped and not skipped & started


def test_a_retried_member_s_dependent_reads_the_retried_value(engine, reference, tmp_path):
    got = engine.run("retried_member", tmp_path)
    assert got == reference("retried_member", tmp_path)
    expected = [(x, 2 if x == RETRIED else 1) for x in range(100)]
    assert got.outputs["all"] == repr(expected)
    retried = [e[1] for e in _journal(got.run_dir) if e[0] == Event.RETRY]
    assert len(retried) == 1
