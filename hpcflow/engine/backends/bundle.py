"""Bundles: several short calls as one Dask or Ray task.

A framework task costs the coordinator and the cluster far more than a short task's own
work (Ray: ~0.15 ms of driver CPU to submit one, ~0.6 ms in all; Dask about 1 ms), so
the Dask and Ray backends send what the core admits in *bundles*, as the local and MPI
backends send several calls per message:

- the calls the core placed on one slot in one dispatch round, up to :data:`BUNDLE` of
  them, go as one framework task, run one after the other by the shared Executor on
  whichever worker the framework picks (the core already counted them against that
  slot's queue, so nothing runs wider than the core admitted);
- a *run* (``engine/runs.py``: consecutive members of a sweep over values, bound on the
  worker) is one framework task of its own; where dependents read its members by handle
  it is cut into :func:`pieces` of at most :data:`BUNDLE` members, since each dependent
  fetches its input's whole task result;
- a call that asks for anything but one plain core (more cores, GPUs, memory, ranks)
  goes alone, with its own resource request.

A bundle's task returns the outcomes of its members in order (bytes of plain tuples,
:func:`pack_outcomes`, which the frameworks ship as they are) and keeps their values on
the cluster (Ray: a second return, the list of values; Dask: in the task's result on
the worker); member ``k``'s handle is that reference with ``k`` at the head of its path.
A Dask worker that does not hold the values gets them through :class:`Members`, from
each member's ``stored`` form, only for the members it picks. The core still sees one
outcome per task and journals each, so resume, retries (a failed member retries alone)
and failures (its dependents are never dispatched) are as on every engine. What a
bundle changes: its members report when the last of them ends (the local workers also
send their outcomes once their queue is empty), its values stay on the cluster until no
dependent of any member needs them, and if its worker dies, every member is lost (and
retried, if it has retries).
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import Any

import cloudpickle

from hpcflow.engine.backends.remote import Needs, swap
from hpcflow.engine.execute import Call, Outcome
from hpcflow.plan.policy import Placement
from hpcflow.store.rundir import load_result

BUNDLE = 16
"""Most calls (or members of a run read by handle) per framework task."""
PLAIN = (1, 0, 0, 1)
"""The need of a call that may share a framework task: one core, no GPU, no memory asked."""
_new = tuple.__new__


class Bundle:
    """One framework task: ``calls`` (handles swapped for holes) with the references
    they read, each once, the slot the core accounted them to, their need, and whether
    a dependent will read any member's value by handle (``keep``)."""

    __slots__ = ("calls", "keep", "leader", "need", "refs")

    def __init__(self, leader: int, need: tuple[int, int, int, int]) -> None:
        self.calls: list[Call] = []
        self.refs: list[Any] = []
        self.leader, self.need, self.keep = leader, need, False

    def add(self, call: Call, seen: dict[int, int], read: Sequence[bool]) -> None:
        self.calls.append(swap(call, self.refs, seen))
        if not self.keep:
            self.keep = any(read[call.id:call.id + call.count])

    @property
    def members(self) -> list[tuple[int, int]]:
        """``(id, attempt)`` of each task it runs, in the order of its outcomes."""
        return [(c.id + k, c.attempt) for c in self.calls for k in range(c.count)]

    def payload(self) -> bytes:
        """The calls as bytes (the frameworks then ship them without walking them), as
        plain tuples (a NamedTuple pickles through Python-level code); cloudpickle only
        where plain pickle cannot (a lambda among the arguments)."""
        items = ([tuple(c) for c in self.calls], self.need[3], self.keep)
        try:
            return pickle.dumps(items, protocol=5)
        except (pickle.PicklingError, AttributeError, TypeError):
            return cloudpickle.dumps(items, protocol=5)


def unpack(payload: bytes) -> tuple[list[Call], int, bool]:
    """A bundle's calls, the ranks of each, and ``keep``, from :meth:`Bundle.payload`."""
    calls, ranks, keep = pickle.loads(payload)
    return [_new(Call, c) for c in calls], ranks, keep


def bundles(batch: Sequence[tuple[Call, Placement]], needs: Needs, read: Sequence[bool]
            ) -> list[Bundle]:
    """The framework tasks for one ``submit`` (see the module's doc)."""
    out: list[Bundle] = []
    filling: dict[int, tuple[Bundle, dict[int, int]]] = {}  # leader -> bundle, its refs seen
    for call, placement in batch:
        need, leader = needs(call.id), placement.leaders[0]
        if call.count > 1 or need != PLAIN:
            for piece in pieces(call, read):
                alone = Bundle(leader, need)
                alone.add(piece, {}, read)
                out.append(alone)
            continue
        entry = filling.get(leader)
        if entry is None or len(entry[0].calls) >= BUNDLE:
            entry = filling[leader] = (Bundle(leader, need), {})
            out.append(entry[0])
        entry[0].add(call, entry[1], read)
    return out


def pieces(call: Call, read: Sequence[bool]) -> list[Call]:
    """A run cut into pieces of at most about :data:`BUNDLE` members where any member
    is read by handle (a dependent then fetches its piece's outcomes, not the whole
    run's); any other call whole. Every piece keeps at least two members (a call with
    ``count`` 1 is a plain call, bound by the coordinator)."""
    n = call.count
    if n <= BUNDLE or not any(read[call.id:call.id + n]):
        return [call]
    k = -(-n // BUNDLE)
    size, extra = divmod(n, k)
    out, start = [], call.id
    for j in range(k):
        m = size + (j < extra)
        out.append(call._replace(id=start, count=m))
        start += m
    return out


def pack_outcomes(outcomes: Sequence[Outcome]) -> bytes:
    """A task's outcomes as bytes of plain tuples: frameworks ship bytes as they are,
    where a NamedTuple goes through their generic (Python-level) serialisation."""
    return pickle.dumps([tuple(o) for o in outcomes], protocol=5)


def unpack_outcomes(message: bytes) -> list[Outcome]:
    return [_new(Outcome, t) for t in pickle.loads(message)]


class Members:
    """The values of a task's members where they are not in memory (a Dask worker that
    did not run it), from the outcomes it reported: each loaded from its ``stored`` form
    (inline, or the file its worker wrote) only when picked, so a dependent that reads
    one member loads one."""

    __slots__ = ("_outcomes",)

    def __init__(self, outcomes: Sequence[Outcome]) -> None:
        self._outcomes = outcomes

    def __getitem__(self, k: int) -> Any:
        return load_result(self._outcomes[k].stored)

    def __len__(self) -> int:
        return len(self._outcomes)
