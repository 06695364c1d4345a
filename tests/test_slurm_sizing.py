"""Sizing a Slurm request on hand-checked plans.

Each expected number below is worked out by hand in the comment beside it: ``n``
independent tasks of ``t`` seconds on ``w`` worker ranks take ``ceil(n / w) * t``; a
candidate on ``N`` whole nodes of ``C`` cores has ``N * C - 1`` workers (rank 0 is the
coordinator). The random-DAG tests compare the choice with every worker count.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import hpcflow as hf
from hpcflow.engine.walltime import GRACE, MARGIN
from hpcflow.errors import ResourceError
from hpcflow.model.resources import format_slurm_time
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


def test_requested_time_is_makespan_plus_margin_startup_and_end_in_whole_minutes():
    prof = profile()
    end = GRACE + MARGIN
    # 15 s start-up + 300 s + max(10%, 30 s) + the stop grace, rounded up to a minute
    assert requested_time(300, prof) == math.ceil((15 + 300 + 30 + end) / 60) * 60
    assert requested_time(1000, prof) == math.ceil((15 + 1100 + end) / 60) * 60
    assert requested_time(0, prof) >= 60
    for makespan in [*range(0, 3000, 7), *np.geomspace(3000, 1e6, 50)]:  # the target
        assert requested_time(makespan, prof) <= max(1.25 * makespan, makespan + 180)


def test_a_narrow_dag_gets_the_workers_it_can_use_not_its_widest_level():
    # one 400 s task beside four 100 s ones: 2 workers finish in 400 s, as fast as 5 do
    plan = plan_from_edges(5, [], [], time=[400, 100, 100, 100, 100])
    s = sized(plan, profile(nodes=4, cores=48, memory="192G"))
    assert s.chosen.makespan == 400 and s.shape.workers == 2 and s.shape.nodes == 1
    assert s.fastest.makespan == 400 and s.chosen.unit == "core-h"
    assert s.shape.ntasks_per_node == 3 and s.shape.memory_per_node == 12 * G  # 3/48 of 192G
    assert math.isclose(s.chosen.cost, 3 * 400 / 3600)
    chain = plan_from_edges(3, [0, 1], [1, 2], time=100)
    assert sized(chain, profile(cores=48, memory="192G")).shape.workers == 1


def test_a_wide_dag_spreads_over_the_nodes_its_knee_needs():
    s = sized(independent(8, 100), profile())
    # 4-core shared nodes: 8 workers (9 ranks over 3 nodes) finish in 100 s, the fastest;
    # fewer take 200 s or more, not within 5%
    assert s.chosen.makespan == 100 and s.shape.workers >= 8 and s.shape.nodes == 3
    assert s.shape.ntasks_per_node == 3 and s.time == requested_time(100, profile())
    assert "within 5% of the fastest" in s.reason


def test_whole_nodes_count_node_hours():
    prof = Profile(name="w", partitions=[Partition(
        name="p", nodes=8, cores_per_node=8, memory_per_node="32G", max_time="1:00:00",
        whole_nodes=True)])
    s = sized(independent(20, 100), prof)
    # 1 node: 7 workers, 300 s; 2 nodes: 15, 200 s; 3 nodes: 23, 100 s (the fastest)
    assert s.shape.nodes == 3 and s.shape.ntasks_per_node == 8 and s.chosen.makespan == 100
    assert s.chosen.unit == "node-h" and math.isclose(s.chosen.cost, 3 * 100 / 3600)
    assert s.shape.memory_per_node == 32 * G


def test_deadline_picks_the_cheapest_that_fits():
    # ten 100 s tasks, then one of 1000 s: 10 workers take 1100 s (11 ranks: 3.4 core-h),
    # 2 workers 1500 s (1.25 core-h), 1 worker 2000 s (1.1 core-h)
    plan = plan_from_edges(11, range(10), [10] * 10, time=[100] * 10 + [1000])
    prof = profile(nodes=4, cores=48, memory="192G")
    assert sized(plan, prof).shape.workers == 10  # the default: within 5% of the fastest
    s = sized(plan, prof, deadline=3600)
    assert s.shape.workers == 1 and s.chosen.makespan == 2000 and "--deadline" in s.reason
    s = sized(plan, prof, deadline=requested_time(1500, prof))
    assert s.shape.workers == 2 and s.chosen.makespan == 1500


def test_a_single_node_takes_only_the_ranks_the_plan_can_use():
    s = sized(independent(2, 100), profile(cores=16, memory="32G"))
    # the ASAP peak is 2 tasks: 2 workers + the coordinator = 3 ranks of 16, 3/16 of memory
    assert s.shape.nodes == 1 and s.shape.ntasks_per_node == 3 and s.chosen.makespan == 100
    assert s.shape.memory_per_node == 6 * G
    assert math.isclose(s.chosen.cost, 3 * 100 / 3600)


def test_longer_than_the_partition_allows_runs_as_a_continuation_chain():
    chain = plan_from_edges(3, [0, 1], [1, 2], time=1000)
    prof = profile(max_time="00:30:00")
    sizing = sized(chain, prof)
    # makespan 3000 s (+10%) over jobs of 1800 s less start-up and the end's grace
    jobs = math.ceil(3300 / (1800 - 15 - GRACE - MARGIN))
    assert sizing.chain_jobs == jobs and sizing.time == 1800 and sizing.shape.workers == 1
    assert f"chain of about {jobs} jobs of 00:30:00" in sizing.reason


def test_nothing_fits_a_deadline_names_the_fastest_and_the_chain():
    chain = plan_from_edges(3, [0, 1], [1, 2], time=1000)
    with pytest.raises(SizingError) as err:
        sized(chain, profile(), deadline=1800)
    need = requested_time(3000, profile())
    jobs = math.ceil(3300 / (1800 - 15 - GRACE - MARGIN))
    assert err.value.fastest == need and err.value.limit == 1800 and err.value.chain_jobs == jobs
    assert "the fastest, 1 node(s) x 2 ranks (1 workers)" in str(err.value)
    assert format_slurm_time(need) in str(err.value)
    assert f"chain of about {jobs} jobs" in str(err.value)


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
    assert s.shape.nodes == 2 and s.shape.ntasks_per_node == 4 and s.chosen.makespan == 100
    with pytest.raises(SizingError, match=r"can run this workflow: .*no node of the simulated slots"):
        sized(plan, profile(cores=4), nodes=1)


def test_gpu_plan_takes_cores_in_proportion_to_its_gpus():
    s = sized(independent(4, 100, gpus=1), profile(nodes=2, cores=4, gpus=2))
    # 2 GPUs on one node: 200 s at best (not within 5% of 100 s: not simulated); 4 GPUs on
    # 2 nodes, 3 one-core ranks each (half the cores and memory, as the GPUs): the first
    # worker ranks of each node hold a GPU each, all four tasks at once, 100 s
    assert s.chosen.makespan == 100 and s.chosen.unit == "GPU-h"
    assert (s.shape.nodes, s.shape.ntasks_per_node, s.shape.gpus_per_node) == (2, 3, 2)
    assert math.isclose(s.chosen.cost, 4 * 100 / 3600)
    slots = allocation_slots(s.shape, s.partition, "mem")
    assert [slot.gpus for slot in slots] == [("0",), ("1",), ("0",), ("1",), ()]
    one = sized(independent(4, 100, gpus=1), profile(nodes=2, cores=4, gpus=2), nodes=1)
    assert one.chosen.makespan == 200 and one.shape.gpus_per_node == 2


def test_a_cpu_plan_stays_off_gpu_partitions_and_a_gpu_plan_goes_there():
    prof = Profile(name="two", partitions=[
        Partition(name="gpu", nodes=4, cores_per_node=32, memory_per_node="256G", gpus_per_node=4,
                  max_time="1:00:00"),
        Partition(name="cpu", nodes=4, cores_per_node=48, memory_per_node="192G",
                  max_time="1:00:00")], defaults={"partition": "gpu"})
    assert {c.partition.name for c in sized(independent(8, 100), prof).candidates} == {"cpu"}
    s = sized(independent(8, 100, gpus=1), prof)
    # 8 GPUs on 2 nodes, every task at once: 100 s, 8 GPUs x 100 s
    assert s.partition.name == "gpu" and s.chosen.makespan == 100
    assert (s.shape.nodes, s.shape.gpus_per_node) == (2, 4) and s.shape.workers >= 8
    assert math.isclose(s.chosen.cost, 8 * 100 / 3600)
    assert sized(independent(8, 100), prof, partition="gpu").partition.name == "gpu"


def test_memory_bound_tasks_hold_more_ranks_and_spread_over_nodes():
    s = sized(independent(2, 100, memory=6 * G), profile(nodes=2, cores=4, memory="8G"))
    # one node: one 6G task at a time (200 s); two nodes of 3 ranks and 6G (in proportion,
    # and the biggest task's need) hold one task each: 100 s, 2 x 3/4 of a node
    assert (s.shape.nodes, s.shape.ntasks_per_node, s.chosen.makespan) == (2, 3, 100)
    assert s.shape.memory_per_node == 6 * G and math.isclose(s.chosen.cost, 2 * 3 * 100 / 3600)
    assert memory_request(s.shape, "mem-per-cpu") == ("mem-per-cpu", 2048)  # 6144 / 3 ranks
    assert memory_request(s.shape, "mem") == ("mem", 6144)


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
    assert {c.shape.nodes for c in s.candidates} == {2} and "--nodes 2" in s.reason
    assert s.shape.workers == 5 and s.chosen.makespan == 200  # 2 rounds: 2 x 3 ranks suffice
    s = sized(plan, profile(), ntasks_per_node=2, memory=3 * G, time=1800.0)
    assert {c.shape.ntasks_per_node for c in s.candidates} == {2}
    assert s.shape.memory_per_node == 3 * G and s.time == 1800 and s.shape.nodes == 3
    s = sized(plan, profile(), ntasks=5)
    assert len(s.candidates) == 1 and "--ntasks 5" in s.reason
    assert (s.shape.nodes, s.shape.ntasks_per_node) == (2, 3)  # 5 rounded up to fill 2 nodes
    with pytest.raises(SizingError, match="--ntasks 17 is more than partition 'p' has"):
        sized(plan, profile(), ntasks=17)
    with pytest.raises(SizingError, match="exceeds the max time 01:00:00 of partition 'p'"):
        sized(plan, profile(), time=7200.0)
    with pytest.raises(SizingError, match="requires --time"):
        sized(plan, profile(), no_time=True)
    assert sized(plan, profile(time_required=False), no_time=True).time is None
    assert {c.shape.nodes for c in sized(plan, profile(), engine="local").candidates} == {1}


def test_nodes_and_time_given_proceed_with_a_warning_when_the_estimate_is_longer():
    s = sized(independent(8, 100), profile(), nodes=1, time=120.0)
    assert s.shape.nodes == 1 and s.time == 120 and any("may be stopped" in w for w in s.warnings)


def test_missing_estimates_are_warned_about():
    task = hf.task("m:f")  # no time
    plan = flatten(hf.workflow("w", outputs=[task()]))
    assert any("no time estimate (f)" in w for w in sized(plan, profile()).warnings)


def _random_plan(rng: np.random.Generator, n: int):
    src = rng.integers(0, n, 2 * n)
    dst = rng.integers(0, n, 2 * n)
    keep = src < dst
    return plan_from_edges(n, src[keep], dst[keep], time=rng.uniform(1, 100, n),
                           cores=rng.integers(1, 3, n))


def test_the_choice_is_near_the_knee_of_every_worker_count_on_random_dags():
    """Against a brute force over every worker count: the choice is never slower than
    1.05x the fastest and costs at most 1.2x the knee (the issue's targets)."""
    rng = np.random.default_rng(7)
    prof = profile(nodes=6, cores=4, max_time=None)
    part = prof.partition()
    for _ in range(6):
        plan = _random_plan(rng, 60)
        analysis = analyse(plan)
        s = size(plan, analysis, prof)
        every = [sized(plan, prof, ntasks=w + 1).chosen for w in range(2, 6 * 4)]
        every = [c for c in every if c.makespan is not None]
        fastest = min(c.makespan for c in every)
        knee = min(c.cost for c in every if c.makespan <= fastest * 1.05 + 1e-9)
        assert s.chosen.makespan <= fastest * 1.05 + 1e-9
        assert s.chosen.cost <= knee * 1.2 + 1e-12
        for cand in s.candidates:
            bound = lower_bound(plan, analysis, cand.shape.workers * cand.shape.cpus_per_task)
            assert (cand.makespan if cand.makespan is not None else cand.bound) >= bound - 1e-9
        assert all(c.partition is part for c in s.candidates)


def test_the_worked_example_in_the_cluster_guide_is_what_plan_prints(capsys):
    """docs/cluster.md shows `plan --slurm` on the sweep example: it must stay true."""
    from pathlib import Path

    from hpcflow.cli import main

    root = Path(__file__).resolve().parent.parent
    doc = (root / "docs" / "cluster.md").read_text()
    block = doc.split("$ hpcflow plan --slurm --profile examples/clusters/cpu-site.yaml", 1)[1]
    shown = [line for line in block.split("```", 1)[0].splitlines()[1:] if line.strip()]
    assert main(["plan", "--slurm", "--profile", str(root / "examples/clusters/cpu-site.yaml"),
                 "--partition", "standard", str(root / "examples/sweep/workflow.yaml")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert shown and all(line in printed for line in shown), [
        line for line in shown if line not in printed]
