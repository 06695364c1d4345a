"""Exception types. Each carries the data a user needs (file, line, task, field,
cycle path, log path); the CLI turns them into one message and an exit code."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class HpcflowError(Exception):
    """Base of every error hpcflow raises on purpose."""

    exit_code = 1


@dataclass(frozen=True)
class Location:
    """Where something was written: a spec file and line, or a Python object."""

    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        if self.file is None:
            return "<python>"
        return f"{self.file}:{self.line}" if self.line is not None else self.file


class SpecError(HpcflowError):
    """The workflow definition is wrong. Nothing ran.

    ``task`` and ``field`` name what is wrong; ``location`` says where it was written.
    """

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        task: str | None = None,
        field: str | None = None,
        location: Location | None = None,
    ) -> None:
        self.message = message
        self.task = task
        self.field = field
        self.location = location or Location()
        super().__init__(str(self))

    def __str__(self) -> str:
        where = [str(self.location)] if self.location.file is not None else []
        if self.task is not None:
            where.append(f"task '{self.task}'")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        return f"{': '.join(where)}: {self.message}" if where else self.message


    def __reduce__(self) -> tuple:
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type, args: tuple, state: dict) -> HpcflowError:
    """Errors cross process and rank boundaries by pickle: rebuild them from their fields
    (their constructors take other arguments than ``args``)."""
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class CycleError(SpecError):
    """The tasks depend on each other in a circle; ``cycle`` lists it, first task repeated last."""

    def __init__(self, cycle: Sequence[str], location: Location | None = None) -> None:
        self.cycle = list(cycle)
        path = " -> ".join(self.cycle)
        super().__init__(f"dependency cycle: {path}", task=self.cycle[0], location=location)


class ResourceError(HpcflowError):
    """A task asks for more than any worker (or the partition) can offer. Nothing ran."""

    exit_code = 2

    def __init__(self, task: str, message: str) -> None:
        self.task = task
        super().__init__(f"task '{task}': {message}")

    __reduce__ = SpecError.__reduce__



class TaskFailed(HpcflowError):
    """One task failed; ``log`` is where its output is, ``error`` the error text."""

    exit_code = 1

    def __init__(self, task: str, error: str, log: str | None = None) -> None:
        self.task = task
        self.error = error
        self.log = log
        where = f" (log: {log})" if log else ""
        super().__init__(f"task '{task}' failed{where}: {error}")

    __reduce__ = SpecError.__reduce__



class RunFailed(HpcflowError):
    """The run ended with failed tasks; ``failures`` holds one TaskFailed per failed task."""

    exit_code = 1

    def __init__(self, failures: Sequence[TaskFailed], skipped: int, run_dir: str | None) -> None:
        self.failures = list(failures)
        self.skipped = skipped
        self.run_dir = run_dir
        first = self.failures[0] if self.failures else None
        head = f"{len(self.failures)} task(s) failed"
        if skipped:
            head += f", {skipped} not run because they depend on a failed task"
        text = f"{head}; first: {first}" if first else head
        if run_dir:
            text += f". Fix the cause, then resume: hf.run(wf, resume={run_dir!r})"
        super().__init__(text)

    __reduce__ = SpecError.__reduce__



class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a run; ``run_dir`` is its folder, which a resume
    continues (what finished is kept). A KeyboardInterrupt, so code that stops on one
    still does."""

    def __init__(self, run_dir: str) -> None:
        super().__init__(run_dir)
        self.run_dir = run_dir

    def __str__(self) -> str:
        return (f"run stopped; continue it with `hpcflow run --resume {self.run_dir}` "
                f"or hf.run(wf, resume={self.run_dir!r})")


class EngineError(HpcflowError):
    """The engine itself could not run (MPI missing, a backend failed to start)."""

    exit_code = 3


class RunDirError(HpcflowError):
    """The run directory is missing, locked by another run, or not the user's own."""

    exit_code = 2
