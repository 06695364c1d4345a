"""The Dask or Ray cluster that a batch job starts inside its own allocation, as words.

With ``--engine dask`` or ``--engine ray`` (or ``engine:`` in the cluster profile) the
batch script starts that framework's cluster across the one allocation, runs
``hpcflow run --engine dask|ray --address ADDRESS --resume RUN WF`` against it on the
batch host, and stops it. This module decides what those commands say, as words;
:mod:`.template` holds the text around them, and :func:`.script.render_script` quotes
every word (:func:`.safety.quote_word`).

**Where the workers stand.** The sizing simulated the MPI engine's slots: the
coordinator (rank 0) takes one task slot of the first node, every other slot is a
worker (:func:`.shape.allocation_slots`). The clusters keep that layout, so that the
simulated makespan holds: the batch host (the allocation's first node) runs the
scheduler or head and the hpcflow coordinator in the coordinator's slot, and each
worker slot's cores, GPUs and memory are declared to the framework as they were
simulated:

- **Dask**: one one-thread worker per worker slot, started by ``srun`` (one step for
  the batch host, which has one slot fewer, one for the other nodes), each declaring
  its slot as Dask resources ``cores``, ``gpus``, ``memory`` (the names the Dask backend
  asks for) and ``--memory-limit``; ``--gpus-per-task`` gives each worker only its own
  GPUs. The address comes from the scheduler file in the run's batch folder.
- **Ray**: ``ray start --head --block`` on the batch host, declaring that node's worker
  slots (``--num-cpus``, ``--num-gpus``, ``--memory``), and one ``ray start --block``
  per other node (``srun``, one task per node holding all of the node's CPUs). Ray's
  files go to ``/tmp/hpcflow-ray-<job>``: its socket paths must stay under 107 bytes,
  which a run folder's path may not. The address comes from the head's
  ``ray_current_cluster`` file. ``--port=0`` and ``--dashboard-agent-listen-port=0``
  let the OS choose ports, so that two jobs on one node do not collide.

**Bounded.** Every wait has a time-out, ``cluster_start_timeout`` of the profile
(``hpcflow cluster wait``, itself under ``timeout``); a part that exits early ends the
wait at once (``--watch``). A cluster that does not come up stops the job with exit 3
before anything ran. After the run the cluster stops itself: the Dask scheduler, asked by
``hpcflow cluster stop dask``, closes its workers (each nanny then exits 0) and itself;
every ``ray start --block`` gets TERM, on which it ends its node's processes (the other
nodes' from ``scancel --signal=TERM``, since a TERM to ``srun`` makes Slurm kill its
tasks at once; then the head's). What is left after 30 s gets TERM, then KILL. ``ray
stop`` is not used: it ends every Ray process of the user on the node, other jobs'
included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hpcflow.plan.policy import Slot
from hpcflow.scheduler.slurm.safety import Join, Var, Word
from hpcflow.scheduler.slurm.shape import Shape

ENGINES = ("dask", "ray")
"""The engines for which the batch script starts a cluster of its own."""
START_GRACE = 30
"""Seconds the outer ``timeout`` adds to ``hpcflow cluster wait``'s own time-out."""
DASK_DEATH_TIMEOUT = 60
"""A Dask worker whose scheduler is gone this long exits by itself."""
OBJECT_STORE_FRACTION = 0.2
"""Ray's object store per node, as a part of the node's memory share (on top of it)."""
OBJECT_STORE_MIN = 80 * 2**20
"""Bytes; Ray refuses less than 75 MiB."""
RAY_TMP = "/tmp/hpcflow-ray-"
DASK_STEP, RAY_STEP = "hpcflow-dask-workers", "hpcflow-ray-nodes"
"""The names of the worker steps (``srun --job-name``)."""


@dataclass(frozen=True)
class Part:
    """One background part of the cluster: the shell variable that keeps its pid, a
    label for messages and ``--watch``, its words, and the file for its output when it
    runs on the batch host (``None``: srun's ``--output`` says)."""

    pid: str
    label: str
    words: tuple[Word, ...]
    log: Word | None = None
    step: str | None = None
    """The name of its ``srun`` step (``--job-name``): where the cluster does not stop
    itself, its tasks get TERM from ``scancel --signal`` (a TERM to ``srun`` itself would
    make Slurm kill them)."""


@dataclass(frozen=True)
class Framework:
    """The cluster a batch job starts before its run and stops after it."""

    engine: str
    timeout: int
    variables: tuple[tuple[str, Word], ...]
    """``name=value`` lines, set first."""
    fresh: tuple[Word, ...]
    """Removed (``rm -rf --``) before the start: what an earlier job of the run left."""
    head: Part
    head_wait: tuple[Word, ...] | None
    """Prints the head's address (Ray: the workers need it to join)."""
    workers: tuple[Part, ...]
    wait: tuple[Word, ...] | None
    """Prints the address once every part has joined (None: the head's wait did)."""
    stop: tuple[Word, ...] | None = None
    """Asks the cluster to stop itself (Dask); None: TERM to each part (Ray)."""
    cleanup: tuple[tuple[Word, ...], ...] = ()
    """Commands after the stop."""

    @property
    def parts(self) -> tuple[Part, ...]:
        return (self.head, *self.workers)


@dataclass(frozen=True)
class NodeShare:
    """The worker slots of one node, all alike: how many, and each one's share."""

    slots: int
    cores: int
    gpus: int
    memory: int  # bytes per slot


def node_shares(slots: Sequence[Slot], nodes: Sequence[str]) -> list[NodeShare]:
    """The worker slots of each of ``nodes`` (the batch host first; it may have none: a
    one-task-per-node shape leaves its only slot to the coordinator); a node's slots are
    equal shares (:func:`hpcflow.engine.mpi.discover.share`)."""
    groups: dict[str, list[Slot]] = {node: [] for node in nodes}
    for slot in slots:
        groups[slot.node].append(slot)
    return [NodeShare(len(g), g[0].cores, len(g[0].gpus), g[0].memory) if g else NodeShare(0, 0, 0, 0)
            for g in groups.values()]


def framework(engine: str, shape: Shape, slots: Sequence[Slot], *, python: str, run_dir: str,
              timeout: int, gpu_style: str) -> Framework:
    """The Dask or Ray cluster for an allocation of ``shape`` whose worker slots (as the
    sizing simulated them, :func:`.shape.allocation_slots`: nodes ``node0``, ``node1``,
    ...) are ``slots``."""
    shares = node_shares(slots, [f"node{k}" for k in range(shape.nodes)])
    if engine == "dask":
        return _dask(shape, shares, python, run_dir, timeout)
    if engine == "ray":
        return _ray(shape, shares, python, run_dir, timeout, gpu_style)
    raise ValueError(f"no cluster to start for engine {engine!r}")


def launch(engine: str, python: str, run_dir: str, spec: str) -> tuple[Word, ...]:
    """``hpcflow run`` against the cluster the script started (on the batch host)."""
    return (python, "-m", "hpcflow", "run", "--engine", engine, "--address", Var("address"),
            "--resume", run_dir, spec)


def _here() -> Join:
    return Join(("--nodelist=", Var("SLURMD_NODENAME")))


def _elsewhere() -> Join:
    return Join(("--exclude=", Var("SLURMD_NODENAME")))


def _wait(python: str, engine: str, timeout: int, options: Sequence[Word],
          parts: Sequence[Part]) -> tuple[Word, ...]:
    watch = [Join((f"--watch={p.label}=", Var(p.pid))) for p in parts]
    return ("timeout", "--kill-after=10", str(timeout + START_GRACE), python, "-m", "hpcflow",
            "cluster", "wait", engine, *options, f"--timeout={timeout}", *watch)


def _dask(shape: Shape, shares: list[NodeShare], python: str, run_dir: str,
          timeout: int) -> Framework:
    scheduler_file = Var("scheduler_file")
    head = Part("pid_scheduler", "scheduler", (
        python, "-m", "distributed.cli.dask_scheduler", Join(("--scheduler-file=", scheduler_file)),
        "--port=0", "--no-dashboard"), Join((f"{run_dir}/batch/dask-scheduler-", Var("SLURM_JOB_ID"),
                                             ".log")))
    steps = [(1, shares[0], _here())]
    if shape.nodes > 1:
        steps.append((shape.nodes - 1, shares[1], _elsewhere()))
    workers = []
    for nodes, share, where in steps:
        if not share.slots:
            continue
        srun: list[Word] = ["srun", f"--job-name={DASK_STEP}", f"--nodes={nodes}",
                            f"--ntasks={nodes * share.slots}", f"--ntasks-per-node={share.slots}",
                            where, f"--cpus-per-task={share.cores}"]
        srun += [f"--gpus-per-task={share.gpus}"] if share.gpus else []
        srun += ["--cpu-bind=none", f"--output={run_dir}/batch/dask-worker-%j.%s.%t.log"]
        declared = {"cores": share.cores, "gpus": share.gpus, "memory": share.memory}
        resources = ",".join(f"{k}={v}" for k, v in declared.items() if v)
        worker = (python, "-m", "distributed.cli.dask_worker", Join(("--scheduler-file=", scheduler_file)),
                  "--nthreads=1", f"--memory-limit={share.memory}", f"--resources={resources}",
                  "--no-dashboard", f"--death-timeout={DASK_DEATH_TIMEOUT}")
        n = len(workers) + 1
        workers.append(Part(f"pid_workers_{n}", f"workers-{n}", (*srun, *worker), step=DASK_STEP))
    count = sum(nodes * share.slots for nodes, share, _ in steps)
    wait = _wait(python, "dask", timeout, (Join(("--scheduler-file=", scheduler_file)),
                                            f"--workers={count}"), (head, *workers))
    stop = ("timeout", "--kill-after=10", str(START_GRACE * 2), python, "-m", "hpcflow", "cluster",
            "stop", "dask", Join(("--scheduler-file=", scheduler_file)), f"--timeout={START_GRACE}")
    return Framework("dask", timeout, (("scheduler_file", f"{run_dir}/batch/dask-scheduler.json"),),
                     (scheduler_file,), head, None, tuple(workers), wait, stop)


def _ray_resources(share: NodeShare) -> tuple[str, ...]:
    memory = share.slots * share.memory
    store = max(OBJECT_STORE_MIN, int(memory * OBJECT_STORE_FRACTION))
    declared = (f"--num-cpus={share.slots * share.cores}", f"--num-gpus={share.slots * share.gpus}")
    return (*declared, f"--memory={memory}", f"--object-store-memory={store}") if memory else declared


def _ray(shape: Shape, shares: list[NodeShare], python: str, run_dir: str, timeout: int,
         gpu_style: str) -> Framework:
    ray_dir, nodes_dir = Var("ray_dir"), Join((Var("ray_dir"), "-nodes"))
    start = (python, "-m", "ray.scripts.scripts", "start")
    common = ("--dashboard-agent-listen-port=0", "--disable-usage-stats", "--block")
    head = Part("pid_head", "head", (
        *start, "--head", "--port=0", Join(("--temp-dir=", ray_dir)), *_ray_resources(shares[0]),
        "--include-dashboard=false", *common),
        Join((f"{run_dir}/batch/ray-head-", Var("SLURM_JOB_ID"), ".log")))
    head_wait = _wait(python, "ray", timeout, (Join(("--temp-dir=", ray_dir)),), (head,))
    workers: tuple[Part, ...] = ()
    wait = None
    cleanup: tuple[tuple[Word, ...], ...] = (("rm", "-rf", "--", ray_dir),)
    others = shape.nodes - 1
    if others:
        share = shares[1]
        one_per_node = ("srun", f"--nodes={others}", f"--ntasks={others}", "--ntasks-per-node=1",
                        _elsewhere())
        gpus = share.slots * share.gpus
        srun: list[Word] = [one_per_node[0], f"--job-name={RAY_STEP}", *one_per_node[1:],
                            f"--cpus-per-task={share.slots * share.cores}"]
        if gpus:
            srun.append(f"--gres=gpu:{gpus}" if gpu_style == "gres" else f"--gpus-per-task={gpus}")
        srun += ["--cpu-bind=none", f"--output={run_dir}/batch/ray-node-%j.%s.%t.log"]
        workers = (Part("pid_nodes", "nodes", (
            *srun, *start, Join(("--address=", Var("address"))), Join(("--temp-dir=", nodes_dir)),
            *_ray_resources(share), *common), step=RAY_STEP),)
        wait = _wait(python, "ray", timeout, (Join(("--address=", Var("address"))),
                                              f"--nodes={shape.nodes}"), (head, *workers))
        cleanup = (("timeout", str(START_GRACE * 2), *one_per_node, "rm", "-rf", "--", nodes_dir),
                   *cleanup)
    return Framework("ray", timeout, (("ray_dir", Join((RAY_TMP, Var("SLURM_JOB_ID")))),),
                     (ray_dir,), head, head_wait, workers, wait, None, cleanup)
