"""Bundles (engine/backends/bundle.py): how the Dask and Ray backends group the calls
the core admits into framework tasks. No framework needed: the grouping is pure."""

from __future__ import annotations

import pickle
import random

import pytest

from hpcflow.engine.backends import bundle
from hpcflow.engine.backends.remote import Handle, Hole, fill
from hpcflow.engine.execute import Call, Outcome
from hpcflow.plan.policy import Placement
from hpcflow.store.trust import seal

pytestmark = pytest.mark.timeout(60)


class _Needs:
    def __init__(self, wide: set[int]) -> None:
        self.wide = wide

    def __call__(self, i: int) -> tuple[int, int, int, int]:
        return (2, 0, 0, 1) if i in self.wide else bundle.PLAIN


def _call(i: int, count: int = 1, **kwargs: object) -> Call:
    return Call(i, 0, 0, f"t[{i}]", (), dict(kwargs), count=count)


def _placed(call: Call, leader: int) -> tuple[Call, Placement]:
    return call, Placement((leader,), (leader,), ((),))


def test_calls_of_one_slot_share_a_task_up_to_the_cap_and_wide_ones_go_alone():
    rng = random.Random(5)
    leader_of = [rng.randrange(3) for _ in range(100)]
    batch = [_placed(_call(i), leader_of[i]) for i in range(100)]
    wide = {3, 50}
    tasks = bundle.bundles(batch, _Needs(wide), [False] * 100)
    members = [i for t in tasks for i, _ in t.members]
    assert sorted(members) == list(range(100))  # each call once
    for task in tasks:
        ids = [i for i, _ in task.members]
        assert len(ids) <= bundle.BUNDLE
        assert {leader_of[i] for i in ids} == {task.leader}
        assert ids == sorted(ids)  # in the order the core placed them
        if set(ids) & wide:
            assert len(ids) == 1 and task.need == (2, 0, 0, 1)
    assert len(tasks) < 100 // 4


def test_a_run_read_by_handle_is_cut_into_pieces_of_at_least_two():
    for n in (2, 16, 17, 33, 1000):
        run = _call(10, count=n)
        read = [True] * (10 + n)
        pieces = bundle.pieces(run, read)
        assert sum(p.count for p in pieces) == n
        assert all(2 <= p.count <= bundle.BUNDLE for p in pieces)
        assert [p.id for p in pieces] == [10 + sum(q.count for q in pieces[:k])
                                          for k in range(len(pieces))]
        assert bundle.pieces(run, [False] * (10 + n)) == [run]  # nobody reads: whole


def test_references_are_shared_within_a_task_and_holes_find_the_values():
    ref_a, ref_b = object(), object()
    calls = [_call(0, x=Handle(ref_a, (0,))), _call(1, y=[Handle(ref_a, (1, "k")),
                                                          Handle(ref_b, (0,))])]
    [task] = bundle.bundles([_placed(c, 0) for c in calls], _Needs(set()), [False, True])
    assert task.refs == [ref_a, ref_b] and task.keep
    assert isinstance(task.calls[0].kwargs["x"], Hole)
    values = [[10, {"k": 11}], [20]]  # each reference's list of member values
    assert fill(task.calls[0], values).kwargs == {"x": 10}
    assert fill(task.calls[1], values).kwargs == {"y": [11, 20]}
    calls_back, ranks, keep = bundle.unpack(task.payload())
    assert [c.id for c in calls_back] == [0, 1] and ranks == 1 and keep


def test_outcomes_round_trip_as_plain_tuples_and_members_load_one_by_one():
    outcomes = [Outcome(i, 0, True, None, 1.0, 2.0, 0, stored=("inline", seal(pickle.dumps(i * i))))
                for i in range(3)]
    back = bundle.unpack_outcomes(bundle.pack_outcomes(outcomes))
    assert back == outcomes and all(type(o) is Outcome for o in back)
    members = bundle.Members(back)
    assert len(members) == 3 and members[2] == 4
