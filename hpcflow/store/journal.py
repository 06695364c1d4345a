"""The run journal: an append-only file of task events, written by the coordinator alone.

Events are buffered and appended in batches, one ``write`` per batch, as frames of
``[length: u32][crc32: u32][msgpack of a list of events]``. A reader stops at the first
short or corrupt frame, so a coordinator killed mid-write (even ``kill -9``) leaves a
journal whose complete frames are all valid: what was flushed is never lost, and a torn
tail is ignored. No fsync by default (the page cache survives the death of the process);
``fsync=True`` also survives power loss.

An event is a tuple whose first item is its kind (see :class:`Event`); result values of
completed tasks travel inline when small, else as the path of a file beside the journal
(written aside, then renamed, before the event that names it is appended).

**Plain data.** The frames are msgpack, which decodes to numbers, strings, bytes, lists
and dicts and never runs anything, so reading a journal (``status``, ``report``,
``trace``) is safe whoever wrote it. A result's value is the one thing that needs pickle:
it travels as opaque bytes sealed with the user's key (``store/trust.py``) and is
unpickled only by a resume that checked the seal. Journals written before this format
(pickle frames, whose payload starts with the pickle opcode ``0x80``, never a msgpack
array) are refused with :class:`LegacyJournal`, never unpickled.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack

from hpcflow.errors import RunDirError

_HEADER = struct.Struct("<II")
_PICKLE_PROTO = 0x80


class LegacyJournal(RunDirError):
    """A journal of pickle frames (written before journals were plain data): not read."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        super().__init__(f"{path} was written by an older hpcflow (pickle frames), and reading "
                         "it could run code planted in it: read it with the hpcflow that wrote "
                         "it, or start a new run")


class CorruptJournal(RunDirError):
    """A frame with a valid checksum that is not a list of events."""

    def __init__(self, path: str | os.PathLike[str], why: str) -> None:
        self.path = str(path)
        super().__init__(f"{path}: a journal frame is not hpcflow events ({why}); the run "
                         "folder was changed by something other than hpcflow")


def _plain(obj: Any) -> Any:
    """msgpack's fallback: numpy scalars, paths and sets as plain values; else an error."""
    if hasattr(obj, "item") and hasattr(obj, "dtype"):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"a journal event holds a {type(obj).__name__}, which is not plain data")


class Event:
    """Event kinds. Fields after the kind, in order:

    - ``RUN``: info dict (engine, workers, nodes: each worker slot's node, pid, host, plan
      summary: groups, definition hashes) — a run (or resume) began
    - ``DISPATCH``: task id, attempt, worker index, time
    - ``DONE``: task id, attempt, worker index, start time, end time, result (Stored), extra dict
      (``fp``, ``h``, ``d``: store/resume.py; measured memory where known: engine/memory.py)
    - ``FAIL``: task id, attempt, worker index, start time, end time, error text, log path,
      extra dict (measured memory where known; absent in journals before it was added)
    - ``RETRY``: task id, attempt that failed, delay seconds, then that attempt's error
      text, log path, start and end time (absent in journals before they were added)
    - ``SKIP``: task id, id of the failed task it depends on
    - ``STOPPED``: task id, time — a running task given up at the allocation's end
    - ``FORCE``: task names, time — ``--force`` asked these to run again (and everything
      downstream of them, which the names include): a DONE before it no longer counts
    - ``END``: status string (``succeeded``, ``failed``, ``stopped``), time
    """

    RUN = "run"
    DISPATCH = "dispatch"
    DONE = "done"
    FAIL = "fail"
    RETRY = "retry"
    SKIP = "skip"
    STOPPED = "stopped"
    FORCE = "force"
    END = "end"


class Journal:
    """Appends event batches to ``path``; :meth:`flush` writes what :meth:`record` buffered."""

    def __init__(self, path: str | os.PathLike[str], fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._buffer: list[tuple[Any, ...]] = []
        self._pack = msgpack.Packer(default=_plain).pack
        self.append = self._buffer.append
        """``append(event_tuple)``: :meth:`record` without building the tuple (hot paths)."""
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.last_flush = time.monotonic()

    def record(self, *event: Any) -> None:
        self._buffer.append(event)

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def flush(self) -> None:
        if not self._buffer:
            return
        payload = self._pack(self._buffer)
        frame = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        view = memoryview(frame)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        if self.fsync:
            os.fsync(self._fd)
        self._buffer.clear()
        self.last_flush = time.monotonic()

    def close(self) -> None:
        if self._fd >= 0:
            self.flush()
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _frames(data: bytes) -> Iterator[tuple[int, bytes]]:
    """``(end offset, payload)`` of each complete, valid frame; stops at a torn or corrupt one."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, offset)
        start = offset + _HEADER.size
        payload = data[start : start + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            return
        offset = start + length
        yield offset, payload


def _read(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return b""


def complete_length(path: str | os.PathLike[str]) -> int:
    """Bytes of ``path`` up to the end of its last complete, valid frame."""
    end = 0
    for end, _ in _frames(_read(path)):  # noqa: B007 (the last one is wanted)
        pass
    return end


def truncate_torn(path: str | os.PathLike[str]) -> int:
    """Cut a torn tail (a coordinator killed mid-write) before appending again: frames
    appended after it would otherwise be hidden from every reader. Returns bytes cut."""
    size = Path(path).stat().st_size if Path(path).exists() else 0
    keep = complete_length(path)
    if keep < size:
        os.truncate(path, keep)
    return size - keep


def read_journal(path: str | os.PathLike[str]) -> Iterator[tuple[Any, ...]]:
    """Every event of every complete frame, in order; a torn or corrupt tail ends the read.
    Nothing in it is unpickled: a result stays the sealed bytes it was written as."""
    for n, (_, payload) in enumerate(_frames(_read(path))):
        yield from _events(path, payload, first=n == 0)


def _events(path: str | os.PathLike[str], payload: bytes, first: bool) -> list[tuple[Any, ...]]:
    if payload[:1] == bytes((_PICKLE_PROTO,)):
        if first:
            raise LegacyJournal(path)
        raise CorruptJournal(path, "a pickle among plain frames: not loaded")
    try:
        events = msgpack.unpackb(payload, strict_map_key=False)
        return [tuple(event) for event in events]
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise CorruptJournal(path, str(exc) or type(exc).__name__) from None
