"""Where a ready task may run: the one placement policy, shared by the engine and the planner.

Workers are *slots*: an MPI worker rank (or a local worker process) that owns a share of
its node (cores, GPU ids, memory) and runs one task at a time. A task instance needs, for
each of its ``ranks``, enough shares on one node to cover its cores, GPUs and memory:
``span`` slots, of which the first (the *leader*) runs that rank and the others are held
idle so that nothing oversubscribes the node. All slots of one task sit on one node.

Order is decided elsewhere (a ready heap keyed by the plan's priority, longest remaining
path first); this module answers only "can it go now, and on which slots", in O(1) for
the common one-slot task. :class:`Placer` is pure bookkeeping, so the planner's
simulator drives the very same object with simulated time.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

_HELD = 1 << 20
"""Load of a slot held whole by a multi-slot task: above any queue depth."""


@dataclass(frozen=True, slots=True)
class Slot:
    """A worker: ``index`` into the slot list, ``node`` its host, and its share."""

    index: int
    node: str
    cores: int = 1
    gpus: tuple[str, ...] = ()
    memory: int = 0  # bytes; 0 = not limited


@dataclass(frozen=True, slots=True)
class Placement:
    """The slots a task got: ``leaders[r]`` runs rank r; ``slots`` are all those held."""

    leaders: tuple[int, ...]
    slots: tuple[int, ...]
    gpus: tuple[tuple[str, ...], ...]  # per rank: the GPU ids it may use
    exclusive: bool = False  # True: the slots were idle and are held whole


def span(share: Slot, cores: int, gpus: int, memory: int) -> int:
    """Slots of ``share``'s size that one rank needing (cores, gpus, memory) holds.

    Returns 0 when it can never fit (GPUs asked where the share has none). Used for the
    one-slot fast path; multi-slot placement picks slots with :meth:`Placer._pick`."""
    need = math.ceil(cores / max(share.cores, 1))
    if gpus:
        if not share.gpus:
            return 0
        need = max(need, math.ceil(gpus / len(share.gpus)))
    if memory and share.memory:
        need = max(need, math.ceil(memory / share.memory))
    return need


class Placer:
    """Tracks which slots are free and places tasks on them.

    ``depth`` lets a one-slot task be queued on a slot that is already busy (up to
    ``depth`` tasks per slot): the engine raises it for very short tasks so that a
    worker never waits for its next message; multi-slot tasks always need idle slots.
    :meth:`place_run` takes several queue places of one slot at once, for a run of
    short tasks sent as one call.

    Slots with room (``load < depth``) wait in ``_open`` in round-robin order, each at
    most once; a slot that filled up meanwhile (held by a multi-slot task, or given a
    run) is dropped when it comes up. ``_roomy`` counts the slots with room.
    """

    def __init__(self, slots: Sequence[Slot], depth: int = 1) -> None:
        if not slots:
            raise ValueError("no worker slots")
        self.slots = list(slots)
        self.load = [0] * len(slots)
        self.depth = depth
        self._nodes: dict[str, list[int]] = {}
        for slot in self.slots:
            self._nodes.setdefault(slot.node, []).append(slot.index)
        names = list(self._nodes)
        self._node_of = [names.index(s.node) for s in self.slots] if len(names) < 64 else \
            [{n: k for k, n in enumerate(names)}[s.node] for s in self.slots]
        self._busy = [0] * len(names)  # per node: slots whose load is not 0
        self._fewest: dict[tuple[int, int, int, int], list[int]] = {}
        self._one: dict[tuple[int, int, int, int], bool] = {}  # need -> takes one slot
        self._smallest = Slot(-1, "", min(s.cores for s in self.slots), (),
                              0 if any(not s.memory for s in self.slots)
                              else min(s.memory for s in self.slots))
        """The smallest share: a task that fits it takes one slot anywhere (the first node's
        workers share its memory with one rank fewer, the coordinator, so shares differ)."""
        self._single = [Placement((s.index,), (s.index,), (s.gpus,)) for s in self.slots]
        self._open: deque[int] = deque(s.index for s in self.slots)
        self._listed = [True] * len(self.slots)  # in _open
        self._roomy = len(self.slots) if depth > 0 else 0
        self._no_room: set[tuple[int, int, int, int]] = set()
        """Multi-slot needs that found no node since the last release (taking slots never
        makes room, so they would fail again): a queue of big tasks costs O(1) each."""

    @property
    def full(self) -> bool:
        """No slot can take another task now."""
        return not self._roomy

    def max_span(self, cores: int, gpus: int, memory: int, ranks: int) -> int:
        """0 if the task fits on no node even with every slot idle, else the number of
        slots it holds where it fits best."""
        best = 0
        for members in self._nodes.values():
            chosen = self._pick(members, cores, gpus, memory, ranks)
            if chosen is not None and (not best or len(chosen[0]) < best):
                best = len(chosen[0])
        return best

    def set_depth(self, depth: int) -> None:
        """Allow ``depth`` queued one-slot tasks per slot from now on."""
        self.depth = depth
        self._roomy = 0
        for i, load in enumerate(self.load):
            if load < depth:
                self._roomy += 1
                self._list(i)

    def place(self, cores: int, gpus: int, memory: int, ranks: int) -> Placement | None:
        """Slots for a task now, or None if it must wait."""
        need = (cores, gpus, memory, ranks)
        one = self._one.get(need)
        if one is None:
            one = self._one[need] = self.one_slot(cores, gpus, memory, ranks)
        return self.place_one() if one else self._place_many(cores, gpus, memory, ranks)

    def one_slot(self, cores: int, gpus: int, memory: int, ranks: int) -> bool:
        """Whether such a task takes one slot (:meth:`place_one`) whichever slot it gets;
        the engine asks once per distinct need."""
        return ranks == 1 and not gpus and span(self._smallest, cores, 0, memory) == 1

    def place_one(self) -> Placement | None:
        """:meth:`place` for a task that takes one slot (see :meth:`one_slot`)."""
        got = self.place_run(1)
        return None if got is None else got[0]

    def room(self) -> int:
        """Queue places free on the slot that :meth:`place_run` would take next (0: none)."""
        open_, load, depth = self._open, self.load, self.depth
        while open_:
            room = depth - load[open_[0]]
            if room > 0:
                return room
            self._listed[open_.popleft()] = False
        return 0

    def place_run(self, n: int) -> tuple[Placement, int] | None:
        """Up to ``n`` queue places on the next slot with room, for one-slot tasks: the
        placement (the same for every one-slot task there) and how many it took. Each
        is released on its own (:meth:`release`)."""
        open_, load, depth = self._open, self.load, self.depth
        while open_:
            index = open_.popleft()
            room = depth - load[index]
            if room > 0:
                took = min(n, room)
                if not load[index]:
                    self._busy[self._node_of[index]] += 1
                load[index] += took
                if took < room:
                    open_.append(index)  # round robin: the next task goes elsewhere
                else:
                    self._listed[index] = False
                    self._roomy -= 1
                return self._single[index], took
            self._listed[index] = False
        return None

    def _place_many(self, cores: int, gpus: int, memory: int, ranks: int) -> Placement | None:
        need = (cores, gpus, memory, ranks)
        if need in self._no_room:  # failed since the last release: fails again, in O(1)
            return None
        fewest = self._fewest.get(need) or self._fewest_slots(need)
        busy = self._busy
        for k, members in enumerate(self._nodes.values()):
            if len(members) - busy[k] < fewest[k]:
                continue
            idle = [i for i in members if self.load[i] == 0]
            chosen = self._pick(idle, cores, gpus, memory, ranks)
            if chosen is None:
                continue
            slots, groups = chosen
            busy[k] += len(slots)
            for i in slots:
                self._roomy -= self.load[i] < self.depth
                self.load[i] += _HELD  # held slots take no queued work
            gpu_ids = tuple(
                tuple(g for i in group for g in self.slots[i].gpus)[:gpus] if gpus else ()
                for group in groups
            )
            return Placement(tuple(g[0] for g in groups), tuple(slots), gpu_ids, exclusive=True)
        self._no_room.add(need)
        return None

    def _fewest_slots(self, need: tuple[int, int, int, int]) -> list[int]:
        """Per node, the fewest idle slots a task of ``need`` could hold there (its biggest
        shares), so that a node without as many idle slots is not searched."""
        cores, gpus, memory, ranks = need
        fewest = []
        for members in self._nodes.values():
            shares = [self.slots[i] for i in members]
            most_gpus = max(len(s.gpus) for s in shares)
            per_rank = max(1, math.ceil(cores / max(s.cores for s in shares)),
                           math.ceil(gpus / most_gpus) if gpus and most_gpus else 0,
                           math.ceil(memory / max(s.memory for s in shares))
                           if memory and all(s.memory for s in shares) else 0)
            fewest.append(len(members) + 1 if gpus and not most_gpus else per_rank * ranks)
        self._fewest[need] = fewest
        return fewest

    def _pick(self, candidates: Sequence[int], cores: int, gpus: int, memory: int,
              ranks: int) -> tuple[list[int], list[list[int]]] | None:
        """Slots out of ``candidates`` (one node) covering each rank's cores, GPUs and
        memory: slots with GPUs while the rank still lacks GPUs, else slots without (GPU
        slots last, so that cores and memory do not use up GPUs); None if they can't."""
        with_gpus = deque(i for i in candidates if self.slots[i].gpus)
        plain = deque(i for i in candidates if not self.slots[i].gpus)
        groups: list[list[int]] = []
        for _ in range(ranks):
            group: list[int] = []
            have_cores = have_gpus = have_memory = 0
            while (with_gpus or plain) and (have_cores < cores or have_gpus < gpus
                                            or (memory and have_memory < memory)):
                pool = with_gpus if (have_gpus < gpus and with_gpus) or not plain else plain
                slot = self.slots[pool.popleft()]
                group.append(slot.index)
                have_cores += slot.cores
                have_gpus += len(slot.gpus)
                have_memory += slot.memory or memory
            if have_cores < cores or have_gpus < gpus or (memory and have_memory < memory):
                return None
            groups.append(group)
        return [i for g in groups for i in g], groups

    def release(self, placement: Placement) -> None:
        """The task on ``placement`` finished (or failed): its slots take work again."""
        load, depth = self.load, self.depth
        if self._no_room:
            self._no_room.clear()
        for i in placement.slots:
            full = load[i] >= depth
            load[i] -= _HELD if placement.exclusive else 1
            if not load[i]:
                self._busy[self._node_of[i]] -= 1
            if full and load[i] < depth:
                self._roomy += 1
            self._list(i)

    def _list(self, i: int) -> None:
        if not self._listed[i]:
            self._listed[i] = True
            self._open.append(i)
