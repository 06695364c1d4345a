"""What a finished run measured, read back from its journal into the history.

The coordinator records nothing extra while it runs: every attempt's start, end and
peak memory are already in the journal's DONE, FAIL and RETRY events. At the run's end
:func:`record_in_background` replays the last session (the events after the last RUN,
whose plan names each group's definition hash) in a thread, so that reading the
journal costs the run nothing: ``hf.run`` returns at once, and the interpreter waits for
the thread before it exits (a next run in the same process waits for it before it forks
its workers: forking beside a live thread can deadlock the child). Per definition only
the newest :data:`~hpcflow.store.history.KEEP` attempts are kept, so a sweep of
millions holds a hundred in memory. Reading costs a few µs per task.
"""

from __future__ import annotations

import bisect
import os
import sys
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

from hpcflow.plan.estimates import Sample
from hpcflow.plan.policy import Slot
from hpcflow.store.history import KEEP, Attempt, History, HistoryError, Measured
from hpcflow.store.journal import Event, read_journal

THREAD_NAME = "hpcflow-history"


def outcome_of(error: str | None) -> str:
    """How a failed attempt ended, from its error text (engine/execute.py's words)."""
    text = error or ""
    if "timed out after" in text:
        return "timeout"
    if "MemoryError" in text or "died of SIGKILL" in text or "out of memory" in text.lower():
        return "oom"
    return "failed"


def node_kinds(slots: Sequence[Slot]) -> list[tuple[int, bool]]:
    """Each slot's node as (its cores in the run, whether it has a GPU)."""
    cores: dict[str, int] = {}
    gpu: dict[str, bool] = {}
    for slot in slots:
        cores[slot.node] = cores.get(slot.node, 0) + slot.cores
        gpu[slot.node] = gpu.get(slot.node, False) or bool(slot.gpus)
    return [(cores[s.node], gpu[s.node]) for s in slots]


def measured(journal: str | os.PathLike[str], workflow: str, engine: str,
             kinds: Sequence[tuple[int, bool]]) -> list[Measured]:
    """The last session's finished attempts, per definition, the newest KEEP each.
    Events are only kept (a deque per group) while reading; the few that remain are
    turned into attempts at the end."""
    groups: list[Any] = []
    defs: list[str] = []
    group_of = _Groups(groups)
    kept: dict[int, deque[tuple[tuple[Any, ...], int]]] = {}  # group -> (event, member)
    ends = (Event.DONE, Event.FAIL, Event.RETRY)
    lo = hi = group = 0
    for event in read_journal(journal):
        kind = event[0]
        if kind in ends:
            i = event[1]
            if not lo <= i < hi:
                lo, hi, group = group_of.span(i)
            if group >= 0:
                kept.setdefault(group, deque(maxlen=KEEP)).append((event, i - lo))
        elif kind == Event.RUN:
            info = event[1] if isinstance(event[1], dict) else {}
            groups, defs, kept = info.get("groups", []), info.get("defs") or [], {}
            group_of, lo, hi = _Groups(groups), 0, 0
    found = []
    for g, events in kept.items():
        attempts = [a for a in (_attempt(e, m, engine, kinds) for e, m in events) if a is not None]
        if g < len(defs) and attempts:
            found.append(Measured(defs[g], str(groups[g][0]), workflow, int(groups[g][2]),
                                  attempts))
    return found


class _Groups:
    """Task id -> its group's id span and index, from a RUN event's ``[name, start,
    size, swept]`` (bisect over the first ids)."""

    def __init__(self, groups: Sequence[Any]) -> None:
        order = sorted((int(g[1]), int(g[2]), k) for k, g in enumerate(groups) if int(g[2]))
        self._starts = [start for start, _, _ in order]
        self._spans = order

    def span(self, i: int) -> tuple[int, int, int]:
        """``(first id, end id, group index)``; index -1 (an empty span) outside them."""
        k = bisect.bisect_right(self._starts, i) - 1
        if k < 0 or i >= self._spans[k][0] + self._spans[k][1]:
            return 0, 0, -1
        start, size, group = self._spans[k]
        return start, start + size, group


def _attempt(event: tuple[Any, ...], member: int, engine: str,
             kinds: Sequence[tuple[int, bool]]) -> Attempt | None:
    """The attempt a DONE, FAIL or RETRY event ends (None: a RETRY without its times)."""
    if event[0] == Event.RETRY:
        if len(event) < 8:
            return None
        worker, start, end, error, extra = -1, event[6], event[7], event[4], {}
    else:
        worker, start, end = event[3], event[4], event[5]
        failed = event[0] == Event.FAIL
        error = event[6] if failed else None
        extra = (event[8] if len(event) > 8 else None) if failed else event[7]
    extra = extra or {}
    memory = int(extra.get("peak_rss") or extra.get("peak_rss_bound") or 0)
    outcome = "done" if event[0] == Event.DONE else outcome_of(error)
    cores, gpu = kinds[worker] if 0 <= worker < len(kinds) else (0, False)
    return Attempt(Sample(max(0.0, float(end) - float(start)), memory, outcome), float(end),
                   engine, cores, gpu, member)


def record(journal: str | os.PathLike[str], workflow: str, engine: str,
           kinds: Sequence[tuple[int, bool]], path: str | None = None) -> int:
    """Replay the journal's last session into the history at ``path``; how many
    definitions it measured."""
    runs = measured(journal, workflow, engine, kinds)
    if runs:
        with History(path) as history:
            history.record(runs)
    return len(runs)


def record_in_background(journal: str | os.PathLike[str], workflow: str, engine: str,
                         slots: Sequence[Slot], path: str | None = None) -> threading.Thread:
    """:func:`record` in a (non-daemon) thread; a failure is one line on stderr, never
    the run's failure."""
    def work() -> None:
        try:
            record(journal, workflow, engine, node_kinds(slots), path)
        except (HistoryError, OSError) as exc:
            print(f"hpcflow: the run was not added to the history: {exc}", file=sys.stderr)

    thread = threading.Thread(target=work, name=THREAD_NAME)
    thread.start()
    return thread


def wait_for_recording(timeout: float = 60.0) -> None:
    """Wait for the history threads of this process (tests, scripts that read it next)."""
    for thread in threading.enumerate():
        if thread.name == THREAD_NAME:
            thread.join(timeout)
