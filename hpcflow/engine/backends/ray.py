"""The Ray backend: the shared core decides what may run, Ray runs it.

**Cluster.** ``--address host:6379`` (or ``auto``) connects to a running Ray cluster;
without it ``ray.init(num_cpus=workers)`` starts one on this machine. If the process
already has Ray initialised (a notebook, a test session), that connection is used and
left as it was. Slots are the nodes' CPUs, one each, sharing the node's GPUs and
memory. A task asks Ray for what it needs, ``.options(num_cpus=cores, num_gpus=gpus,
memory=bytes)`` (times ``ranks`` for a multi-rank shell task), and Ray picks the node;
the core admits it only when free slots cover it, so nothing waits on Ray for long.
On the worker a GPU task is given the ids that Ray assigned (``ray.get_gpu_ids()``).

**Handles and durability.** The wrapper returns two objects (``num_returns=2``): the
Outcome, with ``stored`` set by the worker (``remote.run_call``: inline when small,
else written to ``results/<id>.pkl``), and the value. ``wait`` fetches only the
Outcomes (``ray.wait`` for the first, a moment more for others while the workers are
busy, one ``ray.get`` for all: a done-callback per task cost the driver more CPU); the
core keeps the value's ``ObjectRef`` as a handle, ``submit`` passes it as a top-level
argument of the dependents (so Ray hands them the value from its object store, never
through the driver), and dropping it lets Ray free the value.

**Set-up.** The run's remote function is made per run with the plan's actions in its
closure, so Ray ships them once per worker process with the function, not with every
task; the worker builds its Executor from them the first time (``remote.executor_for``).
A one-core task uses that function as it is (``.options()`` costs Ray a check per call).

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

from hpcflow.engine.backends import remote
from hpcflow.engine.core import check_fits
from hpcflow.engine.execute import Call, Outcome
from hpcflow.engine.local import machine_shares
from hpcflow.errors import EngineError
from hpcflow.plan.plan import Plan
from hpcflow.plan.policy import Placement, Slot
from hpcflow.store.rundir import RunDir

if TYPE_CHECKING:
    from hpcflow.engine.runner import EngineConfig


def _task(token: str, setup: bytes) -> Any:
    """The run's remote function. Its closure holds the plan's actions, so Ray ships
    them once per worker process (with the function), not with every task."""
    def run(payload: bytes, *values: Any) -> tuple[Outcome, Any]:
        executor, run_dir = remote.executor_for(token, lambda: setup)
        call, ranks = remote.unpack_call(payload)
        if call.gpus:  # the ids Ray gave this task, which it also put in CUDA_VISIBLE_DEVICES
            call = call._replace(gpus=tuple(str(g) for g in ray.get_gpu_ids()))
        return remote.run_call(executor, run_dir, call, ranks, values)

    run.__qualname__ = run.__name__ = "hpcflow_task"
    return ray.remote(num_cpus=1, num_returns=2, max_retries=0)(run)  # retries are the core's


class RayBackend:
    name = "ray"

    def __init__(self, plan: Plan, run: RunDir, slots: list[Slot], owned: bool) -> None:
        self._slots, self._owned = slots, owned
        self._needs = remote.Needs(plan)
        self._outputs = remote.output_ids(plan)
        self._task = _task(f"{run.path.name}-{uuid4().hex[:8]}",
                           remote.pack_setup(plan, str(run.path)))
        self._variants: dict[tuple[int, int, int, int], Any] = {}
        self._inflight: dict[Any, tuple[Any, int, int, int]] = {}  # outcome ref -> see submit

    def slots(self) -> list[Slot]:
        return self._slots

    def submit(self, batch: Sequence[tuple[Call, Placement]]) -> None:
        needs = self._needs
        for call, placement in batch:
            call, refs = remote.swap(call)
            need = needs(call.id)
            outcome, value = self._variant(need).remote(remote.pack_call(call, need[3]), *refs)
            self._inflight[outcome] = (value, call.id, call.attempt, placement.leaders[0])

    def _variant(self, need: tuple[int, int, int, int]) -> Any:
        """The remote function with this need's options, made once per need (the plain
        one for a one-core task: Ray checks ``.options()`` again at every call)."""
        variant = self._variants.get(need)
        if variant is None:
            cores, gpus, memory, ranks = need
            if need == (1, 0, 0, 1):
                self._variants[need] = self._task
                return self._task
            options: dict[str, Any] = {"num_cpus": cores * ranks}
            if gpus:
                options["num_gpus"] = gpus * ranks
            if memory:
                options["memory"] = memory * ranks
            variant = self._variants[need] = self._task.options(**options)
        return variant

    def wait(self, timeout: float | None) -> list[Outcome]:
        """The Outcomes that are ready: ``ray.wait`` for the first, then (workers still
        busy) for others a moment longer, and one ``ray.get`` for them all."""
        pending = list(self._inflight)
        if not pending or not ray.wait(pending, num_returns=1, timeout=timeout)[0]:
            return []
        linger = remote.linger(len(pending), len(self._slots))
        ready = ray.wait(pending, num_returns=len(pending), timeout=linger)[0]
        outcomes: list[Outcome] = []
        for ref, got in zip(ready, self._fetch(ready), strict=True):
            value, call_id, attempt, leader = self._inflight.pop(ref)
            if isinstance(got, BaseException):  # the task never reported: its worker died
                outcomes.append(remote.lost(call_id, attempt, leader, "ray", got))
            else:
                outcomes.append(remote.settle(got, value, leader, self._outputs))
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
