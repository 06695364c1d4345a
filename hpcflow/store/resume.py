"""Resume: which tasks of an earlier run can be reused, which must run again, and why.

A task's *fingerprint* is a hash of what decides its result:

- the *definition hash* of its group: the action (a Python callable's source, else its
  bytecode and constants; a ``"module:qualname"`` string with the source of that
  definition in the module's file, parsed not imported, else the whole file's content;
  a shell command template with its declared outputs; a method's class
  source with its constructor arguments) and the group's constant arguments, with
  references to other tasks written as (group name, key, mode). Resources, retries and
  time-outs are not part of it: asking for more memory does not change a result;
- the member's concrete sweep values;
- the *content hash* of each predecessor's result (a pickled value; a shell task's
  declared output files by content; a result large enough to live in ``results/`` by
  its file's identity, so that a rerun of it always counts as a change).

Every DONE event carries ``{"fp": fingerprint, "h": content hash}`` in its extra dict;
the RUN event before it names each group's definition hash. On resume, a task whose last
journalled state is DONE is reused when its recomputed fingerprint matches (its
definition and all its inputs unchanged). A task whose definition is unchanged but an
input reruns stays a *candidate*: the core computes its fingerprint once the inputs are
there, and reuses it if the rerun produced equal content (see ``Core._reuse``; its
earlier DONE stays its journalled state).
"""

from __future__ import annotations

import ast
import bisect
import difflib
import hashlib
import importlib.util
import inspect
import json
import pickle
import sys
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcflow.errors import SpecError
from hpcflow.model.task import MethodCall, PythonCall, ShellCommand
from hpcflow.plan.plan import Binder, Group, GroupRef, Plan, map_group_refs
from hpcflow.store.journal import Event, Journal, read_journal
from hpcflow.store.rundir import RunDir, load_result
from hpcflow.store.trust import UntrustedResult, sealed_payload


def _digest(*parts: bytes) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def _bytes_of(value: Any) -> bytes:
    """Stable bytes for a constant: its pickle, or its repr where it cannot be pickled."""
    try:
        return pickle.dumps(value, protocol=4)
    except Exception:  # any unpicklable constant falls back to its repr
        return repr(value).encode()


def _file_hash(path: str | None) -> bytes:
    if not path:
        return b""
    try:
        return hashlib.blake2b(Path(path).read_bytes(), digest_size=16).digest()
    except OSError:
        return b""


def _module_file(name: str, python_path: Sequence[str]) -> str | None:
    """The file of module ``name`` (or of ``/abs/file.py``), found without importing it."""
    if name.endswith(".py"):
        return name
    saved = list(sys.path)
    sys.path[:0] = [p for p in python_path if p not in sys.path]
    try:
        spec = importlib.util.find_spec(name)
        return spec.origin if spec is not None else None
    except (ImportError, ValueError):
        return None
    finally:
        sys.path[:] = saved


def _definition_source(path: str | None, qualname: str) -> bytes | None:
    """Source of ``qualname``'s definition in ``path`` (parsed, not imported), as
    ``inspect.getsource`` gives it for a callable; None where it cannot be found."""
    if not path or not path.endswith(".py"):
        return None
    try:
        text = Path(path).read_text()
        body: list[ast.stmt] = ast.parse(text).body
    except (OSError, SyntaxError, ValueError):
        return None
    node: ast.stmt | None = None
    for part in qualname.split("."):
        node = next((n for n in body if isinstance(n, _DEFS) and n.name == part), None)
        if node is None:
            return None
        body = node.body  # type: ignore[attr-defined]
    segment = ast.get_source_segment(text, node) if node is not None else None
    return segment.encode() if segment else None


_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _object_hash(obj: Any, python_path: Sequence[str]) -> bytes:
    """A callable or class: its source, else its code; a ``module:qualname`` string: the
    string and its module file's content."""
    if isinstance(obj, str):
        module, _, qualname = obj.partition(":")
        path = _module_file(module, python_path)
        return obj.encode() + (_definition_source(path, qualname) or _file_hash(path))
    try:
        return inspect.getsource(obj).encode()
    except (OSError, TypeError):
        code = getattr(obj, "__code__", None)
        if code is not None:
            return code.co_code + _bytes_of(repr(code.co_consts))
        return repr(obj).encode()


def action_hash(action: Any, python_path: Sequence[str] = ()) -> bytes:
    """What the action runs, and its ``env`` where it has one (an empty one adds nothing,
    so fingerprints from before tasks had environments stay valid)."""
    env = _bytes_of(action.env) if getattr(action, "env", ()) else b""
    if isinstance(action, PythonCall):
        return b"py" + _object_hash(action.target, python_path) + env
    if isinstance(action, MethodCall):
        return (b"method" + _object_hash(action.cls, python_path) + action.method.encode()
                + _bytes_of((action.init_args, dict(action.init_kwargs))) + env)
    if isinstance(action, ShellCommand):
        return b"shell" + _bytes_of((action.command, dict(action.outputs), action.stdout)) + env
    return repr(action).encode()


def definition_hash(group: Group, groups: Sequence[Group], python_path: Sequence[str] = ()) -> str:
    """The group's action and constant arguments (see the module docstring)."""
    def ref(r: GroupRef) -> tuple[Any, ...]:
        return ("ref", groups[r.group].name, r.key, r.mode)

    constants = (map_group_refs(group.args, ref), map_group_refs(group.kwargs, ref),
                 sorted(k for k in group.sweep_params), group.sweep_mode)
    return _digest(action_hash(group.task.action, python_path), _bytes_of(constants))


class Fingerprinter:
    """Fingerprints of a plan's tasks, from the content hashes of their predecessors.
    Kept to about a microsecond a task: the coordinator calls it per dispatch. The
    group's :class:`~hpcflow.plan.plan.Binder` gives a member's sweep values (the core
    binds arguments with the same binders)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.defs = [definition_hash(g, plan.groups, plan.python_path) for g in plan.groups]
        self.binders = [Binder(g, plan.groups) for g in plan.groups]
        self._prefix = [definition_prefix(d) for d in self.defs]
        self._valued = [b.swept_values for b in self.binders]
        self._starts = [g.start for g in plan.groups]
        self._group_of = plan.group_of.tolist()
        self._pred_ptr, self._pred = plan.pred_ptr.tolist(), plan.pred.tolist()

    def definition(self, i: int) -> str:
        return self.defs[self._group_of[i]]

    def of(self, i: int, hashes: Mapping[int, str], values: tuple[Any, ...] | None = None) -> str:
        """``H(definition | predecessors' content hashes | member's sweep values)``;
        ``values`` when the caller has them already (``Binder.values_in``)."""
        g = self._group_of[i]
        lo, hi = self._pred_ptr[i], self._pred_ptr[i + 1]
        inputs = [hashes.get(p, "?") for p in self._pred[lo:hi]] if hi > lo else ()
        if self._valued[g] and values is None:
            values = self.binders[g].values(i - self._starts[g])
        return fingerprint(self._prefix[g], inputs, values if self._valued[g] else None)


def definition_prefix(definition: str) -> bytes:
    """The first part of every fingerprint of a group with this definition hash."""
    return f"{definition}|".encode()


def fingerprint(prefix: bytes, inputs: Sequence[str], values: tuple[Any, ...] | None) -> str:
    """A task's fingerprint from its group's :func:`definition_prefix`, its inputs'
    content hashes (in predecessor order) and its sweep values (None: not swept over
    values). The one formula, for the coordinator and for workers that expand runs."""
    key = prefix
    if inputs:
        key += "|".join(inputs).encode()
    if values is not None:
        key += b"\0" + _bytes_of(values)
    return hashlib.blake2b(key, digest_size=16).hexdigest()


def content_hash(action: Any, stored: Sequence[Any], value: Any) -> str:
    """What a result *is*, for the fingerprints of the tasks that read it. Workers take
    it where they persist the result (``engine/results.py``: a small result's by the
    pickle they sealed); the coordinator only when a backend did not."""
    if stored[0] == "inline" and not isinstance(action, ShellCommand):
        # the stored pickle, not ``value``: on Dask/Ray/Spark that is a handle to it
        return pickle_digest(sealed_payload(stored[1]))
    if stored[0] == "file":  # large: by the file's identity (a rerun always differs)
        try:
            st = Path(stored[1]).stat()
            return _digest(b"file", str(stored[1]).encode(), str(st.st_mtime_ns).encode())
        except OSError:
            return "missing"
    if isinstance(action, ShellCommand) and not action.stdout and isinstance(value, dict):
        return _digest(*(k.encode() + _file_hash(p) for k, p in sorted(value.items())))
    return _digest(_bytes_of(value))


def pickle_digest(data: bytes | memoryview, buffers: Sequence[pickle.PickleBuffer] = ()) -> str:
    """The hash of a protocol-5 pickle and its out-of-band buffers."""
    h = hashlib.blake2b(data, digest_size=16)
    for buffer in buffers:
        h.update(buffer.raw())
    return h.hexdigest()


@dataclass
class Prior:
    """A task's last journalled state in the earlier run, by name."""

    state: str  # done | failed | dispatched | skipped
    stored: tuple[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def read_prior(run: RunDir) -> dict[str, Prior]:
    """The last state of each task of the earlier run, keyed by task name (ids may shift
    when the workflow changed). A DISPATCH after a DONE (a rerun that died) wins.

    Each RUN event (a run or a resume) names its plan's groups and their definition
    hashes, so the events that follow it are read with that plan's names; a journal
    written before RUN events carried them is read with groups.json and the
    definition hash in each DONE."""
    names = TaskNames.from_file(run.path / "groups.json")
    prior: dict[str, Prior] = {}
    states = {Event.DISPATCH: "dispatched", Event.STOPPED: "dispatched", Event.FAIL: "failed",
              Event.SKIP: "skipped"}
    for event in read_journal(run.journal):
        kind = event[0]
        if kind == Event.RUN and isinstance(event[1], dict) and "groups" in event[1]:
            names = TaskNames(event[1]["groups"], event[1].get("defs"))
        elif kind == Event.FORCE:
            prior.update((name, Prior("forced")) for name in event[1])
        elif kind == Event.DONE:
            name, definition = names(event[1])
            extra = dict(event[7] or {})
            if definition is not None:
                extra.setdefault("d", definition)
            prior[name] = Prior("done", event[6], extra)
        elif kind in states:
            prior[names(event[1])[0]] = Prior(states[kind])
    return prior


class TaskNames:
    """Id -> (task name, definition hash or None) in one run segment's plan, from its
    groups as ``[name, start, size, swept]`` (bisect over the first ids)."""

    def __init__(self, groups: Sequence[Sequence[Any]], defs: Sequence[str] | None = None) -> None:
        spans = [(int(g[1]), int(g[2]), str(g[0]), bool(g[3]), defs[k] if defs else None)
                 for k, g in enumerate(groups) if int(g[2]) > 0]
        spans.sort(key=lambda span: span[0])
        self._spans = spans
        self._starts = [span[0] for span in spans]

    @classmethod
    def from_file(cls, path: Path) -> TaskNames:
        try:
            groups = json.loads(path.read_text())
        except (OSError, ValueError):
            groups = []
        return cls([(g["name"], g["start"], g["size"], g.get("swept", g["size"] != 1))
                    for g in groups])

    def __call__(self, i: int) -> tuple[str, str | None]:
        k = bisect.bisect_right(self._starts, i) - 1
        if k < 0 or i >= self._starts[k] + self._spans[k][1]:
            return f"#{i}", None
        start, _, base, swept, definition = self._spans[k]
        return (f"{base}[{i - start}]" if swept else base), definition


@dataclass
class Decision:
    """What a resume does: ``reuse`` (id -> stored result), their content ``hashes``,
    ``reasons`` (id -> why it runs again) and ``candidates`` (id -> prior DONE, reused
    at run time if its inputs rerun to equal content)."""

    reuse: dict[int, tuple[str, Any]] = field(default_factory=dict)
    hashes: dict[int, str] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)
    candidates: dict[int, Prior] = field(default_factory=dict)


def forced_ids(plan: Plan, names: Sequence[str]) -> set[int]:
    """The ids that ``--force`` names: a task (every instance of a sweep), one instance
    (``sim[3]``), or a nested workflow's id (every task in it), and everything downstream
    of them. An unknown name is a :class:`SpecError` that names it and what is there,
    before anything runs."""
    chosen: set[int] = set()
    for name in names:
        ids = _named_ids(plan.groups, name)
        if not ids:
            raise SpecError(_no_such_task(plan, name), field="--force")
        chosen.update(ids)
    stack, succ_ptr, succ = list(chosen), plan.succ_ptr.tolist(), plan.succ.tolist()
    while stack:
        i = stack.pop()
        for s in succ[succ_ptr[i]:succ_ptr[i + 1]]:
            if s not in chosen:
                chosen.add(s)
                stack.append(s)
    return chosen


def record_force(run: RunDir, plan: Plan, forced: Collection[int]) -> None:
    """Journal that these tasks are to run again (``--force``), so that every later resume
    knows it too, until each has run. Written by whoever holds the run folder's lock: the
    coordinator, or ``submit --resume`` before its job starts."""
    if forced:
        with Journal(run.journal) as journal:
            journal.record(Event.FORCE, sorted(plan.name(i) for i in forced), time.time())


def _named_ids(groups: Sequence[Group], name: str) -> list[int]:
    base, bracket, rest = name.partition("[")
    if bracket:
        member = int(rest[:-1]) if rest[:-1].isdigit() and rest.endswith("]") else -1
        return [g.start + member for g in groups
                if g.name == base and g.swept and 0 <= member < g.size]
    inside = base.rstrip("/") + "/"
    return [i for g in groups if g.name == base or g.name.startswith(inside)
            for i in range(g.start, g.start + g.size)]


def _no_such_task(plan: Plan, name: str) -> str:
    base = name.partition("[")[0]
    same = [g for g in plan.groups if g.name == base]
    if same and same[0].swept:
        last = same[0].size - 1
        return f"no task '{name}': '{base}' has {last + 1} instances, {base}[0] to {base}[{last}]"
    if same:
        return f"no task '{name}': '{base}' is not swept: name it '{base}'"
    known = [g.name for g in plan.groups]
    close = difflib.get_close_matches(base, known, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    more = " ..." if len(known) > 12 else ""
    return (f"no task '{name}' in workflow '{plan.workflow}'{hint}; its tasks: "
            f"{', '.join(known[:12])}{more}")


def decide(plan: Plan, prior: Mapping[str, Prior], fp: Fingerprinter,
           broken: frozenset[int] = frozenset(), forced: frozenset[int] = frozenset()) -> Decision:
    """Per task in topological order: reuse it, or say why it runs again. A ``forced``
    task (:func:`forced_ids`: with what is downstream) runs again, never a candidate."""
    out = Decision()
    pred_ptr, pred = plan.pred_ptr.tolist(), plan.pred.tolist()
    for i in topological(plan):
        old = prior.get(plan.name(i))
        rerun = [p for p in pred[pred_ptr[i]:pred_ptr[i + 1]] if p in out.reasons]
        if i in forced:
            reason: str | None = "forced (--force)"
        else:
            reason = _reason(plan, i, old, rerun, fp, out.hashes, i in broken)
        if reason is None:
            assert old is not None and old.stored is not None
            out.reuse[i] = old.stored
            out.hashes[i] = old.extra["h"]
        else:
            out.reasons[i] = reason
            if rerun and i not in forced and old is not None and old.state == "done" \
                    and old.extra.get("d") == fp.definition(i):
                out.candidates[i] = old
    return out


def _reason(plan: Plan, i: int, old: Prior | None, rerun: list[int], fp: Fingerprinter,
            hashes: Mapping[int, str], broken: bool) -> str | None:
    if old is not None and old.state == "forced":
        return "forced (--force)"
    if old is None or old.state in ("dispatched", "skipped"):
        return "never finished"
    if old.state == "failed":
        return "failed"
    if "fp" not in old.extra or "h" not in old.extra:
        return "no fingerprint recorded"
    if old.extra.get("d") != fp.definition(i):
        return "definition changed"
    if rerun:
        return f"an input changed (upstream {plan.name(rerun[0])} runs again)"
    if old.stored and old.stored[0] == "file" and not Path(old.stored[1]).is_file():
        return "its result file is missing"
    if broken:
        return "its stored result is unreadable or not sealed with a trusted key"
    if fp.of(i, hashes) != old.extra["fp"]:
        return "definition changed (its parameters or inputs)"
    return None


def topological(plan: Plan) -> list[int]:
    """Task ids in an order where every predecessor comes first (Kahn)."""
    pred_ptr, succ_ptr, succ = plan.pred_ptr.tolist(), plan.succ_ptr.tolist(), plan.succ.tolist()
    waiting = [pred_ptr[i + 1] - pred_ptr[i] for i in range(plan.n)]
    order = [i for i in range(plan.n) if waiting[i] == 0]
    for i in order:  # appending while iterating visits each id once
        for k in range(succ_ptr[i], succ_ptr[i + 1]):
            s = succ[k]
            waiting[s] -= 1
            if waiting[s] == 0:
                order.append(s)
    return order


def load_needed(plan: Plan, decision: Decision, keep: set[int]) -> tuple[dict[int, Any], set[int]]:
    """Values of the reused tasks that a task to run, or an output, reads (the others stay
    on disk: None); and the ids whose stored result could not be loaded."""
    values: dict[int, Any] = {}
    broken: set[int] = set()
    succ_ptr, succ = plan.succ_ptr.tolist(), plan.succ.tolist()
    for i, stored in decision.reuse.items():
        needed = i in keep or any(succ[k] not in decision.reuse
                                  for k in range(succ_ptr[i], succ_ptr[i + 1]))
        if not needed:
            values[i] = None
            continue
        try:
            values[i] = load_result(stored, f"the journal's result of {plan.name(i)}")
        except UntrustedResult as exc:
            print(f"hpcflow: warning: {exc}; {plan.name(i)} runs again", file=sys.stderr)
            broken.add(i)
        except Exception:  # any unreadable result means: run it again
            broken.add(i)
    return values, broken


def plan_resume(plan: Plan, run: RunDir, keep: set[int],
                forced: frozenset[int] = frozenset()) -> tuple[Decision, dict[int, Any]]:
    """Decide, then load what is needed; a result that fails to load reruns its task.
    A run folder that others own or could have written is refused first."""
    run.check_private()
    prior = read_prior(run)
    fp = Fingerprinter(plan)
    broken: set[int] = set()
    while True:
        decision = decide(plan, prior, fp, frozenset(broken), forced)
        values, bad = load_needed(plan, decision, keep)
        if not bad:
            return decision, values
        broken |= bad


def describe(plan: Plan, decision: Decision) -> str:
    """The dry-run text: what runs again and why, one line per task (grouped when many)."""
    lines = [f"{len(decision.reuse)} task(s) reused, {len(decision.reasons)} to run again"]
    for i in sorted(decision.reasons):
        maybe = " (reused if that input's result comes out the same)" \
            if i in decision.candidates else ""
        lines.append(f"  {plan.name(i)}: {decision.reasons[i]}{maybe}")
    return "\n".join(lines) + "\n"
