"""The engine's message channel between two ranks: small objects, arrays in and out of
band, large pickles. Ranks above 1 only take part in the communicator's creation."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.mpi(min_size=2), pytest.mark.timeout(60)]


def _objects():
    import numpy as np

    return [
        None,
        {"small": (1, 2.5, "three"), "nested": [list(range(5))]},
        [np.arange(10) for _ in range(100)],  # small arrays stay inside the pickle
        np.arange(1_000_000, dtype=np.float64).reshape(1000, 1000),  # out of band
        np.arange(1_000_000, dtype=np.int32)[::3],  # not contiguous: pickled in band
        b"x" * 3_000_000,  # a pickle too large for the head message
        {"two": [np.ones(300_000), np.zeros(70_000, dtype=np.complex128)]},
    ]


def _equal(a, b) -> bool:
    import numpy as np

    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_equal, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return a == b


def test_objects_cross_between_two_ranks_unchanged():
    from mpi4py import MPI

    from hpcflow.engine.mpi.channel import Channel

    world = MPI.COMM_WORLD
    channel = Channel(world.Dup())
    try:
        if world.rank == 0:
            for i, obj in enumerate(_objects()):
                requests = channel.isend(obj, 1, 100 + i)
                MPI.Request.Waitall(requests)
            got = None
            while got is None:
                got = channel.poll(1, 99)
            assert got[0] == "all equal" and got[1:] == (1, 99)
        elif world.rank == 1:
            verdicts = []
            for i, obj in enumerate(_objects()):
                got = None
                while got is None:
                    got = channel.poll(0, MPI.ANY_TAG)
                verdicts.append(got[2] == 100 + i and _equal(obj, got[0]))
            MPI.Request.Waitall(channel.isend("all equal" if all(verdicts) else verdicts, 0, 99))
            assert all(verdicts)
    finally:
        channel.free()
