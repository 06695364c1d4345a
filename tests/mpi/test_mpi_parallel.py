"""Tasks that span several ranks or slots, and each rank's share of its node.

Run under mpiexec (see test_mpi_run.py). A ``ranks: 2`` task or a ``cores: 2`` task on
1-core shares needs two workers on one node: at 2 ranks (one worker) those tests skip.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import hpcflow as hf
from hpcflow.store.journal import Event, read_journal

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(120)]
two_workers = pytest.mark.mpi(min_size=3)  # pytest-mpi names the size it needs when it skips


def _world():
    from mpi4py import MPI

    return MPI.COMM_WORLD


def reduce_ranks(x, comm):
    return comm.allreduce(x + comm.rank), comm.size, comm.rank


def without_comm(x):
    return x + 1


@two_workers
def test_python_task_with_two_ranks_gets_a_two_rank_communicator():
    par = hf.task(reduce_ranks, ranks=2, name="par")(10)
    plain = hf.task(without_comm, ranks=2, name="plain")(1)
    result = hf.run(hf.workflow("ranks", outputs={"par": par, "plain": plain}), engine="mpi")
    assert result.outputs["par"] == (10 + 11, 2, 0)  # task-rank 0's value is the result
    assert result.outputs["plain"] == 2


@two_workers
def test_failure_on_one_task_rank_fails_the_task():
    def safe(comm):
        if comm.rank == 1:
            raise RuntimeError("rank 1 gives up")
        return "rank 0 fine"

    bad = hf.task(safe, ranks=2, name="bad")()
    result = hf.run(hf.workflow("rankfail", outputs=[bad]), engine="mpi", check=False)
    [failure] = result.failures
    assert failure.task == "bad" and "rank 1 gives up" in failure.error


@two_workers
def test_shell_task_with_two_ranks_runs_two_processes():
    program = ("import os; from mpi4py import MPI; c = MPI.COMM_WORLD; name = 'rank%dof%d' % "
               "(c.rank, c.size); open(os.path.join(os.environ['HPCFLOW_TASK_DIR'], name), 'w')")
    sh = hf.shell(["python", "-c", program], ranks=2, timeout=60, name="sh")()
    result = hf.run(hf.workflow("shellranks", outputs=[sh]), engine="mpi")
    folder = Path(result.run_dir) / "tasks" / "sh"
    assert sorted(p.name for p in folder.glob("rank*")) == ["rank0of2", "rank1of2"]


def allocate_by_rank(comm):
    return len(bytearray((50 + 150 * comm.rank) * 2**20))


@two_workers
def test_a_two_rank_task_reports_its_largest_ranks_memory():
    par = hf.task(allocate_by_rank, ranks=2, name="par")()
    result = hf.run(hf.workflow("rankmemory", outputs=[par]), engine="mpi")
    [extra] = [e[7] for e in read_journal(Path(result.run_dir) / "journal.bin")
               if e[0] == Event.DONE]
    assert extra["peak_rss"] - extra["base_rss"] >= 195 * 2**20  # task-rank 1's 200 MiB


def hold(tag, seconds):
    time.sleep(seconds)
    return tag


@two_workers
def test_wide_task_holds_two_one_core_shares_and_nothing_oversubscribes(monkeypatch):
    monkeypatch.setenv("HPCFLOW_CORES_PER_WORKER", "1")
    workers = _world().size - 1
    wide = hf.task(hold, cores=2, name="wide").sweep({"tag": ["w0", "w1"]}, seconds=0.3)
    narrow = hf.task(hold, name="narrow").sweep({"tag": list(range(2 * workers))}, seconds=0.3)
    result = hf.run(hf.workflow("wide", outputs=[wide.all(), narrow.all()]), engine="mpi")
    done = [e for e in read_journal(Path(result.run_dir) / "journal.bin") if e[0] == Event.DONE]
    cores = {e[1]: 2 if e[1] < 2 else 1 for e in done}  # wide's ids come first
    edges = sorted([(e[4] + 0.01, cores[e[1]]) for e in done] + [(e[5] - 0.01, -cores[e[1]])
                                                                   for e in done])
    in_use = peak = 0
    for _, change in edges:
        in_use += change
        peak = max(peak, in_use)
    assert 2 <= peak <= workers  # the wide task ran, and never beside too many others


def test_each_worker_finds_its_node_and_share():
    from hpcflow.engine.mpi.discover import discover_slot, node_view
    from hpcflow.engine.mpi.settings import Settings

    world = _world()
    view = node_view(world)  # collective: every rank calls it
    nodes = world.allgather(view.node)
    on_my_node = sum(1 for r, n in enumerate(nodes) if n == view.node and r != 0)
    assert view.workers == on_my_node
    if world.rank == 0:
        assert view.local_index == -1
        return
    gpus = tuple(f"g{i}" for i in range(2 * view.workers))
    slot = discover_slot(view, world.rank - 1, Settings(), gpus, memory=view.workers * 2**30,
                         env={})
    assert slot.index == world.rank - 1 and slot.node == view.node
    assert slot.gpus == gpus[2 * view.local_index : 2 * view.local_index + 2]
    assert slot.memory == 2**30 and slot.cores >= 1
