"""Orchestrator layer, part one: the workflow model and the Python API that builds it."""

from hpcflow.model.api import TaskFunction, TaskRef, method, nested, param, shell, task, workflow
from hpcflow.model.resources import Resources, parse_memory, parse_time
from hpcflow.model.task import (
    MethodCall,
    Param,
    PythonCall,
    Ref,
    ShellCommand,
    SubWorkflow,
    Sweep,
    Task,
)
from hpcflow.model.workflow import REQUIRED, Workflow

__all__ = [
    "REQUIRED",
    "MethodCall",
    "Param",
    "PythonCall",
    "Ref",
    "Resources",
    "ShellCommand",
    "SubWorkflow",
    "Sweep",
    "Task",
    "TaskFunction",
    "TaskRef",
    "Workflow",
    "method",
    "nested",
    "param",
    "parse_memory",
    "parse_time",
    "shell",
    "task",
    "workflow",
]
