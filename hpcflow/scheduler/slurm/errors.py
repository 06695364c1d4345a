"""The Slurm adapter's exception types; each carries what the user needs to act.

- :class:`UnsafeValueError`: a value that would reach an ``#SBATCH`` directive is not
  one Slurm accepts there (names the field and the offending character). Also a
  ``ValueError``, so code that validates plain values can catch it as one.
- :class:`ProfileError`: the cluster profile (YAML) is wrong; names file, line, field.
- :class:`SizingError`: no allocation fits the limit; carries the numbers.
- :class:`SlurmError`: a Slurm command failed or could not be reached;
  :class:`SlurmRejected` when Slurm refused the request (``sbatch --test-only`` or
  ``sbatch``), with Slurm's own message. Nothing was submitted in either case.
"""

from __future__ import annotations

from hpcflow.errors import HpcflowError, Location, SpecError


class UnsafeValueError(SpecError, ValueError):
    """A directive value outside its allow-list (see :mod:`.safety`)."""

    def __init__(self, field: str, value: object, why: str, location: Location | None = None) -> None:
        self.value = value
        super().__init__(f"{value!r} cannot go into the batch script: {why}", field=field,
                         location=location)


class ProfileError(SpecError):
    """The cluster profile is missing or invalid. Nothing was submitted."""


class SizingError(HpcflowError):
    """No allocation of the partition finishes the workflow within the limit.

    ``fastest`` is the shortest requested time (seconds) any candidate needs, ``limit``
    the limit it was compared with, ``chain_jobs`` how many jobs of ``limit`` a
    continuation chain would take."""

    exit_code = 2

    def __init__(self, message: str, *, fastest: float | None = None, limit: float | None = None,
                 chain_jobs: int | None = None) -> None:
        self.fastest = fastest
        self.limit = limit
        self.chain_jobs = chain_jobs
        super().__init__(message)


class SlurmError(HpcflowError):
    """A Slurm command failed, timed out or is not installed."""

    exit_code = 3

    def __init__(self, message: str, *, command: list[str] | None = None, output: str = "") -> None:
        self.command = command or []
        self.output = output
        super().__init__(message)


class SlurmRejected(SlurmError):
    """Slurm refused the request; ``output`` is what Slurm said. Nothing was submitted."""

    exit_code = 2
