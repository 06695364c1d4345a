"""A worker persists its own results, so that the coordinator never pickles, hashes or
writes them (every backend's workers do this: local, MPI, Dask, Ray, Spark).

The journal keeps a small result inline (``("inline", sealed pickle)``). A larger one is
written by the worker that made it to ``results/<id>.pkl`` (aside, then renamed) *before*
its outcome leaves, and the outcome says ``("file", path)``: the coordinator only
journals the path, so a result counts only once its file is whole. Both are sealed here
with the user's key (``store/trust.py``: an HMAC-SHA256, one pass over the bytes the
worker made anyway), so that a resume unpickles only what this user's hpcflow wrote. The
value itself still travels to the coordinator (MPI: out of band) for the tasks that read
it. The result's content hash (for the fingerprints of the tasks that read it, see
``store/resume.py``) is taken here too, from the pickle made to size the result.

Writing the file on a background thread while the value is sent was tried: on the
2-core test machine it made the 64 MB fan-out 30-70% slower (the write and the
transfer compete for the same memory bandwidth, and the outcome must wait for both
anyway), so the write stays in line.
"""

from __future__ import annotations

import pickle
from typing import Any

from hpcflow.engine.execute import Outcome
from hpcflow.model.task import Action, ShellCommand
from hpcflow.store.resume import content_hash, pickle_digest
from hpcflow.store.rundir import INLINE_RESULT_LIMIT, RunDir
from hpcflow.store.trust import seal, write_sealed

_new = tuple.__new__
_STORED = Outcome._fields.index("stored")  # ``stored``, ``digest``, ``fp`` follow each other


def persist(run_dir: RunDir, action: Action, outcome: Outcome, fp: str | None = None) -> Outcome:
    """A successful outcome with its result's journal form (``stored``), content hash
    (``digest``) and ``fp`` (a run member's fingerprint, else None) filled in; a result
    that cannot be pickled fails the task, saying so."""
    try:
        stored, digest = store_result(run_dir, outcome.id, action, outcome.value)
    except Exception as exc:  # the journal keeps results with pickle: say so
        error = f"its result ({type(outcome.value).__name__}) cannot be stored: {exc}"
        return outcome._replace(ok=False, value=None, error=error)
    return _new(Outcome, (*outcome[:_STORED], stored, digest, fp, *outcome[_STORED + 3:]))


def store_result(run_dir: RunDir, task_id: int, action: Action, value: Any
                 ) -> tuple[tuple[str, Any], str]:
    """The journal form of a result (inline when small, else a file written here), both
    sealed, and its content hash."""
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    size = len(data) + sum(b.raw().nbytes for b in buffers) if buffers else len(data)
    if size <= INLINE_RESULT_LIMIT:
        if buffers:  # the journal keeps it whole: in band
            data = pickle.dumps(value, protocol=5)
        stored = ("inline", seal(data))
        if isinstance(action, ShellCommand):  # by its output files' content
            return stored, content_hash(action, stored, value)
        return stored, pickle_digest(data)
    path = run_dir.result_path(task_id)
    write_sealed(path, value, b"" if buffers else data)  # protocol 5 streams large buffers
    stored = ("file", str(path))
    return stored, content_hash(action, stored, value)

