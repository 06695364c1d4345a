"""The Ray backend: the shared core decides what may run, Ray runs it.

**Cluster.** ``--address host:6379`` (or ``auto``) connects to a running Ray cluster;
without it ``ray.init(num_cpus=workers)`` starts one on this machine. If the process
already has Ray initialised (a notebook, a test session), that connection is used and
left as it was. Slots are the nodes' CPUs, one each, sharing the node's GPUs and
memory. A task asks Ray for what it needs, ``.options(num_cpus=cores, num_gpus=gpus,
memory=bytes)`` (times ``ranks`` for a multi-rank shell task), and Ray picks the node;
the core admits it only when free slots cover it, so nothing waits on Ray for long.
On the worker a GPU task is given the ids that Ray assigned (``ray.get_gpu_ids()``).

**Bundles** (``bundle.py``). The calls that the core places on one slot in one round go
as one Ray task (up to 16), a run of a sweep's members (``engine/runs.py``) as one, and
a call that asks for anything but one plain core alone, with its ``.options()``. Submitting
a Ray task costs the driver ~0.15 ms and the cluster ~0.6 ms in all: far more than a
short task, so sharing it is what makes many short tasks cheap.

**Handles and durability.** A task returns its members' outcomes as one ``bytes`` (plain
tuples pickled by the worker, ``stored`` set there by ``remote.Site.run_calls``: inline
when small, else written to ``results/<id>.pkl``); Ray ships bytes as they are, where a
NamedTuple went through its generic serialisation (~0.1 ms a task in all). Where a
dependent reads a member's value, the task has a second return, the list of its
members' values, kept in Ray's object store: the core holds that ``ObjectRef`` as the
members' handles (member ``k``: path ``(k, ...)``), ``submit`` passes it as a top-level
argument of the dependents (so Ray hands them the values, never through the driver), and
dropping it lets Ray free them. A task that nobody reads by handle has one return.
``wait`` fetches only the outcomes (``ray.wait`` for the first, a moment more for others
while the workers are busy, one ``ray.get`` for all: a done-callback per task cost the
driver more CPU).

**Set-up.** The run's remote function is made per run with the plan's actions (and the
closed groups' run specs) in its closure, so Ray ships them once per worker process with
the function, not with every task; the worker builds its ``remote.Site`` from them the
first time (``remote.site_for``). A one-core task uses that function as it is
(``.options()`` costs Ray a check per call).

**Stopping**: in-flight tasks are cancelled (Ray raises KeyboardInterrupt in a running
task, and the Executor then ends a shell task's process tree); ``ray.shutdown()`` if
this run called ``ray.init`` (a cluster at an address is only disconnected from, and
keeps running), never a connection the process already had.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import ray

from hpcflow.engine.backends import bundle, remote
from hpcflow.engine.core import check_fits
from hpcflow.engine.execute import Call, Outcome
from hpcflow.engine.local import machine_shares
from hpcflow.errors import EngineError
from hpcflow.plan.plan import Plan
from hpcflow.plan.policy import Placement, Slot
from hpcflow.store.rundir import RunDir

if TYPE_CHECKING:
    from hpcflow.engine.runner import EngineConfig


def _task(token: str, setup: bytes) -> tuple[Any, Any]:
    """The run's remote function, with one return (the outcomes) and with two (the
    outcomes, and the list of the members' values for dependents to read). Its closure
    holds the plan's actions, so Ray ships them once per worker process (with the
    function), not with every task."""
    def run(payload: bytes, *inputs: Any) -> Any:
        site = remote.site_for(token, lambda: setup)
        calls, ranks, keep = bundle.unpack(payload)
        if calls[0].gpus:  # alone; the ids Ray gave it, also in CUDA_VISIBLE_DEVICES
            calls[0] = calls[0]._replace(gpus=tuple(str(g) for g in ray.get_gpu_ids()))
        outcomes, values = site.run_calls(calls, ranks, inputs)
        message = bundle.pack_outcomes(outcomes)
        return (message, values) if keep else message

    run.__qualname__ = run.__name__ = "hpcflow_task"
    options = {"num_cpus": 1, "max_retries": 0}  # retries are the core's
    return ray.remote(num_returns=1, **options)(run), ray.remote(num_returns=2, **options)(run)


class RayBackend:
    name = "ray"
    runs = True  # a run of a sweep's members is one Ray task (engine/runs.py)

    def __init__(self, plan: Plan, run: RunDir, slots: list[Slot], owned: bool) -> None:
        self._slots, self._owned = slots, owned
        self._needs = remote.Needs(plan)
        self._outputs = remote.output_ids(plan)
        self._read = remote.read_by_handle(plan)
        self._tasks = _task(f"{run.path.name}-{uuid4().hex[:8]}",
                            remote.pack_setup(plan, str(run.path), runs=True))
        self._variants: dict[tuple[tuple[int, int, int, int], bool], Any] = {}
        self._inflight: dict[Any, tuple[Any, list[tuple[int, int]], int]] = {}  # see submit

    def slots(self) -> list[Slot]:
        return self._slots

    def submit(self, batch: Sequence[tuple[Call, Placement]]) -> None:
        """One Ray task per bundle (``bundle.py``): short calls placed on one slot go
        together, a run whole or in pieces, anything wider alone. It returns its values
        too (a second return, kept on the cluster) only where a dependent reads one."""
        inflight = self._inflight
        for task in bundle.bundles(batch, self._needs, self._read):
            got = self._variant(task.need, task.keep).remote(task.payload(), *task.refs)
            outcome, values = got if task.keep else (got, None)
            inflight[outcome] = (values, task.members, task.leader)

    def _variant(self, need: tuple[int, int, int, int], keep: bool) -> Any:
        """The remote function with this need's options and ``keep``'s returns, made once
        for each (the plain one for a one-core task: Ray checks ``.options()`` again at
        every call)."""
        variant = self._variants.get((need, keep))
        if variant is None:
            variant = self._tasks[keep]
            cores, gpus, memory, ranks = need
            if need != bundle.PLAIN:
                options: dict[str, Any] = {"num_cpus": cores * ranks}
                if gpus:
                    options["num_gpus"] = gpus * ranks
                if memory:
                    options["memory"] = memory * ranks
                variant = variant.options(**options)
            self._variants[(need, keep)] = variant
        return variant

    def wait(self, timeout: float | None) -> list[Outcome]:
        """The Outcomes that are ready: ``ray.wait`` for the first, then (workers still
        busy) for others a moment longer, and one ``ray.get`` for them all. A member's
        value is a handle on its task's list of values, its index there the path's head."""
        pending = list(self._inflight)
        if not pending or not ray.wait(pending, num_returns=1, timeout=timeout)[0]:
            return []
        linger = remote.linger(len(pending), len(self._slots))
        ready = ray.wait(pending, num_returns=len(pending), timeout=linger)[0]
        outcomes: list[Outcome] = []
        settle, outputs, read = remote.settle, self._outputs, self._read
        for ref, got in zip(ready, self._fetch(ready), strict=True):
            values, members, leader = self._inflight.pop(ref)
            if isinstance(got, BaseException):  # the task never reported: its worker died
                outcomes.extend(remote.lost(i, attempt, leader, "ray", got)
                                for i, attempt in members)
                continue
            for k, outcome in enumerate(bundle.unpack_outcomes(got)):
                kept = values if read[outcome.id] else None
                outcomes.append(settle(outcome, kept, leader, outputs, (k,)))
        return outcomes

    @staticmethod
    def _fetch(refs: list[Any]) -> list[Any]:
        """The Outcomes in one call; one by one if that fails."""
        try:
            return ray.get(refs)
        except Exception:
            results: list[Any] = []
            for ref in refs:
                try:
                    results.append(ray.get(ref))
                except Exception as exc:
                    results.append(exc)
            return results

    def shutdown(self) -> None:
        for outcome in self._inflight:
            with contextlib.suppress(Exception):
                ray.cancel(outcome)
        self._inflight.clear()
        if self._owned:
            with contextlib.suppress(Exception):
                ray.shutdown()


def start_backend(plan: Plan, run: RunDir, config: EngineConfig) -> tuple[RayBackend, list[Slot]]:
    """Connect to or start Ray, size the slots, check the plan fits: the runner's factory."""
    remote.no_python_ranks(plan, "ray")
    owned = _connect(config)
    try:
        slots = _slots()
        check_fits(plan, slots)
        return RayBackend(plan, run, slots, owned), slots
    except BaseException:
        if owned:
            ray.shutdown()
        raise


def _connect(config: EngineConfig) -> bool:
    """Make sure Ray is initialised; True if we did it (and so shut it down after)."""
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                               "configure_logging": True}
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    options["address"] = config.address or "local"  # "local": a new instance, never another's
    if not config.address:
        options["num_cpus"] = config.workers or os.cpu_count() or 1
        options["num_gpus"] = len(config.gpus)
        if config.gpus:  # Ray hands out the ids it was started with
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(config.gpus)
    try:
        ray.init(**options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {config.address}" if config.address else "Ray here"
        raise EngineError(f"cannot start or reach {where}: {exc}") from None
    finally:
        if config.gpus and not config.address:
            _restore("CUDA_VISIBLE_DEVICES", saved)
    return True


def _restore(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _slots() -> list[Slot]:
    """One slot per CPU of each live node, sharing the node's GPUs and memory."""
    slots: list[Slot] = []
    for node in sorted(ray.nodes(), key=lambda n: n.get("NodeID", "")):
        if not node.get("Alive"):
            continue
        resources = node.get("Resources", {})
        cpus = int(resources.get("CPU", 0))
        if not cpus:
            continue
        gpus = [str(k) for k in range(int(resources.get("GPU", 0)))]
        name = node.get("NodeManagerHostname") or node.get("NodeManagerAddress") or socket.gethostname()
        for share in machine_shares(cpus, gpus, int(resources.get("memory", 0)), node=name,
                                    cores=cpus):
            slots.append(replace(share, index=len(slots)))
    if not slots:
        raise EngineError("the Ray cluster has no node with CPUs")
    return slots
