"""Read YAML text into plain Python values, safely, within bounds, keeping line numbers.

Why not ``yaml.safe_load``: it forgets where each value was written, and although it
shares aliased objects, everything that then walks the result (validation, conversion,
copying) walks a "billion laughs" document's 10^9 nodes. Here the SafeLoader (subclassed only to stop early:
nesting deeper than :data:`MAX_DEPTH`, more distinct nodes than the budget) *composes*
the node graph, in which an alias is the same node object again, so the graph stays as
small as the text. Then:

1. :func:`_measure` walks the graph once, memoised per node, to count how many nodes
   the document would have with every alias expanded. Past the budget (shared by all
   files of one load) the document is refused before any expansion: milliseconds,
   however large the count. The same walk refuses recursive aliases.
2. :class:`_Converter` then builds dicts, lists and scalars (scalars through the
   SafeLoader's own constructors: ``!!python/...`` tags stay refused) and records the
   line of every mapping key and sequence item under its path, e.g.
   ``("tasks", 2, "resources")``, so that later errors can name a line.

Duplicate keys are errors (PyYAML silently keeps the last); keys must be strings;
``<<`` merge keys work as in YAML 1.1.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from hpcflow.errors import Location, SpecError
from hpcflow.model.task import TASK_ID_RE

MAX_FILE_BYTES = 16 * 1024 * 1024
"""A spec file larger than this is refused unread."""

MAX_NODES = 1_000_000
"""YAML nodes one load may hold with every alias expanded (all included files together)."""

MAX_DEPTH = 64
"""Deepest nesting of mappings and lists."""

_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"

Path = tuple[Hashable, ...]


def format_path(path: Path) -> str:
    """``("args", "x", 0)`` as ``args.x[0]``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def shown_id(task_id: str) -> str:
    """A task id fit to print: a malformed one (newline, control characters) escaped."""
    return task_id if TASK_ID_RE.fullmatch(task_id) else ascii(task_id)[1:-1]


@dataclass
class Budget:
    """How many more expanded YAML nodes the current load may read."""

    nodes_left: int = MAX_NODES


@dataclass
class Document:
    """One spec file's values, with the line of every key and item by its path."""

    file: str
    data: Any
    lines: dict[Path, int] = field(default_factory=dict)

    def line_of(self, path: Path) -> int | None:
        """Line of ``path``, or of its nearest ancestor that was written."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None

    def location(self, path: Path = ()) -> Location:
        return Location(self.file, self.line_of(path))


def read_text(raw: bytes, file: str) -> str:
    """Decode a spec file's bytes (UTF-8, with or without a byte-order mark)."""
    if len(raw) > MAX_FILE_BYTES:
        raise SpecError(f"the spec file is larger than {MAX_FILE_BYTES // 2**20} MiB",
                        location=Location(file))
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SpecError(f"the spec file is not UTF-8 text ({err.reason} at byte {err.start})",
                        location=Location(file)) from None


def parse_document(text: str, file: str, budget: Budget) -> Document:
    """Compose ``text`` with the SafeLoader and convert it within ``budget``."""
    root = _compose(text, file, budget.nodes_left)
    if root is None:
        raise SpecError("the spec file is empty", location=Location(file, 1))
    size = _measure(root, 0, {}, set(), file)
    if size > budget.nodes_left:
        raise SpecError(_too_many(size), location=_mark(file, root))
    budget.nodes_left -= size
    converter = _Converter(file)
    data = converter.convert(root, ())
    converter.lines[()] = root.start_mark.line + 1
    return Document(file, data, converter.lines)


def _too_many(size: int | None) -> str:
    if size is None:
        return f"the YAML holds more nodes than the {MAX_NODES:,} allowed for one workflow"
    return (f"the YAML expands to {size:,} nodes once aliases are expanded, more than the "
            f"{MAX_NODES:,} allowed for one workflow (an alias bomb?)")


def _compose(text: str, file: str, max_nodes: int) -> Node | None:
    loader = _BoundedSafeLoader(text, max_nodes)
    try:
        return loader.get_single_node()
    except yaml.MarkedYAMLError as err:
        raise _yaml_error(err, file) from None
    except yaml.YAMLError as err:
        raise SpecError(f"YAML error: {err}", location=Location(file)) from None
    except _Refused as refused:
        raise SpecError(refused.message, location=Location(file, refused.line)) from None
    finally:
        loader.dispose()


class _Refused(Exception):
    def __init__(self, message: str, line: int) -> None:
        self.message = message
        self.line = line


class _BoundedSafeLoader(yaml.SafeLoader):
    """The SafeLoader, stopping as soon as the document nests deeper than
    :data:`MAX_DEPTH` or holds more than ``max_nodes`` distinct nodes.

    PyYAML's composer recurses once per level, its scanner checks every open flow level
    per token, and a node costs microseconds: without these bounds a 16 MiB file could
    take minutes before any later check ran."""

    def __init__(self, stream: str, max_nodes: int) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes_left = max_nodes

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        self._nodes_left -= 1
        try:
            line = self.peek_event().start_mark.line + 1
            if self._depth > MAX_DEPTH + 1:
                raise _Refused(f"the YAML is nested more than {MAX_DEPTH} levels deep", line)
            if self._nodes_left < 0:
                raise _Refused(_too_many(None), line)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _yaml_error(err: yaml.MarkedYAMLError, file: str) -> SpecError:
    mark = err.problem_mark or err.context_mark
    line = mark.line + 1 if mark is not None else None
    parts = [p for p in (err.context, err.problem) if p]
    if err.context_mark is not None and err.problem_mark is not None and err.context:
        parts[0] += f" (line {err.context_mark.line + 1})"
    text = "; ".join(parts) or "invalid YAML"
    return SpecError(f"YAML syntax error: {text}", location=Location(file, line))


def _mark(file: str, node: Node) -> Location:
    return Location(file, node.start_mark.line + 1)


def _measure(node: Node, depth: int, memo: dict[int, int], active: set[int], file: str) -> int:
    """Expanded node count of ``node``'s subtree; each distinct node is visited once."""
    if isinstance(node, ScalarNode):
        return 1
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise SpecError("a YAML alias refers to a node that contains it (a recursive alias)",
                        location=_mark(file, node))
    if depth >= MAX_DEPTH:
        raise SpecError(f"the YAML is nested more than {MAX_DEPTH} levels deep",
                        location=_mark(file, node))
    active.add(key)
    children = node.value if isinstance(node, SequenceNode) else [n for pair in node.value for n in pair]
    total = 1 + sum(_measure(child, depth + 1, memo, active, file) for child in children)
    active.discard(key)
    memo[key] = total
    return total


class _Converter:
    """Nodes to plain values; records the line of each key and item by path."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[Path, int] = {}
        self._scalars = yaml.SafeLoader("")
        self._task_ids: dict[int, str] = {}  # index in the top-level `tasks` list -> its id

    def error(self, node: Node, path: Path, message: str) -> SpecError:
        """An error at ``node``, naming the task (when under ``tasks``) and the field."""
        task = None
        if len(path) >= 2 and path[0] == "tasks" and isinstance(path[1], int):
            task = self._task_ids.get(path[1])
        field = format_path(path[2:] if task is not None else path) or None
        return SpecError(message, task=task, field=field, location=_mark(self.file, node))

    def convert(self, node: Node, path: Path) -> Any:
        if isinstance(node, ScalarNode):
            return self._scalar(node, path)
        if isinstance(node, SequenceNode) and node.tag == _SEQ:
            if path == ("tasks",):
                self._task_ids = {i: tid for i, item in enumerate(node.value) if (tid := _id_of(item))}
            items = []
            for i, item in enumerate(node.value):
                self.lines[(*path, i)] = item.start_mark.line + 1
                items.append(self.convert(item, (*path, i)))
            return items
        if isinstance(node, MappingNode) and node.tag == _MAP:
            return self._mapping(node, path)
        raise self.error(node, path, f"unsupported YAML tag {node.tag!r}: a spec holds only plain "
                                     "mappings, lists and scalars")

    def _scalar(self, node: ScalarNode, path: Path) -> Any:
        try:
            return self._scalars.construct_object(node)
        except yaml.MarkedYAMLError as err:
            problem = err.problem or "cannot read this value"
            raise self.error(node, path, f"{problem} (a spec holds only plain YAML values)") from None

    def _mapping(self, node: MappingNode, path: Path) -> dict[str, Any]:
        explicit: dict[str, Any] = {}
        merged: dict[str, Any] = {}
        key_lines: dict[Path, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                for name, value in self._merge_sources(value_node, path).items():
                    merged.setdefault(name, value)
                continue
            key = self._scalar(key_node, path) if isinstance(key_node, ScalarNode) else None
            if not isinstance(key, str):
                raise self.error(key_node, path, _key_problem(key_node, key))
            if key in explicit:
                raise self.error(key_node, (*path, key), f"duplicate key '{key}'")
            key_lines[(*path, key)] = self.lines[(*path, key)] = key_node.start_mark.line + 1
            explicit[key] = self.convert(value_node, (*path, key))
        self.lines.update(key_lines)  # an explicit key's line wins over a merged one's
        if not merged:
            return explicit
        result = {k: v for k, v in merged.items() if k not in explicit}
        result.update(explicit)
        return result

    def _merge_sources(self, node: Node, path: Path) -> dict[str, Any]:
        sources = node.value if isinstance(node, SequenceNode) else [node]
        combined: dict[str, Any] = {}
        for source in sources:
            if not (isinstance(source, MappingNode) and source.tag == _MAP):
                raise self.error(source, path, "a '<<' merge key takes a mapping or a list of mappings")
            for name, value in self._mapping(source, path).items():
                combined.setdefault(name, value)
        return combined


def _id_of(node: Node) -> str | None:
    """The ``id`` written in a task's mapping node, if it is a plain scalar."""
    if isinstance(node, MappingNode):
        for key, value in node.value:
            if isinstance(key, ScalarNode) and key.value == "id" and isinstance(value, ScalarNode):
                return shown_id(value.value)
    return None


def _key_problem(node: Node, key: Any) -> str:
    if isinstance(node, ScalarNode):
        return (f"the key {node.value!r} reads as {key!r}, not as a string: quote it "
                "(YAML reads yes/no/on/off as booleans)")
    return "a mapping key must be a plain string, not a list or mapping"
