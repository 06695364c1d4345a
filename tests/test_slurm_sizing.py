"""Sizing a Slurm request on hand-checked plans.

Each expected number below is worked out by hand in the comment beside it: ``n``
independent tasks of ``t`` seconds on ``w`` worker ranks take ``ceil(n / w) * t``; a
candidate on ``N`` whole nodes of ``C`` cores has ``N * C - 1`` workers (rank 0 is the
coordinator); the requested time is ``ceil((1.1 * makespan + 60) / 60)`` minutes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import hpcflow as hf
from hpcflow.errors import ResourceError
from hpcflow.plan.analyse import analyse
from hpcflow.plan.flatten import flatten
from hpcflow.plan.graph import plan_from_edges
from hpcflow.plan.simulate import lower_bound
from hpcflow.scheduler.slurm.errors import SizingError
from hpcflow.scheduler.slurm.profile import Partition, Profile
from hpcflow.scheduler.slurm.shape import Shape, allocation_slots, memory_request
from hpcflow.scheduler.slurm.sizing import Overrides, requested_time, size

G = 2**30


def profile(nodes=4, cores=4, memory="16G", gpus=0, max_time="01:00:00", **kw) -> Profile:
    return Profile(name="t", partitions=[Partition(
        name="p", nodes=nodes, cores_per_node=cores, memory_per_node=memory, gpus_per_node=gpus,
        max_time=max_time)], **kw)


def independent(n: int, seconds: float, **resources):
    return plan_from_edges(n, [], [], time=seconds, **resources)


def sized(plan, prof, **over):
    return size(plan, analyse(plan), prof, Overrides(**over))


def test_requested_time_is_makespan_plus_margin_in_whole_minutes():
    prof = profile()
    assert requested_time(300, prof) == 420  # 330 + 60 = 390 s -> 7 min
    assert requested_time(0, prof) == 60
    assert requested_time(100, profile(margin_fraction=0.5, margin_seconds=0)) == 180


def test_independent_tasks_fewest_node_hours_ties_to_fewer_nodes():
    s = sized(independent(8, 100), profile())
    # 1 node: 3 workers, 3 rounds = 300 s; 2: 7 workers, 200 s. Node-hours 300, 400
    # (x1/3600). 3 nodes (11 workers) cannot beat 100 s, the critical path: at least 300
    # node-s, no saving over 1 node, so it is listed, not simulated, and nothing more.
    assert [c.shape.nodes for c in s.candidates] == [1, 2, 3]
    assert [c.makespan for c in s.candidates] == [300, 200, None]
    assert s.candidates[2].bound == 100 and "saves no node-hours" in s.candidates[2].note
    assert [c.shape.workers for c in s.candidates] == [3, 7, 11]
    assert s.shape.nodes == 1 and s.time == 420
    assert s.shape.ntasks_per_node == 4 and s.shape.cpus_per_task == 1
    assert s.shape.memory_per_node == 16 * G  # whole node: all its memory


def test_deadline_picks_the_cheapest_that_fits():
    s = sized(independent(8, 100), profile(), deadline=300)
    # 1 node: even the bound 800/3 s needs 6 min > 5: not simulated; 2 nodes 280 s -> 5 min
    # fits (0.111 node-h); 3 nodes 170 s -> 3 min fits (0.083 node-h): 3 nodes win.
    assert [c.fits for c in s.candidates] == [False, True, True]
    assert s.candidates[0].makespan is None and "over the limit" in s.candidates[0].note
    assert s.shape.nodes == 3 and s.time == 180 and s.limit == 300
    assert "--deadline" in s.reason


def test_a_single_node_takes_only_the_ranks_the_plan_can_use():
    s = sized(independent(2, 100), profile(cores=16, memory="32G"))
    # the ASAP peak is 2 tasks: 2 workers + the coordinator = 3 ranks of 16, 3/16 of memory
    assert s.shape.nodes == 1 and s.shape.ntasks_per_node == 3 and s.chosen.makespan == 100
    assert s.shape.memory_per_node == 6 * G
    assert math.isclose(s.chosen.node_hours, 3 / 16 * 100 / 3600)


def test_longer_than_the_partition_allows_runs_as_a_continuation_chain():
    chain = plan_from_edges(3, [0, 1], [1, 2], time=1000)
    sizing = sized(chain, profile(max_time="00:30:00"))
    # makespan 3000 s on any node count -> 3360 s requested: two jobs of the 1800 s maximum
    assert sizing.chain_jobs == 2 and sizing.time == 1800 and sizing.shape.nodes == 1
    assert "chain of about 2 jobs of 00:30:00" in sizing.reason


def test_nothing_fits_a_deadline_names_the_numbers_and_the_chain():
    chain = plan_from_edges(3, [0, 1], [1, 2], time=1000)
    with pytest.raises(SizingError) as err:
        sized(chain, profile(), deadline=1800)
    # makespan 3000 s on any node count -> 3300 + 60 = 3360 s requested > 1800
    assert err.value.fastest == 3360 and err.value.limit == 1800 and err.value.chain_jobs == 2
    assert "continuation chain of about 2 jobs" in str(err.value) and "00:56:00" in str(err.value)


def test_a_task_longer_than_the_limit_is_named():
    with pytest.raises(SizingError, match="alone is estimated at 02:00:00"):
        sized(independent(1, 7200), profile())


def test_a_task_that_fits_no_node_is_named():
    big = hf.task("m:solve", cores=8, time="1m")
    plan = flatten(hf.workflow("w", outputs=[big()]))
    with pytest.raises(ResourceError) as err:
        sized(plan, profile(cores=4))
    assert err.value.task == "solve" and "8 core(s)" in str(err.value) and "'p'" in str(err.value)
    hungry = hf.task("m:load", memory="20G", time="1m")
    with pytest.raises(ResourceError, match="20G"):
        sized(flatten(hf.workflow("w", outputs=[hungry()])), profile(memory="16G"))
    gpu = hf.task("m:train", gpus=1, time="1m")
    with pytest.raises(ResourceError, match="1 GPU"):
        sized(flatten(hf.workflow("w", outputs=[gpu()])), profile(gpus=0))


def test_multi_rank_task_needs_a_node_without_the_coordinator():
    plan = independent(1, 100, cores=2, ranks=2)
    s = sized(plan, profile(cores=4))
    # 2 ranks x 2 cores = 4 one-core slots on one node; node 1 has only 3 beside rank 0
    first = s.candidates[0]
    assert first.shape.nodes == 1 and first.makespan is None and "does not fit" in first.note
    assert s.shape.nodes == 2 and s.chosen.makespan == 100


def test_gpu_plan_gets_one_rank_per_gpu():
    s = sized(independent(4, 100, gpus=1), profile(nodes=2, cores=4, gpus=2))
    # 1 node: 2 GPUs + coordinator = 3 ranks of 4*2/2 // 3 = 1 core; 2 workers with one
    # GPU each: 200 s, 3/4 of a node -> 0.042 node-h. 2 nodes: 2 ranks of 2 cores per
    # node, 3 workers: at least 100 s x 2 nodes = 0.056 node-h, more: not simulated.
    assert [(c.shape.nodes, c.shape.ntasks_per_node, c.shape.cpus_per_task, c.makespan)
            for c in s.candidates] == [(1, 3, 1, 200), (2, 2, 2, None)]
    forced = sized(independent(4, 100, gpus=1), profile(nodes=2, cores=4, gpus=2), nodes=2)
    assert forced.chosen.makespan == 200  # 3 GPU workers: a round of 3, then 1
    slots = allocation_slots(forced.shape, forced.partition, "mem")
    assert [slot.gpus for slot in slots] == [("0", "1"), ("0",), ("1",)]
    assert s.shape.nodes == 1 and s.shape.gpus_per_node == 2
    slots = allocation_slots(s.shape, s.partition, "mem")
    assert [slot.gpus for slot in slots] == [("0",), ("1",)]


def test_memory_bound_tasks_hold_more_ranks():
    s = sized(independent(2, 100, memory=6 * G), profile(nodes=2, cores=4, memory="8G"))
    # 1 node: 3 ranks, memory wanted 3 x 6G, capped at 8G: 2 workers of 4G, each task
    # holds both: 200 s (0.042 node-h). 2 nodes could not do better than 100 s x 2 nodes.
    assert [c.makespan for c in s.candidates] == [200, None]
    # forced: shares 8G/3 and 8G/4, each task holds 3 ranks, one task per node: 100 s
    assert sized(independent(2, 100, memory=6 * G), profile(nodes=2, cores=4, memory="8G"),
                 nodes=2).chosen.makespan == 100
    assert s.shape.nodes == 1 and s.shape.memory_per_node == 8 * G
    assert memory_request(s.shape, "mem-per-cpu") == ("mem-per-cpu", 2731)  # ceil(8192 / 3)
    assert memory_request(s.shape, "mem") == ("mem", 8192)


def test_never_more_nodes_than_the_partition_has():
    s = sized(independent(100, 10), profile(nodes=2, cores=2))
    assert max(c.shape.nodes for c in s.candidates) == 2


def test_the_coordinator_takes_one_rank_on_the_first_node():
    part = profile(cores=2).partition()
    one = allocation_slots(Shape(1, 2, 1, 0, 4 * G), part, "mem")
    two = allocation_slots(Shape(2, 2, 1, 0, 4 * G), part, "mem")
    assert [s.node for s in one] == ["node0"] and one[0].memory == 4 * G
    assert [s.node for s in two] == ["node0", "node1", "node1"]
    assert [s.memory for s in two] == [4 * G, 2 * G, 2 * G]  # the engine splits per node


def test_options_override_the_choice():
    plan = independent(8, 100)
    s = sized(plan, profile(), nodes=2)
    assert s.shape.nodes == 2 and len(s.candidates) == 1 and "--nodes 2" in s.reason
    s = sized(plan, profile(), ntasks_per_node=2, memory=3 * G, time=1800.0)
    assert s.shape.ntasks_per_node == 2 and s.shape.memory_per_node == 3 * G and s.time == 1800
    with pytest.raises(SizingError, match="exceeds the max time 01:00:00 of partition 'p'"):
        sized(plan, profile(), time=7200.0)
    with pytest.raises(SizingError, match="requires --time"):
        sized(plan, profile(), no_time=True)
    assert sized(plan, profile(time_required=False), no_time=True).time is None
    assert len(sized(plan, profile(), engine="local").candidates) == 1


def test_nodes_and_time_given_proceed_with_a_warning_when_the_estimate_is_longer():
    s = sized(independent(8, 100), profile(), nodes=1, time=120.0)
    assert s.shape.nodes == 1 and s.time == 120 and any("may be stopped" in w for w in s.warnings)


def test_missing_estimates_are_warned_about():
    task = hf.task("m:f")  # no time
    plan = flatten(hf.workflow("w", outputs=[task()]))
    assert any("no time estimate (f)" in w for w in sized(plan, profile()).warnings)


def test_every_candidate_respects_the_lower_bound_on_random_dags():
    rng = np.random.default_rng(7)
    for _ in range(5):
        n = 60
        src = rng.integers(0, n, 120)
        dst = rng.integers(0, n, 120)
        keep = src < dst
        plan = plan_from_edges(n, src[keep], dst[keep], time=rng.uniform(1, 100, n),
                               cores=rng.integers(1, 3, n))
        analysis = analyse(plan)
        s = size(plan, analysis, profile(nodes=6, cores=4, max_time=None))
        for cand in s.candidates:
            bound = lower_bound(plan, analysis, cand.shape.workers * cand.shape.cpus_per_task)
            assert (cand.makespan if cand.makespan is not None else cand.bound) >= bound - 1e-9
            forced = sized(plan, profile(nodes=6, cores=4, max_time=None), nodes=cand.shape.nodes)
            assert forced.chosen.makespan >= bound - 1e-9
            if cand.makespan is None:  # pruned: it could not have saved 2% node-hours
                assert forced.chosen.node_hours >= s.chosen.node_hours * 0.98 - 1e-12
        least = min(c.node_hours for c in s.candidates if c.fits)
        assert s.chosen.node_hours <= least * 1.02
