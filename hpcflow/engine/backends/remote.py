"""What the Dask, Ray and Spark backends share: result handles and a task's round trip.

**Handles.** A cluster framework keeps a result where it was made (a Dask future, a Ray
``ObjectRef``, or, for Spark, the result's file in the run folder), and the core must
not pull it back just to bind it into the next call. So the value a backend reports in
an :class:`~hpcflow.engine.execute.Outcome` is an opaque :class:`Handle`; the core
stores it in ``results`` and ``bind_args`` puts it into dependents' arguments (an
input that reads ``result["key"]`` becomes ``handle["key"]``: a handle with a longer
path). ``submit`` then swaps each handle for a :class:`Hole` (:func:`swap`) and gives
the framework the references themselves, as task arguments it resolves *on the
worker*; there :func:`fill` puts the values back before the shared Executor runs the
call. The workflow's outputs are the exception: the core hands them to the caller, so
they are reported as values.

**Durability.** The worker persists a result before it reports (:meth:`Site.run_calls`, with
``engine/results.py``, as the MPI workers do): a small one travels inline in the Outcome's
``stored`` field, a large one is written to ``results/<id>.pkl`` aside and renamed, and
``stored`` names the file. The coordinator only journals ``stored``, so a result counts
once the journal has it, whatever the framework does with its copy.

**Set-up.** The plan's actions (functions, classes, shell commands) travel once per run
and worker process, not with every task: :func:`pack_setup` makes the blob (user code
that is not an installed package is pickled by value, since a remote worker cannot
import a workflow file or a test module), and :func:`site_for` builds one :class:`Site`
per process and run from it: the shared :class:`~hpcflow.engine.execute.Executor`, the
run folder, and the specs with which it expands *runs* (``engine/runs.py``: members of
a sweep over values that the core sends as one call; the framework then runs one task
for them all, which returns the members' outcomes and a list of their values).
"""

from __future__ import annotations

import importlib
import pickle
import sys
import sysconfig
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from queue import Empty, SimpleQueue
from types import ModuleType
from typing import Any

import cloudpickle

from hpcflow.engine.execute import Call, Executor, Outcome
from hpcflow.engine.results import persist
from hpcflow.engine.runs import RunSpec, expand, run_specs
from hpcflow.errors import EngineError
from hpcflow.model.task import MethodCall, PythonCall, ShellCommand
from hpcflow.plan.plan import Plan
from hpcflow.store.rundir import RunDir, load_result

_new = tuple.__new__  # a NamedTuple without its Python-level __new__
LINGER = 0.002
"""Seconds ``wait`` gathers further completions while the workers have queued work."""
KEEP_EXECUTORS = 4
"""Sites (one per run) a worker process keeps: a long-lived cluster serves many runs."""


class Handle:
    """A result that stays on the cluster: ``ref`` is the framework's reference to it,
    ``path`` the keys to pick from it (``handle["a"]`` is ``value["a"]``, later)."""

    __slots__ = ("path", "ref")

    def __init__(self, ref: Any, path: tuple[Any, ...] = ()) -> None:
        self.ref, self.path = ref, path

    def __getitem__(self, key: Any) -> Handle:
        return Handle(self.ref, (*self.path, key))

    def __repr__(self) -> str:
        return f"Handle({self.ref!r}{''.join(f'[{k!r}]' for k in self.path)})"

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("a result handle lives on the coordinator; it is never pickled")


class Hole:
    """Where a handle was in a call's arguments: the ``index``-th reference, then ``path``."""

    __slots__ = ("index", "path")

    def __init__(self, index: int, path: tuple[Any, ...]) -> None:
        self.index, self.path = index, path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Hole, (self.index, self.path))


def swap(call: Call, refs: list[Any], seen: dict[int, int]) -> Call:
    """``call`` with a :class:`Hole` for each handle; the references go to ``refs``,
    each once (``seen``: their indices there, by identity), so that the calls of one
    framework task share one list."""
    holes = 0

    def walk(value: Any) -> Any:
        nonlocal holes
        kind = type(value)
        if kind is Handle:
            holes += 1
            index = seen.get(id(value.ref))
            if index is None:
                index = seen[id(value.ref)] = len(refs)
                refs.append(value.ref)
            return Hole(index, value.path)
        if kind is list or kind is tuple:
            return kind(walk(v) for v in value)
        if kind is dict:
            return {k: walk(v) for k, v in value.items()}
        return value

    args, kwargs = walk(call.args), walk(call.kwargs)
    return call._replace(args=args, kwargs=kwargs) if holes else call


def fill(call: Call, values: Sequence[Any]) -> Call:
    """``call`` with each :class:`Hole` replaced by its value (on the worker)."""
    def walk(value: Any) -> Any:
        kind = type(value)
        if kind is Hole:
            picked = values[value.index]
            for key in value.path:
                picked = picked[key]
            return picked
        if kind is list or kind is tuple:
            return kind(walk(v) for v in value)
        if kind is dict:
            return {k: walk(v) for k, v in value.items()}
        return value

    return call._replace(args=walk(call.args), kwargs=walk(call.kwargs))


def pack_call(call: Call, *extra: Any) -> bytes:
    """One task's payload as bytes (the frameworks then ship it without walking it). The
    Call goes as a plain tuple (a NamedTuple pickles through Python-level code);
    cloudpickle only where plain pickle cannot (a lambda among the arguments)."""
    items = (tuple(call), *extra)
    try:
        return pickle.dumps(items, protocol=5)
    except (pickle.PicklingError, AttributeError, TypeError):
        return cloudpickle.dumps(items, protocol=5)


def unpack_call(payload: bytes) -> tuple[Any, ...]:
    """``(call, *extra)`` from :func:`pack_call`'s bytes."""
    items = pickle.loads(payload)
    return (Call(*items[0]), *items[1:])


# -- set-up: the actions, once per worker process and run -----------------------------
_SITES: OrderedDict[str, Site] = OrderedDict()


def pack_setup(plan: Plan, run_dir: str, runs: bool = False) -> bytes:
    """The run folder, the plan's python_path, its actions and (``runs``: the backend's
    workers expand runs) the closed groups' run specs, for :func:`site_for`."""
    actions = [g.task.action for g in plan.groups]
    specs = run_specs(plan) if runs else {}
    modules = _user_modules(actions)
    for module in modules:
        cloudpickle.register_pickle_by_value(module)
    try:
        blob = cloudpickle.dumps((actions, specs), protocol=5)
    finally:
        for module in modules:
            cloudpickle.unregister_pickle_by_value(module)
    return pickle.dumps((run_dir, list(plan.python_path), blob), protocol=5)


def site_for(token: str, setup: Callable[[], bytes]) -> Site:
    """This process's :class:`Site` for run ``token``, built from ``setup()`` the first time."""
    found = _SITES.get(token)
    if found is None:
        found = install(token, setup())
    return found


def install(token: str, setup: bytes) -> Site:
    run_dir, python_path, blob = pickle.loads(setup)
    for folder in reversed(python_path):  # before the actions load: they may import from it
        if folder not in sys.path:
            sys.path.insert(0, folder)
    actions, specs = cloudpickle.loads(blob)
    _SITES[token] = found = Site(Executor(actions, run_dir, python_path), RunDir(run_dir), specs)
    while len(_SITES) > KEEP_EXECUTORS:
        _SITES.popitem(last=False)
    return found


def forget(token: str) -> None:
    _SITES.pop(token, None)


def _user_modules(actions: Sequence[Any]) -> list[ModuleType]:
    """Modules of the actions' callables that a remote worker may not import: neither
    installed (site-packages, the standard library) nor hpcflow itself."""
    installed = {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib", "platstdlib")}
    found: dict[str, ModuleType] = {}
    for action in actions:
        target = (action.target if isinstance(action, PythonCall)
                  else action.cls if isinstance(action, MethodCall) else None)
        name = getattr(target, "__module__", None)
        if not isinstance(name, str) or name == "__main__" or name.split(".")[0] == "hpcflow":
            continue
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if module is not None and path and not any(path.startswith(p) for p in installed):
            found[name] = module
    return list(found.values())


# -- on the worker --------------------------------------------------------------------
class Site:
    """What a worker process keeps for one run: the shared Executor, the run folder, and
    the specs that expand runs (``engine/runs.py``)."""

    __slots__ = ("executor", "run", "runs")

    def __init__(self, executor: Executor, run: RunDir, runs: dict[int, RunSpec]) -> None:
        self.executor, self.run, self.runs = executor, run, runs

    def run_calls(self, calls: Sequence[Call], ranks: int, values: Sequence[Any] = ()
                  ) -> tuple[list[Outcome], list[Any]]:
        """Run ``calls`` one after the other (a run: each of its members) and persist
        each result; returns the outcomes to report (``value`` None, ``stored`` set) and
        the values to keep here, in the same order."""
        outcomes, kept = [], []
        for call in calls:
            members = expand(self.runs[call.group], call) if call.count > 1 else (call,)
            for member in members:
                outcome, value = self._one(member, ranks, values)
                outcomes.append(outcome)
                kept.append(value)
        return outcomes, kept

    def _one(self, call: Call, ranks: int, values: Sequence[Any]) -> tuple[Outcome, Any]:
        start = time.time()
        try:
            if values:
                call = fill(call, values)
        except Exception as exc:  # an input's file vanished, say: the task failed, not the worker
            error = f"could not fetch its inputs: {type(exc).__name__}: {exc}"
            return Outcome(call.id, call.attempt, False, None, start, time.time(), 0, error), None
        executor = self.executor
        outcome = executor.run(call, ranks)
        if not outcome.ok:
            return outcome, None
        outcome = persist(self.run, executor.actions[call.group], outcome, call.fp)
        if not outcome.ok:
            return outcome, None
        value = outcome.value
        return _new(Outcome, (*outcome[:3], None, *outcome[4:])), value


# -- on the coordinator ---------------------------------------------------------------
def read_by_handle(plan: Plan) -> list[bool]:
    """Per task, whether dependents will read its value through a handle: it has
    successors and is not a workflow output (whose value the core gets itself)."""
    outputs = output_ids(plan)
    ptr = plan.succ_ptr.tolist()
    return [ptr[i + 1] > ptr[i] and i not in outputs for i in range(plan.n)]


def output_ids(plan: Plan) -> set[int]:
    """Tasks whose values the core returns as the workflow's outputs."""
    ids: set[int] = set()
    for ref in plan.outputs.values():
        group = plan.groups[ref.group]
        ids.update(range(group.start, group.start + group.size))
    return ids


def settle(outcome: Outcome, ref: Any, worker: int, outputs: set[int],
           path: tuple[Any, ...] = ()) -> Outcome:
    """The outcome the core gets, with the slot it was accounted to: as its value a
    :class:`Handle` on ``ref`` (``path`` picks a run member's value from the run's list),
    the value itself for a workflow output, else (``ref`` None: no framework copy) the
    inline value (unsealed), or None for a large result no task reads."""
    if not outcome.ok:
        value = None
    elif outcome.id in outputs:
        value = load_result(outcome.stored)
    elif ref is not None:
        value = Handle(ref, path)
    else:
        stored = outcome.stored
        value = load_result(stored) if stored[0] == "inline" else None
    return _new(Outcome, (*outcome[:3], value, outcome[4], outcome[5], worker, *outcome[7:]))


def lost(call_id: int, attempt: int, worker: int, engine: str, exc: BaseException) -> Outcome:
    """The outcome of a task the framework itself lost (a worker died, a job failed)."""
    now = time.time()
    text = str(exc).strip().splitlines()
    error = f"{engine}: {type(exc).__name__}: {text[-1] if text else ''}".rstrip(": ")
    return Outcome(call_id, attempt, False, None, now, now, worker, error)


def require(engine: str, *packages: str) -> list[ModuleType]:
    """The engine's packages, or one line saying which extra installs them."""
    try:
        return [importlib.import_module(p) for p in packages]
    except ImportError as exc:
        missing = exc.name or packages[0]
        raise EngineError(f"the {engine} engine needs the Python package '{missing}', which "
                          f"is not installed: pip install 'hpcflow-mpi[{engine}]'") from None


def no_python_ranks(plan: Plan, engine: str) -> None:
    """A Python task with ``ranks > 1`` needs a communicator: only the MPI engine has one."""
    for group in plan.groups:
        ranks = group.task.resources.ranks
        if ranks > 1 and not isinstance(group.task.action, ShellCommand):
            raise EngineError(f"task '{group.name}' is a Python task with {ranks} ranks: run "
                              f"it with the MPI engine (--engine mpi), not {engine}, which "
                              "gives it a communicator")


class Needs:
    """Each task's cores, GPUs, memory (bytes) and ranks, as lists of plain ints."""

    __slots__ = ("cores", "gpus", "memory", "ranks")

    def __init__(self, plan: Plan) -> None:
        self.cores, self.gpus = plan.cores.tolist(), plan.gpus.tolist()
        self.memory, self.ranks = plan.memory.tolist(), plan.ranks.tolist()

    def __call__(self, i: int) -> tuple[int, int, int, int]:
        return self.cores[i], self.gpus[i], self.memory[i], self.ranks[i]


def take(done: SimpleQueue[Any], timeout: float | None, linger: float = 0.0) -> list[Any]:
    """What ``done`` holds, waiting up to ``timeout`` seconds (None: for ever) for the
    first item, then up to ``linger`` seconds more for others. Waits in short steps so
    that Ctrl-C is seen at once."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        step = 0.5 if deadline is None else min(0.5, max(0.0, deadline - time.monotonic()))
        try:
            items = [done.get(timeout=step) if step > 0 else done.get_nowait()]
            break
        except Empty:
            if deadline is not None and time.monotonic() >= deadline:
                return []
    until = time.monotonic() + linger
    while True:
        try:
            left = until - time.monotonic()
            items.append(done.get(timeout=left) if left > 0 else done.get_nowait())
        except Empty:
            return items


def linger(inflight: int, slots: int) -> float:
    """How long ``wait`` may gather completions after the first: LINGER while the
    workers still have queued tasks (a short pause costs them nothing, and the core then
    handles completions, and submits, in batches), else 0 (a chain waits for no one)."""
    return LINGER if inflight > 2 * slots else 0.0
