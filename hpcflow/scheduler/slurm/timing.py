"""The time a job asks for, and the USR1 lead: one formula, counted once (docs/cluster.md).

The request is the predicted makespan plus its margin (``margin_fraction`` of it, at
least ``margin_seconds``), plus what the job spends before the first task
(``startup_seconds``) and at its end (the engine's stop grace before the limit and the
slack a last task needs: :data:`hpcflow.engine.walltime.GRACE` and ``MARGIN``), rounded
up to Slurm's minute. Slurm's USR1 is only a warning where the engine knows the job's end,
so its lead is not added.
"""

from __future__ import annotations

import math

from hpcflow.engine.walltime import GRACE, MARGIN
from hpcflow.plan.plan import Plan
from hpcflow.scheduler.slurm.profile import Profile


def requested_time(makespan: float, profile: Profile) -> float:
    """The ``--time`` for a predicted makespan (see the module docstring), whole minutes."""
    margin = max(makespan * profile.margin_fraction, profile.margin_seconds)
    padded = round(profile.startup_seconds + makespan + margin + GRACE + MARGIN, 6)
    return max(60.0, math.ceil(padded / 60) * 60.0)


def usable_time(limit: float, profile: Profile) -> float:
    """Of a job of ``limit`` seconds, the time tasks can run (start-up and end taken off)."""
    return max(1.0, limit - profile.startup_seconds - GRACE - MARGIN)


def signal_lead(plan: Plan, profile: Profile) -> int:
    """Seconds before the limit to ask for USR1: the longest task estimate plus the stop
    grace (what draining needs where the engine knows no end), within 30 s and the
    profile's ``signal_grace``."""
    longest = float(plan.time.max()) if plan.n else 0.0
    return int(min(profile.signal_grace, max(30, math.ceil(longest + GRACE))))
