"""Orchestrator layer, part two: flatten a workflow into integer-indexed arrays and analyse it."""

from hpcflow.plan.analyse import Analysis, Demand, analyse, check_order
from hpcflow.plan.flatten import flatten
from hpcflow.plan.graph import original_ids, plan_from_edges
from hpcflow.plan.plan import Group, GroupRef, Plan
from hpcflow.plan.simulate import Schedule, lower_bound, simulate
from hpcflow.plan.summary import summary_json, summary_text

__all__ = [
    "Analysis",
    "Demand",
    "Group",
    "GroupRef",
    "Plan",
    "Schedule",
    "analyse",
    "check_order",
    "flatten",
    "lower_bound",
    "original_ids",
    "plan_from_edges",
    "simulate",
    "summary_json",
    "summary_text",
]
