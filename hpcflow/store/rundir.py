"""The run directory: one folder per run, the spine every later feature reads.

Layout (documented in docs/architecture.md; keep both in step)::

    <run>/
      run.json          what ran: workflow, spec, engine, workers, times, final status
      plan.npz          the plan's arrays (group of each task, CSR edges, resources)
      groups.json       group names, sizes and first ids (names of task instances)
      journal.bin       task events, appended in batches by the coordinator alone
      results/<id>.pkl  large results, sealed (store/trust.py; written aside, then renamed)
      tasks/<name>/     a task's own folder, made when needed: stdout.log, stderr.log,
                        error.log (traceback), a shell task's declared output files
      lock              held (flock) by the coordinator while the run is live

The folder and the folders in it are created 0700, and the files hpcflow writes there
0600, whatever the umask (a task's own logs and outputs take the user's umask inside that
private folder). Anyone may *read* a run (its journal is plain data); a run directory is
reused only through resume, which refuses one that others own or could have written
(``trust.check_private``) and loads only results sealed with a trusted key.
"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hpcflow.errors import RunDirError
from hpcflow.plan.plan import Plan
from hpcflow.store.trust import (
    check_private,
    load_sealed,
    open_private,
    seal,
    unseal,
    write_sealed,
)

DEFAULT_ROOT = "hpcflow-runs"
INLINE_RESULT_LIMIT = 64 * 1024
"""Pickled results up to this size are kept in the journal (sealed); larger ones in results/."""

_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-\[\]/]")


def runs_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Where new run folders go: ``root`` (``--runs-root``), else ``$HPCFLOW_RUNS``, else
    ``./hpcflow-runs``."""
    return Path(root or os.environ.get("HPCFLOW_RUNS", DEFAULT_ROOT))


class RunDir:
    """Paths of one run's folder; creates the parts it hands out."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).resolve()
        self._lock_fd: int | None = None
        self._prepared: dict[str, Any] = {}  # run.json written by `hpcflow submit`, kept

    @classmethod
    def create(cls, workflow: str, root: str | os.PathLike[str] | None = None,
               path: str | os.PathLike[str] | None = None) -> RunDir:
        """A new run folder: ``path`` if given, else ``<root>/<workflow>-<time>-<n>``."""
        if path is None:
            base = runs_root(root)
            base.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for n in range(1, 1000):
                candidate = base / f"{workflow}-{stamp}-{n}"
                try:
                    _private_dir(candidate)
                    break
                except FileExistsError:
                    continue
            else:
                raise RunDirError(f"could not make a new run folder under {base}")
            return cls(candidate)
        target = Path(path)
        if target.exists() and any(target.iterdir()):
            prepared = _submitted_info(target)
            if prepared is None:
                raise RunDirError(f"run folder {target} exists and is not empty "
                                  "(resume it, or choose another --run-dir)")
            run = cls.open(target)  # a folder `hpcflow submit` prepared for its batch job
            run._prepared = prepared
            return run
        target.parent.mkdir(parents=True, exist_ok=True)
        _private_dir(target, exist_ok=True)
        return cls(target)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> RunDir:
        """An existing run folder, to read (anyone's: nothing in it is unpickled to read
        it); a resume also calls :meth:`check_private`."""
        run = cls(path)
        if not (run.path / "run.json").is_file():
            raise RunDirError(f"{run.path} is not a run folder (no run.json)")
        return run

    def check_private(self) -> None:
        """Refuse (:class:`~hpcflow.store.trust.TrustError`) a folder that another user
        owns or could have written: a resume loads results from it."""
        check_private(self.path, self.journal, self.path / "results")

    @property
    def journal(self) -> Path:
        return self.path / "journal.bin"

    def task_dir(self, name: str, create: bool = True) -> Path:
        """The folder of task instance ``name`` (``stats/mean``, ``sim[3]``)."""
        safe = _UNSAFE.sub("_", name).replace("..", "_")
        folder = self.path / "tasks" / safe
        if create and not folder.is_dir():
            here = self.path
            for part in folder.relative_to(self.path).parts:
                here = here / part
                _private_dir(here, exist_ok=True)
        return folder

    def result_path(self, task_id: int) -> Path:
        """Where a large result goes (its folder made, private)."""
        folder = self.path / "results"
        if not folder.is_dir():
            _private_dir(folder, exist_ok=True)
        return folder / f"{task_id}.pkl"

    def lock(self) -> None:
        """Hold the run's lock; a second live run on the same folder is refused."""
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirError(f"{self.path} is in use by another live run") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def discard(self) -> None:
        """Remove a run folder in which nothing ran (one ``hpcflow submit`` prepared stays)."""
        if not self._prepared and not self.journal.exists():
            shutil.rmtree(self.path, ignore_errors=True)

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def write_info(self, info: dict[str, Any]) -> None:
        """Write run.json; keys that ``hpcflow submit`` wrote (``slurm_job_id``...) are kept
        unless ``info`` sets them."""
        data = {**self._prepared, **info}
        write_atomic(self.path / "run.json", json.dumps(data, indent=2, default=str).encode())

    def read_info(self) -> dict[str, Any]:
        return json.loads((self.path / "run.json").read_text())

    def save_plan(self, plan: Plan) -> None:
        """The plan's arrays and group names, for status and the report (no callables)."""
        with open_private(self.path / "plan.npz.tmp") as fh:
            np.savez(fh, group_of=plan.group_of, pred_ptr=plan.pred_ptr, pred=plan.pred,
                     cores=plan.cores, gpus=plan.gpus, ranks=plan.ranks,
                     memory=plan.memory, time=plan.time)
        os.replace(self.path / "plan.npz.tmp", self.path / "plan.npz")
        groups = [{"name": g.name, "start": g.start, "size": g.size,
                   "action": g.task.action.label, "swept": g.swept} for g in plan.groups]
        write_atomic(self.path / "groups.json", json.dumps(groups).encode())

    def store_result(self, task_id: int, value: Any) -> tuple[str, Any]:
        """How a result goes into the journal: ``("inline", sealed pickle)`` or
        ``("file", path)`` (a sealed file); workers do this themselves (engine/results.py)."""
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        if len(data) <= INLINE_RESULT_LIMIT:
            return ("inline", seal(data))
        path = self.result_path(task_id)
        write_sealed(path, value, data)
        return ("file", str(path))


def _submitted_info(folder: Path) -> dict[str, Any] | None:
    """run.json of a folder that ``hpcflow submit`` prepared and no run has used yet
    (status ``submitted``), else None."""
    try:
        info = json.loads((folder / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("status") == "submitted" else None


def load_result(stored: Sequence[Any], where: str = "an inline result") -> Any:
    """A result's value from its journal form, unpickled only once its seal checks out
    (:class:`~hpcflow.store.trust.UntrustedResult` otherwise). ``where`` names an inline
    one in that error."""
    kind, payload = stored
    if kind == "inline":
        return unseal(payload, where)
    return load_sealed(payload)


def write_atomic(path: Path, data: bytes) -> None:
    """Write aside (0600), then rename: a reader sees the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open_private(tmp) as fh:
        fh.write(data)
    os.replace(tmp, path)


def _private_dir(path: Path, exist_ok: bool = False) -> None:
    """Make ``path`` 0700 whatever the umask (an existing one is left as it is)."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        if not exist_ok:
            raise
        return
    os.chmod(path, 0o700)
