"""Sizing benchmark: is the Slurm request the cheapest one that runs at full speed?

Five seeded DAG shapes like real scientific workflows (a wide fan-out then a long
serial tail; fork-join stages; deep chains with side branches; mixed lengths with a few
long tasks; GPU, multi-rank and multi-core tasks with memory in one DAG) are sized by
``hpcflow.scheduler.slurm.sizing.size`` on three profiles (48-core shared nodes, 8-core
whole nodes, 32-core nodes with 4 GPUs), and each choice is held against a brute force
that knows nothing of the sizer's candidate list.

**The brute force.** Every shape the partition allows is listed, by worker count, from
the plan's peak parallelism (``analysis.demand``: its ASAP peak of cores, or of memory
in one core's share of a node where that is more; at most the partition's size) down
to one worker:

- shared nodes, one-core ranks: for w workers, every node count from the fewest that
  hold w + 1 ranks (rank 0 coordinates) to :data:`EXTRA_NODES` more, the ranks spread
  evenly (``ntasks_per_node = ceil((w + 1) / nodes)``);
- whole nodes: every node count, every core a one-core rank;
- a plan with GPUs, on a partition with GPUs: one rank per GPU (every GPU count per
  node and node count; on one node the coordinator comes on top, as shape.py's
  ``_gpu_ranks`` does) with the node's cores in proportion or the whole node's, and the
  one-core ranks above with the GPUs shape.py gives them with ``--ntasks-per-node``
  (all of the node's, or the plan's peak if fewer ranks; the first ranks of a node get
  one each). Fewer GPUs per node on one-core ranks are left out to keep the run short:
  on ``gpumix`` they took 635 simulations instead of 251 and left the knee as it was;
- memory per node in proportion to the cores taken (at least what the biggest task
  needs on its node; a task needing more than its rank's share holds more ranks), and
  as a second shape what every task needs per rank, where that is more; never more
  than the node has.

Each shape is simulated (:func:`hpcflow.plan.simulate.simulate` on
:func:`~hpcflow.scheduler.slurm.shape.allocation_slots`: what the engine would find),
at most once per plan and partition (a cache). Shapes are tried from the most cores
down, so :func:`~hpcflow.plan.simulate.lower_bound` only grows; once it is over
(1 + :data:`TOLERANCE`) x the best makespan so far, no smaller shape can be within the
tolerance of the fastest, and the search stops; a shape whose GPUs alone need longer
(the plan's GPU-seconds over its GPUs) is skipped. The pruning is exact. "Fastest" is the
smallest makespan, "knee" the cheapest shape within :data:`TOLERANCE` of it (ties:
fewer nodes, then shorter). Cost is what the site charges: on each node the job takes
the fraction ``f`` (1 on whole nodes, else the largest of its cores, GPUs and memory
fractions) for the makespan, counted in GPU-hours if the job asks for GPUs, else
node-hours on whole nodes, else core-hours.

For each (shape, profile) it prints the sizer's choice, requested cost / knee cost,
predicted makespan / fastest, requested time / predicted makespan, the sizer's wall
time, and checks the targets of issue #13 (:data:`TARGETS`). It also times ``size`` on
one 10^4-task plan (the best of 3 runs). Exit status 1 if a target is missed.

    python benchmarks/bench_sizing.py [--shapes fanout ...] [--profiles shared48 ...]
                                      [--seed 13] [--json FILE] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from hpcflow.errors import ResourceError
from hpcflow.plan import Analysis, Plan, analyse, lower_bound, plan_from_edges, simulate
from hpcflow.scheduler.slurm.profile import Partition, Profile
from hpcflow.scheduler.slurm.shape import Shape, allocation_slots
from hpcflow.scheduler.slurm.sizing import Sizing, size

G = 2**30
MB = 2**20
TOLERANCE = 0.05
EXTRA_NODES = 2
TARGETS = {"cost_ratio": 1.2, "makespan_ratio": 1.05, "time_fraction": 1.25, "time_slack": 180.0,
           "size_seconds": 5.0}


class Dag:
    """Tasks and edges, built one task at a time, then made a plan."""

    def __init__(self) -> None:
        self.src: list[int] = []
        self.dst: list[int] = []
        self.res: dict[str, list[float]] = {k: [] for k in ("time", "cores", "gpus", "memory", "ranks")}

    def add(self, seconds: float, after: list[int] | tuple[int, ...] = (), cores: int = 1,
            gpus: int = 0, memory: float = 0, ranks: int = 1) -> int:
        i = len(self.res["time"])
        for key, value in zip(self.res, (seconds, cores, gpus, memory, ranks), strict=True):
            self.res[key].append(value)
        self.src += list(after)
        self.dst += [i] * len(after)
        return i

    def plan(self, name: str) -> Plan:
        r = self.res
        return plan_from_edges(len(r["time"]), self.src, self.dst, time=np.round(r["time"], 1),
                               cores=r["cores"], gpus=r["gpus"], ranks=r["ranks"],
                               memory=np.asarray(r["memory"], np.int64), workflow=name)


def _spread(rng: np.random.Generator, median: float, n: int, sigma: float = 0.5) -> np.ndarray:
    """``n`` task times around ``median`` seconds (log-normal), at least 1 s."""
    return np.maximum(1.0, rng.lognormal(math.log(median), sigma, n))


def fanout(rng: np.random.Generator, scale: float) -> Plan:
    """Set-up, a wide fan-out (one task per sample), a gather, then a long serial tail."""
    d = Dag()
    setup = d.add(120)
    width = max(4, round(600 * scale))
    wide = [d.add(t, [setup], memory=2 * G) for t in _spread(rng, 240, width)]
    last = d.add(300, wide, memory=8 * G)
    for t in _spread(rng, 120, max(3, round(40 * scale)), 0.3):
        last = d.add(t, [last], cores=4)
    return d.plan("fanout")


def forkjoin(rng: np.random.Generator, scale: float) -> Plan:
    """Stages of wide parallel work, each joined by one task before the next."""
    d = Dag()
    join = d.add(60)
    for width, median, cores in ((300, 90, 1), (120, 300, 2), (400, 45, 1), (60, 600, 4)):
        tasks = [d.add(t, [join], cores=cores, memory=cores * 3 * G)
                 for t in _spread(rng, median, max(2, round(width * scale)))]
        join = d.add(120, tasks)
    return d.plan("forkjoin")


def chains(rng: np.random.Generator, scale: float) -> Plan:
    """Deep chains (time steps of independent simulations), each step sometimes
    spawning a short side branch (analysis, plots) that a later step may wait for."""
    d = Dag()
    for _ in range(max(2, round(16 * scale))):
        prev, pending = d.add(60), []
        for t in _spread(rng, 60, 60, 0.4):
            prev = d.add(t, [prev, *pending[:1]], cores=2, memory=4 * G)
            pending = pending[1:]
            if rng.random() < 0.4:
                side = d.add(float(rng.uniform(10, 90)), [prev])
                side = d.add(float(rng.uniform(10, 60)), [side], memory=G)
                if rng.random() < 0.5:
                    pending.append(side)
    return d.plan("chains")


def longtail(rng: np.random.Generator, scale: float) -> Plan:
    """Many short tasks and a few very long ones, in two levels and a final summary."""
    d = Dag()
    n = max(8, round(1000 * scale))
    times = _spread(rng, 40, n, 0.7)
    long = rng.choice(n, max(1, n // 100), replace=False)
    times[long] = rng.uniform(1800, 3600, long.size)
    first = [d.add(t, memory=G) for t in times]
    groups = [first[k : k + 5] for k in range(0, n, 5)]
    second = [d.add(t, g) for t, g in zip(_spread(rng, 30, len(groups)), groups, strict=True)]
    d.add(180, second, cores=8)
    return d.plan("longtail")


def gpumix(rng: np.random.Generator, scale: float) -> Plan:
    """Preprocessing on CPUs, GPU training, multi-rank MPI analysis, post-processing."""
    d = Dag()
    fetch = d.add(60)
    prep = [d.add(t, [fetch], cores=int(rng.choice([1, 2, 4])), memory=4 * G)
            for t in _spread(rng, 120, max(4, round(300 * scale)))]
    trains = [d.add(t, prep[k::8], cores=4, gpus=1, memory=32 * G)
              for k, t in enumerate(_spread(rng, 900, max(2, round(48 * scale)), 0.4))]
    mpi = [d.add(t, trains[k::4], cores=2, ranks=4, memory=8 * G)
           for k, t in enumerate(_spread(rng, 400, max(2, round(16 * scale)), 0.3))]
    post = [d.add(t, [mpi[k % len(mpi)]], memory=2 * G)
            for k, t in enumerate(_spread(rng, 60, max(4, round(200 * scale))))]
    d.add(300, post, gpus=1, cores=4, memory=16 * G)
    return d.plan("gpumix")


SHAPES: dict[str, Callable[[np.random.Generator, float], Plan]] = {
    "fanout": fanout, "forkjoin": forkjoin, "chains": chains, "longtail": longtail, "gpumix": gpumix}


def _partition(whole: bool, **fields: Any) -> Partition:
    """A partition; ``whole_nodes`` only once the profile knows the field."""
    if "whole_nodes" in Partition.model_fields:
        fields["whole_nodes"] = whole
    return Partition(**fields)


PARTITIONS: dict[str, dict[str, Any]] = {
    "shared48": dict(name="shared", nodes=64, cores_per_node=48, memory_per_node="192G",
                     max_time="2-00:00:00"),
    "whole8": dict(name="whole", nodes=128, cores_per_node=8, memory_per_node="32G",
                   max_time="24:00:00"),
    "gpu32": dict(name="gpu", nodes=16, cores_per_node=32, memory_per_node="256G", gpus_per_node=4,
                  max_time="2-00:00:00"),
}
DEFAULT_PROFILES = ["shared48", "whole8", "gpu32"]


def profiles() -> dict[str, tuple[Profile, bool]]:
    """The three sites, each with whether it allocates whole nodes, and (not run by
    default) ``shared48+gpu32``: one site with a CPU and a GPU partition."""
    whole = {"whole8": True}
    sites = {name: [name] for name in PARTITIONS} | {"shared48+gpu32": ["shared48", "gpu32"]}
    return {name: (Profile(name=name.replace("+", "-"), partitions=[
        _partition(whole.get(p, False), **PARTITIONS[p]) for p in parts]), whole.get(name, False))
            for name, parts in sites.items()}


def is_whole(part: Partition, declared: bool) -> bool:
    return bool(getattr(part, "whole_nodes", declared))


def fraction(shape: Shape, part: Partition, whole: bool) -> float:
    """The part of each node the job is charged for."""
    if whole:
        return 1.0
    parts = [shape.ntasks_per_node * shape.cpus_per_task / part.cores_per_node,
             shape.memory_per_node / part.memory]
    if part.gpus_per_node:
        parts.append(shape.gpus_per_node / part.gpus_per_node)
    return max(parts)


def cost(shape: Shape, part: Partition, whole: bool, makespan: float) -> float:
    """GPU-hours if the job asks for GPUs, else node-hours (whole nodes) or core-hours."""
    unit = part.gpus_per_node if shape.gpus_per_node else 1 if whole else part.cores_per_node
    return shape.nodes * fraction(shape, part, whole) * makespan / 3600 * unit


@dataclass(frozen=True)
class Point:
    """One simulated shape."""

    shape: Shape
    makespan: float
    cost: float
    partition: str = ""


@dataclass
class Search:
    """What the brute force found on one partition."""

    fastest: Point | None
    knee: Point | None
    listed: int
    simulated: int
    points: list[Point] = field(default_factory=list)


def _memories(plan: Plan, part: Partition, ntasks: int, cpt: int, whole: bool) -> set[int]:
    """Memory per node: in proportion to the cores taken and at least what the biggest
    task needs on its node, or (if more) what every task needs per rank, so that none
    holds extra ranks for memory; never more than the node has; whole megabytes."""
    if whole or not plan.n:
        return {part.memory}
    share = part.memory * ntasks * cpt // part.cores_per_node
    per_rank = int(np.ceil(plan.memory / np.ceil(plan.cores / cpt)).max()) * ntasks
    biggest = int((plan.memory * plan.ranks.astype(np.int64)).max())
    out = set()
    for want in (max(share, biggest), max(share, per_rank)):
        memory = min(part.memory, want)
        out.add(memory // MB * MB if memory >= part.memory else math.ceil(memory / MB) * MB)
    return out


def _one_core_shapes(plan: Plan, analysis: Analysis, part: Partition, whole: bool) -> Iterator[Shape]:
    """One-core ranks: shared nodes spread evenly, or whole nodes of every count."""
    cores, demand = part.cores_per_node, analysis.demand
    core_share = part.memory // cores
    peak = min(max(1, demand.peak_cores, math.ceil(demand.peak_memory / core_share)), part.nodes * cores - 1)
    gpu_plan = demand.peak_gpus > 0 and part.gpus_per_node > 0
    if whole:
        for n in range(1, min(part.nodes, math.ceil((peak + 1) / cores) + EXTRA_NODES) + 1):
            yield Shape(n, cores, 1, part.gpus_per_node if gpu_plan else 0, part.memory)
        return
    for w in range(peak, 0, -1):
        fewest = math.ceil((w + 1) / cores)
        for n in range(fewest, min(part.nodes, fewest + EXTRA_NODES) + 1):
            ntasks = math.ceil((w + 1) / n)
            gpus = 0 if not gpu_plan else part.gpus_per_node if ntasks >= cores else \
                min(part.gpus_per_node, demand.peak_gpus)
            for memory in _memories(plan, part, ntasks, 1, whole):
                yield Shape(n, ntasks, 1, gpus, memory)


def _gpu_rank_shapes(plan: Plan, analysis: Analysis, part: Partition, whole: bool) -> Iterator[Shape]:
    """One rank per GPU: every GPU count per node on every node count."""
    cores, gpus = part.cores_per_node, part.gpus_per_node
    for g in range(gpus if whole else 1, gpus + 1):
        ntasks = min(cores, g + 1)
        cpt = max(1, cores * g // gpus // ntasks)
        yield from (Shape(1, ntasks, cpt, g, m) for m in _memories(plan, part, ntasks, cpt, whole))
        for cpt in sorted({cores // gpus, cores // g}):
            memories = _memories(plan, part, g, cpt, whole)
            for n, memory in itertools.product(range(2, part.nodes + 1), memories):
                yield Shape(n, g, cpt, g, memory)


def shapes(plan: Plan, analysis: Analysis, part: Partition, whole: bool) -> list[Shape]:
    """Every shape the brute force considers on ``part``, most cores first."""
    found = set(_one_core_shapes(plan, analysis, part, whole))
    if analysis.demand.peak_gpus > 0 and part.gpus_per_node:
        found.update(_gpu_rank_shapes(plan, analysis, part, whole))
    return sorted(found, key=lambda s: (-s.workers * s.cpus_per_task, s.nodes, s.ntasks_per_node))


class Simulator:
    """Makespans of shapes, each simulated once (None: the plan does not fit it)."""

    def __init__(self, plan: Plan, analysis: Analysis, part: Partition, memory_style: str) -> None:
        self.plan, self.analysis, self.part, self.style = plan, analysis, part, memory_style
        self.cache: dict[Shape, float | None] = {}

    def __call__(self, shape: Shape) -> float | None:
        if shape not in self.cache:
            try:
                slots = allocation_slots(shape, self.part, self.style) if shape.workers >= 1 else []
                self.cache[shape] = simulate(self.plan, self.analysis, slots).makespan if slots else None
            except ResourceError:
                self.cache[shape] = None
        return self.cache[shape]


def search(plan: Plan, analysis: Analysis, part: Partition, whole: bool, memory_style: str = "mem",
           sim: Simulator | None = None) -> Search:
    """The fastest shape and the knee on ``part`` (see the module docstring)."""
    sim = sim or Simulator(plan, analysis, part, memory_style)
    listed = shapes(plan, analysis, part, whole)
    points: list[Point] = []
    best = math.inf
    gpu_seconds = float(np.dot(plan.time, plan.gpus.astype(np.int64) * plan.ranks))
    for shape in listed:
        if lower_bound(plan, analysis, shape.workers * shape.cpus_per_task) > best * (1 + TOLERANCE):
            break
        gpus = shape.nodes * shape.gpus_per_node
        if gpu_seconds and (not gpus or gpu_seconds / gpus > best * (1 + TOLERANCE)):
            continue
        makespan = sim(shape)
        if makespan is not None:
            points.append(Point(shape, makespan, cost(shape, part, whole, makespan), part.name))
            best = min(best, makespan)
    return _pick(points, len(listed), len(sim.cache))


def _pick(points: list[Point], listed: int, simulated: int) -> Search:
    if not points:
        return Search(None, None, listed, simulated)
    fastest = min(points, key=lambda p: (p.makespan, p.cost))
    near = [p for p in points if p.makespan <= fastest.makespan * (1 + TOLERANCE) + 1e-9]
    knee = min(near, key=lambda p: (round(p.cost, 9), p.shape.nodes, p.makespan))
    return Search(fastest, knee, listed, simulated, points)


@dataclass
class Row:
    """One (shape, profile): the sizer's choice against the brute force."""

    shape: str
    profile: str
    tasks: int
    status: str  # ok, missed, n/a, error
    note: str = ""
    chosen: str = ""
    knee: str = ""
    fastest_shape: str = ""
    makespan: float | None = None
    fastest: float | None = None
    cost: float | None = None
    knee_cost: float | None = None
    knee_makespan: float | None = None
    time: float | None = None
    cost_ratio: float | None = None
    makespan_ratio: float | None = None
    time_ratio: float | None = None
    size_seconds: float | None = None
    size_cpu_seconds: float | None = None
    brute_seconds: float | None = None
    simulated: int = 0
    missed: list[str] = field(default_factory=list)


def describe(shape: Shape) -> str:
    gpus = f" g{shape.gpus_per_node}" if shape.gpus_per_node else ""
    return f"{shape.nodes}x{shape.ntasks_per_node}x{shape.cpus_per_task}{gpus} {shape.memory_per_node // G}G"


def brute_force(plan: Plan, analysis: Analysis, prof: Profile, whole: bool) -> Search:
    """:func:`search` over every partition of ``prof`` the plan fits; a plan without GPUs
    stays off GPU partitions where a CPU one fits (the sizer's rule: GPU nodes are kept
    for GPU work, and their core-hours are not the CPU partition's)."""
    found = [search(plan, analysis, part, is_whole(part, whole), prof.memory) for part in prof.partitions]
    if not analysis.demand.peak_gpus and any(s.points and not part.gpus_per_node
                                            for s, part in zip(found, prof.partitions, strict=True)):
        found = [s for s, part in zip(found, prof.partitions, strict=True) if not part.gpus_per_node]
    points = [p for s in found for p in s.points]
    return _pick(points, sum(s.listed for s in found), sum(s.simulated for s in found))


def check(name: str, plan: Plan, prof: Profile, whole: bool) -> Row:
    """Size ``plan`` on ``prof`` and hold the choice against the brute force."""
    analysis = analyse(plan)
    row = Row(name, prof.name, plan.n, "ok")
    if analysis.demand.peak_gpus and not any(p.gpus_per_node for p in prof.partitions):
        row.status, row.note = "n/a", "GPU tasks, no GPU partition"
        return row
    started, cpu = time.perf_counter(), time.process_time()
    try:
        sizing = size(plan, analysis, prof)
    except Exception as exc:  # any failure is a row, not the end of the benchmark
        row.status, row.note = "error", f"{type(exc).__name__}: {exc}"[:200]
        return row
    row.size_seconds, row.size_cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    started = time.perf_counter()
    found = brute_force(plan, analysis, prof, whole)
    row.brute_seconds, row.simulated = time.perf_counter() - started, found.simulated
    if found.knee is None or found.fastest is None:
        row.status, row.note = "error", "the brute force found no shape that runs the plan"
        return row
    _fill(row, sizing, found, whole)
    if len(prof.partitions) > 1:
        row.chosen, row.knee = f"{sizing.partition.name}:{row.chosen}", f"{found.knee.partition}:{row.knee}"
    own = Simulator(plan, analysis, sizing.partition, prof.memory)(sizing.chosen.shape)
    if row.makespan is not None and (own is None or abs(own - row.makespan) > 1e-6 * max(1.0, own)):
        row.note = f"the sizer predicts {row.makespan:.0f} s, the simulator {own} s on its shape"
    return row


def _fill(row: Row, sizing: Sizing, found: Search, whole: bool) -> None:
    part, shape = sizing.partition, sizing.chosen.shape
    knee, fastest = found.knee, found.fastest
    assert knee is not None and fastest is not None
    row.chosen, row.knee, row.fastest_shape = describe(shape), describe(knee.shape), describe(fastest.shape)
    row.makespan, row.fastest, row.time = sizing.chosen.makespan, fastest.makespan, sizing.time
    row.knee_cost, row.knee_makespan = knee.cost, knee.makespan
    if row.makespan is None:
        row.status, row.note = "error", "the sizer's choice has no predicted makespan"
        return
    row.cost = cost(shape, part, is_whole(part, whole), row.makespan)
    row.cost_ratio = row.cost / knee.cost
    row.makespan_ratio = row.makespan / fastest.makespan
    row.time_ratio = (row.time or math.inf) / row.makespan if row.makespan else None
    limit = max(TARGETS["time_fraction"] * row.makespan, row.makespan + TARGETS["time_slack"])
    checks = {"cost": row.cost_ratio <= TARGETS["cost_ratio"] + 1e-9,
              "makespan": row.makespan_ratio <= TARGETS["makespan_ratio"] + 1e-9,
              "time": (row.time or math.inf) <= limit + 1e-9,
              "size_seconds": row.size_seconds is not None and row.size_seconds <= TARGETS["size_seconds"]}
    row.missed = [k for k, ok in checks.items() if not ok]
    row.status = "ok" if not row.missed else "missed"
    if row.makespan_ratio < 1 - 1e-9 or (row.cost_ratio < 1 - 1e-9 and checks["makespan"]):
        row.note = "the sizer found a shape the brute force missed"


def time_large(prof: Profile, tasks: int = 10_000, repeat: int = 3) -> dict[str, Any]:
    """Wall and CPU seconds of ``size`` on a fork-join plan of about ``tasks`` tasks,
    the best of ``repeat`` runs (the machine is shared)."""
    plan = forkjoin(np.random.default_rng(1), tasks / 884)
    analysis = analyse(plan)
    walls, cpus = [], []
    for _ in range(repeat):
        started, cpu = time.perf_counter(), time.process_time()
        size(plan, analysis, prof)
        walls.append(time.perf_counter() - started)
        cpus.append(time.process_time() - cpu)
    return {"workload": "sizing-large", "profile": prof.name, "tasks": plan.n,
            "size_seconds": round(min(walls), 3), "size_cpu_seconds": round(min(cpus), 3),
            "ok": min(walls) <= TARGETS["size_seconds"]}


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_rows(rows: list[Row]) -> None:
    """A Markdown table, then one ``RESULT`` line per row."""
    print("| shape | profile | tasks | chosen | knee | cost/knee | makespan/fastest (s) | "
          "time/makespan | size s | brute s (sims) | result |\n|---|---|---:|---|---|" + "---:|" * 5 + "---|")
    for r in rows:
        span = "-" if r.makespan is None else f"{r.makespan:.0f}/{r.fastest:.0f} = {_num(r.makespan_ratio)}"
        result = r.status + (f" ({', '.join(r.missed)})" if r.missed else "") + (r.note and f": {r.note}")
        print(f"| {r.shape} | {r.profile} | {r.tasks} | {r.chosen or '-'} | {r.knee or '-'} | "
              f"{_num(r.cost_ratio)} | {span} | {_num(r.time_ratio)} | {_num(r.size_seconds, 3)} | "
              f"{_num(r.brute_seconds, 1)} ({r.simulated}) | {result} |")
    for r in rows:
        fields = {"workload": "sizing", "shape": r.shape, "profile": r.profile, "tasks": r.tasks,
                  "status": r.status, "chosen": r.chosen.replace(" ", "_") or "-",
                  "knee": r.knee.replace(" ", "_") or "-", "cost_ratio": _num(r.cost_ratio, 3),
                  "makespan_ratio": _num(r.makespan_ratio, 3), "time_ratio": _num(r.time_ratio, 3),
                  "makespan_s": _num(r.makespan, 0), "fastest_s": _num(r.fastest, 0),
                  "time_s": _num(r.time, 0), "size_seconds": _num(r.size_seconds, 3),
                  "size_cpu_seconds": _num(r.size_cpu_seconds, 3)}
        print("RESULT " + " ".join(f"{k}={v}" for k, v in fields.items()), flush=True)


def run(shape_names: list[str], profile_names: list[str], quick: bool, seed: int = 13
        ) -> tuple[list[Row], dict[str, Any]]:
    sites = profiles()
    scale = 0.1 if quick else 1.0
    rows = []
    for name in shape_names:
        plan = SHAPES[name](np.random.default_rng(seed), scale)
        for site in profile_names:
            prof, whole = sites[site]
            rows.append(check(name, plan, prof, whole))
            print(f"# {name} on {site}: {rows[-1].status}", file=sys.stderr, flush=True)
    extra = {} if quick else time_large(sites["shared48"][0])
    return rows, extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--profiles", nargs="+", choices=list(profiles()), default=DEFAULT_PROFILES)
    parser.add_argument("--seed", type=int, default=13, help="of the DAG shapes' random times")
    parser.add_argument("--json", metavar="FILE", help="write every figure here")
    parser.add_argument("--quick", action="store_true",
                        help="a tenth of each shape's tasks, no 10^4-task timing (a smoke test)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows, extra = run(args.shapes, args.profiles, args.quick, args.seed)
    print_rows(rows)
    if extra:
        print("RESULT " + " ".join(f"{k}={v}" for k, v in extra.items()))
    failed = [r for r in rows if r.status in ("missed", "error")]
    total = time.perf_counter() - started
    print(f"RESULT workload=sizing-summary rows={len(rows)} failed={len(failed)} seconds={total:.1f} "
          f"load={os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"targets": TARGETS, "tolerance": TOLERANCE, "rows": [asdict(r) for r in rows],
                       "large": extra, "seconds": total, "load": os.getloadavg()}, out, indent=1)
    return 1 if failed or not extra.get("ok", True) else 0


if __name__ == "__main__":
    sys.exit(main())
