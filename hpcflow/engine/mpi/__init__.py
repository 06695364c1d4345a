"""The MPI engine: rank 0 coordinates with the shared core, the other ranks run tasks.

Use it like ``mpi4py.futures.MPICommExecutor``: start the script on N ranks
(``mpiexec -n N python script.py`` or ``srun -n N python script.py``) and call
``hf.run(wf, engine="mpi")`` on every rank; ``hpcflow run --engine mpi --workers K``
without ``mpiexec`` starts ``mpiexec -n K+1`` itself (:func:`launch.relaunch`).

Modules, in the order a run meets them (importing this package imports no MPI):

- ``settings``: the few ``HPCFLOW_*`` environment tunables, read in one place;
- ``launch``: relaunch under ``mpiexec``; launcher prefix for ``ranks: k`` shell tasks;
- ``session``: one ``hf.run`` on every rank: the fixed sequence of collectives, the
  final broadcast of the result, signals on rank 0;
- ``discover``: each worker rank's node and share of it (cores, GPUs, memory);
- ``backend``: rank 0's :class:`~hpcflow.engine.core.Backend` and the set-up;
- ``worker``: the worker ranks' loop; ``results``: a worker persisting its large results;
- ``channel``: point-to-point messages (pickle 5, arrays out of band, pooled buffers);
- ``wire``: message tags and records, back-off polling, polite collectives, exceptions
  on the wire.
"""
