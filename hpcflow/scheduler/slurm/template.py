"""The batch script's text, kept apart from the code that fills it (as Parsl's providers do).

:func:`hpcflow.scheduler.slurm.script.render_script` is the only caller: it fills the
``${...}`` fields (``string.Template``; ``$$`` is a literal ``$`` for bash) with
directive lines it has checked against allow-lists and body lines whose every word it
has quoted. Change the text here; then regenerate the golden files (see
``tests/test_slurm_script.py``) and review the diff.

Why the end looks the way it does: Slurm sends USR1 to the batch shell alone (``B:``;
``scancel --signal=USR1 --batch`` does the same) some time before the limit, up to a
minute early. It is a warning, never the end (``hpcflow/engine/walltime.py`` decides what
still fits), so the script never passes it on to the step. The trap is set before
anything else runs (``set -eu``, the profile's set-up, a Dask or Ray cluster's start, the
step), so that a USR1 at any moment, or twice, kills nothing. It writes the marker file
that the engine's coordinator looks for (``batch/usr1.<job>``, written aside and renamed)
and submits, once, the job that continues this run after this one ends however it ends
(``afterany``: the run folder's lock is free by then; a job killed at its limit is
continued too); its id goes into ``batch/next.<job>``, where ``hpcflow status`` follows
the chain. Bash runs a trap only between commands, never while a foreground child runs,
so the step runs in the background and the shell waits with ``wait``, which a trapped
signal interrupts: the loop waits again for the step's real exit status (a ``wait`` for a
step already collected says 127: keep the status). Once the step has ended, USR1 is
ignored.

The end: if the engine exits 75 (it handed over: the allocation's end stopped it), the
script makes sure the continuation was submitted and exits 0, so the job ends COMPLETED
(the run's own status says ``walltime``); if that submission failed, it exits 75. A run
that ends otherwise (finished, failed, or a chain that stalled: the engine's message is in
the log) cancels the continuation. ``HPCFLOW_CONTINUATION`` counts the chain (at most
``MAX_CHAIN``); the engine stops a chain whose last jobs finished no task.

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

# USR1 (Slurm's --signal above, up to a minute early) is a warning, not the end: the trap,
# set first, notes it for the engine in a marker file and submits, once, the job that
# continues this run after this one ends, however it ends (afterany: the run's lock is
# free by then); a run that finishes cancels it. The step never gets the signal.
batch=${batch}
step=
cont=
cut=
usr1=
note() {  # write $$2 into the file $$1 whole: aside, then renamed
  { printf '%s\\n' "$$2" >"$$1.tmp" && mv -f "$$1.tmp" "$$1"; } 2>/dev/null ||
    echo "hpcflow: could not write $$1" >&2
}
continue_run() {
  [ -n "$${cont}" ] && return 0
  n=$${HPCFLOW_CONTINUATION:-0}
  if [ "$${n}" -ge ${max_chain} ]; then
    echo "hpcflow: ${max_chain} continuation jobs ran; resume by hand: hpcflow submit --resume" >&2
    return 1
  fi
  cont=$$(HPCFLOW_CONTINUATION=$$((n + 1)) sbatch --parsable \\
    --dependency="afterany:$${SLURM_JOB_ID}" ${script}) ||
    { cont=; echo "hpcflow: could not submit the continuation job" >&2; return 1; }
  note "$${batch}/${next_name}" "$${cont}"
}
on_usr1() {  # a second USR1 (even one during this function) only cuts the wait short
  cut=1
  [ -n "$${usr1}" ] && return 0
  usr1=1
  note "$${batch}/${marker_name}" "$$(date +%s)"
  continue_run || true
}
trap on_usr1 USR1
set -eu
${setup}
set +e

${cluster_start}${launch} &
step=$$!
wait "$${step}"
status=$$?
while [ -n "$${cut}" ]; do  # that wait was cut short by USR1: wait for the real end
  cut=
  wait "$${step}"
  code=$$?
  [ "$${code}" -eq 127 ] && break  # its end was already collected above
  status=$${code}
done
trap '' USR1
${cluster_stop}if [ "$${status}" -eq ${walltime_code} ]; then  # handed over: the next job goes on
  continue_run && status=0
elif [ -n "$${cont}" ]; then  # finished, failed or stalled within this job: no next job
  scancel "$${cont}" 2>/dev/null || true
  rm -f "$${batch}/${next_name}"
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

CLUSTER_START = """\
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
