"""The engine-agnostic suite: the same workflows give the same outputs and failures on
every engine (local, mpi, dask, ray, spark), compared with the local engine's.

Failure reporting, retries and timeouts come from the shared core and the shared
Executor, which every backend runs on its workers; this suite is the proof.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from engine_workflows import expected_failing_dag, expected_random_dag

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
