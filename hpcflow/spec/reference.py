"""Generate ``docs/yaml-reference.md`` from the schema: ``python -m hpcflow.spec.reference``.

The reference is never written by hand: the key tables come from the pydantic models'
JSON schema (types, bounds) and fields (descriptions, defaults), the prose from the
docstrings of :mod:`hpcflow.spec.schema` and :mod:`hpcflow.spec.refs`, the limits from
the constants that enforce them. A test compares the committed file with
:func:`render`, so the document cannot drift from the code; the example in it is
loaded by a test too.
"""

from __future__ import annotations

import inspect
import re
import sys
from typing import Any

from pydantic import BaseModel

from hpcflow.model.resources import LIMITS, format_memory
from hpcflow.plan.flatten import MAX_TASKS
from hpcflow.spec import _yaml, loader, refs, schema, values

EXAMPLE = """\
name: sweep-demo
description: Simulate over a grid, fit a model to all runs, plot it, summarise.
inputs: {n: 100}                # defaults; null would make an input required
python_path: [lib]              # mymod.py lives in lib/ next to this file
defaults:
  resources: {cores: 1, memory: 500M}
  retries: 0
  timeout: 1h
tasks:
  - id: make
    python: mymod:make_data
    args: {n: "${inputs.n}"}
    resources: {cores: 1, gpus: 0, memory: 1G, time: "00:05:00", ranks: 1}
    retries: 2
    timeout: 10m
  - id: sim
    python: mymod:simulate
    args: {data: "${make}"}
    sweep:
      product: {alpha: [0.1, 0.2], seed: {range: [0, 10]}}
  - id: fit
    method: {class: mymod:Model, init: {order: 2}, call: fit}
    args: {x: "${sim[*]}"}
  - id: plot
    shell: "python plot.py {summary} --out {png}"
    outputs: {png: plot.png}
    args: {summary: "${fit}"}
    after: [make]
  - id: stats
    workflow: stats.yaml
    inputs: {data: "${sim[*]}"}
outputs: {best: "${fit}", figure: "${plot.png}"}
"""
"""The example of the reference (the test suite loads it)."""

_SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("Top level", schema.WorkflowSpec),
    ("Task", schema.TaskSpec),
    ("method", schema.MethodSpec),
    ("sweep", schema.SweepSpec),
    ("range", schema.RangeSpec),
    ("resources", schema.ResourcesSpec),
    ("defaults", schema.DefaultsSpec),
]
_ANCHORS = {model.__name__: title.lower().replace(" ", "-") for title, model in _SECTIONS}


def render() -> str:
    """The whole reference document, as Markdown."""
    parts = [
        "# YAML workflow reference\n",
        "<!-- Generated from hpcflow/spec/schema.py by `python -m hpcflow.spec.reference "
        "> docs/yaml-reference.md`; do not edit (tests/test_spec.py compares them). -->\n",
        _prose(schema.__doc__),
        "## Example\n",
        f"```yaml\n{EXAMPLE}```\n",
        "## References\n",
        _prose(refs.__doc__),
        "## Value types\n",
        _formats(),
        "## Limits\n",
        _limits(),
    ]
    defs = schema.WorkflowSpec.model_json_schema()["$defs"]
    for title, model in _SECTIONS:
        node = defs.get(model.__name__) or schema.WorkflowSpec.model_json_schema()
        parts.append(_section(title, model, node))
    return "\n".join(parts)


def _prose(docstring: str | None) -> str:
    """A module docstring without its title line and its implementation notes, as Markdown."""
    body = inspect.cleandoc(docstring or "").split("\n", 1)[-1]
    body = body.split("\nImplementation notes", 1)[0].strip()
    return _markdown(body) + "\n"


def _markdown(text: str) -> str:
    """reStructuredText literals and roles as Markdown code."""
    return re.sub(r":(?:mod|class|func):`([^`]+)`", r"`\1`", text.replace("``", "`"))


def _formats() -> str:
    rows = [f"| {word} | {meaning} |" for word, meaning in values.FORMATS.items()]
    return "\n".join(["| Type | Accepts |", "| --- | --- |", *rows]) + "\n"


def _limits() -> str:
    rows = [
        ("spec file size", f"{_yaml.MAX_FILE_BYTES // 2**20} MiB"),
        ("YAML nodes, all files of a load, aliases expanded", f"{_yaml.MAX_NODES:,}"),
        ("nesting of mappings and lists", str(_yaml.MAX_DEPTH)),
        ("chain of `workflow:` includes", str(loader.MAX_INCLUDE_DEPTH)),
        ("task instances after sweeps and nesting", f"{MAX_TASKS:,}"),
        ("`memory` of one task", format_memory(LIMITS["memory"])),
        ("`time` and `timeout` of one task", f"{LIMITS['time'] // 86400:,} days"),
    ]
    lines = ["| What | Limit |", "| --- | --- |"] + [f"| {what} | {limit} |" for what, limit in rows]
    return "\n".join(lines) + "\n"


def _section(title: str, model: type[BaseModel], node: dict[str, Any]) -> str:
    heading = f"## {title}" if title[0].isupper() else f"## `{title}`"
    lines = [heading, "", _markdown(inspect.cleandoc(model.__doc__ or "")), "",
             "| Key | Type | Default | Description |", "| --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        key = field.alias or name
        prop = node["properties"][key]
        default = "required" if field.is_required() else _default(field)
        text = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{key}` | {_type(prop)} | {default} | {text} |")
    return "\n".join(lines) + "\n"


def _default(field: Any) -> str:
    value = field.get_default(call_default_factory=True)
    return "" if value is None else f"`{value!r}`".replace("'", "")


def _type(node: dict[str, Any]) -> str:
    """A JSON schema type in words: ``integer ≥ 1``, ``list of string``, a section link."""
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        return f"[{name.removesuffix('Spec')}](#{_ANCHORS.get(name, name.lower())})"
    if "format" in node:
        return str(node["format"])
    for combine in ("anyOf", "oneOf"):
        if combine in node:
            choices = [_type(c) for c in node[combine] if c.get("type") != "null"]
            return _either(choices)
    kind = node.get("type")
    if kind == "array":
        items = _type(node["items"]) if node.get("items") else "any"
        prefix = "non-empty list" if node.get("minItems") else "list"
        return f"{prefix} of {items}"
    if kind == "object":
        patterns = list(node.get("patternProperties", {}).values())
        value = patterns[0] if patterns else node.get("additionalProperties", {})
        key = "name" if patterns else "string"
        return f"mapping of {key} to {_type(value) if value else 'any'}"
    if kind == "integer" and "minimum" in node:
        top = f" and ≤ {node['maximum']:,}" if "maximum" in node else ""
        return f"integer ≥ {node['minimum']}{top}"
    return str(kind) if kind else "any"


def _either(choices: list[str]) -> str:
    if len(choices) <= 1:
        return choices[0] if choices else "null"
    return f"{', '.join(choices[:-1])} or {choices[-1]}"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
