"""The batch script's text, kept apart from the code that fills it (as Parsl's providers do).

:func:`hpcflow.scheduler.slurm.script.render_script` is the only caller: it fills the
``${...}`` fields (``string.Template``; ``$$`` is a literal ``$`` for bash) with
directive lines it has checked against allow-lists and body lines whose every word it
has quoted. Change the text here; then regenerate the golden files (see
``tests/test_slurm_script.py``) and review the diff.

Why the end looks the way it does: Slurm sends USR1 to the batch shell (``B:``) some time
before the limit. Bash runs a trap only between commands, never while a foreground child
runs, so the step runs in the background and the shell waits with ``wait``, which a
trapped signal interrupts: the trap notes that it ran and forwards USR1 to the step
(srun or mpiexec passes it on to every rank), and the loop waits again for the step's
real exit status (a ``wait`` for a step already collected says 127: keep the status).

Continuation: at USR1, and again if the engine exits with 75 (the allocation's end
stopped it, see ``hpcflow/engine/walltime.py``), the script submits itself once more, to
start only once this job has ended however it ends (``afterany``: the run folder's lock
is free by then; a job killed at its limit is continued too). The new job resumes the
run (the launch always says ``--resume``). A run that finishes in this job after all
cancels that job. ``HPCFLOW_CONTINUATION`` counts the chain (at most ``MAX_CHAIN``).

Dask and Ray (:mod:`.frameworks` says what the commands are and why): the cluster starts
after the trap is set (a USR1 during the start must not end the shell) and before the
launch, each part in the background with its pid kept; ``hpcflow cluster wait``, under
``timeout``, prints the address once every part has joined, or the job stops there with
exit 3, stopping what did start. After the run's end the cluster is stopped (the Dask
scheduler closes itself and its workers; Ray's parts get TERM; what is left after
``STOP_GRACE`` s gets TERM, then KILL) before the continuation is decided. For the MPI
and local engines ``${cluster_start}`` and ``${cluster_stop}`` are empty.
"""

SCRIPT = """\
#!/bin/bash
${directives}

# hpcflow: this one job runs workflow ${job_name} from start to end; the engine inside
# it places the tasks on the job's ranks (docs/architecture.md, "Slurm"). The values
# above were checked against allow-lists; every word below is quoted.
set -eu
${setup}
set +e

# USR1 from Slurm (--signal above) goes on to the engine, which stops cleanly.
# It also submits, once, the job that continues this run after this one ends, however
# it ends (afterany: the run's lock is free by then); a run that finishes cancels it.
step=
usr1=
cont=
continue_run() {
  [ -n "$${cont}" ] && return 0
  n=$${HPCFLOW_CONTINUATION:-0}
  if [ "$${n}" -ge ${max_chain} ]; then
    echo "hpcflow: ${max_chain} continuation jobs ran; resume by hand: hpcflow run --resume" >&2
    return 0
  fi
  export HPCFLOW_CONTINUATION=$$((n + 1))
  cont=$$(sbatch --parsable --dependency="afterany:$${SLURM_JOB_ID}" ${script}) ||
    { cont=; echo "hpcflow: could not submit the continuation job" >&2; }
}
trap 'usr1=1; continue_run; if [ -n "$${step}" ]; then kill -USR1 "$${step}" 2>/dev/null || true; fi' USR1
${cluster_start}${launch} &
step=$$!
wait "$${step}"
status=$$?
while [ -n "$${usr1}" ]; do  # that wait was cut short by USR1: wait for the real end
  usr1=
  wait "$${step}"
  code=$$?
  [ "$${code}" -eq 127 ] && break  # its end was already collected above
  status=$${code}
done
${cluster_stop}if [ "$${status}" -eq ${walltime_code} ]; then  # stopped for the walltime: continue
  continue_run
elif [ -n "$${cont}" ]; then  # finished (or failed) within this job after all
  scancel "$${cont}" 2>/dev/null || true
fi
exit "$${status}"
"""

NO_SETUP = "# (no set-up commands in the cluster profile)"

STOP_GRACE = 30
"""Seconds a cluster part has to end after TERM before it is killed."""

DASK_ABOUT = """\
# Dask in this allocation (docs/architecture.md, "Slurm"): the scheduler here, on the batch
# host, and a one-thread worker in every task slot but the one this script runs in (srun),
# each declaring its slot's cores, GPUs and memory as Dask resources. If the cluster is
# not up within ${timeout} s, the job stops here (exit ${engine_code}). After the run the scheduler
# closes its workers and itself (hpcflow cluster stop)."""

RAY_ABOUT = """\
# Ray in this allocation (docs/architecture.md, "Slurm"): the head here, on the batch host,
# and one `ray start --block` on each other node (srun, one task per node), each declaring
# its worker slots' CPUs, GPUs and memory. Ray's files go under /tmp (its socket paths
# must stay short). If the cluster is not up within ${timeout} s, the job stops here
# (exit ${engine_code}). After the run each --block process gets TERM and ends its node's Ray
# processes; `ray stop` is not used: it would end every Ray process of the user on the node."""

RAY_TOKEN = """\
# Ray's token authentication with a token of this job's own (in the environment of its
# processes only): ~/.ray/auth_token is shared by every Ray cluster of the user.
RAY_AUTH_TOKEN=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \\n')
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN"""

CLUSTER_START = """
${about}
gone() {  # wait up to $$1 s for the pids that follow to end; false if some did not
  local pid left n=$$(($$1 * 2))
  shift
  while [ "$${n}" -gt 0 ]; do
    left=
    for pid in "$$@"; do [ -n "$${pid}" ] && kill -0 "$${pid}" 2>/dev/null && left=1; done
    [ -z "$${left}" ] && return 0
    n=$$((n - 1))
    sleep 0.5
  done
  return 1
}
stop_cluster() {  # TERM to the pids given (to an srun: Slurm ends its step), ${stop_grace} s, then KILL
  local pid
  for pid in "$$@"; do [ -n "$${pid}" ] && kill -TERM "$${pid}" 2>/dev/null; done
  gone ${stop_grace} "$$@" && return 0
  echo "hpcflow: cluster processes did not end within ${stop_grace} s of TERM: killed" >&2
  for pid in "$$@"; do [ -n "$${pid}" ] && kill -KILL "$${pid}" 2>/dev/null; done
  return 0
}
term_steps() {  # TERM to the tasks of this job's steps named $$1, which then end themselves
  local id name
  timeout 30 squeue --noheader --steps --jobs="$${SLURM_JOB_ID}" --format="%i %j" 2>/dev/null |
    while read -r id name; do
      [ "$${name}" = "$$1" ] && timeout 30 scancel --signal=TERM "$${id}" 2>/dev/null
    done
}
cluster_failed() {  # nothing ran: stop what did start, keep its logs
  echo "hpcflow: the ${engine} cluster did not come up (see above); the workflow did not run" >&2
  stop_cluster ${all_pids}
  exit ${engine_code}
}
${start}

"""

CLUSTER_STOP = """\
${stop}
echo "hpcflow: the ${engine} cluster stopped" >&2
"""
