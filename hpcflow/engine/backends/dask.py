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

**Bundles** (``bundle.py``). The calls that the core places on one slot in one round go
as one Dask task (up to 16), a run of a sweep's members (``engine/runs.py``) as one, and
a call that asks for anything but one plain core (more cores, GPUs, memory, ranks)
alone: a Dask task costs about a millisecond of scheduler and client time, far more
than a short task.

**Handles and durability.** The task's wrapper runs the shared Executor on the worker,
persists each result there (``remote.Site.run_calls``) and returns a :class:`Result`:
the members' Outcomes, and their values, kept on the worker. A Result pickles *without*
its values, so what leaves the worker is the small Outcomes alone; a dependent on the
same worker gets a value from memory, one elsewhere (or after Dask spilled it) loads it
once from ``stored``, inline or the file the worker wrote (a bundle's other members are
not loaded). The core holds the future as the members' handle (member ``k`` of a bundle
of several: path ``(k, ...)``) where a dependent reads it, and dropping it lets Dask
free the values. Dask's ``sizeof`` counts the values.

**Outcomes** travel as Dask events: the wrapper sends its Outcomes (bytes of plain tuples)
with ``log_event`` (topic ``hpcflow-<run>``) and the client's subscription queues it for
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
import time
from collections.abc import Sequence
from dataclasses import replace
from queue import SimpleQueue
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import distributed
from dask.sizeof import sizeof
from distributed.diagnostics.plugin import WorkerPlugin

from hpcflow.engine.backends import bundle, remote
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
    """What a task returns to Dask: its outcomes (one call's, or a bundle's members'), and
    while on the worker their values."""

    __slots__ = ("outcomes", "values")

    def __init__(self, outcomes: list[Outcome], values: Any = _GONE) -> None:
        self.outcomes, self.values = outcomes, values

    def __reduce__(self) -> tuple[Any, ...]:
        return (Result, (self.outcomes,))  # the values stay behind: see the module's doc

    def get(self) -> Any:
        """The value (a bundle of several: its members' values, by index): from memory,
        else (moved or spilled) from ``stored``: a single value once, a bundle's members
        one by one as they are picked (:class:`bundle.Members`)."""
        if len(self.outcomes) > 1:
            return bundle.Members(self.outcomes) if self.values is _GONE else self.values
        if self.values is _GONE:
            self.values = [load_result(self.outcomes[0].stored)]
        return self.values[0]


@sizeof.register(Result)
def _sizeof_result(result: Result) -> int:
    return sizeof(result.outcomes) + (0 if result.values is _GONE else sizeof(result.values))


class _Setup(WorkerPlugin):
    """Builds the run's Executor on every worker, those that join later included."""

    def __init__(self, token: str, setup: bytes) -> None:
        self.name, self.token, self.setup_blob = f"hpcflow-{token}", token, setup

    def setup(self, worker: Any) -> None:
        remote.install(self.token, self.setup_blob)

    def teardown(self, worker: Any) -> None:
        remote.forget(self.token)


def _run(token: str, payload: bytes, *inputs: Result) -> Result:
    """The task on the worker: the shared Executor (for a run, on each member), then the
    results persisted here and the outcomes sent to the client as one event (no gather
    needed to journal them)."""
    site = remote.site_for(token, _not_set_up)
    calls, ranks, _ = bundle.unpack(payload)
    outcomes, values = site.run_calls(calls, ranks, [r.get() for r in inputs])
    distributed.get_worker().log_event(f"hpcflow-{token}", bundle.pack_outcomes(outcomes))
    return Result(outcomes, values)


def _not_set_up() -> bytes:
    raise RuntimeError("hpcflow's worker plugin did not run on this worker")


class DaskBackend:
    name = "dask"
    runs = True  # a run of a sweep's members is one Dask task (engine/runs.py)

    def __init__(self, client: distributed.Client, cluster: Any, plan: Plan, run: RunDir,
                 slots: list[Slot], addresses: list[str], declared: dict[str, float]) -> None:
        self._client, self._cluster = client, cluster
        self._slots, self._addresses, self._declared = slots, addresses, declared
        self._needs = remote.Needs(plan)
        self._outputs = remote.output_ids(plan)
        self._read = remote.read_by_handle(plan)
        self._requests: dict[tuple[int, int, int, int], dict[str, float] | None] = {}
        self._token = f"{run.path.name}-{uuid4().hex[:8]}"
        self._plugin = _Setup(self._token, remote.pack_setup(plan, str(run.path), runs=True))
        self._inflight: dict[tuple[int, int], tuple[distributed.Future, int, list[tuple[int, int]]]] = {}
        self._done: SimpleQueue[bytes] = SimpleQueue()
        self._topic = f"hpcflow-{self._token}"
        client.register_plugin(self._plugin)
        client.subscribe_topic(self._topic, lambda event: self._done.put(event[1]))
        self._quiet_since = time.monotonic()

    def slots(self) -> list[Slot]:
        return self._slots

    def submit(self, batch: Sequence[tuple[Call, Placement]]) -> None:
        """One Dask task per bundle (``bundle.py``): short calls placed on one slot go
        together, a run whole or in pieces, anything wider alone."""
        client, token = self._client, self._token
        for task in bundle.bundles(batch, self._needs, self._read):
            members = task.members
            key = f"hpcflow-{token}-{members[0][0]}-{members[0][1]}"
            gpus = task.need[1]
            future = client.submit(_run, token, task.payload(), *task.refs, key=key,
                                   resources=self._request(task.need), pure=False,
                                   workers=[self._addresses[task.leader]] if gpus else None,
                                   allow_other_workers=False)
            self._inflight[members[0]] = (future, task.leader, members)

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
        outputs, read = self._outputs, self._read
        outcomes: list[Outcome] = []
        while not outcomes:
            for message in remote.take(self._done, step, linger):
                members = bundle.unpack_outcomes(message)
                entry = self._inflight.pop((members[0].id, members[0].attempt), None)
                if entry is None:
                    continue
                future, leader, several = entry[0], entry[1], len(members) > 1
                for k, outcome in enumerate(members):
                    kept = future if read[outcome.id] else None  # else Dask may free it
                    outcomes.append(remote.settle(outcome, kept, leader, outputs,
                                                  (k,) if several else ()))
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
        for first, (future, leader, members) in list(self._inflight.items()):
            if future.status in ("error", "lost", "cancelled"):
                del self._inflight[first]
                try:
                    exc = future.exception(timeout=1) or RuntimeError(future.status)
                except Exception as err:
                    exc = err
                lost.extend(remote.lost(i, attempt, leader, "dask", exc) for i, attempt in members)
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
