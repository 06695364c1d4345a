"""Run one task where a worker stands: the code every backend's workers share.

A worker receives :class:`Call` records (the task, its bound arguments, its GPUs) and
returns :class:`Outcome` records. Python callables named ``"module:qualname"`` or
``"/abs/file.py:qualname"`` are imported here, on the worker, with the plan's
``python_path`` in front of ``sys.path``. Shell commands are rendered with every
substituted value quoted, run in the task's own folder with their output in
``stdout.log``/``stderr.log``, and their declared output files must exist afterwards.
Each task's peak memory is measured where it is cheap enough (``memory.py``).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import pickle
import re
import select
import shlex
import signal
import string
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from hpcflow.engine.memory import (
    WATCH_AFTER,
    forked_memory,
    process_hwm,
    process_meter,
    shell_memory,
    wait_child,
)
from hpcflow.model.task import Action, Environment, MethodCall, PythonCall, ShellCommand


class Call(NamedTuple):
    """One task for a worker. ``gpus`` are the device ids it may use (pinned through
    ``CUDA_VISIBLE_DEVICES``); ``peers`` the worker indices of all its ranks. A call with
    ``count > 1`` is a *run*: members ``id .. id + count - 1`` of a closed group, which
    the worker expands (``engine/runs.py``) into calls that carry their fingerprint."""

    id: int
    attempt: int
    group: int
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    gpus: tuple[str, ...] = ()
    timeout: float | None = None
    peers: tuple[int, ...] = ()
    isolate: bool = False
    """Run a Python task in a child process even without a time-out (a crash fails it alone)."""
    count: int = 1
    fp: str | None = None


class Outcome(NamedTuple):
    """What became of a call: ``value`` on success, else ``error`` text and ``log`` path.

    ``stored`` is set by a worker that already persisted the result itself (its journal
    form, ``("inline", sealed pickle)`` or ``("file", path)``) and ``digest`` is then its content
    hash (``engine/results.py``); None lets the coordinator do both. ``fp`` is the
    fingerprint of a member of a run, taken by the worker that expanded it.
    ``memory`` is the measured peak RSS, journalled as is into the DONE or FAIL extra:
    ``{"peak_rss": bytes, "base_rss": bytes}`` (Python tasks), ``{"peak_rss": bytes}`` or
    ``{"peak_rss_bound": bytes}`` (shell tasks), None where not measured (memory.py)."""

    id: int
    attempt: int
    ok: bool
    value: Any
    start: float
    end: float
    worker: int
    error: str | None = None
    log: str | None = None
    stored: tuple[str, Any] | None = None
    digest: str | None = None
    fp: str | None = None
    memory: dict[str, int] | None = None


_new = tuple.__new__  # a NamedTuple without its Python-level __new__ (a worker's hot path)
_OK_DEFAULTS = tuple(Outcome._field_defaults[f] for f in Outcome._fields[7:])


class TaskError(Exception):
    """A task did not do its job (non-zero exit, missing output, time-out); ``memory`` is
    what was measured of it, if anything."""

    def __init__(self, message: str, memory: dict[str, int] | None = None) -> None:
        super().__init__(message)
        self.memory = memory


def resolve_target(target: str | Callable[..., Any]) -> Any:
    """The object named ``"pkg.mod:qual.name"`` or ``"/abs/file.py:qual.name"``."""
    if not isinstance(target, str):
        return target
    module_name, _, qualname = target.partition(":")
    if module_name.endswith(".py"):
        path = Path(module_name)
        unique = f"hpcflow_user_{abs(hash(str(path)))}_{path.stem}"
        module = sys.modules.get(unique)
        if module is None:
            spec = importlib.util.spec_from_file_location(unique, path)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[unique] = module
            spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def render_command(command: str | Sequence[str], values: Mapping[str, Any]) -> list[str]:
    """The argv for a shell task: a string becomes ``bash -c`` with every value quoted; in an
    argv list each item is formatted, and an item that is exactly ``{name}`` of a list
    value expands to several arguments."""
    if isinstance(command, str):
        return ["bash", "-c", _format(command, values, quote=True)]
    argv: list[str] = []
    for item in command:
        fields = placeholders(item)
        if fields == [item[1:-1]] and isinstance(values.get(fields[0]), (list, tuple)):
            argv.extend(str(v) for v in values[fields[0]])
        else:
            argv.append(_format(item, values, quote=False))
    return argv


def placeholders(template: str) -> list[str]:
    """Names of the ``{name}`` fields in ``template`` (``{{`` is a literal brace)."""
    return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]


def _format(template: str, values: Mapping[str, Any], quote: bool) -> str:
    parts: list[str] = []
    for literal, field, spec, conversion in string.Formatter().parse(template):
        parts.append(literal)
        if field is None:
            continue
        if spec or conversion or not field.isidentifier():
            raise TaskError(f"placeholder {{{field}}} must be a plain name")
        value = values[field]
        if quote:
            items = value if isinstance(value, (list, tuple)) else [value]
            parts.append(" ".join(shlex.quote(str(v)) for v in items))
        else:
            parts.append(str(value))
    return "".join(parts)


class Executor:
    """Runs calls for one worker. ``actions[g]`` is group g's action."""

    def __init__(self, actions: Sequence[Action], run_dir: str, python_path: Sequence[str],
                 worker: int = 0, launcher: Callable[[int], list[str]] | None = None) -> None:
        self.actions = actions
        self.run_dir = Path(run_dir)
        self.worker = worker
        self.launcher = launcher or default_launcher
        self.spec_dir = python_path[0] if python_path else os.getcwd()
        self._targets: dict[int, Any] = {}
        self._gpus: tuple[str, ...] | None = None
        meter = process_meter()
        self._meter = meter if meter is not None and meter.can_reset else None
        self._watch = [self._meter is not None] * len(actions)
        """Per group: measure its next in-process task (its last one here ran long)."""
        for folder in reversed(python_path):
            if folder not in sys.path:
                sys.path.insert(0, folder)

    def task_dir(self, name: str) -> Path:
        from hpcflow.store.rundir import RunDir

        return RunDir(self.run_dir).task_dir(name)

    def run(self, call: Call, ranks: int = 1) -> Outcome:
        start = time.time()
        action = self.actions[call.group]
        if isinstance(action, ShellCommand) or ((call.timeout or call.isolate) and ranks == 1):
            return self._run_child(action, call, ranks, start)
        if self._watch[call.group]:
            return self._run_measured(action, call, start)
        try:
            value = self._python(action, call)
        except Exception as exc:  # the task's own failure, reported, never raised
            outcome = self._failure(call, start, exc)
            end = outcome.end
        else:
            end = time.time()
            outcome = _new(Outcome, (call.id, call.attempt, True, value, start, end, self.worker,
                                     *_OK_DEFAULTS))
        if end - start >= WATCH_AFTER and self._meter is not None:
            self._watch[call.group] = True  # long tasks in this group: measure the next
        return outcome

    def _run_measured(self, action: Action, call: Call, start: float) -> Outcome:
        """An in-process task with the worker's peak RSS over it (see memory.py)."""
        meter = self._meter
        assert meter is not None
        base = meter.start()
        try:
            value = self._python(action, call)
        except Exception as exc:
            memory = {"peak_rss": meter.peak(), "base_rss": base}
            outcome = self._failure(call, start, exc, memory)
        else:
            memory = {"peak_rss": meter.peak(), "base_rss": base}
            outcome = Outcome(call.id, call.attempt, True, value, start, time.time(), self.worker,
                              memory=memory)
        self._watch[call.group] = outcome.end - start >= WATCH_AFTER
        return outcome

    def _run_child(self, action: Action, call: Call, ranks: int, start: float) -> Outcome:
        """A shell command, or a Python task forked into a child of its own."""
        try:
            if isinstance(action, ShellCommand):
                value, memory = self._shell(action, call, ranks)
            else:
                value, memory = run_forked(lambda: self._python(action, call), call.timeout,
                                           call.name)
        except Exception as exc:  # the task's own failure, reported, never raised
            return self._failure(call, start, exc, exc.memory if isinstance(exc, TaskError) else None)
        return Outcome(call.id, call.attempt, True, value, start, time.time(), self.worker,
                       memory=memory)

    def _python(self, action: Action, call: Call) -> Any:
        if not isinstance(action, _PYTHON_ACTIONS):
            raise TaskError(f"cannot run {action!r} on a worker")
        if call.gpus != self._gpus:  # a task sees only the GPUs it was given, none if none
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(call.gpus)
            self._gpus = call.gpus
        if not action.env:  # no context manager on the hot path of tasks without one
            return _call(action, self._target(action, call.group), call)
        with task_environment(action.env):  # its module, first imported here, sees it too
            return _call(action, self._target(action, call.group), call)

    def _target(self, action: PythonCall | MethodCall, group: int) -> Any:
        """The function or class to call, imported once per group on this worker."""
        target = self._targets.get(group)
        if target is None:
            target = resolve_target(action.target if isinstance(action, PythonCall) else action.cls)
            self._targets[group] = target
        return target

    def _shell(self, action: ShellCommand, call: Call, ranks: int
               ) -> tuple[Any, dict[str, int] | None]:
        folder = self.task_dir(call.name)
        outputs = {k: str(folder / v) for k, v in action.outputs.items()}
        argv = render_command(action.command, {**call.kwargs, **outputs})
        if ranks > 1:
            argv = self.launcher(ranks) + argv
        env = dict(os.environ, HPCFLOW_TASK=call.name, HPCFLOW_TASK_DIR=str(folder),
                   HPCFLOW_PYTHON=sys.executable, HPCFLOW_SPEC_DIR=self.spec_dir,
                   CUDA_VISIBLE_DEVICES=",".join(call.gpus),
                   PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
        env.update(expanded(action.env, env))
        out_path, err_path = folder / "stdout.log", folder / "stderr.log"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            code, memory = _run_tree(argv, folder, env, out, err, call.timeout)
        if code != 0:
            raise TaskError(f"command exited with status {code}; see {err_path}", memory)
        missing = [k for k, p in outputs.items() if not os.path.exists(p)]
        if missing:
            raise TaskError(f"declared output(s) {', '.join(missing)} not written "
                            f"(expected {', '.join(outputs[k] for k in missing)})", memory)
        if action.stdout:
            return out_path.read_text(), memory
        return outputs, memory

    def _failure(self, call: Call, start: float, exc: Exception,
                 memory: dict[str, int] | None = None) -> Outcome:
        text = (str(exc) if isinstance(exc, TaskError)
                else "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        log: str | None = None
        try:
            folder = self.task_dir(call.name)
            (folder / "error.log").write_text(text)
            shell_err = folder / "stderr.log"
            log = str(shell_err if shell_err.exists() else folder / "error.log")
        except OSError:
            pass
        return Outcome(call.id, call.attempt, False, None, start, time.time(), self.worker,
                       error=text.strip().splitlines()[-1] if text.strip() else repr(exc), log=log,
                       memory=memory)


_PYTHON_ACTIONS = (PythonCall, MethodCall)


def _call(action: PythonCall | MethodCall, target: Any, call: Call) -> Any:
    if isinstance(action, MethodCall):
        instance = target(*action.init_args, **action.init_kwargs)
        return getattr(instance, action.method)(*call.args, **call.kwargs)
    return target(*call.args, **call.kwargs)


def expanded(variables: Environment, base: Mapping[str, str]) -> dict[str, str]:
    """A task's ``env`` with ``$NAME`` / ``${NAME}`` replaced from ``base``; an unset name
    is empty, as in the shell (``PATH: /opt/tool/bin:$PATH``)."""
    def value(match: re.Match[str]) -> str:
        return base.get(match.group(1) or match.group(2), "")

    return {name: _VARIABLE.sub(value, text) for name, text in variables}


_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


@contextlib.contextmanager
def task_environment(variables: Environment) -> Iterator[None]:
    """``os.environ`` with a Python task's ``env`` while it runs, as it was afterwards (the
    worker runs one task at a time)."""
    saved = {name: os.environ.get(name) for name, _ in variables}
    os.environ.update(expanded(variables, os.environ))
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def run_forked(fn: Callable[[], Any], timeout: float | None, name: str
               ) -> tuple[Any, dict[str, int] | None]:
    """``fn()`` in a forked child (its own process group), its result pickled back through a
    pipe, with the child's peak RSS (``os.wait4``). On time-out the child's whole tree is
    ended; a child that dies (a segfault, an abort, the OOM killer) fails this task alone,
    by name, and the worker goes on."""
    meter = process_meter()
    base = meter.rss() if meter is not None else None
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(rfd)
        _child(fn, wfd)
    os.close(wfd)
    try:
        data = _read_all(rfd, None if timeout is None else time.monotonic() + timeout)
    except TimeoutError:
        live = kill_tree(pid)
        memory = forked_memory(wait_child(pid)[1], base, live)
        raise TaskError(f"timed out after {timeout:g} s; its processes were ended", memory) from None
    except BaseException:
        kill_tree(pid)
        wait_child(pid)
        raise
    finally:
        os.close(rfd)
    status, maxrss = wait_child(pid)
    if not data:
        raise TaskError(f"task {name} crashed: its process {_death(status)}",
                        forked_memory(maxrss, base))
    ok, payload, child_base = pickle.loads(data)
    memory = forked_memory(maxrss, base if child_base is None else child_base)
    if not ok:
        raise TaskError(payload, memory)
    return payload, memory


def _child(fn: Callable[[], Any], wfd: int) -> None:
    """The forked child: sends ``(ok, result or traceback, its RSS before fn ran)``."""
    code = 0
    try:
        os.setpgid(0, 0)
        meter = process_meter()
        base = meter.rss() if meter is not None else None
        try:
            data = pickle.dumps((True, fn(), base), protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException as exc:
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            data = pickle.dumps((False, text, base))
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        view = memoryview(data)
        while view:
            view = view[os.write(wfd, view):]
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _read_all(fd: int, deadline: float | None) -> bytes:
    """Everything written to ``fd`` until EOF; TimeoutError past ``deadline``."""
    chunks: list[bytes] = []
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise TimeoutError
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _death(status: int) -> str:
    return describe_exit(os.waitstatus_to_exitcode(status))


def describe_exit(code: int | None) -> str:
    """How a process ended, from its exit code (negative: the signal that ended it)."""
    if code is None:
        return "ended, its exit code unknown"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"died of {name}"
    return f"exited with status {code} without a result"


def default_launcher(ranks: int) -> list[str]:
    """Launch prefix for a multi-rank shell task outside Slurm."""
    return ["mpiexec", "-n", str(ranks)]


def _run_tree(argv: list[str], cwd: Path, env: dict[str, str], out: Any, err: Any,
              timeout: float | None) -> tuple[int, dict[str, int] | None]:
    """Run ``argv`` in its own session; on time-out end its whole process tree. Returns
    the exit code and the tree's peak RSS (reaped with ``os.wait4``: Popen gives no
    rusage, so the returncode is set here, as Popen.wait would)."""
    meter = process_meter()
    floor = meter.floor() if meter is not None else None
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        status, maxrss = wait_child(proc.pid, timeout)
    except TimeoutError:
        live = kill_tree(proc.pid)
        status, maxrss = wait_child(proc.pid)
        proc.returncode = os.waitstatus_to_exitcode(status)
        raise TaskError(f"timed out after {timeout:g} s; its processes were ended",
                        shell_memory(maxrss, floor, live)) from None
    except BaseException:
        kill_tree(proc.pid)
        proc.wait()
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, shell_memory(maxrss, floor)


def end_children() -> None:
    """End every process this one started and that still runs, with its tree. A worker
    calls it when a stop signal interrupted its task: a program whose start the signal
    cut into (inside ``Popen``, before ``_run_tree`` could note it) is ended too."""
    import psutil

    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process().children():
            kill_tree(child.pid)


def kill_tree(pid: int) -> int:
    """SIGKILL ``pid``, its process group if it leads one, and every descendant (shell
    programs that started sessions of their own included). Returns the largest peak RSS
    (VmHWM) among them, read just before the kill (0 where unknown)."""
    import psutil

    try:
        root = psutil.Process(pid)
        children = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        children = []
    peak = max((process_hwm(c.pid) for c in children), default=0)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    return peak
