"""Dask distributed by hand, the design brief's third peer for the MPI benchmark (started by
``bench_engine.py``, not under mpiexec): a ``LocalCluster`` of W one-thread worker
processes, the same W as the MPI runners' workers.

    python ref_dask.py noop N W
    python ref_dask.py dag L WIDTH W

The framework code is ``bench_backends.DaskNative`` (futures passed straight to
dependents); the cluster's start is not timed, one task warms it up first. Prints one
``RESULT {json}`` line, as ``run_hpcflow.py`` does.
"""

from __future__ import annotations

import json
import sys
import time

from bench_backends import DaskNative, expected_last, noop


def main(argv: list[str]) -> None:
    workload, numbers = argv[0], [int(a) for a in argv[1:]]
    native = DaskNative(numbers[-1])
    try:
        native.client.submit(noop, -1, pure=False).result()
        t0 = time.perf_counter()
        if workload == "noop":
            assert native.noop(numbers[0]) == list(range(numbers[0]))
            n, name = numbers[0], "noop"
        else:
            layers, width = numbers[0], numbers[1]
            assert native.dag(layers, width) == expected_last(layers, width)
            n, name = layers * width, f"dag{layers}x{width}"
        seconds = time.perf_counter() - t0
    finally:
        native.close()
    print("RESULT " + json.dumps({"runner": "dask", "workload": name, "n": n,
                                  "seconds": seconds, "tasks_per_s": n / seconds}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
