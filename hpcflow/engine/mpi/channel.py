"""Point-to-point messages of Python objects, large arrays out of band, any size.

The scheme of :mod:`mpi4py.util.pkl5` (pickle protocol 5, buffers sent from their own
memory, so a numpy array is never copied into a pickle), with changes that the engine's
traffic asks for:

- a small object is **one** MPI message (pkl5 always sends a size header first, which
  doubles the message count of the many small call and outcome batches);
- only buffers of at least :data:`OUT_OF_BAND` bytes leave the pickle (a list of a
  thousand small arrays stays one message);
- what the standard pickler refuses (a lambda among a task's arguments) is pickled by
  value with ``cloudpickle``, which the receiving side's ``pickle.loads`` reads;
- received buffers are numpy arrays (``np.empty``), which numpy backs with transparent
  huge pages where the kernel offers them (``madvise``), and they are **recycled**: a
  buffer whose arrays are all gone (nothing but the pool refers to it) takes the next
  part of its size. A fresh 64 MB buffer costs page faults that, on a virtual machine,
  take longer than the transfer itself; at most :data:`POOL_SPARE` bytes of free
  buffers are kept.

A message is ``[u32 inline][u32 parts][u64 size of each part][pickle if inline]``,
followed by one MPI message per part (the pickle itself first when it was too large to
inline, then each out-of-band buffer), all with the same tag: MPI keeps messages of one
source and tag in order, so the parts are picked up with matched probes right after
the head. Sends are nonblocking (:meth:`Channel.isend` returns the requests; each
holds a reference to its buffer until it completes). Sizes beyond 2 GiB go through
MPI-4's large-count calls, which mpi4py uses by itself.
"""

from __future__ import annotations

import pickle
import struct
import sys
from typing import Any

import cloudpickle
import numpy as np
from mpi4py import MPI

OUT_OF_BAND = 256 * 1024
"""Buffers at least this large travel as MPI messages of their own."""
INLINE = 256 * 1024
"""A pickle up to this size travels inside the head message."""

POOL_SPARE = 512 * 2**20
"""Free receive buffers kept for reuse, in bytes."""

_HEAD = struct.Struct("<II")


class Channel:
    """Objects over ``comm`` (a communicator the engine owns alone)."""

    def __init__(self, comm: MPI.Intracomm) -> None:
        self.comm = comm
        self.status = MPI.Status()
        self._pool: list[np.ndarray] = []  # receive buffers, in use or free

    def isend(self, obj: Any, dest: int, tag: int) -> list[MPI.Request]:
        """Start sending ``obj``; complete the returned requests before exiting."""
        buffers: list[pickle.PickleBuffer] = []

        def out_of_band(buffer: pickle.PickleBuffer) -> bool:
            if buffer.raw().nbytes < OUT_OF_BAND:
                return True  # stays in the pickle
            buffers.append(buffer)
            return False

        try:
            data = pickle.dumps(obj, protocol=5, buffer_callback=out_of_band)
        except (pickle.PicklingError, TypeError, AttributeError):
            buffers.clear()  # a lambda or a closure among the arguments: pickle by value
            data = cloudpickle.dumps(obj, protocol=5, buffer_callback=out_of_band)
        inline = len(data) <= INLINE
        raw = [b.raw() for b in buffers]
        parts = raw if inline else [memoryview(data), *raw]
        head = _HEAD.pack(inline, len(parts)) + struct.pack(f"<{len(parts)}Q", *(p.nbytes for p in parts))
        if inline:
            head += data
        comm = self.comm
        requests = [comm.Isend([head, MPI.BYTE], dest, tag)]
        requests.extend(comm.Isend([p, MPI.BYTE], dest, tag) for p in parts)
        return requests

    def poll(self, source: int, tag: int) -> tuple[Any, int, int] | None:
        """The next message from ``source`` with ``tag`` (``ANY_*`` allowed), as
        ``(object, source, tag)``, or None if none has arrived."""
        status = self.status
        message = self.comm.Improbe(source, tag, status)
        if message is None:
            return None
        source, tag = status.Get_source(), status.Get_tag()
        head = bytearray(status.Get_count(MPI.BYTE))
        message.Recv([head, MPI.BYTE])
        inline, count = _HEAD.unpack_from(head)
        sizes = struct.unpack_from(f"<{count}Q", head, _HEAD.size)
        parts = [self._receive_part(size, source, tag) for size in sizes]
        if inline:
            data: Any = memoryview(head)[_HEAD.size + 8 * count :]
        else:
            data = parts.pop(0)
        return pickle.loads(data, buffers=parts), source, tag

    def _receive_part(self, size: int, source: int, tag: int) -> np.ndarray:
        buffer = self._buffer(size)
        message = self.comm.Mprobe(source, tag)
        message.Recv([buffer, MPI.BYTE])
        return buffer

    def _buffer(self, size: int) -> np.ndarray:
        """A free pooled buffer of ``size`` bytes, or a new one (then pooled)."""
        pool, spare, found = self._pool, 0, None
        for i in range(len(pool) - 1, -1, -1):
            if sys.getrefcount(pool[i]) > 2:  # the list's and the call's: else in use
                continue
            if found is None and pool[i].nbytes == size:
                found = pool[i]
            elif spare + pool[i].nbytes > POOL_SPARE:
                del pool[i]
            else:
                spare += pool[i].nbytes
        if found is None:
            found = np.empty(size, dtype=np.uint8)
            pool.append(found)
        return found

    def free(self) -> None:
        self.comm.Free()
