"""Choose ONE allocation for a whole workflow run by simulating the engine on it.

A run is one batch job (pilot model): the engine, not Slurm, places tasks on the job's
ranks, so the right request is the one whose *simulated* run is best. For each
candidate node count this module builds the worker slots the MPI engine would find in
that allocation (the engine's own share rules, :func:`hpcflow.engine.mpi.discover.share`,
fed the ``SLURM_*`` values the job would get; rank 0 is the coordinator and takes one
rank's cores on the first node) and replays the plan on them with
:func:`hpcflow.plan.simulate.simulate`, the engine's own placement policy.

The shape of a candidate on ``n`` nodes of ``C`` cores:

- ``cpus-per-task`` is 1 (override: ``--cpus-per-task``). A task needing more cores
  holds several one-core ranks on one node (the engine's span rule), so the coordinator
  costs one core, not one task's worth, and nothing is lost to rounding;
- ``ntasks-per-node`` is ``C`` (whole nodes), except on a single node, where it is only
  as many ranks as the plan can ever use at once (its ASAP peak, plus the coordinator);
- a plan that uses GPUs gets one worker rank per GPU instead (``C / GPUs`` cores each),
  so that every worker of a node holds an equal GPU share: the engine's placement
  assumes the shares on one node are equal, and more ranks than GPUs would leave some
  ranks without one. Whole nodes take all their GPUs; one node alone only the GPUs of
  the plan's peak (plus the coordinator rank), with cores in proportion;
- memory: the node's memory in proportion to the cores taken (all of it for whole
  nodes), more if the tasks need more per core; never more than the node has.

**Policy.** A candidate *fits* when its requested time, the makespan plus a safety
margin (``margin_fraction`` 10% + ``margin_seconds`` 60 s, rounded up to a minute;
profile settings), is within the limit: the partition's max time, ``--deadline`` (run
time, queue wait not counted) or ``--time``, whichever is smallest. Of those that fit,
the one with the fewest node-hours (nodes x the fraction of each node taken x the
makespan) wins; ties go to fewer nodes. Node counts tried: 1 to 8, then steps of about
1.5x, up to the partition's node count, stopping once more nodes cannot help (the
makespan reached the critical path, or past the plan's ASAP peak a step gained
nothing). Nothing fitting is a :class:`SizingError` with the numbers and the
continuation-chain proposal; a task that fits no node of the partition is a
:class:`ResourceError` naming it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from hpcflow.errors import ResourceError
from hpcflow.model.resources import DEFAULT_TIME_ESTIMATE, format_memory, format_slurm_time
from hpcflow.plan.analyse import Analysis
from hpcflow.plan.plan import Plan
from hpcflow.plan.simulate import lower_bound, simulate
from hpcflow.scheduler.slurm.errors import SizingError
from hpcflow.scheduler.slurm.profile import Partition, Profile
from hpcflow.scheduler.slurm.shape import Need, Overrides, Shape, allocation_slots, need_of, shape_for

__all__ = ["Candidate", "Overrides", "Shape", "Sizing", "requested_time", "size"]

TOLERANCE = 0.02
"""Node-hours within 2% of the fewest count as equal, and fewer nodes win: the estimates
are not that precise, and a smaller job starts sooner."""



@dataclass(frozen=True)
class Candidate:
    """One node count: simulated (``makespan``), or not worth simulating (``bound``, a
    lower bound of its makespan, says why) or not possible (``note`` says why)."""

    shape: Shape
    makespan: float | None  # None: not simulated or the plan does not fit (see note)
    time: float | None  # makespan + margin, rounded up to a minute
    node_hours: float | None
    fits: bool
    note: str = ""
    bound: float | None = None


@dataclass(frozen=True)
class Sizing:
    """The candidates, the choice and why; ``time`` is what ``--time`` says (None: omitted)."""

    partition: Partition
    candidates: tuple[Candidate, ...]
    chosen: Candidate
    time: float | None
    limit: float | None
    limit_source: str
    reason: str
    warnings: tuple[str, ...] = ()
    chain_jobs: int = 1
    """More than 1: no allocation finishes in time, so the run continues in about this many
    jobs of ``time`` each, every one resuming where the last stopped (walltime.py)."""

    @property
    def shape(self) -> Shape:
        return self.chosen.shape


def size(plan: Plan, analysis: Analysis, profile: Profile, over: Overrides | None = None) -> Sizing:
    """The allocation to request for ``plan`` (see the module docstring for the policy)."""
    over = over or Overrides()
    part = profile.partition(over.partition)
    limit, source = _limit(part, over, profile)
    _check_options(part, over)
    _check_tasks_fit(plan, part, over.cpus_per_task or 1, over.ntasks_per_node)
    candidates = _candidates(plan, analysis, profile, part, over, limit)
    fitting = [c for c in candidates if c.fits]
    warnings = _estimate_warnings(plan)
    if not fitting:
        if not (over.nodes and over.time) or candidates[0].makespan is None:
            return _chain(plan, part, candidates, limit, source, profile, warnings)
        warnings += (f"the run is estimated to need {format_slurm_time(candidates[0].time or 0)}, "
                     f"more than --time {format_slurm_time(over.time)}: it may be stopped",)
        fitting = list(candidates)
    chosen = _choose(fitting)
    time = None if over.no_time else (over.time or chosen.time)
    reason = _reason(chosen, candidates, over, profile, limit, source)
    return Sizing(part, candidates, chosen, time, limit, source, reason, warnings)


def requested_time(makespan: float, profile: Profile) -> float:
    """Makespan plus the profile's margin, rounded up to whole minutes (Slurm's unit)."""
    padded = round(makespan * (1 + profile.margin_fraction) + profile.margin_seconds, 6)
    return max(60.0, math.ceil(padded / 60) * 60.0)  # round(): 3000 * 1.1 is 3300.0000000000005


def _limit(part: Partition, over: Overrides, profile: Profile) -> tuple[float | None, str]:
    """The time the request must fit in, and where that limit comes from."""
    max_s = part.max_seconds
    if over.no_time and profile.time_required:
        raise SizingError(f"profile '{profile.name}' says this site requires --time "
                          "(time_required: true); --time none is not allowed")
    if over.time is not None and max_s is not None and over.time > max_s:
        raise SizingError(f"--time {format_slurm_time(over.time)} exceeds the max time "
                          f"{format_slurm_time(max_s)} of partition '{part.name}'")
    limits = [(max_s, f"partition {part.name}'s max time"), (over.deadline, "--deadline"),
              (over.time, "--time")]
    given = [(value, why) for value, why in limits if value is not None]
    return min(given) if given else (None, "no limit")


def _check_options(part: Partition, over: Overrides) -> None:
    """Options must fit the partition's nodes (Slurm would refuse or queue them forever)."""
    cores = (over.ntasks_per_node or 1) * (over.cpus_per_task or 1)
    problems = [
        (over.nodes is not None and over.nodes > part.nodes, f"--nodes {over.nodes}",
         f"{part.nodes} node(s)"),
        (cores > part.cores_per_node, f"--ntasks-per-node x --cpus-per-task = {cores} cores",
         f"{part.cores_per_node} cores per node"),
        ((over.gpus_per_node or 0) > part.gpus_per_node, f"--gpus-per-node {over.gpus_per_node}",
         f"{part.gpus_per_node} GPUs per node"),
        ((over.memory or 0) > part.memory, f"--mem {format_memory(over.memory or 0)}",
         f"{format_memory(part.memory)} per node"),
    ]
    for wrong, asked, has in problems:
        if wrong:
            raise SizingError(f"{asked} is more than partition '{part.name}' has ({has})")


def _check_tasks_fit(plan: Plan, part: Partition, cpt: int, ntasks: int | None) -> None:
    """Every task must fit on one node of the partition (a clear error naming it)."""
    if cpt > part.cores_per_node:
        raise SizingError(f"--cpus-per-task {cpt} is more than the {part.cores_per_node} cores "
                          f"per node of partition '{part.name}'")
    ranks_per_node = ntasks or part.cores_per_node // cpt
    for group in plan.groups:
        if not group.size:
            continue
        i = group.start
        cores, gpus, mem, ranks = (int(plan.cores[i]), int(plan.gpus[i]), int(plan.memory[i]),
                                   int(plan.ranks[i]))
        if (ranks * math.ceil(cores / cpt) > ranks_per_node or ranks * gpus > part.gpus_per_node
                or ranks * mem > part.memory):
            raise ResourceError(plan.name(i), (
                f"needs {ranks} rank(s) x ({cores} core(s), {gpus} GPU(s), "
                f"{format_memory(mem) if mem else 'no stated'} memory) on one node; nodes of "
                f"partition '{part.name}' have {part.shape()}"
                + (f" and {ranks_per_node} ranks of {cpt} core(s)" if ntasks or cpt > 1 else "")))


def _node_counts(part: Partition) -> Iterator[int]:
    """Node counts worth simulating: 1..8, then ~1.5x steps, at most the partition's."""
    n = 0
    while n < part.nodes:
        n = n + 1 if n < 8 else min(part.nodes, math.ceil(n * 1.5))
        yield n


def _enough_nodes(analysis: Analysis, part: Partition, need: Need) -> int:
    """Nodes the plan's ASAP peak could use (cores, memory or GPUs), coordinator included."""
    demand = analysis.demand
    return max(math.ceil((need.useful_slots + 1) / part.cores_per_node),
               math.ceil(demand.peak_memory / part.memory),
               math.ceil(demand.peak_gpus / part.gpus_per_node) if part.gpus_per_node else 1)


def _candidates(plan: Plan, analysis: Analysis, profile: Profile, part: Partition,
                over: Overrides, limit: float | None) -> tuple[Candidate, ...]:
    """Grow the node count until more nodes cannot help: the makespan reached the critical
    path, past the plan's ASAP peak a step brought no gain, or the critical path alone
    costs more node-hours than the best so far. A count whose lower bound cannot fit the
    limit or beat the best is listed without being simulated."""
    def shaped(n: int) -> Shape:
        return shape_for(n, part, plan, analysis, over)

    if over.nodes or (over.engine or profile.engine) == "local":
        return (_evaluate(plan, analysis, profile, part, shaped(over.nodes or 1), limit),)
    enough = _enough_nodes(analysis, part, need_of(plan, analysis, 1))
    out: list[Candidate] = []
    best: float | None = None  # fewest node-hours of a fitting candidate so far
    for n in _node_counts(part):
        shape = shaped(n)
        skipped = _not_worth_it(plan, analysis, profile, part, shape, limit, best)
        if skipped is not None:
            out.append(skipped)
            if best is not None and n * _fraction(shape, part) * analysis.critical_time / 3600 \
                    >= best * (1 - TOLERANCE):
                break  # the critical path alone: no larger count can do better
            continue
        cand = _evaluate(plan, analysis, profile, part, shape, limit)
        previous = next((c.makespan for c in reversed(out) if c.makespan is not None), None)
        out.append(cand)
        if cand.makespan is None:
            continue
        if cand.fits and (best is None or (cand.node_hours or 0.0) < best):
            best = cand.node_hours
        if cand.makespan <= analysis.critical_time * (1 + 1e-9):
            break
        if n >= enough and previous is not None and cand.makespan >= previous * (1 - 1e-9):
            break
    return tuple(out)


def _not_worth_it(plan: Plan, analysis: Analysis, profile: Profile, part: Partition, shape: Shape,
                  limit: float | None, best: float | None) -> Candidate | None:
    """A listed-only candidate when even its makespan's lower bound (critical path, or all
    the work spread over its cores: :func:`lower_bound`) cannot fit or cannot beat ``best``."""
    if shape.workers < 1:
        return None
    bound = lower_bound(plan, analysis, shape.workers * shape.cpus_per_task)
    if limit is not None and requested_time(bound, profile) > limit:
        return Candidate(shape, None, None, None, False, "not simulated: even its lower bound "
                         "is over the limit", bound)
    if best is not None and shape.nodes * _fraction(shape, part) * bound / 3600 >= best * (1 - TOLERANCE):
        return Candidate(shape, None, None, None, False, "not simulated: even its lower bound "
                         "saves no node-hours", bound)
    return None


def _fraction(shape: Shape, part: Partition) -> float:
    """The part of each node the job takes (its cores)."""
    return min(1.0, shape.ntasks_per_node * shape.cpus_per_task / part.cores_per_node)


def _choose(fitting: list[Candidate]) -> Candidate:
    """Fewest node-hours; within :data:`TOLERANCE` of it, fewer nodes, then shorter."""
    least = min(c.node_hours or 0.0 for c in fitting)
    near = [c for c in fitting if (c.node_hours or 0.0) <= least * (1 + TOLERANCE) + 1e-12]
    return min(near, key=lambda c: (c.shape.nodes, c.makespan or 0.0))


def _evaluate(plan: Plan, analysis: Analysis, profile: Profile, part: Partition, shape: Shape,
              limit: float | None) -> Candidate:
    """Simulate the plan on ``shape``; its requested time, node-hours and whether it fits."""
    if shape.workers < 1:
        return Candidate(shape, None, None, None, False,
                         "no rank left for a worker beside the coordinator")
    try:
        makespan = simulate(plan, analysis, allocation_slots(shape, part, profile.memory)).makespan
    except ResourceError as exc:
        return Candidate(shape, None, None, None, False, f"does not fit: {exc}")
    time = requested_time(makespan, profile)
    fits = limit is None or time <= limit
    return Candidate(shape, makespan, time, shape.nodes * _fraction(shape, part) * makespan / 3600,
                     fits, "" if fits else "over the limit")


def _reason(chosen: Candidate, candidates: tuple[Candidate, ...], over: Overrides,
            profile: Profile, limit: float | None, source: str) -> str:
    margin = f"+ {profile.margin_fraction:.0%} + {profile.margin_seconds} s"
    within = f"fits {format_slurm_time(limit)} ({source})" if limit is not None else "(no limit)"
    if over.nodes:
        return f"--nodes {over.nodes} was given; its makespan {margin} {within}"
    if len(candidates) == 1:
        return f"the only candidate; its makespan {margin} {within}"
    return (f"fewest node-hours (within {TOLERANCE:.0%}: then fewer nodes) among the candidates "
            f"whose makespan {margin} {within}")


def _chain(plan: Plan, part: Partition, candidates: tuple[Candidate, ...], limit: float | None,
           source: str, profile: Profile, warnings: tuple[str, ...]) -> Sizing:
    """When no allocation finishes within the partition's max time: a continuation chain of
    jobs of that time each, unless a deadline or --time set the limit (a chain cannot meet
    those) or one task alone is longer than a job."""
    error = _nothing_fits(plan, part, candidates, limit, source, profile)
    timed = [c for c in candidates if c.makespan is not None or c.bound is not None]
    too_long = bool(plan.n) and limit is not None and float(plan.time.max()) > limit
    if not timed or not source.startswith("partition") or too_long or limit is None:
        raise error

    def estimate(c: Candidate) -> float:
        return c.makespan if c.makespan is not None else c.bound or 0.0

    chosen = min(timed, key=lambda c: (estimate(c) * c.shape.nodes, c.shape.nodes))
    jobs = math.ceil(requested_time(estimate(chosen), profile) / limit)
    reason = (f"no allocation finishes within {format_slurm_time(limit)} ({source}): the run "
              f"continues in a chain of about {jobs} jobs of {format_slurm_time(limit)}, each "
              "resuming where the last stopped; fewest estimated node-hours among the candidates")
    return Sizing(part, candidates, chosen, limit, limit, source, reason, warnings, jobs)


def _nothing_fits(plan: Plan, part: Partition, candidates: tuple[Candidate, ...],
                  limit: float | None, source: str, profile: Profile) -> Exception:
    """The error when no candidate fits: the numbers, and what would (a chain of jobs)."""
    timed = [(c.time, c.makespan, "is estimated at") if c.time is not None else
             (requested_time(c.bound, profile), c.bound, "needs at least")
             for c in candidates if c.time is not None or c.bound is not None]
    if not timed:
        note = candidates[0].note.removeprefix("does not fit: ")
        return SizingError(f"no allocation of partition '{part.name}' can run this workflow: "
                           f"{note}")
    best = min(range(len(timed)), key=lambda k: timed[k][0])
    time, makespan, verb = timed[best]
    shape = [c for c in candidates if c.time is not None or c.bound is not None][best].shape
    assert limit is not None
    jobs = math.ceil(time / limit)
    longest = int(plan.time.argmax()) if plan.n else 0
    lone = (f" Task '{plan.name(longest)}' alone is estimated at "
            f"{format_slurm_time(float(plan.time[longest]))}, longer than the limit: a chain "
            "cannot split a task." if plan.n and plan.time[longest] > limit else "")
    return SizingError(
        f"no allocation of partition '{part.name}' finishes within {format_slurm_time(limit)} "
        f"({source}): the fastest, {shape.nodes} node(s) x {shape.ntasks_per_node} ranks, {verb} "
        f"{format_slurm_time(makespan)} and needs --time {format_slurm_time(time)} with the "
        f"safety margin. A continuation chain of about {jobs} jobs of {format_slurm_time(limit)} "
        "would run it without the deadline or --time limit; give it more time or split the "
        f"workflow.{lone}",
        fastest=time, limit=limit, chain_jobs=jobs)


def _estimate_warnings(plan: Plan) -> tuple[str, ...]:
    unknown = [g.name for g in plan.groups if g.size and g.task.resources.time is None]
    if not unknown:
        return ()
    shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
    return (f"{len(unknown)} task(s) give no time estimate ({shown}); the sizing assumed "
            f"{DEFAULT_TIME_ESTIMATE:g} s each: add resources.time for a better request",)
