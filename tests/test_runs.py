"""Runs of short tasks (engine/runs.py) and the pieces under them: the ready queue, the
placer's run places, worker-side expansion with the coordinator's own fingerprints."""

from __future__ import annotations

import heapq
import itertools
import os
import random
from pathlib import Path

import pytest

import hpcflow as hf
from hpcflow.engine.execute import Call
from hpcflow.engine.runs import closed_groups, expand, run_specs
from hpcflow.plan.flatten import flatten
from hpcflow.plan.policy import Placer, Slot
from hpcflow.plan.ready import ReadyQueue
from hpcflow.store.journal import Event, read_journal
from hpcflow.store.resume import Fingerprinter

pytestmark = pytest.mark.timeout(120)


def twice(x, scale=2):
    return x * scale


def flaky(x, marks):
    """Fails the first time for multiples of 97 (a file marks the first attempt)."""
    mark = Path(marks) / str(x)
    if x % 97 == 0 and not mark.exists():
        mark.touch()
        raise RuntimeError(f"first attempt of {x}")
    return x


def total(xs):
    return sum(xs)


# -- the ready queue ------------------------------------------------------------------
def test_ready_queue_orders_by_key_then_arrival_like_a_sequenced_heap():
    rng = random.Random(7)
    queue, reference, seq = ReadyQueue(), [], itertools.count()
    for _ in range(3000):
        if rng.random() < 0.6 or not queue:
            key, i = float(rng.randrange(5)), rng.randrange(10**6)
            queue.push(key, i)
            heapq.heappush(reference, (key, next(seq), i))
        else:
            key, _, i = heapq.heappop(reference)
            assert queue.pop() == (key, i)
        assert len(queue) == len(reference)


def test_pop_run_takes_consecutive_ids_and_unpop_restores_the_order():
    queue = ReadyQueue((0.0, i) for i in [3, 4, 5, 7, 8])
    key, first = queue.pop()
    assert (key, first) == (0.0, 3)
    assert queue.pop_run(key, first, limit=10) == 2  # 4 and 5; 7 is not 6
    assert queue.pop() == (0.0, 7)
    assert queue.pop_run(0.0, 7, limit=10, exclude={8}) == 0
    queue.unpop([(0.0, 7)])
    assert [queue.pop() for _ in range(len(queue))] == [(0.0, 7), (0.0, 8)]


# -- the placer's run places ----------------------------------------------------------
def test_placer_runs_and_single_places_keep_loads_and_fullness_exact():
    rng = random.Random(3)
    slots = [Slot(k, f"n{k % 2}") for k in range(4)]
    placer = Placer(slots)
    held: list = []
    for step in range(4000):
        action = rng.random()
        if action < 0.05:
            placer.set_depth(rng.choice([1, 2, 8, 32]))
        elif action < 0.45:
            room = placer.room()
            got = placer.place_run(rng.randrange(1, 40))
            assert (got is None) == (room == 0)
            if got is not None:
                assert got[1] <= room
                held.extend([got[0]] * got[1])
        elif action < 0.55:
            got = placer.place(2, 0, 0, 1)  # two cores: both slots of a node, idle
            if got is not None:
                held.append(got)
        elif held:
            placer.release(held.pop(rng.randrange(len(held))))
        depth = placer.depth
        loads = [min(load, depth) for load in placer.load]
        assert all(load >= 0 for load in placer.load), step
        assert placer.full == all(load >= depth for load in loads), step


# -- expansion on the worker ----------------------------------------------------------
def test_expanded_members_match_the_coordinators_binding_and_fingerprints():
    sweep = hf.task(twice).sweep({"x": [1.5, 2.5, 3.5, 4.5]}, scale=3)
    plan = flatten(hf.workflow("w", outputs={"all": sweep.all()}))
    assert closed_groups(plan) == [0]
    spec = run_specs(plan)[0]
    run = Call(1, 0, 0, "twice", (), {}, (), None, (0,), False, 3, None)
    members = expand(spec, run)
    fingerprints = Fingerprinter(plan)
    assert [c.id for c in members] == [1, 2, 3]
    assert [c.name for c in members] == ["twice[1]", "twice[2]", "twice[3]"]
    for c in members:
        assert (c.args, c.kwargs) == plan.bind(c.id, {})
        assert c.fp == fingerprints.of(c.id, {})


def test_groups_that_read_other_tasks_are_not_closed():
    xs = hf.task(twice).sweep({"x": range(4)})
    ys = hf.task(twice).map(x=xs)
    gathered = hf.task(total)(ys)
    plan = flatten(hf.workflow("w", outputs={"t": gathered}))
    assert closed_groups(plan) == [0]


# -- end to end -----------------------------------------------------------------------
def test_a_failing_member_of_a_run_is_retried_alone(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    sweep = hf.task(flaky, retries=1).sweep({"x": range(1000)}, marks=str(marks))
    result = hf.run(hf.workflow("flaky", outputs={"all": sweep.all()}), workers=2,
                    run_dir=str(tmp_path / "run"))
    assert result.outputs["all"] == list(range(1000))
    retried = {e[1] for e in read_journal(tmp_path / "run" / "journal.bin") if e[0] == Event.RETRY}
    assert retried == set(range(0, 1000, 97))
    assert sorted(os.listdir(marks)) == sorted(str(x) for x in range(0, 1000, 97))
