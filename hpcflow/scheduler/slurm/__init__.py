"""The Slurm adapter: one batch job per workflow run (pilot model).

- ``profile``: the cluster profile (partitions, node shapes, the site's dialect), from
  YAML or discovered (``hpcflow cluster discover``);
- ``sizing``: ONE allocation from the plan, by simulating the engine on candidates;
- ``script`` (+ ``template``, ``safety``): the batch script, from checked values only;
- ``submit``: ``sbatch --test-only``, then ``sbatch --parsable --hold``, record, release;
- ``follow``: the job's state, at most one query per 10 s; ``scancel``.

Importing this package runs nothing and imports no MPI. The report layer's ``hpcflow
status`` calls :func:`job_state` for runs whose run.json has a ``slurm_job_id``.
"""

from __future__ import annotations

from typing import Any


def job_state(run_info: Any, **kwargs: Any) -> dict[str, Any]:
    """See :func:`hpcflow.scheduler.slurm.follow.job_state` (imported on first use)."""
    from hpcflow.scheduler.slurm.follow import job_state as probe

    return probe(run_info, **kwargs)


def describe_job(state: Any) -> str:
    """See :func:`hpcflow.scheduler.slurm.follow.describe`: ``job_state``'s dict as one line."""
    from hpcflow.scheduler.slurm.follow import describe

    return describe(state)


__all__ = ["describe_job", "job_state"]
