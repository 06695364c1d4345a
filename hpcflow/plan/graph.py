"""Plans from arbitrary graphs: edge lists whose ids are in no particular order.

:func:`flatten` numbers tasks in topological order by construction; a graph that comes
as bare edges (an exported DAG, a random test graph) does not. :func:`plan_from_edges`
relabels it with Kahn's algorithm so that the result keeps the plan's guarantee (every
edge ``src < dst``, a group's members independent) and the analyses apply unchanged.

Kahn's algorithm runs level-synchronously in numpy: the frontier (every task whose
predecessors are all done) is one array, its successors are gathered from the CSR
arrays in one call and their in-degrees decremented with ``np.subtract.at``. That is
fast while levels are wide; when they turn out narrow (a long chain), the rest of the
walk goes on in a plain Python loop, which is cheaper per task than numpy per level.

Layout: **one group per level**, ids ordered by level (ties by original id). Group
``levelK`` is a zip sweep over ``node`` = the original ids of its members, so the
task of a member runs :func:`node` with its original id (a no-op that makes such a plan
runnable) and :func:`original_ids` maps plan ids back.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hpcflow.errors import CycleError
from hpcflow.model.resources import DEFAULT_TIME_ESTIMATE
from hpcflow.model.task import PythonCall, Task
from hpcflow.plan.flatten import build_csr
from hpcflow.plan.plan import Group, Plan

_LOOP_AFTER_LEVELS = 16
_MIN_LEVEL_WIDTH = 64
"""After this many levels narrower than this on average, Kahn continues in Python."""


def node(node: int) -> int:
    """What each task of a graph plan runs: nothing; returns its original id."""
    return node


_NODE_TASK = Task(id="node", action=PythonCall(f"{__name__}:node"))


def plan_from_edges(n: int, src: Sequence[int] | np.ndarray, dst: Sequence[int] | np.ndarray, *,
                    time: float | Sequence[float] | np.ndarray | None = None,
                    cores: int | Sequence[int] | np.ndarray = 1,
                    gpus: int | Sequence[int] | np.ndarray = 0,
                    memory: int | Sequence[int] | np.ndarray = 0,
                    ranks: int | Sequence[int] | np.ndarray = 1,
                    names: Sequence[str] | None = None, workflow: str = "graph") -> Plan:
    """A plan of ``n`` tasks with edges ``src[k] -> dst[k]`` (original ids ``0..n-1``).

    Per-task values (``time`` in seconds, default the model's estimate; ``memory`` in
    bytes) are scalars or sequences indexed by original id. Repeated edges count once.
    Raises :class:`CycleError` with the cycle (``names`` or ids) if there is one."""
    src_a, dst_a = _edges(n, src, dst)
    pred_ptr, pred, succ_ptr, succ = build_csr(n, src_a, dst_a)
    level = topo_levels(n, pred_ptr, succ_ptr, succ)
    if (level < 0).any():
        cycle = find_cycle(n, pred_ptr, pred, level)
        raise CycleError([names[i] if names is not None else str(i) for i in cycle])
    order = np.argsort(level, kind="stable")  # plan id -> original id
    new_id = np.empty(n, np.int64)
    new_id[order] = np.arange(n)
    old_dst = np.repeat(np.arange(n, dtype=np.int64), np.diff(pred_ptr))
    csr = build_csr(n, new_id[pred], new_id[old_dst])
    sizes = np.bincount(level, minlength=1) if n else np.zeros(0, np.int64)
    groups, starts = [], np.concatenate(([0], np.cumsum(sizes)))
    for k, size in enumerate(sizes.tolist()):
        lo = int(starts[k])
        groups.append(Group(name=f"level{k}", task=_NODE_TASK, start=lo, size=size,
                            sweep_params={"node": order[lo : lo + size]}, sweep_shape=(size,),
                            sweep_mode="zip"))
    return Plan(
        workflow=workflow, groups=groups,
        group_of=np.repeat(np.arange(len(groups), dtype=np.int32), sizes),
        pred_ptr=csr[0], pred=csr[1], succ_ptr=csr[2], succ=csr[3],
        cores=_per_task(n, cores, np.int32, order), gpus=_per_task(n, gpus, np.int32, order),
        ranks=_per_task(n, ranks, np.int32, order), memory=_per_task(n, memory, np.int64, order),
        time=_per_task(n, DEFAULT_TIME_ESTIMATE if time is None else time, np.float64, order),
    )


def original_ids(plan: Plan) -> np.ndarray:
    """For a plan from :func:`plan_from_edges`: the original id of each plan id."""
    parts = [np.asarray(g.sweep_params["node"], np.int64) for g in plan.groups]
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


def topo_levels(n: int, pred_ptr: np.ndarray, succ_ptr: np.ndarray, succ: np.ndarray) -> np.ndarray:
    """Kahn's algorithm by levels: int64 level of each task, -1 where a cycle (or
    something downstream of one) stops it."""
    indeg = np.diff(pred_ptr)
    level = np.full(n, -1, np.int64)
    frontier = np.flatnonzero(indeg == 0)
    k, done = 0, 0
    while frontier.size:
        level[frontier] = k
        done += frontier.size
        if k >= _LOOP_AFTER_LEVELS and done < _MIN_LEVEL_WIDTH * k:
            return _levels_loop(level, indeg, frontier, k, succ_ptr, succ)
        targets = _gather(succ_ptr, succ, frontier)
        np.subtract.at(indeg, targets, 1)
        frontier = _unique(targets[indeg[targets] == 0])
        k += 1
    return level


def _levels_loop(level: np.ndarray, indeg: np.ndarray, frontier: np.ndarray, k: int,
                 succ_ptr: np.ndarray, succ: np.ndarray) -> np.ndarray:
    ptr, down, deg = succ_ptr.tolist(), succ.tolist(), indeg.tolist()
    current = frontier.tolist()
    found: list[int] = []
    levels: list[int] = []
    while current:
        k += 1
        ready = []
        for v in current:
            for w in down[ptr[v] : ptr[v + 1]]:
                deg[w] -= 1
                if deg[w] == 0:
                    ready.append(w)
        found.extend(ready)
        levels.extend([k] * len(ready))
        current = ready
    level[np.asarray(found, np.int64)] = levels
    return level


def find_cycle(n: int, pred_ptr: np.ndarray, pred: np.ndarray,
               level: np.ndarray | None = None) -> list[int]:
    """A cycle as ids, first repeated last (``[3, 7, 3]``); ``[]`` if there is none.

    Every task Kahn could not reach has a predecessor it could not reach either, so
    walking such predecessors from any of them must come back to a task already seen."""
    if level is None:
        order = np.argsort(pred, kind="stable")
        succ_ptr = np.zeros(n + 1, np.int64)
        np.cumsum(np.bincount(pred, minlength=n), out=succ_ptr[1:])
        dst = np.repeat(np.arange(n, dtype=np.int64), np.diff(pred_ptr))
        level = topo_levels(n, pred_ptr, succ_ptr, dst[order])
    stuck = np.flatnonzero(level < 0)
    if stuck.size == 0:
        return []
    walk, seen = [int(stuck[0])], {int(stuck[0]): 0}
    while True:
        ups = pred[pred_ptr[walk[-1]] : pred_ptr[walk[-1] + 1]]
        nxt = int(ups[np.argmax(level[ups] < 0)])
        if nxt in seen:
            loop = walk[seen[nxt] :]  # each one a successor of the next
            return [nxt, *reversed(loop[1:]), nxt]
        seen[nxt] = len(walk)
        walk.append(nxt)


def _edges(n: int, src: Sequence[int] | np.ndarray,
           dst: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    src_a = np.asarray(src, dtype=np.int64).ravel()
    dst_a = np.asarray(dst, dtype=np.int64).ravel()
    if src_a.shape != dst_a.shape:
        raise ValueError(f"{src_a.size} sources but {dst_a.size} targets")
    if n < 0 or (src_a.size and (min(src_a.min(), dst_a.min()) < 0
                                 or max(src_a.max(), dst_a.max()) >= n)):
        raise ValueError(f"edge ids must lie in 0..{n - 1}")
    return src_a, dst_a


def _gather(ptr: np.ndarray, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``values[ptr[r]:ptr[r+1]]`` for every r in ``rows``, concatenated, in one call."""
    first = ptr[rows]
    lengths = ptr[rows + 1] - first
    ends = np.cumsum(lengths)
    offsets = np.repeat(first - (ends - lengths), lengths) + np.arange(int(ends[-1]) if ends.size else 0)
    return values[offsets]


def _unique(ids: np.ndarray) -> np.ndarray:
    """Sorted distinct ids (np.unique's hash path is slow on big int arrays)."""
    if ids.size < 2:
        return ids
    ids = np.sort(ids)
    keep = np.empty(ids.size, bool)
    keep[0] = True
    np.not_equal(ids[1:], ids[:-1], out=keep[1:])
    return ids[keep]


def _per_task(n: int, value: object, dtype: type, order: np.ndarray) -> np.ndarray:
    array = np.asarray(value, dtype=dtype)
    if array.ndim == 0:
        return np.full(n, array, dtype=dtype)
    if array.shape != (n,):
        raise ValueError(f"expected one value per task ({n}), got shape {array.shape}")
    return array[order]
