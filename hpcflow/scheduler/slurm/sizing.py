"""Choose ONE allocation for a whole workflow run by simulating the engine on it.

A run is one batch job (pilot model): the engine, not Slurm, places tasks on the job's
ranks, so the right request is the one whose *simulated* run is best. Each candidate's
worker slots are the ones the MPI engine would find in that allocation (the engine's own
share rules fed the ``SLURM_*`` values the job would get; rank 0 is the coordinator),
and the plan is replayed on them with :func:`hpcflow.plan.simulate.simulate`, the
engine's own placement policy.

**Shapes** (:func:`.shape.axis_for`), on each partition every task fits (a plan without
GPUs stays off GPU partitions when a CPU one fits; ``--partition`` names one):

- shared nodes: any number of one-core worker ranks (``--cpus-per-task`` for more),
  spread evenly over the fewest nodes that hold them (``--nodes``, ``--ntasks-per-node``
  and ``--cpus-per-task`` per node), memory in proportion to the cores taken (at least
  the biggest task's). A task needing more cores or memory than one rank's share holds
  several ranks of one node (the engine's span rule), so nothing is lost to rounding;
  where tasks hold several ranks, the top of the axis is also tried over more nodes;
- whole nodes (``whole_nodes: true`` in the profile): every core of each node as a rank;
  the node count varies;
- a plan that uses GPUs: the number of GPUs varies, over the fewest nodes that hold them,
  with the nodes' cores (as one-core ranks) and memory in proportion (a GPU job pays for
  the larger of its GPU and core shares, so the cores come free); the engine gives each
  node's GPUs to its first worker ranks (for Dask and Ray, whose workers are started
  alike on a node, one rank per GPU with the cores in proportion). List schedules of
  GPU tasks that hold several ranks are sensitive to the rank count, so a few rank
  counts are also tried on the cheapest good GPU shape and on one node fewer.

**Cost** is what the site charges (:func:`.shape.cost`): core-hours of the cores,
memory or GPUs taken (the largest share, as Slurm's billing counts), node-hours on
whole nodes, GPU-hours when GPUs are asked for.

**Policy.** The fastest candidate is the one with the smallest predicted makespan over
every shape searched; by default the choice is the cheapest candidate whose makespan is
within the profile's ``tolerance`` (5%) of it and whose requested time fits the limit
(the partition's max time, ``--deadline`` or ``--time``, whichever is smallest). With
``--deadline`` the choice is the cheapest that fits it, however slower than the fastest.
Ties go to the default partition, then fewer nodes, then the shorter makespan. The
search (:mod:`.front`) simulates a doubling grid of each axis and bisects where the
curve crosses the goal, so about ``2 log2(k)`` simulations per partition.

**Time.** The request is the predicted makespan plus its margin (``margin_fraction``
of it, at least ``margin_seconds``), plus what the job spends before the first task
(``startup_seconds``) and at its end (the engine's stop grace before the limit, and the
slack a last task needs: :data:`hpcflow.engine.walltime.GRACE` and ``MARGIN``), each
counted once, rounded up to Slurm's minute. Slurm's USR1 is only a warning where the
engine knows the job's end, so its lead is not added; it is asked for the tasks' longest
estimate plus the stop grace ahead (at most the profile's ``signal_grace``), what a
drain needs where the end is not known.

No candidate fitting the partition's max time gives a continuation chain of jobs (each
resumes the run); fitting no deadline or ``--time`` is a :class:`SizingError` naming
the fastest candidate; a task that fits no node is a :class:`ResourceError` naming it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hpcflow.errors import ResourceError
from hpcflow.model.resources import DEFAULT_TIME_ESTIMATE, format_memory, format_slurm_time
from hpcflow.plan.analyse import Analysis
from hpcflow.plan.plan import Plan
from hpcflow.scheduler.slurm.errors import SizingError
from hpcflow.scheduler.slurm.front import Candidate, Search
from hpcflow.scheduler.slurm.profile import Partition, Profile
from hpcflow.scheduler.slurm.shape import Overrides, Shape
from hpcflow.scheduler.slurm.timing import requested_time, signal_lead, usable_time

__all__ = ["Candidate", "Overrides", "Shape", "Sizing", "requested_time", "signal_lead", "size",
           "usable_time"]


@dataclass(frozen=True)
class Sizing:
    """The front searched, the choice and why; ``time`` is what ``--time`` says (None:
    omitted); ``signal_lead`` the seconds of ``--signal=B:USR1@``."""

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
    fastest: Candidate | None = None
    signal_lead: int = 60

    @property
    def shape(self) -> Shape:
        return self.chosen.shape


def size(plan: Plan, analysis: Analysis, profile: Profile, over: Overrides | None = None) -> Sizing:
    """The allocation to request for ``plan`` (see the module docstring for the policy)."""
    over = over or Overrides()
    parts = _partitions(plan, profile, over)
    limit, source = _limit(parts, over, profile)
    search = Search(plan, analysis, profile, over, parts, limit)
    warnings = _estimate_warnings(plan)
    lead = signal_lead(plan, profile)
    good = [c for c in search.candidates if c.fits and search.good(c)]
    if not good:
        if not (over.nodes and over.time) or search.fastest is None:
            return _chain(plan, search, limit, source, profile, warnings, lead)
        warnings += (f"the run is estimated to need {format_slurm_time(search.fastest.time or 0)}, "
                     f"more than --time {format_slurm_time(over.time)}: it may be stopped",)
        good = [search.fastest]
    chosen = min(good, key=search.rank)
    time = None if over.no_time else (over.time or chosen.time)
    reason = _reason(chosen, search, over, profile, limit, source)
    return Sizing(chosen.partition, search.candidates, chosen, time, limit, source, reason,
                  warnings, fastest=search.fastest, signal_lead=lead)


def _partitions(plan: Plan, profile: Profile, over: Overrides) -> list[Partition]:
    """The partitions to search: the one named, else each the tasks fit (CPU partitions
    first for a plan without GPUs); the default partition's refusal is the error."""
    if over.partition:
        part = profile.partition(over.partition)
        _check_options(part, over)
        _check_tasks_fit(plan, part, over)
        return [part]
    default = profile.partition()
    fitting = []
    for part in profile.partitions:
        try:
            _check_options(part, over)
            _check_tasks_fit(plan, part, over)
        except (SizingError, ResourceError):
            continue
        fitting.append(part)
    if not fitting:
        _check_options(default, over)
        _check_tasks_fit(plan, default, over)
    uses_gpus = bool(plan.n) and int(plan.gpus.max()) > 0
    cpu_only = [p for p in fitting if not p.gpus_per_node]
    chosen = cpu_only if not uses_gpus and cpu_only else fitting
    return sorted(chosen, key=lambda p: p.name != default.name)


def _limit(parts: list[Partition], over: Overrides, profile: Profile) -> tuple[float | None, str]:
    """The time the request must fit in, and where that limit comes from."""
    if over.no_time and profile.time_required:
        raise SizingError(f"profile '{profile.name}' says this site requires --time "
                          "(time_required: true); --time none is not allowed")
    longest = max(parts, key=lambda p: p.max_seconds if p.max_seconds is not None else math.inf)
    max_s = longest.max_seconds
    if over.time is not None and max_s is not None and over.time > max_s:
        raise SizingError(f"--time {format_slurm_time(over.time)} exceeds the max time "
                          f"{format_slurm_time(max_s)} of partition '{longest.name}'")
    limits = [(max_s, f"partition {longest.name}'s max time"), (over.deadline, "--deadline"),
              (over.time, "--time")]
    given = [(value, why) for value, why in limits if value is not None]
    return min(given) if given else (None, "no limit")


def _check_options(part: Partition, over: Overrides) -> None:
    """Options must fit the partition's nodes (Slurm would refuse or queue them forever)."""
    cores = (over.ntasks_per_node or 1) * (over.cpus_per_task or 1)
    per_node = part.cores_per_node // (over.cpus_per_task or 1)
    problems = [
        (over.nodes is not None and over.nodes > part.nodes, f"--nodes {over.nodes}",
         f"{part.nodes} node(s)"),
        (cores > part.cores_per_node, f"--ntasks-per-node x --cpus-per-task = {cores} cores",
         f"{part.cores_per_node} cores per node"),
        (over.ntasks is not None and over.ntasks > (over.nodes or part.nodes) * per_node,
         f"--ntasks {over.ntasks}", f"{(over.nodes or part.nodes) * per_node} ranks of "
         f"{over.cpus_per_task or 1} core(s) on {over.nodes or part.nodes} node(s)"),
        ((over.gpus_per_node or 0) > part.gpus_per_node, f"--gpus-per-node {over.gpus_per_node}",
         f"{part.gpus_per_node} GPUs per node"),
        ((over.memory or 0) > part.memory, f"--mem {format_memory(over.memory or 0)}",
         f"{format_memory(part.memory)} per node"),
    ]
    for wrong, asked, has in problems:
        if wrong:
            raise SizingError(f"{asked} is more than partition '{part.name}' has ({has})")
    if over.ntasks is not None and over.ntasks < 2:
        raise SizingError("--ntasks must be at least 2: the coordinator and one worker")


def _check_tasks_fit(plan: Plan, part: Partition, over: Overrides) -> None:
    """Every task must fit on one node of the partition (a clear error naming it)."""
    cpt, ntasks = over.cpus_per_task or 1, over.ntasks_per_node
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


def _reason(chosen: Candidate, search: Search, over: Overrides, profile: Profile,
            limit: float | None, source: str) -> str:
    within = f"fits {format_slurm_time(limit)} ({source})" if limit is not None else "(no limit)"
    fixed = [f"--{name.replace('_', '-')} {value}" for name, value in
             (("nodes", over.nodes), ("ntasks", over.ntasks),
              ("ntasks_per_node", over.ntasks_per_node)) if value]
    fast = search.fastest
    speed = (f"{chosen.makespan / fast.makespan:.2f}x the fastest's makespan "
             f"({format_slurm_time(fast.makespan)} on {_label(fast)})"
             if fast and fast.makespan and chosen.makespan is not None else "")
    cost_text = f"{chosen.cost:.3g} {chosen.unit}" if chosen.cost is not None else "?"
    if len(search.candidates) == 1:
        given = f"{' '.join(fixed)} given: " if fixed else ""
        return f"{given}the only candidate; {cost_text}; {within}"
    if search.deadline:
        return f"the cheapest ({cost_text}) that finishes by --deadline; {speed}; {within}"
    scope = f"with {' '.join(fixed)} " if fixed else ""
    return (f"the cheapest ({cost_text}) {scope}within {profile.tolerance:.0%} of the fastest: "
            f"{speed}; {within}")


def _label(c: Candidate) -> str:
    s = c.shape
    return f"{s.nodes} node(s) x {s.ntasks_per_node} ranks" + (
        f" x {s.gpus_per_node} GPU(s)" if s.gpus_per_node else "")


def _chain(plan: Plan, search: Search, limit: float | None, source: str, profile: Profile,
           warnings: tuple[str, ...], lead: int) -> Sizing:
    """When no allocation finishes within the partition's max time: a continuation chain of
    jobs of that time each (the knee ignoring the limit), unless a deadline or --time set
    the limit (a chain cannot meet those) or one task alone is longer than a job."""
    error = _nothing_fits(plan, search, limit, source, profile)
    timed = [c for c in search.candidates if c.makespan is not None]
    too_long = bool(plan.n) and limit is not None and float(plan.time.max()) > usable_time(limit, profile)
    if not timed or not source.startswith("partition") or too_long or limit is None:
        raise error
    fastest = min(c.makespan or 0.0 for c in timed)
    near = [c for c in timed if (c.makespan or 0.0) <= fastest * (1 + profile.tolerance) + 1e-9]
    chosen = min(near, key=search.rank)
    jobs = math.ceil((chosen.makespan or 0.0) * (1 + profile.margin_fraction)
                     / usable_time(limit, profile))
    reason = (f"no allocation finishes within {format_slurm_time(limit)} ({source}): the run "
              f"continues in a chain of about {jobs} jobs of {format_slurm_time(limit)}, each "
              f"resuming where the last stopped; the cheapest within {profile.tolerance:.0%} of "
              "the fastest")
    return Sizing(chosen.partition, search.candidates, chosen, limit, limit, source, reason,
                  warnings, max(2, jobs), search.fastest, lead)


def _nothing_fits(plan: Plan, search: Search, limit: float | None, source: str,
                  profile: Profile) -> Exception:
    """The error when no candidate fits: the fastest candidate's numbers, and what would."""
    fast = search.fastest
    if fast is None or fast.makespan is None:
        notes = [c.note.removeprefix("does not fit: ") for c in search.candidates if c.note]
        return SizingError(f"no allocation of partition '{search.axes[0].partition.name}' can run "
                           f"this workflow: {notes[0] if notes else 'no candidate'}")
    assert limit is not None
    time = fast.time or requested_time(fast.makespan, profile)
    jobs = math.ceil(fast.makespan * (1 + profile.margin_fraction) / usable_time(limit, profile))
    longest = int(plan.time.argmax()) if plan.n else 0
    lone = (f" Task '{plan.name(longest)}' alone is estimated at "
            f"{format_slurm_time(float(plan.time[longest]))}, longer than the limit: a chain "
            "cannot split a task." if plan.n and plan.time[longest] > limit else "")
    return SizingError(
        f"no allocation of partition '{fast.partition.name}' finishes within "
        f"{format_slurm_time(limit)} ({source}): the fastest, {_label(fast)} "
        f"({fast.shape.workers} workers), is estimated at {format_slurm_time(fast.makespan)} and "
        f"needs --time {format_slurm_time(time)} with the safety margin. A continuation chain "
        f"of about {jobs} jobs of {format_slurm_time(limit)} would run it without the deadline "
        f"or --time limit; give it more time or split the workflow.{lone}",
        fastest=time, limit=limit, chain_jobs=jobs)


def _estimate_warnings(plan: Plan) -> tuple[str, ...]:
    unknown = [g.name for g in plan.groups if g.size and g.task.resources.time is None]
    if not unknown:
        return ()
    shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
    return (f"{len(unknown)} task(s) give no time estimate ({shown}); the sizing assumed "
            f"{DEFAULT_TIME_ESTIMATE:g} s each: add resources.time for a better request",)
