"""Export a plan's graph as Graphviz DOT or Mermaid text (SVG through Graphviz's ``dot``).

By default one node per *group* (a swept task is one node labelled with its instance
count), so a million-task sweep draws as a handful of boxes; ``instances=True`` draws
every task instance, for small plans. Labels are escaped for each format: a task name
can never break out of its quoted string.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np

from hpcflow.plan.plan import Plan

MAX_INSTANCE_NODES = 5000


def graph_edges(plan: Plan, instances: bool = False) -> tuple[list[str], list[tuple[int, int]]]:
    """Node labels and edges, at group level (default) or per task instance."""
    if instances:
        if plan.n > MAX_INSTANCE_NODES:
            raise ValueError(f"{plan.n} tasks are too many to draw one by one "
                             f"(limit {MAX_INSTANCE_NODES}); draw groups instead")
        labels = [plan.name(i) for i in range(plan.n)]
        dst = np.repeat(np.arange(plan.n), np.diff(plan.pred_ptr))
        return labels, list(zip(plan.pred.tolist(), dst.tolist(), strict=True))
    labels = [g.name if g.size == 1 else f"{g.name} [x{g.size}]" for g in plan.groups]
    dst_group = np.repeat(plan.group_of, np.diff(plan.pred_ptr))
    src_group = plan.group_of[plan.pred]
    pairs = np.unique(np.stack([src_group, dst_group], axis=1), axis=0) if plan.pred.size \
        else np.empty((0, 2), dtype=np.int64)
    return labels, [(int(a), int(b)) for a, b in pairs]


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(plan: Plan, instances: bool = False) -> str:
    labels, edges = graph_edges(plan, instances)
    lines = [f"digraph {_dot_quote(plan.workflow)} {{", "  rankdir=LR;",
             '  node [shape=box, style="rounded"];']
    lines += [f"  n{i} [label={_dot_quote(label)}];" for i, label in enumerate(labels)]
    lines += [f"  n{a} -> n{b};" for a, b in edges]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mermaid_quote(text: str) -> str:
    escaped = "".join(f"#{ord(c)};" if c in '"<>#&\n' else c for c in text)
    return f'"{escaped}"'


def to_mermaid(plan: Plan, instances: bool = False) -> str:
    labels, edges = graph_edges(plan, instances)
    lines = ["flowchart LR"]
    lines += [f"  n{i}[{_mermaid_quote(label)}]" for i, label in enumerate(labels)]
    lines += [f"  n{a} --> n{b}" for a, b in edges]
    return "\n".join(lines) + "\n"


def to_svg(plan: Plan, instances: bool = False) -> str:
    """SVG text drawn by Graphviz; raises RuntimeError naming the package if it is absent."""
    dot = shutil.which("dot")
    if dot is None:
        raise RuntimeError("SVG needs Graphviz's 'dot' (Debian: apt-get install graphviz)")
    done = subprocess.run([dot, "-Tsvg"], input=to_dot(plan, instances), capture_output=True,
                          text=True, timeout=60, check=True)
    return done.stdout
