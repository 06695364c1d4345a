"""The per-user history of measured task attempts: one SQLite file, plain data only.

Each task *definition* (its group's definition hash, ``store/resume.py``: the action's
code and constant arguments, not the swept values) keeps its display name, the
workflow it was last seen in, how many instances its group had, and the last
:data:`KEEP` finished attempts: duration, peak memory, how the attempt ended, the
engine, the node's cores and whether it had a GPU, the date. At most
:data:`MAX_DEFINITIONS` definitions are kept (the longest unseen are forgotten first),
so the file stays under about 20 MB.

**Where.** ``$HPCFLOW_HISTORY``, else ``$XDG_DATA_HOME/hpcflow/history.sqlite``
(``~/.local/share/hpcflow/history.sqlite``); an option (``--history FILE``) wins over
both.

**Locking.** Run folders, and so homes, often live on network file systems, where
SQLite's WAL mode is unsafe (its shared-memory index needs one host). The file uses the
default rollback journal (``journal_mode=DELETE``), whose locks are plain POSIX
``fcntl`` locks that NFS and Lustre honour; writers wait for each other with a busy
timeout of :data:`BUSY_SECONDS`, and each run writes once, in one short ``BEGIN
IMMEDIATE`` transaction (the write lock taken up front, so two writers never deadlock
upgrading a read lock).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from hpcflow.errors import HpcflowError
from hpcflow.plan.estimates import Sample

KEEP = 100
"""Attempts kept per definition (the newest)."""
MAX_DEFINITIONS = 2000
BUSY_SECONDS = 60.0

_TABLES = """
CREATE TABLE IF NOT EXISTS definitions (
    hash TEXT PRIMARY KEY, name TEXT NOT NULL, workflow TEXT NOT NULL,
    instances INTEGER NOT NULL, runs INTEGER NOT NULL, seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY, hash TEXT NOT NULL, at REAL NOT NULL, duration REAL NOT NULL,
    memory INTEGER NOT NULL, outcome TEXT NOT NULL, engine TEXT NOT NULL,
    cores INTEGER NOT NULL, gpu INTEGER NOT NULL, member INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS attempts_by_hash ON attempts (hash, id);
"""


_ADDED = {"member": "INTEGER NOT NULL DEFAULT 0"}
"""Columns of ``attempts`` added after a history file may have been made: added in place."""


def _add_columns(db: sqlite3.Connection) -> None:
    """A history written by an earlier hpcflow gets the columns it lacks (kept samples
    stay; a new column takes its default)."""
    have = {row[1] for row in db.execute("PRAGMA table_info(attempts)")}
    for name, kind in _ADDED.items():
        if name not in have:
            db.execute(f"ALTER TABLE attempts ADD COLUMN {name} {kind}")


class HistoryError(HpcflowError):
    """The history file cannot be opened or written."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class Attempt:
    """One finished attempt as recorded: a :class:`Sample` with where and when, and
    which member of its group's sweep it was (0 for a task not swept)."""

    sample: Sample
    at: float
    engine: str
    cores: int
    gpu: bool
    member: int = 0


@dataclass
class Measured:
    """What one run measured of one definition."""

    definition: str
    name: str
    workflow: str
    instances: int
    attempts: list[Attempt] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Entry:
    """A definition as :meth:`History.entries` lists it."""

    definition: str
    name: str
    workflow: str
    instances: int
    runs: int
    samples: int
    seen: float


def history_path(option: str | os.PathLike[str] | None = None) -> Path:
    """The history file: ``option``, else ``$HPCFLOW_HISTORY``, else the XDG data place."""
    if option:
        return Path(option)
    if os.environ.get("HPCFLOW_HISTORY"):
        return Path(os.environ["HPCFLOW_HISTORY"])
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data) / "hpcflow" / "history.sqlite"


class History:
    """An open history file; :meth:`record` adds one run's measurements."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = history_path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=BUSY_SECONDS, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=DELETE")
            with self._writing() as db:
                for statement in _TABLES.split(";")[:-1]:
                    db.execute(statement)
                _add_columns(db)
        except (OSError, sqlite3.Error) as exc:
            raise HistoryError(f"cannot open the history {self.path}: {exc}; move it with "
                               "--history FILE or HPCFLOW_HISTORY") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction, the write lock taken at its start."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def record(self, runs: Sequence[Measured], now: float | None = None) -> None:
        """Add each definition's attempts, keep the newest :data:`KEEP`, and forget the
        longest-unseen definitions beyond :data:`MAX_DEFINITIONS`."""
        now = time.time() if now is None else now
        try:
            with self._writing() as db:
                for m in runs:
                    _record_one(db, m, now)
                db.execute("DELETE FROM definitions WHERE hash IN (SELECT hash FROM definitions "
                           "ORDER BY seen DESC LIMIT -1 OFFSET ?)", (MAX_DEFINITIONS,))
                db.execute("DELETE FROM attempts WHERE hash NOT IN (SELECT hash FROM definitions)")
        except sqlite3.Error as exc:
            raise HistoryError(f"cannot write the history {self.path}: {exc}") from None

    def samples(self, definition: str) -> list[Sample]:
        """The definition's kept attempts, oldest first."""
        rows = self._db.execute("SELECT duration, memory, outcome FROM attempts WHERE hash = ? "
                                "ORDER BY id", (definition,))
        return [Sample(float(d), int(m), str(o)) for d, m, o in rows]

    def member_samples(self, definition: str) -> dict[int, list[Sample]]:
        """The kept attempts by sweep member (its position in the group), oldest first."""
        found: dict[int, list[Sample]] = {}
        rows = self._db.execute("SELECT member, duration, memory, outcome FROM attempts "
                                "WHERE hash = ? ORDER BY id", (definition,))
        for member, d, m, o in rows:
            found.setdefault(int(member), []).append(Sample(float(d), int(m), str(o)))
        return found

    def attempts(self, definition: str) -> list[Attempt]:
        rows = self._db.execute("SELECT duration, memory, outcome, at, engine, cores, gpu "
                                "FROM attempts WHERE hash = ? ORDER BY id", (definition,))
        return [Attempt(Sample(float(d), int(m), str(o)), float(at), str(e), int(c), bool(g))
                for d, m, o, at, e, c, g in rows]

    def entries(self, name: str | None = None) -> list[Entry]:
        """Every definition (or those whose name, hash or hash prefix is ``name``),
        most recently seen first."""
        query = ("SELECT d.hash, d.name, d.workflow, d.instances, d.runs, "
                 "(SELECT COUNT(*) FROM attempts a WHERE a.hash = d.hash), d.seen "
                 "FROM definitions d")
        params: tuple[str, ...] = ()
        if name is not None:
            query += " WHERE d.name = ? OR d.hash LIKE ?"
            params = (name, name.replace("%", "") + "%")
        rows = self._db.execute(query + " ORDER BY d.seen DESC", params)
        return [Entry(*row) for row in rows]

    def instances(self, definition: str) -> int | None:
        """How many instances the definition's group had when last run."""
        row = self._db.execute("SELECT instances FROM definitions WHERE hash = ?",
                               (definition,)).fetchone()
        return None if row is None else int(row[0])

    def forget(self, definitions: Sequence[str]) -> int:
        """Forget these definitions; how many there were."""
        with self._writing() as db:
            for definition in definitions:
                db.execute("DELETE FROM attempts WHERE hash = ?", (definition,))
            gone = sum(db.execute("DELETE FROM definitions WHERE hash = ?", (d,)).rowcount
                       for d in definitions)
        return gone


def _record_one(db: sqlite3.Connection, m: Measured, now: float) -> None:
    db.execute("INSERT INTO definitions (hash, name, workflow, instances, runs, seen) "
               "VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT (hash) DO UPDATE SET name = excluded.name, "
               "workflow = excluded.workflow, instances = excluded.instances, "
               "runs = runs + 1, seen = excluded.seen",
               (m.definition, m.name, m.workflow, m.instances, now))
    db.executemany("INSERT INTO attempts (hash, at, duration, memory, outcome, engine, cores, gpu, "
                   "member) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   [(m.definition, a.at, a.sample.duration, a.sample.memory, a.sample.outcome,
                     a.engine, a.cores, int(a.gpu), a.member) for a in m.attempts[-KEEP:]])
    db.execute("DELETE FROM attempts WHERE hash = ? AND id NOT IN (SELECT id FROM attempts "
               "WHERE hash = ? ORDER BY id DESC LIMIT ?)", (m.definition, m.definition, KEEP))
