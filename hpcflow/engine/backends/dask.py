"""The Dask backend: the shared core decides what may run, a Dask cluster runs it.

**Cluster.** ``--address tcp://host:8786`` connects to a running scheduler; without it
we start one on this machine (a ``SpecCluster``, which is what ``LocalCluster`` is): one
worker process per slot (``--workers``, default the core count) with one thread each,
each declaring its share of the machine as Dask resources ``{"cores", "gpus",
"memory"}``. Slots are the workers' threads, each an equal share of its worker's
declared resources (else its threads and memory limit).

**Placement.** The core's placer admits a task only when free shares cover it, so the
run never asks more of the cluster than it offers; Dask then picks the worker, honouring
the task's ``resources=`` request, and so can run a task where its inputs already are.
A request is the task's needs clipped to the largest worker's declared amount (a task
wider than one worker's share runs on one worker while the core holds the other shares
idle, as on every engine), and resources no worker declares are not requested (Dask
would wait for ever). A GPU task is pinned to its leader slot's worker: GPU ids mean
something only on their own node.

**Handles and durability.** The task's wrapper runs the shared Executor on the worker,
persists the result there (``remote.run_call``) and returns a :class:`Result`: the
Outcome, and the value, kept on the worker. A Result pickles *without* its value, so
what the client gathers is the small Outcome alone; a dependent on the same worker gets
the value from memory, one elsewhere (or after Dask spilled it) loads it once from
``stored``, inline or the file the worker wrote. The core holds the future as a handle,
and dropping it lets Dask free the value. Dask's ``sizeof`` counts the value.

**Outcomes** travel as Dask events: the wrapper sends its Outcome with
``log_event`` (topic ``hpcflow-<run>``) and the client's subscription queues it for
``wait``, so the coordinator learns of a completion without gathering anything (a
done-callback plus a gather per batch cost 1.3-1.5x native on the layered DAG). The
future stays the handle. A task whose future fails without an event (its worker died
and Dask gave up) is found by a look at the in-flight futures after a second without
any outcome. As everywhere with Dask, a result lost with its worker may be recomputed
by Dask itself; the journal keeps the first completion, and the result file is
rewritten whole.

**Stopping** (end of run or Ctrl-C): in-flight futures are cancelled, the run's worker
plugin removed and our client closed; a cluster we started is closed, one we connected
to keeps running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import time
from collections.abc import Sequence
from dataclasses import replace
from queue import SimpleQueue
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import distributed
from dask.sizeof import sizeof
from distributed.diagnostics.plugin import WorkerPlugin

from hpcflow.engine.backends import remote
from hpcflow.engine.core import check_fits
from hpcflow.engine.execute import Call, Outcome
from hpcflow.engine.local import machine_shares
from hpcflow.errors import EngineError
from hpcflow.plan.plan import Plan
from hpcflow.plan.policy import Placement, Slot
from hpcflow.store.rundir import RunDir, load_result

if TYPE_CHECKING:
    from hpcflow.engine.runner import EngineConfig

LOST_CHECK = 1.0
"""Seconds without an outcome after which ``wait`` looks for futures that failed."""
CONNECT_TIMEOUT = 20
"""Seconds to reach a scheduler, or for a cluster of our own to start."""
_GONE = object()


class Result:
    """What a task returns to Dask: its Outcome, and its value while on the worker."""

    __slots__ = ("outcome", "value")

    def __init__(self, outcome: Outcome, value: Any = _GONE) -> None:
        self.outcome, self.value = outcome, value

    def __reduce__(self) -> tuple[Any, ...]:
        return (Result, (self.outcome,))  # the value stays behind: see the module's doc

    def get(self) -> Any:
        """The value: from memory, else (moved or spilled) from ``stored``, once."""
        if self.value is _GONE:
            self.value = load_result(self.outcome.stored)
        return self.value


@sizeof.register(Result)
def _sizeof_result(result: Result) -> int:
    return sizeof(result.outcome) + (0 if result.value is _GONE else sizeof(result.value))


class _Setup(WorkerPlugin):
    """Builds the run's Executor on every worker, those that join later included."""

    def __init__(self, token: str, setup: bytes) -> None:
        self.name, self.token, self.setup_blob = f"hpcflow-{token}", token, setup

    def setup(self, worker: Any) -> None:
        remote.install(self.token, self.setup_blob)

    def teardown(self, worker: Any) -> None:
        remote.forget(self.token)


def _run(token: str, payload: bytes, *inputs: Result) -> Result:
    """The task on the worker: the shared Executor, then the result persisted here and
    its Outcome sent to the client as an event (no gather needed to journal it)."""
    executor, run = remote.executor_for(token, _not_set_up)
    call, ranks = remote.unpack_call(payload)
    outcome, value = remote.run_call(executor, run, call, ranks, [r.get() for r in inputs])
    message = pickle.dumps(tuple(outcome), protocol=5)  # its result pickled in store_result
    distributed.get_worker().log_event(f"hpcflow-{token}", message)
    return Result(outcome, value)


def _not_set_up() -> bytes:
    raise RuntimeError("hpcflow's worker plugin did not run on this worker")


class DaskBackend:
    name = "dask"

    def __init__(self, client: distributed.Client, cluster: Any, plan: Plan, run: RunDir,
                 slots: list[Slot], addresses: list[str], declared: dict[str, float]) -> None:
        self._client, self._cluster = client, cluster
        self._slots, self._addresses, self._declared = slots, addresses, declared
        self._needs = remote.Needs(plan)
        self._outputs = remote.output_ids(plan)
        self._requests: dict[tuple[int, int, int, int], dict[str, float] | None] = {}
        self._token = f"{run.path.name}-{uuid4().hex[:8]}"
        self._plugin = _Setup(self._token, remote.pack_setup(plan, str(run.path)))
        self._inflight: dict[tuple[int, int], tuple[distributed.Future, int]] = {}
        self._done: SimpleQueue[bytes] = SimpleQueue()
        self._topic = f"hpcflow-{self._token}"
        client.register_plugin(self._plugin)
        client.subscribe_topic(self._topic, lambda event: self._done.put(event[1]))
        self._quiet_since = time.monotonic()

    def slots(self) -> list[Slot]:
        return self._slots

    def submit(self, batch: Sequence[tuple[Call, Placement]]) -> None:
        client, token, needs = self._client, self._token, self._needs
        for call, placement in batch:
            call, refs = remote.swap(call)
            need = needs(call.id)
            leader = placement.leaders[0]
            key = f"hpcflow-{token}-{call.id}-{call.attempt}"
            future = client.submit(_run, token, remote.pack_call(call, need[3]), *refs, key=key,
                                   resources=self._request(need), pure=False,
                                   workers=[self._addresses[leader]] if need[1] else None,
                                   allow_other_workers=False)
            self._inflight[(call.id, call.attempt)] = (future, leader)

    def _request(self, need: tuple[int, int, int, int]) -> dict[str, float] | None:
        request = self._requests.get(need)
        if request is None and need not in self._requests:
            cores, gpus, memory, ranks = need
            wanted = {"cores": cores * ranks, "gpus": gpus * ranks, "memory": memory * ranks}
            request = {k: min(v, self._declared[k]) for k, v in wanted.items()
                       if v and self._declared.get(k)} or None
            self._requests[need] = request
        return request

    def wait(self, timeout: float | None) -> list[Outcome]:
        """Outcomes from the workers' events; every second without one, a look for
        futures that failed without reporting (their worker died)."""
        step = LOST_CHECK if timeout is None else min(timeout, LOST_CHECK)
        linger = remote.linger(len(self._inflight), len(self._slots))
        outcomes: list[Outcome] = []
        while not outcomes:
            for message in remote.take(self._done, step, linger):
                outcome = Outcome(*pickle.loads(message))
                entry = self._inflight.pop((outcome.id, outcome.attempt), None)
                if entry is not None:
                    outcomes.append(remote.settle(outcome, entry[0], entry[1], self._outputs))
            now = time.monotonic()
            if outcomes:
                self._quiet_since = now
            elif now - self._quiet_since >= LOST_CHECK:
                outcomes = self._lost()
                self._quiet_since = now
            if outcomes or timeout is not None:
                return outcomes
        return outcomes

    def _lost(self) -> list[Outcome]:
        """Outcomes for the tasks whose futures failed (a worker died, Dask gave up)."""
        lost: list[Outcome] = []
        for (call_id, attempt), (future, leader) in list(self._inflight.items()):
            if future.status in ("error", "lost", "cancelled"):
                del self._inflight[(call_id, attempt)]
                try:
                    exc = future.exception(timeout=1) or RuntimeError(future.status)
                except Exception as err:
                    exc = err
                lost.append(remote.lost(call_id, attempt, leader, "dask", exc))
        return lost

    def shutdown(self) -> None:
        futures = [entry[0] for entry in self._inflight.values()]
        self._inflight.clear()
        client = self._client
        with contextlib.suppress(Exception):
            client.unsubscribe_topic(self._topic)
        with contextlib.suppress(Exception):
            if futures:
                client.cancel(futures, force=True)
            client.unregister_worker_plugin(self._plugin.name)
        with contextlib.suppress(Exception):
            client.close(timeout=CONNECT_TIMEOUT)
        if self._cluster is not None:
            with contextlib.suppress(Exception):
                self._cluster.close(timeout=CONNECT_TIMEOUT)


def start_backend(plan: Plan, run: RunDir, config: EngineConfig) -> tuple[DaskBackend, list[Slot]]:
    """Connect or start a cluster, size the slots, check the plan fits: the runner's factory."""
    remote.no_python_ranks(plan, "dask")
    client, cluster, own = _connect(config)
    try:
        if own is not None:
            slots, addresses, declared = _own_slots(client, own)
        else:
            slots, addresses, declared = _cluster_slots(client)
        check_fits(plan, slots)
        return DaskBackend(client, cluster, plan, run, slots, addresses, declared), slots
    except BaseException:
        client.close()
        if cluster is not None:
            cluster.close()
        raise


def _connect(config: EngineConfig) -> tuple[distributed.Client, Any, list[Slot] | None]:
    """A client of the scheduler at ``config.address``, or of a cluster started here (then
    also the cluster and its workers' shares)."""
    if config.address:
        try:
            client = distributed.Client(config.address, timeout=CONNECT_TIMEOUT,
                                        set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise EngineError(f"cannot reach the Dask scheduler at {config.address}: {exc}") from None
        return client, None, None
    shares = machine_shares(config.workers or os.cpu_count() or 1, config.gpus, config.memory)
    workers = {f"hpcflow-{s.index}": {"cls": distributed.Nanny, "options": {
        "nthreads": 1, "memory_limit": s.memory, "host": "127.0.0.1",
        "resources": _declare(s), "silence_logs": logging.ERROR}} for s in shares}
    scheduler = {"cls": distributed.Scheduler,
                 "options": {"host": "127.0.0.1", "port": 0, "dashboard": False,  # no fixed 8787
                             "dashboard_address": "127.0.0.1:0"}}
    cluster = distributed.SpecCluster(workers=workers, scheduler=scheduler, name="hpcflow",
                                      silence_logs=logging.ERROR)
    try:
        client = distributed.Client(cluster, timeout=CONNECT_TIMEOUT, set_as_default=False)
        client.wait_for_workers(len(shares), timeout=CONNECT_TIMEOUT)
    except BaseException:
        cluster.close()
        raise
    return client, cluster, shares


def _declare(share: Slot) -> dict[str, float]:
    declared = {"cores": float(share.cores), "gpus": float(len(share.gpus)),
                "memory": float(share.memory)}
    return {k: v for k, v in declared.items() if v}


def _own_slots(client: distributed.Client, shares: list[Slot]
               ) -> tuple[list[Slot], list[str], dict[str, float]]:
    """Our workers' shares, with the address of the worker named after each."""
    by_name = {w["name"]: a for a, w in client.scheduler_info(n_workers=-1)["workers"].items()}
    addresses = [by_name[f"hpcflow-{s.index}"] for s in shares]
    return shares, addresses, _largest([_declare(s) for s in shares])


def _cluster_slots(client: distributed.Client) -> tuple[list[Slot], list[str], dict[str, float]]:
    """One slot per worker thread of a running cluster, sharing what its worker declares."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    if not workers:
        raise EngineError("the Dask cluster has no workers")
    gpu_ids: dict[str, Any] = {}
    if any(w.get("resources", {}).get("gpus") for w in workers.values()):
        gpu_ids = client.run(_visible_gpus)
    slots: list[Slot] = []
    addresses: list[str] = []
    for address, info in sorted(workers.items()):
        declared = info.get("resources") or {}
        threads = int(info.get("nthreads") or 1)
        count = int(declared.get("gpus", 0))
        visible = [g for g in (gpu_ids.get(address) or "").split(",") if g]
        ids = (visible or [str(k) for k in range(count)])[:count]
        memory = int(declared.get("memory") or info.get("memory_limit") or 0)
        for share in machine_shares(threads, ids, memory, node=info.get("host") or address,
                                    cores=int(declared.get("cores", threads))):
            slots.append(replace(share, index=len(slots)))
            addresses.append(address)
    return slots, addresses, _largest([w.get("resources") or {} for w in workers.values()])


def _visible_gpus() -> str | None:
    """The worker's own ``CUDA_VISIBLE_DEVICES``. A module function on purpose: given
    ``os.environ.get``, ``client.run`` would pickle the bound method with the *client's*
    environment by value (every worker then reported the client's GPUs, and the client's
    whole environment travelled to the workers)."""
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def _largest(declared: Sequence[dict[str, float]]) -> dict[str, float]:
    """The largest amount of each resource that one worker declares."""
    largest: dict[str, float] = {}
    for resources in declared:
        for name, amount in resources.items():
            largest[name] = max(largest.get(name, 0.0), float(amount))
    return largest
