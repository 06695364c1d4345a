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
${launch} &
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
if [ "$${status}" -eq ${walltime_code} ]; then  # stopped for the walltime: continue
  continue_run
elif [ -n "$${cont}" ]; then  # finished (or failed) within this job after all
  scancel "$${cont}" 2>/dev/null || true
fi
exit "$${status}"
"""

NO_SETUP = "# (no set-up commands in the cluster profile)"
