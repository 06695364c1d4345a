"""Inside a batch job: wait until the Dask or Ray cluster the script started is up;
stop a Dask cluster.

``hpcflow cluster wait dask|ray`` (the batch script calls it under ``timeout``; see
:mod:`.frameworks`) prints the cluster's address on stdout once every part has joined,
and says on stderr how long it took. It fails (an :class:`EngineError`, exit 3) when the
time-out passes, saying how far the cluster got, or at once when a watched part of the
cluster (``--watch NAME=PID``: the scheduler, the head, a worker step's ``srun``) has
exited: an ``srun`` that Slurm refused, or a scheduler that could not start, would
otherwise keep the job waiting for the whole time-out.

- Dask: the scheduler file appears (``dask scheduler --scheduler-file``), then a client
  counts the workers (``scheduler_info``) until there are enough;
- Ray: ``--temp-dir``: the head's address file ``ray_current_cluster`` appears (no
  connection; the other nodes need the address to join); ``--address`` with
  ``--nodes``: a driver counts the live nodes (``ray.nodes()``) until there are enough.

``hpcflow cluster stop dask`` asks the scheduler to close its workers and itself
(``Client.shutdown``): each nanny closes its worker and exits 0, so the workers' steps
end as completed. Signals would not do it as well: Slurm gives a step's signal to every
process of the step, and a worker that gets TERM while its nanny closes it dies of it.

Polls are 0.5 s apart. The framework's package is imported only here, inside the job.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from hpcflow.errors import EngineError

POLL = 0.5
RAY_ADDRESS_FILE = "ray_current_cluster"


class Watch:
    """The cluster's parts by name and pid; :meth:`check` raises once one has exited."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)

    def check(self, what: str) -> None:
        for name, pid in self.pids.items():
            if not _alive(pid):
                raise EngineError(f"the cluster's {name} (pid {pid}) exited while waiting for "
                                  f"{what}; its output is in the run's batch folder and the job's "
                                  "error file")


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (an exited child not yet reaped, state Z, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _until(timeout: float, watch: Watch, what: str, probe: Callable[[], object],
           progress: Callable[[], str]) -> object:
    """``probe()``'s first true answer, polling; EngineError on time-out or a dead part."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        watch.check(what)
        if time.monotonic() >= deadline:
            raise EngineError(f"waited {timeout:g} s for {what} in vain: {progress()}")
        time.sleep(POLL)


def _said(message: str) -> None:
    print(f"hpcflow cluster wait: {message}", file=sys.stderr, flush=True)


def wait_dask(scheduler_file: str, workers: int, timeout: float, watch: Watch) -> str:
    """The scheduler's address once ``workers`` workers have joined it."""
    import distributed

    started = time.monotonic()
    path = Path(scheduler_file)

    def address() -> str | None:
        try:
            return json.loads(path.read_text()).get("address") or None
        except (OSError, ValueError):
            return None  # not written yet, or half written

    found = str(_until(timeout, watch, "the Dask scheduler's file", address,
                       lambda: f"no file {path}"))
    left = max(1.0, timeout - (time.monotonic() - started))
    try:
        client = distributed.Client(found, timeout=left, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise EngineError(f"cannot reach the Dask scheduler at {found}: {exc}") from None
    try:
        def joined() -> int:
            return len(client.scheduler_info(n_workers=-1)["workers"])

        _until(max(1.0, timeout - (time.monotonic() - started)), watch,
               f"{workers} Dask worker(s) to join", lambda: joined() >= workers,
               lambda: f"{joined()} of {workers} joined")
    finally:
        client.close()
    _said(f"Dask scheduler {found} has {workers} worker(s) after "
          f"{time.monotonic() - started:.1f} s")
    return found


def stop_dask(scheduler_file: str, timeout: float) -> str:
    """Close the scheduler named in ``scheduler_file`` and its workers."""
    import distributed

    try:
        address = json.loads(Path(scheduler_file).read_text())["address"]
        client = distributed.Client(address, timeout=timeout, set_as_default=False)
    except (OSError, ValueError, KeyError, TimeoutError) as exc:
        raise EngineError(f"cannot reach the Dask scheduler of {scheduler_file}: {exc}") from None
    try:
        client.shutdown()
    finally:
        client.close()
    _said(f"Dask scheduler {address} closed itself and its workers")
    return address


def ray_head(temp_dir: str, timeout: float, watch: Watch) -> str:
    """The Ray head's address, from the file it writes once it runs."""
    started = time.monotonic()
    path = Path(temp_dir) / RAY_ADDRESS_FILE

    def address() -> str | None:
        try:
            return path.read_text().strip() or None
        except OSError:
            return None

    found = str(_until(timeout, watch, "the Ray head's address file", address,
                       lambda: f"no file {path}"))
    _said(f"Ray head at {found} after {time.monotonic() - started:.1f} s")
    return found


def wait_ray(address: str, nodes: int, timeout: float, watch: Watch) -> str:
    """``address`` once ``nodes`` live nodes are in the Ray cluster there."""
    import ray

    started = time.monotonic()
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise EngineError(f"cannot reach the Ray cluster at {address}: {exc}") from None
    try:
        def alive() -> int:
            return sum(1 for node in ray.nodes() if node.get("Alive"))

        _until(max(1.0, timeout - (time.monotonic() - started)), watch,
               f"{nodes} Ray node(s) to join", lambda: alive() >= nodes,
               lambda: f"{alive()} of {nodes} joined")
    finally:
        ray.shutdown()
    _said(f"Ray cluster {address} has {nodes} node(s) after {time.monotonic() - started:.1f} s")
    return address


def parse_watch(items: list[str] | None) -> Watch:
    """``NAME=PID`` options as a :class:`Watch` (an empty PID is skipped: a part not started)."""
    pids: dict[str, int] = {}
    for item in items or ():
        name, sep, pid = item.partition("=")
        if not sep or (pid and not pid.isdigit()):
            raise EngineError(f"--watch wants NAME=PID, not {item!r}")
        if pid:
            pids[name] = int(pid)
    return Watch(pids)
