"""The sizing benchmark's brute force on plans small enough to check by hand.

On N nodes of C cores with w worker ranks (rank 0 coordinates): ``n`` independent
tasks of ``t`` seconds take ``ceil(n / w) * t``; cost is core-hours on shared nodes
(ranks x makespan), node-hours on whole nodes, GPU-hours where GPUs are asked for.
"""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hpcflow.plan import analyse, plan_from_edges
from hpcflow.scheduler.slurm.shape import Shape

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "bench_sizing.py"
G = 2**30


def _load():
    spec = importlib.util.spec_from_file_location("bench_sizing", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_sizing"] = module
    spec.loader.exec_module(module)
    return module


bench = _load()


def searched(plan, profile_name):
    prof, whole = bench.profiles()[profile_name]
    return bench.search(plan, analyse(plan), prof.partitions[0], whole)


def test_independent_tasks_knee_is_one_worker_each():
    found = searched(plan_from_edges(4, [], [], time=100), "shared48")
    # 4 workers + the coordinator on one node: 100 s, 5 of 48 cores, 5/48 of 192G
    assert found.fastest.makespan == 100
    assert found.knee.shape == Shape(1, 5, 1, 0, 20 * G)
    assert math.isclose(found.knee.cost, 5 * 100 / 3600)
    # 4 workers on 1, 2 and 3 nodes reach the critical path; 3 workers cannot
    # (their bound is 400/3 s > 105 s): nothing smaller is simulated
    assert found.simulated == 3 and found.listed > found.simulated


def test_a_chain_needs_one_worker():
    found = searched(plan_from_edges(3, [0, 1], [1, 2], time=100), "shared48")
    assert found.fastest.makespan == 300
    assert found.knee.shape == Shape(1, 2, 1, 0, 8 * G) and found.knee.shape.workers == 1
    assert math.isclose(found.knee.cost, 2 * 300 / 3600)


def test_whole_nodes_cost_node_hours():
    found = searched(plan_from_edges(20, [], [], time=100), "whole8")
    # 1 node: 7 workers, 3 rounds = 300 s; 2: 15 workers, 200 s; 3: 23 workers, 100 s
    makespans = {p.shape.nodes: p.makespan for p in found.points}
    assert makespans[3] == 100 and found.fastest.makespan == 100
    assert found.knee.shape == Shape(3, 8, 1, 0, 32 * G)
    assert math.isclose(found.knee.cost, 3 * 100 / 3600)


def test_gpu_tasks_cost_gpu_hours_of_the_gpus_taken():
    found = searched(plan_from_edges(2, [], [], time=100, gpus=1, cores=2), "gpu32")
    # two GPUs of four on one node, each task on its own: half the node for 100 s = 2 GPU-h
    assert found.fastest.makespan == 100
    assert found.knee.shape.nodes == 1 and found.knee.shape.gpus_per_node == 2
    assert math.isclose(found.knee.cost, 0.5 * 100 / 3600 * 4)


def test_cost_is_the_largest_fraction_taken():
    prof, _ = bench.profiles()["shared48"]
    part = prof.partitions[0]
    memory_bound = Shape(2, 12, 1, 0, 96 * G)  # a quarter of the cores, half the memory
    assert math.isclose(bench.cost(memory_bound, part, False, 3600), 2 * 0.5 * 48)
    assert math.isclose(bench.cost(memory_bound, part, True, 3600), 2)


def test_a_gpu_plan_is_not_applicable_on_a_cpu_profile():
    prof, whole = bench.profiles()["shared48"]
    row = bench.check("gpu", plan_from_edges(2, [], [], time=100, gpus=1), prof, whole)
    assert row.status == "n/a"


def test_the_sizer_is_checked_against_the_brute_force():
    prof, whole = bench.profiles()["shared48"]
    row = bench.check("four", plan_from_edges(4, [], [], time=100), prof, whole)
    assert row.status in ("ok", "missed") and row.fastest == 100 and row.knee_cost > 0
    assert row.makespan_ratio >= 1 and row.time_ratio > 1 and row.size_seconds < 5


def test_the_quick_benchmark_runs(tmp_path):
    out = tmp_path / "sizing.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode in (0, 1), proc.stderr
    assert proc.stdout.count("RESULT workload=sizing shape=") == 15
    assert "status=n/a" in proc.stdout and out.stat().st_size > 0
    failed = int(proc.stdout.split("failed=")[1].split()[0])
    assert (failed > 0) == (proc.returncode == 1)


@pytest.mark.parametrize("name", list(bench.SHAPES))
def test_shapes_are_seeded(name):
    first = bench.SHAPES[name](np.random.default_rng(3), 0.05)
    again = bench.SHAPES[name](np.random.default_rng(3), 0.05)
    assert first.n == again.n and (first.time == again.time).all()


def test_memory_bound_tasks_hold_more_ranks_or_ask_for_more_memory():
    found = searched(plan_from_edges(4, [], [], time=100, memory=8 * G), "shared48")
    # 4G per core: 9 ranks take 36G, 4.5G for each of 8 workers, so each 8G task holds
    # two and all four run at once: 100 s, 9 cores. Asking 8G per rank instead takes
    # 40G with 5 ranks (10/48 of the node: 10 cores' worth); 5 ranks of 20G: 200 s.
    # 3 nodes x 2 ranks of 8G: the first node's one worker has 8G, the others 4G each,
    # so one task per node: 200 s (the Placer once ran all 8G tasks on one slot each).
    points = {(p.shape.nodes, p.shape.ntasks_per_node, p.shape.memory_per_node // G): p
              for p in found.points}
    assert found.fastest.makespan == 100
    assert found.knee.shape == Shape(1, 9, 1, 0, 36 * G)
    assert math.isclose(found.knee.cost, 9 * 100 / 3600)
    assert points[(1, 5, 40)].makespan == 100 and math.isclose(points[(1, 5, 40)].cost, 10 * 100 / 3600)
    assert points[(1, 5, 20)].makespan == 200
    assert points[(3, 2, 8)].makespan == 200
