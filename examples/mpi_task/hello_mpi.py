"""A tiny MPI program, run by the example's shell task with ``ranks: 2``: hpcflow starts
it on two processes (``mpiexec -n 2`` outside Slurm, a nested ``srun`` inside a job).
Each rank contributes rank + 1; rank 0 prints one line, which the task takes as its value.
"""

from mpi4py import MPI

comm = MPI.COMM_WORLD
total = comm.reduce(comm.rank + 1, op=MPI.SUM, root=0)
nodes = comm.gather(MPI.Get_processor_name(), root=0)
if comm.rank == 0:
    print(f"{comm.size} ranks on {', '.join(sorted(set(nodes)))}: sum of rank+1 = {total}")
