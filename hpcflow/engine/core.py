"""The shared engine core: one loop that runs a plan on any backend.

State is a handful of plain containers, built by :meth:`Core.__init__` and changed by
a few short methods that :meth:`Core.run` calls:

- ``waiting``: for each task, how many of its predecessors have not finished (a list of
  ints: a completion decrements its successors, O(1) per edge, never a scan);
- ``ready``: a :class:`~hpcflow.plan.ready.ReadyQueue` keyed by ``-priority``: longest
  remaining path first, first come first served among equals;
- ``running``: id -> (placement, attempt) for tasks out on workers;
- ``results``: id -> value, dropped once every successor has finished with it;
- ``retry_at``: a heap of ``(time, id, attempt)`` for failed tasks waiting to retry;
- ``failed`` / ``skipped``: what failed and what will not run because of it.

A backend only *places* calls on workers and *reports* outcomes (:class:`Backend`);
where a task goes is decided by the shared :class:`~hpcflow.plan.policy.Placer`. Every
event is journalled by the coordinator alone, in batches (see ``store/journal.py``).
Short tasks are queued several deep on each worker (the placer's ``depth``), sized from
the measured task durations, so that workers never wait for their next message; the
members of a sweep over values then travel as *runs*, one call for many consecutive
members, bound and fingerprinted by the worker (``engine/runs.py``).
"""

from __future__ import annotations

import heapq
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from hpcflow.engine.execute import Call, Outcome
from hpcflow.engine.runs import closed_groups
from hpcflow.engine.walltime import Walltime
from hpcflow.errors import ResourceError, TaskFailed
from hpcflow.plan.plan import Plan
from hpcflow.plan.policy import Placement, Placer, Slot
from hpcflow.plan.ready import ReadyQueue
from hpcflow.store.journal import Event, Journal
from hpcflow.store.resume import Fingerprinter, Prior, content_hash
from hpcflow.store.rundir import RunDir, load_result

FLUSH_EVENTS = 4096
FLUSH_SECONDS = 0.2
TARGET_QUEUE_SECONDS = 0.002
"""Queue a worker enough short tasks to cover about this long."""
EXACT_SECONDS = 0.01
"""Tasks this long or longer are never queued behind another (list scheduling stays
exact); shorter ones always have one more queued, so a worker never waits a round trip."""
_new_call = tuple.__new__  # Call(...) without its Python-level __new__: every field is given
_LEARN_AT = frozenset((16, 64, 256))


class Backend(Protocol):
    """What an engine backend implements (see docs/architecture.md)."""

    name: str

    def slots(self) -> list[Slot]:
        """The workers and their shares of their nodes."""

    def submit(self, batch: Sequence[tuple[Call, Placement]]) -> None:
        """Start these calls on their placements' leader slots (without blocking)."""

    def wait(self, timeout: float | None) -> list[Outcome]:
        """Outcomes that have arrived, waiting up to ``timeout`` seconds for the first."""

    def shutdown(self) -> None:
        """Stop the workers (after the run, or on an interrupt)."""


class ProgressSink(Protocol):
    """What the loop reports progress to (the report layer's ``Progress``); cheap to call
    on every turn, it rate-limits its own output."""

    def update(self, done: int, running: int, failed: int = 0, skipped: int = 0) -> None: ...

    def close(self, status: str) -> None: ...


@dataclass
class RunOptions:
    keep_going: bool = True
    """After a failure, finish what does not depend on it (False: stop at the first)."""
    max_depth: int = 1024
    retry_delay: float = 1.0
    """Seconds before the first retry; doubled for each later attempt."""
    fsync: bool = False
    isolate: bool = False
    """Run every Python task in its own child process (a crash fails that task alone)."""


@dataclass
class RunResult:
    status: str  # succeeded | failed | stopped
    outputs: dict[str, Any]
    run_dir: str
    done: int
    failures: list[TaskFailed] = field(default_factory=list)
    skipped: int = 0
    elapsed: float = 0.0


class Core:
    def __init__(self, plan: Plan, priority: Sequence[float], backend: Backend, run: RunDir,
                 options: RunOptions | None = None) -> None:
        self.plan, self.backend, self.run_dir = plan, backend, run
        self.options = options or RunOptions()
        self.placer = Placer(backend.slots())
        self.priority = priority
        self.succ_ptr, self.succ = plan.succ_ptr.tolist(), plan.succ.tolist()
        self.pred_ptr, self.pred = plan.pred_ptr.tolist(), plan.pred.tolist()
        self.waiting = [self.pred_ptr[i + 1] - self.pred_ptr[i] for i in range(plan.n)]
        self.readers = [self.succ_ptr[i + 1] - self.succ_ptr[i] for i in range(plan.n)]
        self.keep = set(_output_ids(plan))
        self.ready = ReadyQueue()
        self.running: dict[int, tuple[Placement, int]] = {}
        self.results: dict[int, Any] = {}
        self.retry_at: list[tuple[float, int, int]] = []
        self.attempts: dict[int, int] = {}
        self.failed: list[TaskFailed] = []
        self.skipped: set[int] = set()
        self.done = 0
        self.stopping = False
        self._durations = [0.0, 0, 0]
        self.journal = Journal(run.journal, fsync=self.options.fsync)
        self._append = self.journal.append
        self.progress: ProgressSink | None = None
        self._groups = plan.groups
        self._timeouts = [g.task.timeout for g in plan.groups]
        self._group_of = plan.group_of.tolist()
        self._needs, self._need_key = _need_table(plan, self._group_of)
        self._one_slot = [self.placer.one_slot(*need) for need in self._needs]
        self._runs = [False] * len(plan.groups)  # groups whose members may go as runs
        if getattr(backend, "runs", False) and not self.options.isolate:
            for g in closed_groups(plan):
                self._runs[g] = True
        self.fingerprints = Fingerprinter(plan)
        self._binders = self.fingerprints.binders
        self._swept = [g.swept for g in plan.groups]
        self.hashes: dict[int, str] = {}  # content hash of each result still held
        self.candidates: dict[int, Prior] = {}  # resume: reused if its inputs come out equal
        self._fp: dict[int, str] = {}  # fingerprint of each running task
        self.walltime: Walltime | None = None  # set by the runner: the allocation's end
        self.draining = False  # the allocation ends: dispatch nothing more
        self.deferred: list[int] = []  # tasks whose time estimate no longer fits
        self._done_before = 0  # done when this session began (resume): a chain's progress
        self._estimates = [g.task.resources.time for g in plan.groups]  # explicit only

    # -- set-up ---------------------------------------------------------------------
    def seed(self, completed: dict[int, Any] | None = None, hashes: dict[int, str] | None = None,
             candidates: dict[int, Prior] | None = None, last: Sequence[int] = ()) -> None:
        """Fill ``ready`` with the sources; ``completed`` (from a resume) counts as done,
        ``hashes`` are their content hashes, ``candidates`` may be reused at dispatch.
        ``last`` (a resume: the tasks that failed before) go after every other task."""
        if last:  # a task that crashed its worker may do so again: let the rest finish first
            floor = min(self.priority) - 1.0
            self.priority = list(self.priority)
            for i in last:
                self.priority[i] = floor
        self.hashes.update(hashes or {})
        self.candidates.update(candidates or {})
        for i, value in (completed or {}).items():
            self.results[i] = value
            self._complete_edges(i)
            self.done += 1
        done = set(completed or ())
        self.ready = ReadyQueue()  # rebuilt in id order: what the edges pushed is in it again
        for i in range(self.plan.n):
            if self.waiting[i] == 0 and i not in done:
                self.ready.push(-self.priority[i], i)

    # -- the loop -------------------------------------------------------------------
    def run(self) -> RunResult:
        start = time.time()
        groups = [[g.name, g.start, g.size, g.swept] for g in self._groups]
        self.journal.record(Event.RUN, {"engine": self.backend.name, "pid": os.getpid(),
                                        "host": socket.gethostname(), "time": start,
                                        "workers": len(self.placer.slots),
                                        "nodes": [slot.node for slot in self.placer.slots],
                                        "tasks": self.plan.n,
                                        "groups": groups, "defs": self.fingerprints.defs})
        status = "stopped"
        self._done_before = self.done
        try:
            while self._unfinished():
                self._check_walltime()
                self._dispatch()
                if not self.running and not self._retry_due_soon():
                    if self.ready and not self.draining:
                        raise RuntimeError("ready tasks but none can be placed")  # guarded by check
                    break
                for outcome in self.backend.wait(self._wait_timeout()):
                    self._finish(outcome)
                self._maybe_flush()
                if self.progress is not None:
                    self.progress.update(self.done, len(self.running), len(self.failed),
                                         len(self.skipped))
            status = self._status()
        finally:
            self.journal.record(Event.END, status, time.time())
            self.journal.close()
            if self.progress is not None:
                self.progress.close(status)
        return RunResult(status, self._outputs() if status == "succeeded" else {},
                         str(self.run_dir.path), self.done, self.failed, len(self.skipped),
                         time.time() - start)

    def _status(self) -> str:
        if self.done == self.plan.n:
            return "succeeded"
        if self.draining or self.deferred:  # the rest runs on resume (a continuation job)
            assert self.walltime is not None
            return "stalled" if self.walltime.stalls(self.done - self._done_before) else "walltime"
        return "failed" if self.failed else "stopped"

    def _check_walltime(self) -> None:
        """Stop dispatching when the allocation's end nears (or SIGUSR1 came); past the
        grace time, give up the running tasks, journalled as stopped (resume reruns them)."""
        wt = self.walltime
        if wt is None or not wt.draining:
            return
        self.draining = True
        if self.running and wt.past_grace():
            now = time.time()
            for i, (placement, _) in self.running.items():
                self.journal.record(Event.STOPPED, i, now)
                self.placer.release(placement)
            self.running.clear()

    def _unfinished(self) -> bool:
        if self.stopping or self.draining:
            return bool(self.running)
        return self.done + len(self.skipped) + len(self.failed) < self.plan.n

    def _retry_due_soon(self) -> bool:
        return bool(self.retry_at) and not self.stopping and not self.draining

    def _wait_timeout(self) -> float | None:
        if self.retry_at:
            return max(0.0, self.retry_at[0][0] - time.monotonic())
        if self.running and (self.walltime is not None or self.progress is not None):
            return 1.0  # look at the signal flag and the clock, redraw the elapsed time
        return None if self.running else 0.0

    def _maybe_flush(self) -> None:
        if (self.journal.pending >= FLUSH_EVENTS
                or time.monotonic() - self.journal.last_flush >= FLUSH_SECONDS):
            self.journal.flush()

    # -- dispatch -------------------------------------------------------------------
    def _dispatch(self) -> None:
        if self.stopping or self.draining:
            return
        now = time.monotonic()
        while self.retry_at and self.retry_at[0][0] <= now:
            _, i, _ = heapq.heappop(self.retry_at)
            self.ready.push(-self.priority[i], i)
        batch: list[tuple[Call, Placement]] = []
        blocked: list[tuple[float, int]] = []
        placer, ready, needs, key, one = self.placer, self.ready, self._needs, self._need_key, self._one_slot
        runs, group_of = self._runs, self._group_of
        timed = self.walltime is not None and self.walltime.end is not None
        while ready and not placer.full:
            item = ready.pop()
            i = item[1]
            if self.candidates and i in self.candidates and self._reuse(i):
                continue
            if timed and not self._fits(i):
                continue
            if not one[key[i]]:
                placement = placer.place(*needs[key[i]])
            elif runs[group_of[i]] and placer.depth > 1 and i not in self.attempts:
                batch_item = self._run(item)
                if batch_item is not None:
                    batch.append(batch_item)
                    continue
                placement = None
            else:
                placement = placer.place_one()
            if placement is None:
                blocked.append(item)
                if len(blocked) >= 64:
                    break
                continue
            batch.append((self._call(i, placement), placement))
        if blocked:
            ready.unpop(blocked)
        if batch:
            self.journal.flush()  # a DISPATCH is on disk before its call leaves
            self.backend.submit(batch)

    def _fits(self, i: int) -> bool:
        """Whether task ``i``'s time estimate fits before the allocation ends; if not it
        waits for the next allocation (a continuation job resumes it)."""
        assert self.walltime is not None
        if self.walltime.fits(self._estimates[self._group_of[i]]):
            return True
        self.deferred.append(i)
        return False

    def _call(self, i: int, placement: Placement) -> Call:
        attempt = self.attempts.get(i, 0) if self.attempts else 0
        g = self._group_of[i]
        group = self._groups[g]
        member = i - group.start
        binder = self._binders[g]
        args, kwargs = binder.bind(member, self.results)
        self.running[i] = (placement, attempt)
        self._fp[i] = self.fingerprints.of(i, self.hashes, binder.values_in(kwargs))
        self._append((Event.DISPATCH, i, attempt, placement.leaders[0], time.time()))
        gpus = placement.gpus[0] if self._needs[self._need_key[i]][1] else ()
        name = f"{group.name}[{member}]" if self._swept[g] else group.name
        return _new_call(Call, (i, attempt, g, name, args, kwargs, gpus, self._timeouts[g],
                                placement.leaders, self.options.isolate, 1, None))

    def _run(self, item: tuple[float, int]) -> tuple[Call, Placement] | None:
        """Ready members ``i, i+1, ...`` of a closed group as one call on one slot, as
        many as the slot has room for (``engine/runs.py``); None if no slot has room."""
        key, i = item
        g = self._group_of[i]
        group = self._groups[g]
        room = self.placer.room()
        if not room:
            return None
        limit = min(room, group.start + group.size - i) - 1
        more = self.ready.pop_run(key, i, limit, self.attempts)
        got = self.placer.place_run(1 + more)
        assert got is not None and got[1] == 1 + more  # the slot that room() looked at
        placement, n = got
        if n == 1:  # a run of one is a plain call
            return self._call(i, placement), placement
        now, worker = time.time(), placement.leaders[0]
        for j in range(i, i + n):
            self.running[j] = (placement, 0)
            self._append((Event.DISPATCH, j, 0, worker, now))
        return _new_call(Call, (i, 0, g, group.name, (), {}, (), None, placement.leaders, False,
                                n, None)), placement

    # -- completion -----------------------------------------------------------------
    def _finish(self, outcome: Outcome) -> None:
        i = outcome.id
        entry = self.running.pop(i, None)
        if entry is None or entry[1] != outcome.attempt:
            return  # a late report of an attempt already given up
        self.placer.release(entry[0])
        if outcome.ok:
            self._succeed(i, outcome)
        else:
            self._fail(i, outcome)

    def _succeed(self, i: int, outcome: Outcome) -> None:
        stored, digest = outcome.stored, outcome.digest
        if stored is None:  # the backend's workers did not persist it (they all do now)
            stored = self.run_dir.store_result(i, outcome.value)
        if digest is None:
            digest = content_hash(self._groups[self._group_of[i]].task.action, stored,
                                  outcome.value)
        fp = outcome.fp or self._fp.pop(i, "")  # a run's member: the worker's
        extra = {"fp": fp, "h": digest}
        if outcome.memory:
            extra.update(outcome.memory)  # measured peak RSS (engine/memory.py)
        self._append((Event.DONE, i, outcome.attempt, outcome.worker, outcome.start,
                      outcome.end, stored, extra))
        durations = self._durations  # [seconds in this window, tasks in it, tasks in all]
        durations[0] += outcome.end - outcome.start
        durations[1] += 1
        durations[2] += 1
        if durations[2] in _LEARN_AT or not durations[2] & 1023:
            self._learn_depth()
        self._complete(i, outcome.value, digest)

    def _complete(self, i: int, value: Any, digest: str) -> None:
        """Hold the result and its hash; release the inputs no one reads any more."""
        self.results[i] = value
        self.hashes[i] = digest
        self.done += 1
        readers, pred = self.readers, self.pred
        for k in range(self.pred_ptr[i], self.pred_ptr[i + 1]):
            p = pred[k]
            readers[p] -= 1
            if readers[p] == 0 and p not in self.keep:
                self.results.pop(p, None)
                self.hashes.pop(p, None)
        self._complete_edges(i)

    def _reuse(self, i: int) -> bool:
        """Resume: a task done before whose inputs reran is reused, without running, when
        its fingerprint (inputs' content included) is the one journalled then."""
        old = self.candidates.pop(i)
        if old.stored is None or self.fingerprints.of(i, self.hashes) != old.extra.get("fp"):
            return False
        try:
            value = load_result(old.stored)
        except Exception:  # an unreadable result: run the task again
            return False
        # nothing to journal: its earlier DONE (same fingerprint) is still its last state
        self._complete(i, value, old.extra["h"])
        return True

    def _complete_edges(self, i: int) -> None:
        waiting, succ, priority, ready = self.waiting, self.succ, self.priority, self.ready
        for k in range(self.succ_ptr[i], self.succ_ptr[i + 1]):
            s = succ[k]
            waiting[s] -= 1
            if waiting[s] == 0 and s not in self.skipped:
                ready.push(-priority[s], s)

    def _fail(self, i: int, outcome: Outcome) -> None:
        group = self.plan.group(i)
        if outcome.attempt < group.task.retries:
            delay = self.options.retry_delay * 2**outcome.attempt
            self.attempts[i] = outcome.attempt + 1
            self.journal.record(Event.RETRY, i, outcome.attempt, delay, outcome.error,
                                outcome.log, outcome.start, outcome.end)
            heapq.heappush(self.retry_at, (time.monotonic() + delay, i, outcome.attempt + 1))
            return
        name = self.plan.name(i)
        self.journal.record(Event.FAIL, i, outcome.attempt, outcome.worker, outcome.start,
                            outcome.end, outcome.error, outcome.log, outcome.memory or {})
        self.failed.append(TaskFailed(name, outcome.error or "failed", outcome.log))
        self._skip_descendants(i)
        if not self.options.keep_going:
            self.stopping = True

    def _skip_descendants(self, root: int) -> None:
        stack = [root]
        while stack:
            i = stack.pop()
            for k in range(self.succ_ptr[i], self.succ_ptr[i + 1]):
                s = self.succ[k]
                if s not in self.skipped:
                    self.skipped.add(s)
                    self.journal.record(Event.SKIP, s, root)
                    stack.append(s)

    def _learn_depth(self) -> None:
        """Queue depth from the mean duration of the tasks finished since the last update
        (at 16, 64 and 256 completions, then every 1024; ``_succeed`` counts them): first
        calls that import or warm caches weigh only on the first estimates."""
        durations = self._durations
        mean = durations[0] / durations[1]
        durations[0], durations[1] = 0.0, 0
        if mean >= EXACT_SECONDS:
            depth = 1
        else:
            depth = max(2, int(TARGET_QUEUE_SECONDS / mean) if mean > 0 else self.options.max_depth)
        self.placer.set_depth(max(1, min(self.options.max_depth, depth)))

    def _outputs(self) -> dict[str, Any]:
        outputs: dict[str, Any] = {}
        for name, ref in self.plan.outputs.items():
            group = self.plan.groups[ref.group]
            ids = range(group.start, group.start + group.size)
            pick = (lambda v: v) if ref.key is None else (lambda v: v[ref.key])  # noqa: B023
            values = [pick(self.results[j]) for j in ids]
            outputs[name] = values if ref.mode == "all" else values[0]
        return outputs


def check_fits(plan: Plan, slots: Sequence[Slot]) -> None:
    """Raise :class:`ResourceError` before anything runs if a task fits on no node."""
    placer = Placer(slots)
    for group in plan.groups:
        res = group.task.resources
        if not placer.max_span(res.cores, res.gpus, res.memory, res.ranks):
            have = "; ".join(sorted({f"{s.node}: {sum(1 for t in slots if t.node == s.node)} "
                                     f"worker(s) of {s.cores} core(s), {len(s.gpus)} GPU(s), "
                                     f"{s.memory // 2**20}M" for s in slots}))
            raise ResourceError(
                group.name, f"needs {res.ranks} rank(s) x ({res.cores} core(s), {res.gpus} "
                f"GPU(s), {res.memory // 2**20}M) on one node, which no node of this run "
                f"offers ({have})")


def _need_table(plan: Plan, group_of: list[int]
                ) -> tuple[list[tuple[int, int, int, int]], list[int]]:
    """Each task's (cores, gpus, memory, ranks) as ``table[key[i]]``: one row per group
    when all its members need the same (as flatten makes them), else one row per task."""
    arrays = (plan.cores, plan.gpus, plan.memory, plan.ranks)
    if plan.n == 0:
        return [], []
    starts = np.minimum([g.start for g in plan.groups], plan.n - 1)
    per_group = [a[starts] for a in arrays]
    if all(np.array_equal(a, g[plan.group_of]) for a, g in zip(arrays, per_group, strict=True)):
        return list(zip(*(g.tolist() for g in per_group), strict=True)), group_of
    return list(zip(*(a.tolist() for a in arrays), strict=True)), list(range(plan.n))


def _output_ids(plan: Plan) -> list[int]:
    ids: list[int] = []
    for ref in plan.outputs.values():
        group = plan.groups[ref.group]
        ids.extend(range(group.start, group.start + group.size))
    return ids


def stored_value(stored: tuple[str, Any]) -> Any:
    """A result value from its journal form (inline, or a file in results/)."""
    return load_result(stored)
