"""Backends that run the shared core on a site's existing cluster framework.

Each is one small module implementing the core's four-method
:class:`~hpcflow.engine.core.Backend` over one framework, and each is imported only when
chosen (``hpcflow run --engine dask|ray|spark``), so none of Dask, Ray or PySpark is
needed otherwise:

- ``remote``: what the three share: result handles, the task's trip to a worker (the
  shared :class:`~hpcflow.engine.execute.Executor` runs it there), the worker-side
  persisting of results, and the one-line error for a missing package;
- ``dask``: a Dask scheduler (``--address``) or a cluster of our own on this machine;
- ``ray``: a Ray cluster (``--address``) or ``ray.init()`` on this machine;
- ``spark``: a Spark master (``--master``) or ``local[N]``.

docs/architecture.md ("Other engines") says what each honours and what it cannot.
"""
