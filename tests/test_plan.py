"""The planner's analyses, its graph relabelling, its simulation and its summary.

Small graphs are checked against figures worked out by hand; random DAGs against
networkx (levels, critical path) and against naive reference code written here
(ASAP peak demand, a list schedule), which share nothing with the numpy code.
"""

from __future__ import annotations

import heapq
import importlib
import itertools
import json
from itertools import pairwise

import networkx as nx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hpcflow.model.api as hf
from hpcflow.errors import CycleError, ResourceError
from hpcflow.model.task import PythonCall, Task
from hpcflow.plan import (
    analyse,
    check_order,
    flatten,
    lower_bound,
    original_ids,
    plan_from_edges,
    simulate,
    summary_json,
    summary_text,
)
from hpcflow.plan.flatten import build_csr
from hpcflow.plan.plan import Group, Plan
from hpcflow.plan.policy import Placer, Slot

analyse_module = importlib.import_module("hpcflow.plan.analyse")  # the package exports the function
simulate_module = importlib.import_module("hpcflow.plan.simulate")


@pytest.fixture(params=["numpy", "loop"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test through both ways of walking the waves: numpy per wave, plain loop."""
    monkeypatch.setattr(analyse_module, "_MIN_WAVE", 0 if request.param == "numpy" else 10**9)
    return str(request.param)


def _plan(*outputs: hf.TaskRef) -> Plan:
    plan = flatten(hf.workflow("wf", list(outputs)))
    check_order(plan)
    return plan


def _names(plan: Plan, ids: np.ndarray) -> list[str]:
    return [plan.name(int(i)) for i in ids]


def _slots(count: int, node: str = "n0", first: int = 0, **share: object) -> list[Slot]:
    return [Slot(first + k, node, **share) for k in range(count)]  # type: ignore[arg-type]


@hf.task
def work(*args: object, **kwargs: object) -> None:
    """Stands for any task; only resources and edges matter to the planner."""


# -- hand-checked small graphs -------------------------------------------------------


def test_diamond(path: str) -> None:
    a = work.options(name="a", time=1)()
    b = work.options(name="b", time=2)(a)
    c = work.options(name="c", time=3, cores=2)(a)
    d = work.options(name="d", time=4)(b, c)
    plan = _plan(d)
    result = analyse(plan)
    assert _names(plan, np.arange(4)) == ["a", "b", "c", "d"]
    assert result.level.tolist() == [0, 1, 1, 2]
    assert result.priority.tolist() == [8.0, 6.0, 7.0, 4.0]
    assert result.earliest_start.tolist() == [0.0, 1.0, 1.0, 4.0]
    assert _names(plan, result.critical_path) == ["a", "c", "d"]
    assert result.critical_time == 8.0
    assert result.demand.peak_cores == 3  # b (1 core) beside c (2 cores) during [1, 3)
    assert result.demand.widest_level == 2
    assert result.demand.core_hours == pytest.approx((1 + 2 + 6 + 4) / 3600)
    assert result.demand.work_seconds == 10.0


def test_chain(path: str) -> None:
    ref = work.options(time=1)()
    for t in range(2, 6):
        ref = work.options(time=t, memory="1G")(ref)
    plan = _plan(ref)
    result = analyse(plan)
    assert result.level.tolist() == [0, 1, 2, 3, 4]
    assert result.priority.tolist() == [15.0, 14.0, 12.0, 9.0, 5.0]
    assert result.critical_path.tolist() == [0, 1, 2, 3, 4]
    assert result.critical_time == 15.0
    assert (result.demand.peak_cores, result.demand.peak_memory) == (1, 2**30)
    assert result.demand.widest_level == 1


def test_wide_fan_out_fan_in(path: str) -> None:
    source = work.options(name="source", time=5)()
    middle = work.options(name="middle", time=10, cores=2, memory="2G").sweep(
        {"x": range(100)}, source)
    sink = work.options(name="sink", time=1, gpus=1)(middle)  # a swept ref is gathered
    plan = _plan(sink)
    result = analyse(plan)
    assert plan.n == 102 and plan.n_edges == 200
    assert result.level.tolist() == [0] + [1] * 100 + [2]
    assert result.priority[0] == 16.0 and result.priority[101] == 1.0
    assert _names(plan, result.critical_path) == ["source", "middle[0]", "sink"]
    demand = result.demand
    assert (demand.peak_cores, demand.peak_memory, demand.peak_gpus) == (200, 200 * 2**30, 1)
    assert demand.widest_level == 100
    assert (demand.max_cores, demand.max_gpus, demand.max_memory) == (2, 1, 2 * 2**30)
    assert demand.gpu_hours == pytest.approx(1 / 3600)


def test_sweep_map_and_gather(path: str) -> None:
    seed = work.options(name="seed", time=1)()
    sims = work.options(name="sim", time=2, cores=2, ranks=2).sweep({"alpha": [1, 2, 3]}, seed=seed)
    scores = work.options(name="score", time=1).map(x=sims)
    best = work.options(name="best", time=5)(scores)
    plan = _plan(best)
    result = analyse(plan)
    assert result.level.tolist() == [0, 1, 1, 1, 2, 2, 2, 3]
    assert result.priority.tolist() == [9.0, 8.0, 8.0, 8.0, 6.0, 6.0, 6.0, 5.0]
    assert _names(plan, result.critical_path) == ["seed", "sim[0]", "score[0]", "best"]
    assert result.critical_time == 9.0
    assert result.demand.peak_cores == 12  # three sims of 2 ranks x 2 cores
    assert result.demand.max_ranks == 2


def test_nested_workflow(path: str) -> None:
    pre = work.options(name="pre", time=1)(hf.param("x"))
    inner = hf.workflow("inner", outputs={"y": work.options(name="post", time=2)(pre)}, inputs=["x"])
    start = work.options(name="start", time=1)()
    left = hf.nested(inner, name="left", x=start)
    right = hf.nested(inner, name="right", x=start)
    plan = _plan(work.options(name="join", time=1)(left["y"], right["y"]))
    result = analyse(plan)
    names = _names(plan, np.arange(plan.n))
    assert names == ["start", "left/pre", "left/post", "right/pre", "right/post", "join"]
    assert result.level.tolist() == [0, 1, 2, 1, 2, 3]
    assert result.priority.tolist() == [5.0, 4.0, 3.0, 4.0, 3.0, 1.0]
    assert _names(plan, result.critical_path) == ["start", "left/pre", "left/post", "join"]
    assert result.demand.peak_cores == 2


def test_empty_and_single() -> None:
    plan = plan_from_edges(0, [], [])
    result = analyse(plan)
    assert result.critical_path.size == 0 and result.critical_time == 0.0
    assert result.demand.peak_cores == 0 and result.n_levels == 0
    single = analyse(plan_from_edges(1, [], [], time=3.0))
    assert single.critical_path.tolist() == [0] and single.critical_time == 3.0


# -- check_order ----------------------------------------------------------------------


def _raw_plan(n: int, src: list[int], dst: list[int], group_of: list[int] | None = None) -> Plan:
    """A plan straight from edges, with no relabelling: what check_order must police."""
    group_of_a = np.asarray(group_of if group_of is not None else range(n), np.int32)
    groups = [Group(name=f"t{g}", task=Task(f"t{g}", PythonCall("m:f")), start=int(np.argmax(
        group_of_a == g)), size=int((group_of_a == g).sum())) for g in range(int(group_of_a.max()) + 1)]
    pred_ptr, pred, succ_ptr, succ = build_csr(n, np.asarray(src), np.asarray(dst))
    ones = np.ones(n, np.int32)
    return Plan("raw", groups, group_of_a, pred_ptr, pred, succ_ptr, succ, ones, 0 * ones, ones,
                np.zeros(n, np.int64), np.ones(n))


def test_check_order_reports_the_cycle() -> None:
    plan = _raw_plan(4, [0, 1, 2, 3], [1, 2, 3, 1])
    with pytest.raises(CycleError) as info:
        check_order(plan)
    cycle = info.value.cycle
    assert cycle[0] == cycle[-1] and sorted(cycle[:-1]) == ["t1", "t2", "t3"]
    edges = {("t0", "t1"), ("t1", "t2"), ("t2", "t3"), ("t3", "t1")}
    assert all(step in edges for step in pairwise(cycle))


def test_check_order_self_loop_and_misorder() -> None:
    with pytest.raises(CycleError) as info:
        check_order(_raw_plan(2, [0, 1], [1, 1]))
    assert info.value.cycle == ["t1", "t1"]
    with pytest.raises(ValueError, match="higher id to a lower"):
        check_order(_raw_plan(3, [2, 0], [1, 1]))
    with pytest.raises(ValueError, match="one group"):
        check_order(_raw_plan(3, [0], [1], group_of=[0, 0, 1]))
    check_order(_raw_plan(3, [0, 1], [1, 2]))


# -- plan_from_edges ------------------------------------------------------------------


def test_plan_from_edges_relabels() -> None:
    # original ids run against the edges: 3 -> 2 -> 1 -> 0, and 3 -> 0
    plan = plan_from_edges(4, [3, 2, 1, 3], [2, 1, 0, 0], time=[4.0, 3.0, 2.0, 1.0], cores=[1, 2, 3, 4])
    check_order(plan)
    assert original_ids(plan).tolist() == [3, 2, 1, 0]
    assert plan.time.tolist() == [1.0, 2.0, 3.0, 4.0] and plan.cores.tolist() == [4, 3, 2, 1]
    assert [g.name for g in plan.groups] == ["level0", "level1", "level2", "level3"]
    assert plan.bind(2, {}) == ((), {"node": 1})
    assert analyse(plan).critical_time == 10.0


def test_plan_from_edges_cycle_and_bad_input() -> None:
    with pytest.raises(CycleError) as info:
        plan_from_edges(5, [0, 1, 2, 3, 4], [1, 2, 3, 1, 0], names=list("abcde"))
    assert info.value.cycle in (["b", "c", "d", "b"], ["c", "d", "b", "c"], ["d", "b", "c", "d"])
    with pytest.raises(ValueError, match="edge ids"):
        plan_from_edges(2, [0], [2])
    with pytest.raises(ValueError, match="one value per task"):
        plan_from_edges(2, [0], [1], time=[1.0])


def test_long_chain_switches_to_the_loop() -> None:
    n = 5000
    perm = np.random.default_rng(1).permutation(n)
    plan = plan_from_edges(n, perm[:-1], perm[1:], time=1.0)
    check_order(plan)
    assert original_ids(plan).tolist() == perm.tolist()
    result = analyse(plan)
    assert result.critical_time == n and result.level[-1] == n - 1


# -- random DAGs against networkx and naive references --------------------------------


@st.composite
def dags(draw: st.DrawFn) -> tuple[int, list[tuple[int, int]], list[int], list[int]]:
    """A random DAG on shuffled labels, with integer times (exact float sums) and cores."""
    n = draw(st.integers(1, 30))
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    edges = draw(st.lists(st.sampled_from(pairs), max_size=60)) if pairs else []
    labels = draw(st.permutations(range(n)))
    times = draw(st.lists(st.integers(0, 9), min_size=n, max_size=n))
    cores = draw(st.lists(st.integers(1, 4), min_size=n, max_size=n))
    return n, [(labels[i], labels[j]) for i, j in edges], times, cores


def _reference_asap(graph: nx.DiGraph, times: list[int]) -> dict[int, int]:
    start: dict[int, int] = {}
    for v in nx.topological_sort(graph):
        start[v] = max((start[u] + times[u] for u in graph.predecessors(v)), default=0)
    return start


def _reference_peak(start: dict[int, int], times: list[int], cores: list[int]) -> int:
    """At each instant a task starts, add up the tasks running then (finish excluded)."""
    return max((sum(cores[v] for v in start if start[v] <= t < start[v] + times[v])
                for t in start.values()), default=0)


def _networkx(n: int, edges: list[tuple[int, int]]) -> nx.DiGraph:
    graph = nx.DiGraph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from(edges)
    return graph


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dags())
def test_random_dags_match_networkx(path: str, dag: tuple) -> None:
    n, edges, times, cores = dag
    plan = plan_from_edges(n, [e[0] for e in edges], [e[1] for e in edges], time=times, cores=cores)
    check_order(plan)
    result = analyse(plan)
    ids = original_ids(plan)
    graph = _networkx(n, edges)
    level = {v: k for k, layer in enumerate(nx.topological_generations(graph)) for v in layer}
    assert result.level.tolist() == [level[v] for v in ids.tolist()]
    weighted = nx.DiGraph()
    weighted.add_weighted_edges_from([(u, v, times[u]) for u, v in edges])
    weighted.add_weighted_edges_from([(v, "end", times[v]) for v in range(n)])
    assert result.critical_time == nx.dag_longest_path_length(weighted)
    path_ids = ids[result.critical_path].tolist()
    assert graph.in_degree(path_ids[0]) == 0 and graph.out_degree(path_ids[-1]) == 0
    assert all(graph.has_edge(u, v) for u, v in pairwise(path_ids))
    assert sum(times[v] for v in path_ids) == result.critical_time
    start = _reference_asap(graph, times)
    assert result.earliest_start.tolist() == [start[v] for v in ids.tolist()]
    assert result.demand.peak_cores == _reference_peak(start, times, cores)


def _reference_list_schedule(plan: Plan, priority: np.ndarray, workers: int) -> list[float]:
    """The textbook list schedule on identical one-task workers: at each event time, the
    ready tasks of highest priority (the first to become ready on ties; sources in id
    order) take the free workers."""
    indeg = np.diff(plan.pred_ptr).tolist()
    seq = itertools.count()
    ready = [(-priority[i], next(seq), i) for i in range(plan.n) if indeg[i] == 0]
    heapq.heapify(ready)
    running: list[tuple[float, int]] = []
    start = [0.0] * plan.n
    now = 0.0
    while ready or running:
        while ready and len(running) < workers:
            i = heapq.heappop(ready)[2]
            start[i] = now
            heapq.heappush(running, (now + plan.time[i], i))
        now = running[0][0]
        while running and running[0][0] == now:
            i = heapq.heappop(running)[1]
            for s in plan.successors(i).tolist():
                indeg[s] -= 1
                if indeg[s] == 0:
                    heapq.heappush(ready, (-priority[s], next(seq), s))
    return start


@settings(max_examples=100, deadline=None)
@given(dags(), st.integers(1, 4))
def test_random_dags_simulate_as_a_list_schedule(dag: tuple, workers: int) -> None:
    n, edges, times, _ = dag
    plan = plan_from_edges(n, [e[0] for e in edges], [e[1] for e in edges], time=times)
    result = analyse(plan)
    schedule = simulate(plan, result, _slots(workers))
    assert schedule.start.tolist() == _reference_list_schedule(plan, result.priority, workers)
    assert schedule.makespan >= lower_bound(plan, result, workers)
    for i in range(plan.n):  # no task starts before its inputs are done
        assert all(schedule.finish[p] <= schedule.start[i] for p in plan.predecessors(i))


def _reference_set_aside(plan: Plan, priority: np.ndarray, slots: list[Slot], depth: int,
                         limit: int) -> list[float]:
    """The engine's rule as engine/core.py states it: ready tasks popped in priority
    order (the first to become ready on ties) while the placer has room; a task that
    does not fit is set aside, until ``limit`` tasks are set aside; those go back,
    keeping their place, for the round after the next event."""
    placer = Placer(slots, depth)
    indeg = np.diff(plan.pred_ptr).tolist()
    seq = itertools.count()
    ready = [(-priority[i], next(seq), i) for i in range(plan.n) if indeg[i] == 0]
    heapq.heapify(ready)
    events: list[tuple[float, int]] = []
    start, held, slot_free = [0.0] * plan.n, [None] * plan.n, [0.0] * len(slots)
    now = 0.0
    while True:
        aside = []
        while ready and not placer.full:
            item = heapq.heappop(ready)
            i = item[2]
            got = placer.place(int(plan.cores[i]), int(plan.gpus[i]), int(plan.memory[i]),
                               int(plan.ranks[i]))
            if got is None:
                aside.append(item)
                if len(aside) >= limit:
                    break
                continue
            lead = got.leaders[0]
            start[i] = now if got.exclusive else max(now, slot_free[lead])
            if not got.exclusive:
                slot_free[lead] = start[i] + plan.time[i]
            held[i] = got
            heapq.heappush(events, (start[i] + plan.time[i], i))
        for item in aside:
            heapq.heappush(ready, item)
        if not events:
            return start
        now = events[0][0]
        while events and events[0][0] == now:
            i = heapq.heappop(events)[1]
            placer.release(held[i])
            for s in plan.successors(i).tolist():
                indeg[s] -= 1
                if indeg[s] == 0:
                    heapq.heappush(ready, (-priority[s], next(seq), s))


@settings(max_examples=150, deadline=None)
@given(dags(), st.lists(st.integers(1, 4), min_size=1, max_size=3), st.integers(1, 2),
       st.sampled_from([1, 2, 64]))
def test_random_dags_simulate_with_set_aside(dag: tuple, nodes: list[int], depth: int,
                                             limit: int) -> None:
    n, edges, times, cores = dag
    slots = [Slot(k, f"node{j}") for j, size in enumerate(nodes) for k in range(size)]
    slots = [Slot(k, s.node) for k, s in enumerate(slots)]
    cores = [min(c, max(nodes)) for c in cores]  # every task fits on the largest node
    plan = plan_from_edges(n, [e[0] for e in edges], [e[1] for e in edges], time=times, cores=cores)
    result = analyse(plan)
    simulate_module.MAX_SET_ASIDE = limit
    try:
        schedule = simulate(plan, result, slots, depth=depth)
    finally:
        simulate_module.MAX_SET_ASIDE = 64
    assert schedule.start.tolist() == _reference_set_aside(plan, result.priority, slots, depth, limit)


# -- simulate ---------------------------------------------------------------------------


def test_simulate_follows_priority_on_two_slots() -> None:
    chain = work.options(name="x2", time=3)(work.options(name="x1", time=3)())
    shorts = [work.options(name=f"y{k}", time=2)() for k in range(3)]
    plan = _plan(chain, *shorts)
    result = analyse(plan)
    schedule = simulate(plan, result, _slots(2))
    begin = dict(zip(_names(plan, np.arange(plan.n)), schedule.start.tolist(), strict=True))
    assert begin == {"x1": 0.0, "y0": 0.0, "y1": 2.0, "x2": 3.0, "y2": 4.0}
    assert schedule.makespan == 6.0 == lower_bound(plan, result, 2)
    assert set(schedule.slot.tolist()) == {0, 1}


def test_simulate_multi_slot_tasks_hold_shares() -> None:
    # one node of 4 one-core slots: a 4-core task holds them all, 2-core tasks two each
    big = work.options(name="big", cores=4, time=1)()
    pairs = work.options(name="pair", cores=2, time=1).sweep({"k": range(4)})
    plan = _plan(big, pairs)
    result = analyse(plan)
    schedule = simulate(plan, result, _slots(4, cores=1))
    assert schedule.start.tolist() == [0.0, 1.0, 1.0, 2.0, 2.0]
    assert schedule.makespan == 3.0
    # a 3-core task can only run on the node with 4 slots; the 2-slot node idles
    three = work.options(name="three", cores=3, time=1).sweep({"k": range(2)})
    plan = _plan(three)
    slots = _slots(2, "small") + _slots(4, "large", first=2)
    schedule = simulate(plan, analyse(plan), slots)
    assert schedule.start.tolist() == [0.0, 1.0] and set(schedule.slot.tolist()) == {2}
    with pytest.raises(ResourceError, match="three"):
        simulate(plan, analyse(plan), _slots(2))


def test_simulate_gpu_tasks_wait_for_gpu_slots() -> None:
    gpu = work.options(name="gpu", gpus=1, time=1).sweep({"k": range(4)})
    cpu = work.options(name="cpu", time=1).sweep({"k": range(4)})
    plan = _plan(gpu, cpu)
    slots = [*_slots(2, "cpu"), Slot(2, "gpu", gpus=("0",)), Slot(3, "gpu", gpus=("1",))]
    schedule = simulate(plan, analyse(plan), slots)
    assert schedule.start.tolist() == [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]
    assert set(schedule.slot[:4].tolist()) == {2, 3}
    assert schedule.makespan == 2.0
    with pytest.raises(ResourceError, match="GPU"):
        simulate(plan, analyse(plan), _slots(4))


def test_simulate_depth_queues_behind_a_busy_slot() -> None:
    plan = _plan(work.options(name="t", time=2).sweep({"k": range(4)}))
    schedule = simulate(plan, analyse(plan), _slots(2), depth=2)
    assert sorted(schedule.start.tolist()) == [0.0, 0.0, 2.0, 2.0]
    assert schedule.makespan == 4.0


# -- summary -----------------------------------------------------------------------------


def test_summary_text_and_json() -> None:
    ref = work.options(name="step", time=90, cores=2, memory="4G")()
    for _ in range(20):
        ref = work.options(name=None, time=90, cores=2, memory="4G")(ref)
    plan = _plan(ref)
    result = analyse(plan)
    text = summary_text(plan, result)
    assert "21 tasks in 21 groups, 20 edges, 21 levels" in text
    assert "00:31:30" in text and "... 15 more ..." in text
    assert "2 cores" in text and "4G" in text
    data = json.loads(json.dumps(summary_json(plan, result)))
    assert set(data) == {"schema", "workflow", "tasks", "edges", "levels", "groups",
                         "critical_path", "demand"}
    assert data["critical_path"]["length"] == 21 and data["critical_path"]["seconds"] == 1890.0
    assert data["critical_path"]["tasks"][0] == "step" and data["critical_path"]["elided"] == 0
    assert data["demand"]["peak_memory"] == 4 * 2**30 and data["groups"]["count"] == 21


# -- at scale ----------------------------------------------------------------------------


def test_layered_hundred_thousand() -> None:
    width = 1000
    prev = work.options(time=1).sweep({"a": range(width)})
    roll = np.roll(np.arange(width), -1)
    for _ in range(99):
        prev = work.options(time=1).sweep({"a": prev.each(), "b": prev.each(index=roll)}, mode="zip")
    plan = _plan(prev)
    result = analyse(plan)
    assert plan.n == 100_000 and plan.n_edges == 2 * 99 * width
    assert result.critical_time == 100.0 and result.demand.peak_cores == width
    assert result.level.tolist() == np.repeat(np.arange(100), width).tolist()
    schedule = simulate(plan, result, _slots(250))
    assert schedule.makespan == 400.0 == lower_bound(plan, result, 250)
