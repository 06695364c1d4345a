"""Measured memory (hpcflow/engine/memory.py) through the shared Executor, here in the
test process, which plays a worker: in-process Python tasks, forked ones, shell
commands, failures and time-outs, and the two kernel traps (a child's ``ru_maxrss``
counts the image it was exec'd from; so does a worker's own).

The journal, the report and the engines are covered in test_report.py,
tests/mpi/test_mpi_run.py and tests/engines.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import hpcflow.engine.execute as execute
from hpcflow.engine.execute import Call, Executor
from hpcflow.engine.memory import process_meter, shell_memory
from hpcflow.model.task import PythonCall, ShellCommand

MIB = 2**20
ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(120)
meter = process_meter()
needs_reset = pytest.mark.skipif(
    meter is None or not meter.can_reset,
    reason="needs Linux with a writable /proc/self/clear_refs (in-process measurement)")
ALLOC = f"{sys.executable} -c 'b = bytearray(200 * 2**20)'"


def allocate(mib):
    block = bytearray(mib * MIB)  # zero-filled: every page touched
    return len(block) // MIB


def allocate_and_fail(mib):
    block = bytearray(mib * MIB)
    raise MemoryError(f"pretend {len(block)} was too much")


def tiny():
    return 1


def nap(seconds):
    time.sleep(seconds)
    return seconds


def allocate_and_die(mib):
    block = bytearray(mib * MIB)
    os.kill(os.getpid(), 9)  # as the OOM killer would
    return len(block)


ACTIONS = [PythonCall(allocate), PythonCall(tiny), PythonCall(nap), PythonCall(allocate_and_fail),
           ShellCommand(ALLOC), ShellCommand("true"),
           ShellCommand(f"{sys.executable} -c 'b = bytearray(200 * 2**20); import time; "
                        "time.sleep(60)'"),
           ShellCommand(f"{sys.executable} -c 'b = bytearray(200 * 2**20); raise SystemExit(3)'"),
           PythonCall(allocate_and_die)]
ALLOCATE, TINY, NAP, FAILS, SHELL_ALLOC, TRUE, SHELL_HOLD, SHELL_FAILS, DIES = range(len(ACTIONS))


@pytest.fixture
def executor(tmp_path, monkeypatch) -> Executor:
    # an Executor in this process pins CUDA_VISIBLE_DEVICES in os.environ, as a worker does:
    # setenv records how it was (unset, usually), so that teardown puts that back and a
    # later test that starts Ray in this process sees the machine's GPUs
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    return Executor(ACTIONS, str(tmp_path), [])


_ids = itertools.count()


def call(group: int, *args, timeout: float | None = None, isolate: bool = False) -> Call:
    i = next(_ids)
    return Call(i, 0, group, f"t{i}", args, {}, timeout=timeout, isolate=isolate)


@needs_reset
def test_in_process_peak_is_the_allocation_above_the_workers_baseline(executor):
    outcome = executor.run(call(ALLOCATE, 200))
    assert outcome.ok and outcome.value == 200
    grew = outcome.memory["peak_rss"] - outcome.memory["base_rss"]
    assert 195 * MIB <= grew <= 240 * MIB, outcome.memory
    assert outcome.memory["base_rss"] > 5 * MIB  # the worker's own, included in the peak


@needs_reset
def test_a_tiny_task_after_a_big_one_does_not_inherit_its_peak(executor):
    big = executor.run(call(ALLOCATE, 300))  # long: the group's next task is measured
    small = executor.run(call(ALLOCATE, 0))
    assert big.memory["peak_rss"] - big.memory["base_rss"] >= 295 * MIB
    assert small.memory is not None
    assert small.memory["peak_rss"] - small.memory["base_rss"] < 16 * MIB, small.memory


@needs_reset
def test_only_groups_whose_last_task_here_ran_long_are_measured(executor, monkeypatch):
    monkeypatch.setattr(execute, "WATCH_AFTER", 0.1)  # 1 ms in use; longer: no flaky stalls
    assert executor.run(call(TINY)).memory is not None  # the first of its group here
    assert [executor.run(call(TINY)).memory for _ in range(3)] == [None] * 3
    assert executor.run(call(NAP, 0.2)).memory is not None  # first of its group
    assert executor.run(call(NAP, 0.0)).memory is not None  # the last one was long
    assert executor.run(call(NAP, 0.2)).memory is None  # after a short one: not seen
    assert executor.run(call(NAP, 0.0)).memory is not None  # and so the next is


@needs_reset
def test_an_in_process_failure_carries_its_peak(executor):
    outcome = executor.run(call(FAILS, 200))
    assert not outcome.ok and "pretend" in outcome.error
    assert outcome.memory["peak_rss"] - outcome.memory["base_rss"] >= 195 * MIB


def test_shell_peak_comes_from_wait4(executor):
    outcome = executor.run(call(SHELL_ALLOC))
    assert outcome.ok, outcome.error
    assert 200 * MIB <= outcome.memory["peak_rss"] <= 260 * MIB, outcome.memory


def test_a_tiny_command_is_bounded_by_the_worker_now_not_by_its_history(executor):
    """A spawned child's ru_maxrss counts the worker image it was exec'd from (a vfork
    child: the worker's high-water mark): after the worker peaked at 400 MiB and freed it,
    ``true`` must not be reported at 400 MiB."""
    block = bytearray(400 * MIB)
    del block
    now = meter.rss() if meter is not None else 0
    outcome = executor.run(call(TRUE))
    assert outcome.ok and set(outcome.memory) in ({"peak_rss"}, {"peak_rss_bound"})
    assert max(outcome.memory.values()) < now + 32 * MIB, (outcome.memory, now)


def test_a_shell_failure_carries_its_peak(executor):
    outcome = executor.run(call(SHELL_FAILS))
    assert not outcome.ok and "status 3" in outcome.error
    assert outcome.memory["peak_rss"] >= 200 * MIB


def test_a_shell_time_out_measures_the_tree_it_kills(executor, tmp_path):
    outcome = executor.run(call(SHELL_HOLD, timeout=3))
    assert not outcome.ok and "timed out" in outcome.error
    assert outcome.memory["peak_rss"] >= 200 * MIB, outcome.memory


def test_a_forked_task_is_measured_by_wait4_with_its_own_baseline(executor):
    outcome = executor.run(call(ALLOCATE, 200, timeout=60))
    assert outcome.ok and outcome.value == 200
    grew = outcome.memory["peak_rss"] - outcome.memory["base_rss"]
    assert 195 * MIB <= grew <= 240 * MIB, outcome.memory
    again = executor.run(call(TINY, isolate=True))
    assert again.memory["peak_rss"] - again.memory["base_rss"] < 16 * MIB, again.memory


def test_a_forked_task_killed_for_memory_shows_its_peak(executor):
    outcome = executor.run(call(DIES, 200, isolate=True))
    assert not outcome.ok and "SIGKILL" in outcome.error
    assert outcome.memory["peak_rss"] >= 200 * MIB


@needs_reset
def test_a_worker_execd_from_a_large_parent_still_measures_small_tasks(tmp_path):
    """The kernel keeps the replaced image's size as the floor of a process's own
    ru_maxrss (a Dask worker spawned by its nanny): the meter must not report it."""
    child = textwrap.dedent(f"""
        import json, resource, sys
        sys.path.insert(0, {str(ROOT)!r})
        from hpcflow.engine.execute import Call, Executor
        from hpcflow.model.task import PythonCall
        def nap():
            import time; time.sleep(0.01)
        ex = Executor([PythonCall(nap)], {str(tmp_path)!r}, [])
        out = ex.run(Call(0, 0, 0, "nap", (), {{}}))
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps({{"memory": out.memory, "ru_maxrss": own}}))
    """)
    parent = (f"import subprocess, sys\nb = bytearray(400 * 2**20)\n"
              f"sys.exit(subprocess.run([sys.executable, '-c', {child!r}]).returncode)")
    done = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["ru_maxrss"] >= 400 * MIB  # the trap is real
    assert got["memory"]["peak_rss"] < 100 * MIB, got


def test_waiting_without_a_pidfd_polls_and_still_times_out(executor, monkeypatch):
    monkeypatch.delattr(os, "pidfd_open", raising=False)  # Linux < 5.3, or not Linux
    started = time.monotonic()
    late = executor.run(call(SHELL_HOLD, timeout=2))
    assert not late.ok and "timed out" in late.error and time.monotonic() - started < 10
    assert late.memory["peak_rss"] >= 200 * MIB
    quick = executor.run(call(SHELL_ALLOC, timeout=30))
    assert quick.ok and quick.memory["peak_rss"] >= 200 * MIB


def test_shell_memory_from_a_reading_and_its_floor():
    floor = 80 * MIB
    assert shell_memory(300 * MIB, floor) == {"peak_rss": 300 * MIB}
    assert shell_memory(81 * MIB, floor) == {"peak_rss_bound": 81 * MIB}
    assert shell_memory(80 * MIB, floor, live=250 * MIB) == {"peak_rss": 250 * MIB}
    assert shell_memory(300 * MIB, None) is None
