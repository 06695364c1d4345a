"""The MPI engine from inside the ranks: run under mpiexec at any size,

    mpiexec -n N python -m pytest --with-mpi -q tests/mpi        (N = 2, 3, 4)

Every rank runs every test and calls ``hf.run(engine="mpi")``; rank 0 coordinates.
Tests adapt to ``COMM_WORLD.size`` and skip, saying why, what a size cannot test.
Without ``--with-mpi`` (the normal pytest run) they are skipped and MPI is never
initialised: mpi4py is imported inside the tests only.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import pytest

import hpcflow as hf
from hpcflow.errors import ResourceError, RunFailed
from hpcflow.store.journal import Event, read_journal
from hpcflow.store.rundir import load_result

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(120)]


def _world():
    from mpi4py import MPI

    return MPI.COMM_WORLD


def square(x):
    return x * x


def total(xs):
    return sum(xs)


def fail_on(x, bad):
    if x == bad:
        raise ValueError(f"refusing {x}")
    return x


def test_every_rank_returns_the_same_result():
    offset = 7
    shifted = hf.task(lambda x: x + offset, name="shift").sweep({"x": range(30)})  # closure
    squares = hf.task(square).map(x=shifted)
    wf = hf.workflow("same", outputs={"sum": hf.task(total)(squares), "all": squares.all()})
    result = hf.run(wf, engine="mpi")
    expected = [(x + offset) ** 2 for x in range(30)]
    assert result.outputs == {"sum": sum(expected), "all": expected}
    assert result.status == "succeeded" and result.done == 61
    gathered = _world().allgather((result.status, result.outputs, result.run_dir, result.done))
    assert all(g == gathered[0] for g in gathered)


def test_journal_records_each_dispatch_and_completion_once():
    wf = hf.workflow("journal", outputs=[hf.task(square).sweep({"x": range(50)}).all()])
    result = hf.run(wf, engine="mpi")
    kinds = [e[0] for e in read_journal(Path(result.run_dir) / "journal.bin")]
    assert kinds[0] == Event.RUN and kinds[-1] == Event.END
    assert kinds.count(Event.DISPATCH) == 50 and kinds.count(Event.DONE) == 50


def test_failure_names_the_task_keeps_its_traceback_and_skips_dependents():
    runs = hf.task(fail_on).sweep({"x": range(6)}, bad=3)
    after = hf.task(square).map(x=runs)
    wf = hf.workflow("fails", outputs=[after.all()])
    result = hf.run(wf, engine="mpi", check=False)
    assert result.status == "failed" and result.skipped == 1 and result.done == 10
    [failure] = result.failures
    assert failure.task == "fail_on[3]" and "refusing 3" in failure.error
    assert "Traceback" in Path(failure.log).read_text()
    with pytest.raises(RunFailed, match=r"fail_on\[3\]"):
        hf.run(wf, engine="mpi")


def test_large_results_are_written_by_the_worker_and_journalled_as_files():
    import numpy as np

    big = hf.task(lambda n: np.arange(n, dtype=np.float64), name="big")(300_000)
    small = hf.task(lambda a: float(a[-1]), name="small")(big)
    result = hf.run(hf.workflow("files", outputs={"big": big, "last": small}), engine="mpi")
    assert result.outputs["last"] == 299_999.0
    done = {e[1]: e[6] for e in read_journal(Path(result.run_dir) / "journal.bin")
            if e[0] == Event.DONE}
    kind, path = done[0]
    assert kind == "file" and Path(path).parent == Path(result.run_dir) / "results"
    assert np.array_equal(load_result(done[0]), np.arange(300_000, dtype=np.float64))
    assert done[1][0] == "inline" and load_result(done[1]) == 299_999.0  # sealed bytes


MIB = 2**20


def allocate(mib):
    return len(bytearray(mib * MIB)) // MIB


def test_measured_memory_reaches_the_journal():
    big = hf.task(allocate, name="big")(200)
    tiny = hf.task(square, name="tiny").sweep({"x": range(20)})
    sh = hf.shell("\"$HPCFLOW_PYTHON\" -c 'b = bytearray(200 * 2**20)'", name="sh")()
    result = hf.run(hf.workflow("memory", outputs=[big, tiny.all(), sh]), engine="mpi")
    extra = {e[1]: e[7] for e in read_journal(Path(result.run_dir) / "journal.bin")
             if e[0] == Event.DONE}
    assert extra[0]["peak_rss"] - extra[0]["base_rss"] >= 195 * MIB  # in the worker rank
    assert extra[21]["peak_rss"] >= 200 * MIB  # the shell command, by wait4
    measured = [extra[i] for i in range(1, 21) if "peak_rss" in extra[i]]
    assert len(measured) < 20  # tiny tasks: the first of the group on each worker, mostly
    assert all(m["peak_rss"] - m["base_rss"] < 16 * MIB for m in measured)


def test_task_bigger_than_any_share_is_refused_on_every_rank_before_running():
    huge = hf.task(square, cores=100_000, name="huge")(2)
    with pytest.raises(ResourceError, match="huge"):
        hf.run(hf.workflow("huge", outputs=[huge]), engine="mpi")


def visible_gpus(i):
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def test_gpu_tasks_see_only_their_pinned_ids():
    """GPU ids come from the option (fake ids: the task code needs no GPU), two per worker."""
    workers = _world().size - 1
    ids = tuple(str(i) for i in range(2 * workers))  # two per worker: fake ids, no GPU needed
    one = hf.task(visible_gpus, gpus=1, name="one").sweep({"i": range(4)})
    two = hf.task(visible_gpus, gpus=2, name="two").sweep({"i": range(2)})
    cpu = hf.task(visible_gpus, name="cpu")(0)
    result = hf.run(hf.workflow("gpus", outputs={"one": one.all(), "two": two.all(),
                                                 "cpu": cpu}), engine="mpi", gpus=ids)
    shares = [set(ids[2 * w : 2 * w + 2]) for w in range(workers)]
    assert all(g in ids for g in result.outputs["one"])
    for pinned in result.outputs["two"]:
        assert set(pinned.split(",")) in shares
    assert result.outputs["cpu"] == ""  # a task that asked for no GPU sees none


def apply(fn, x):
    return fn(x)


def test_lambda_arguments_travel_by_value_and_unstorable_results_fail_the_task():
    factor = 3
    used = hf.task(apply, name="used")(lambda x: x * factor, 5)  # a closure as an argument
    gen = hf.task(lambda: (i for i in range(3)), name="gen")()  # a generator: no pickle
    result = hf.run(hf.workflow("byvalue", outputs=[used, gen]), engine="mpi", check=False)
    assert [f.task for f in result.failures] == ["gen"]
    assert "cannot be stored" in result.failures[0].error
    assert result.done == 1


def signal_own_worker(x):
    import signal

    if x == 0:
        os.kill(os.getpid(), signal.SIGTERM)  # as if only this worker had been told to stop
        time.sleep(5)
    time.sleep(0.05)
    return x


def test_a_worker_told_to_stop_fails_its_tasks_at_once_and_the_run_ends():
    tasks = hf.task(signal_own_worker).sweep({"x": range(8)})
    started = time.monotonic()
    result = hf.run(hf.workflow("signalled", outputs=[tasks.all()]), engine="mpi", check=False)
    assert time.monotonic() - started < 4  # the interrupted task did not sleep on
    assert result.status == "failed" and result.done + len(result.failures) == 8
    assert all("interrupted by SIGTERM" in f.error for f in result.failures)
    assert "signal_own_worker[0]" in [f.task for f in result.failures]


def test_short_tasks_travel_as_runs_with_the_coordinators_fingerprints():
    """Runs of a sweep's members (engine/runs.py): results, one DISPATCH and DONE per
    member, and a resume that reuses everything (the workers' fingerprints)."""
    from hpcflow.engine.runner import resume_preview

    n = 3000
    sweep = hf.task(square).sweep({"x": range(n)})
    wf = hf.workflow("runs", outputs={"all": sweep.all()})
    result = hf.run(wf, engine="mpi")
    assert result.outputs["all"] == [x * x for x in range(n)]
    if _world().rank != 0:
        return
    events = [e for e in read_journal(Path(result.run_dir) / "journal.bin")
              if e[0] == Event.DISPATCH]
    assert len(events) == n
    shared = sum(1 for a, b in itertools.pairwise(events) if (a[3], a[4]) == (b[3], b[4]))
    assert shared > n // 2, "members did not travel as runs"
    _, decision = resume_preview(wf, result.run_dir)
    assert decision.reasons == {} and len(decision.reuse) == n
