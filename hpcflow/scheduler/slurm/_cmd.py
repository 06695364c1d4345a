"""Running Slurm's clients: always with a timeout, never through a shell.

A controller that does not answer makes ``squeue`` or ``sbatch`` wait for a long
time, so every call has a timeout and turns "not installed" or "no answer" into a
:class:`SlurmError` that says which. Functions that call Slurm take a ``run``
argument of this signature, so tests can hand them recorded answers.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping, Sequence

from hpcflow.scheduler.slurm.errors import SlurmError

SLURM_TIMEOUT = 30.0
"""Seconds any one Slurm client call may take."""

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def run_slurm(argv: Sequence[str], timeout: float = SLURM_TIMEOUT,
              env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a Slurm client; its exit status is the caller's to judge."""
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              check=False, stdin=subprocess.DEVNULL,
                              env=dict(env) if env is not None else None)
    except FileNotFoundError:
        raise SlurmError(f"'{argv[0]}' not found: run this on a machine with Slurm's client "
                         "commands on PATH", command=list(argv)) from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"'{argv[0]}' gave no answer within {timeout:.0f} s: is slurmctld up?",
                         command=list(argv)) from None


def said(done: subprocess.CompletedProcess[str]) -> str:
    """What a Slurm client said, stderr then stdout, as one line (``; `` between lines,
    the ``sbatch: `` prefix dropped)."""
    lines = [line.strip().removeprefix("sbatch: ") for text in (done.stderr, done.stdout)
             for line in (text or "").splitlines() if line.strip()]
    return "; ".join(lines)


def sbatch_env() -> dict[str, str]:
    """This environment without ``SBATCH_*``: sbatch lets those override the script's
    directives, and the script is meant to be the whole request."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SBATCH_")}
