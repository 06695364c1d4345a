"""Orchestrator layer, part two: flatten a workflow into integer-indexed arrays and analyse it."""

from hpcflow.plan.flatten import flatten
from hpcflow.plan.plan import Group, GroupRef, Plan

__all__ = ["Group", "GroupRef", "Plan", "flatten"]
