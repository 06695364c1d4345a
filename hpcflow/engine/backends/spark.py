"""The Spark backend: each ready task is a Spark job of one partition.

**Cluster.** ``--master spark://host:7077`` (or any master URL) runs on that cluster;
by default ``local[N]`` on this machine (N = ``--workers``, default the core count).
If the process already has an active SparkContext (a notebook, a test session), it is
used and left running. Java 17 must be installed (Debian: ``openjdk-17-jre-headless``).

**Jobs.** ``submit`` hands each call to a thread pool; each thread runs
``sc.parallelize([payload], 1).map(run).collect()``, so several jobs are in flight at
once and Spark's scheduler places them on executors. ``run`` is the shared Executor on
the executor's Python worker, which persists the result there (``remote.Site.run_calls``) and
returns only the small Outcome. Spark has no object store that outlives a job, so a
large result's handle is its file in the run folder (dependents load it on their
executor, never through the driver) and a small one travels inline.

**What Spark cannot honour**, refused with an EngineError before anything runs:
per-task GPUs and per-task memory (Spark asks for them per application, or through
stage-level resource profiles, which local mode and this backend do not use), and
``ranks > 1``. Cores: one ``spark.task.cpus`` holds for the whole application, so a
context we start sets it to the most cores any task asks (every task then reserves
that many); with a context that already runs, a task asking more is refused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from queue import SimpleQueue
from typing import TYPE_CHECKING, Any
from uuid import uuid4

from pyspark import SparkConf, SparkContext

from hpcflow.engine.backends import remote
from hpcflow.engine.execute import Call, Outcome
from hpcflow.errors import EngineError
from hpcflow.plan.plan import Plan
from hpcflow.plan.policy import Placement, Slot
from hpcflow.store.rundir import RunDir, load_result

if TYPE_CHECKING:
    from hpcflow.engine.runner import EngineConfig

THREADS_PER_SLOT = 2
"""Jobs in flight per slot: the driver prepares the next while an executor runs one."""


def _run(token: str, setup: Any, payload: bytes) -> Outcome:
    """The task on a Spark executor's Python worker."""
    site = remote.site_for(token, lambda: setup.value)
    call, ranks, refs = remote.unpack_call(payload)
    outcomes, _ = site.run_calls((call,), ranks, [load_result(r) for r in refs])
    return outcomes[0]


class SparkBackend:
    name = "spark"

    def __init__(self, sc: SparkContext, owned: bool, plan: Plan, run: RunDir,
                 slots: list[Slot]) -> None:
        self._sc, self._owned, self._slots = sc, owned, slots
        self._ranks = plan.ranks.tolist()
        self._outputs = remote.output_ids(plan)
        token = f"{run.path.name}-{uuid4().hex[:8]}"
        self._group = f"hpcflow-{token}"
        self._setup = sc.broadcast(remote.pack_setup(plan, str(run.path)))
        self._run = partial(_run, token, self._setup)
        self._pool = ThreadPoolExecutor(len(slots) * THREADS_PER_SLOT, "hpcflow-spark")
        self._done: SimpleQueue[Outcome] = SimpleQueue()

    def slots(self) -> list[Slot]:
        return self._slots

    def submit(self, batch: Sequence[tuple[Call, Placement]]) -> None:
        for call, placement in batch:
            refs: list[Any] = []
            call = remote.swap(call, refs, {})
            payload = remote.pack_call(call, self._ranks[call.id], refs)
            self._pool.submit(self._job, call, placement.leaders[0], payload)

    def _job(self, call: Call, leader: int, payload: bytes) -> None:
        """One task as one Spark job (on a pool thread); its outcome goes to ``wait``."""
        try:
            self._sc.setJobGroup(self._group, call.name, interruptOnCancel=True)
            [outcome] = self._sc.parallelize([payload], 1).map(self._run).collect()
            kept = outcome.stored if outcome.ok and outcome.stored[0] == "file" else None
            self._done.put(remote.settle(outcome, kept, leader, self._outputs))
        except BaseException as exc:  # the job itself failed: the task is reported failed
            self._done.put(remote.lost(call.id, call.attempt, leader, "spark", exc))

    def wait(self, timeout: float | None) -> list[Outcome]:
        return remote.take(self._done, timeout)

    def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            self._sc.cancelJobGroup(self._group)
        self._pool.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(Exception):
            self._setup.destroy()
        if self._owned:
            with contextlib.suppress(Exception):
                self._sc.stop()


def start_backend(plan: Plan, run: RunDir, config: EngineConfig) -> tuple[SparkBackend, list[Slot]]:
    """Refuse what Spark cannot honour, then start or join Spark: the runner's factory."""
    cores = _check(plan)
    active = SparkContext._active_spark_context
    if active is not None:
        sc, owned = active, False
    else:
        sc = start_context(config.address or f"local[{config.workers or os.cpu_count() or 1}]",
                           cores)
        owned = True
    try:
        task_cpus = int(sc.getConf().get("spark.task.cpus", "1"))
        if cores > task_cpus:
            raise EngineError(f"a task needs {cores} cores, but the running Spark context "
                              f"gives each task {task_cpus} (spark.task.cpus)")
        total = sc.defaultParallelism
        if total < task_cpus:
            raise EngineError(f"Spark has {total} core(s); a task needs {task_cpus}")
        node = socket.gethostname() if sc.master.startswith("local") else sc.master
        slots = [Slot(i, node, task_cpus) for i in range(total // task_cpus)]
        return SparkBackend(sc, owned, plan, run, slots), slots
    except BaseException:
        if owned:
            sc.stop()
        raise


def _check(plan: Plan) -> int:
    """EngineError for what Spark cannot give a task; else the most cores a task needs."""
    for group in plan.groups:
        res = group.task.resources
        cannot = (f"{res.gpus} GPU(s)" if res.gpus else
                  f"{res.memory // 2**20}M of memory" if res.memory else
                  f"{res.ranks} ranks" if res.ranks > 1 else None)
        if cannot:
            raise EngineError(
                f"task '{group.name}' asks for {cannot}, which the Spark engine cannot "
                "honour per task (it has one setting per application; per-task GPUs or "
                "memory need stage-level resource profiles): run it with --engine local, "
                "mpi, dask or ray")
    return max((int(g.task.resources.cores) for g in plan.groups), default=1)


def start_context(master: str, task_cpus: int = 1) -> SparkContext:
    """A SparkContext as this backend starts one (quiet, no Spark-level retries, this
    Python on the executors); tests and notebooks may start it first and keep it."""
    if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
        raise EngineError("the Spark engine needs Java 17 or later (Debian: apt-get install "
                          "openjdk-17-jre-headless), and found no java")
    conf = (SparkConf().setMaster(master).setAppName("hpcflow")
            .set("spark.task.cpus", str(task_cpus))
            .set("spark.task.maxFailures", "1")  # retries are the core's
            .set("spark.ui.enabled", "false").set("spark.ui.showConsoleProgress", "false")
            .set("spark.log.level", "ERROR")
            .set("spark.pyspark.python", sys.executable)
            .set("spark.pyspark.driver.python", sys.executable))
    if master.startswith("local"):
        conf.set("spark.driver.host", "127.0.0.1").set("spark.driver.bindAddress", "127.0.0.1")
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # read by the JVM we start
    logging.getLogger("py4j").setLevel(logging.ERROR)
    try:
        return SparkContext(conf=conf)
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise EngineError(f"cannot start Spark ({master}): {text[-1] if text else exc}") from None
