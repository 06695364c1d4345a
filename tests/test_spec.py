"""The YAML spec loader: bad specs fail with file, line, task and field; good specs give
the same plan as the Python API; the reference document is generated from the schema."""

from __future__ import annotations

import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import hpcflow.model as hf
from hpcflow.errors import CycleError, SpecError
from hpcflow.model import REQUIRED, MethodCall, Param, PythonCall, Ref, ShellCommand, SubWorkflow
from hpcflow.plan import flatten
from hpcflow.plan.plan import Plan
from hpcflow.spec import load_plan, load_workflow, load_workflow_text
from hpcflow.spec import reference as spec_reference
from hpcflow.spec._yaml import MAX_FILE_BYTES

ROOT = Path(__file__).resolve().parents[1]

MYMOD = """\
def make_data(n):
    return list(range(n))

def simulate(data, alpha=0.0, seed=0):
    return alpha * seed

class Model:
    def __init__(self, order=1):
        self.order = order

    def fit(self, x):
        return sum(x)
"""

STATS = """\
name: stats
inputs: {data: null, scale: 2}
tasks:
  - id: mean
    python: mymod:simulate
    args: {data: "${inputs.data}", alpha: "${inputs.scale}"}
outputs: {mean: "${mean}"}
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "mymod.py").write_text(MYMOD)
    (tmp_path / "stats.yaml").write_text(STATS)
    return tmp_path


def spec(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


# --- bad specs -------------------------------------------------------------------------

@dataclass
class Bad:
    text: str
    fragment: str
    line: int | None
    task: str | None
    field: str | None
    files: dict[str, str] = field(default_factory=dict)
    file: str = "wf.yaml"
    plan: bool = False


T = "name: w\ntasks:\n  - id: a\n"  # a task 'a' whose keys follow from line 4
PY = "    python: mymod:make_data\n"

BAD = {
    "unknown top-level key": Bad("name: w\nfoo: 1\ntasks:\n  - id: a\n" + PY,
                                 "unknown key 'foo'", 2, None, "foo"),
    "typo in a task key": Bad(T + PY + "    resourcse: {cores: 1}\n",
                              "did you mean 'resources'?", 5, "a", "resourcse"),
    "two actions": Bad(T + PY + "    shell: ls\n", "exactly one thing", 5, "a", "shell"),
    "no action": Bad(T + "    args: {n: 1}\n", "needs one of 'python', 'method'", 3, "a", None),
    "bad memory": Bad(T + PY + "    resources: {memory: 4X}\n", "'4X'", 5, "a", "resources.memory"),
    "ambiguous time": Bad(T + PY + "    resources:\n      time: '30'\n", "ambiguous", 6, "a",
                          "resources.time"),
    "negative cores": Bad(T + PY + "    resources: {cores: -2}\n", "at least 1, got -2", 5, "a",
                          "resources.cores"),
    "cores as text": Bad(T + PY + "    resources: {cores: '4'}\n", "whole number", 5, "a",
                         "resources.cores"),
    "zero timeout": Bad(T + PY + "    timeout: 0s\n", "longer than zero", 5, "a", "timeout"),
    "duplicate id": Bad(T + PY + "  - id: a\n" + PY, "duplicate task id", 5, "a", "id"),
    "id with a space": Bad(T.replace("id: a", "id: 'a b'") + PY, "not a valid id", 3, "a b", "id"),
    "id with a newline": Bad(T.replace("id: a", 'id: "a\\nb"') + PY, "not a valid id", 3,
                             "a\\nb", "id"),
    "id with a semicolon": Bad(T.replace("id: a", "id: 'a;rm'") + PY, "not a valid id", 3,
                               "a;rm", "id"),
    "reserved id": Bad(T.replace("id: a", "id: inputs") + PY, "reserved", 3, "inputs", "id"),
    "bad workflow name": Bad("name: 'my flow'\ntasks:\n  - id: a\n" + PY, "not a valid id", 1,
                             None, "name"),
    "unknown reference": Bad(T + PY + "    args: {n: '${zz}'}\n", "unknown task 'zz'", 5, "a",
                             "args.n"),
    "unknown reference, nested": Bad(T + PY + "    args:\n      n: [1, {k: '${zz.x}'}]\n",
                                     "unknown task 'zz'", 6, "a", "args.n[1].k"),
    "unknown workflow input": Bad(T + PY + "    args: {n: '${inputs.q}'}\n",
                                  "unknown workflow input 'q'", 5, "a", "args.n"),
    "reference mixed with text": Bad(T + PY + "    args: {n: 'run-${b}'}\n",
                                     "a reference must be the whole value", 5, "a", "args.n"),
    "malformed reference": Bad(T + PY + "    args: {n: '${a[1]}'}\n", "not a valid reference",
                               5, "a", "args.n"),
    "reference in method init": Bad(
        T + "    method: {class: mymod:Model, init: ['${b}'], call: fit}\n",
        "not allowed here", 4, "a", "method.init[0]"),
    "unknown after": Bad(T + PY + "    after: [zz]\n", "unknown task 'zz'", 5, "a", "after"),
    "unknown output task": Bad(T + PY + "outputs: {x: '${zz}'}\n", "unknown task 'zz'", 5, None,
                               "outputs.x"),
    "cycle": Bad(T + PY + "    args: {n: '${b}'}\n  - id: b\n" + PY + "    args: {n: '${a}'}\n",
                 "dependency cycle: a -> b -> a", 3, "a", None),
    "include not found": Bad(T + "    workflow: nope.yaml\n", "'nope.yaml' not found", 4, "a",
                             "workflow"),
    "include cycle": Bad(T + "    workflow: b.yaml\n", "include cycle:", 4, "y", "workflow",
                         files={"b.yaml": "name: b\ntasks:\n  - id: y\n    workflow: wf.yaml\n"},
                         file="b.yaml"),
    "missing nested input": Bad(T + "    workflow: stats.yaml\n", "needs input(s) data", 4, "a",
                                "workflow"),
    "unknown nested input": Bad(T + "    workflow: stats.yaml\n    inputs: {data: 1, dat: 2}\n",
                                "has no input 'dat'", 5, "a", "inputs.dat"),
    "error inside an included file": Bad(T + "    workflow: sub.yaml\n", "unknown key 'pyton'", 5,
                                         "s", "pyton", file="sub.yaml",
                                         files={"sub.yaml": "name: sub\ntasks:\n  - id: s\n"
                                                            "    python: mymod:make_data\n"
                                                            "    pyton: x\n"}),
    "resources on a workflow task": Bad(T + "    workflow: stats.yaml\n    inputs: {data: 1}\n"
                                        "    retries: 2\n", "takes no 'retries'", 6, "a", "retries"),
    "sweep with product and zip": Bad(T + PY + "    sweep:\n      product: {n: [1]}\n"
                                      "      zip: {n: [1]}\n", "exactly one of 'product' or 'zip'",
                                      7, "a", "sweep.zip"),
    "empty sweep list": Bad(T + PY + "    sweep:\n      product:\n        n: []\n",
                            "must not be empty", 7, "a", "sweep.product.n"),
    "zip of unequal lengths": Bad(T + "    python: mymod:simulate\n    sweep:\n"
                                  "      zip: {alpha: [1, 2], seed: {range: [3]}}\n",
                                  "equal lengths, got [2, 3]", 6, "a", "sweep.zip"),
    "range with step 0": Bad(T + PY + "    sweep: {product: {n: {range: [0, 9, 0]}}}\n",
                             "step of a range", 5, "a", "sweep.product.n.range"),
    "sweep too large": Bad(T + "    python: mymod:simulate\n    sweep:\n      product: "
                           "{alpha: {range: [100000000000]}, seed: {range: [100000000000]}}\n",
                           "more than 50,000,000", 6, "a", "sweep.product"),
    "plain reference to a swept task": Bad(
        T + "    python: mymod:simulate\n    sweep: {product: {seed: [1, 2]}}\n"
        "  - id: b\n" + PY + "    args:\n      n: '${a}'\n",
        "task 'a' is swept (2 instances)", 9, "b", "args.n", plan=True),
    "shell placeholder not given": Bad(T + "    shell: 'echo {x} {y}'\n    args: {x: 1}\n",
                                       "placeholder {y} is not given", 4, "a", "shell"),
    "shell with positional args": Bad(T + "    shell: 'echo {x}'\n    args: [1]\n",
                                      "keyword arguments only", 5, "a", "args"),
    "absolute output path": Bad(T + "    shell: 'cp x {o}'\n    outputs: {o: /etc/passwd}\n",
                                "must be relative", 5, "a", "outputs.o"),
    "output path with ..": Bad(T + "    shell: 'cp x {o}'\n    outputs: {o: a/../../x}\n",
                               "without '..'", 5, "a", "outputs.o"),
    "newline in output template": Bad(T + "    shell: 'cp x {o}'\n    outputs: {o: \"a\\nb\"}\n",
                                      "no NUL or newline", 5, "a", "outputs.o"),
    "output name not an identifier": Bad(T + "    shell: 'cp x y'\n    outputs: {o-1: x}\n",
                                         "not a valid name", 5, "a", "outputs.o-1"),
    "output named like an argument": Bad(T + "    shell: 'cp {x} {o}'\n    args: {x: 1, o: 2}\n"
                                         "    outputs: {o: out.txt}\n", "both an output and an argument",
                                         6, "a", "outputs.o"),
    "stdout with outputs": Bad(T + "    shell: 'cp x {o}'\n    outputs: {o: x}\n    stdout: true\n",
                               "cannot declare 'outputs'", 6, "a", "stdout"),
    "missing python module": Bad(T + "    python: no_such_module_xyz:f\n",
                                 "module 'no_such_module_xyz' not found", 4, "a", "python"),
    "missing submodule": Bad(T + "    python: mymod.sub:f\n", "module 'mymod.sub' not found", 4,
                             "a", "python"),
    "missing python file": Bad(T + "    python: lib/nofile.py:f\n", "'lib/nofile.py' not found", 4,
                               "a", "python"),
    "malformed target": Bad(T + "    python: mymod.make_data\n", "expected 'package.module:function'",
                            4, "a", "python"),
    "missing method class module": Bad(T + "    method: {class: nomod_xyz:M, call: run}\n",
                                       "module 'nomod_xyz' not found", 4, "a", "method.class"),
    "missing python_path folder": Bad("name: w\npython_path: [lib, nolib]\ntasks:\n  - id: a\n" + PY,
                                      "folder 'nolib' not found", 2, None, "python_path[1]"),
    "YAML syntax error": Bad(T + "    python: [mymod:f\n", "YAML syntax error", 5, None, None),
    "non-mapping top level": Bad("- a\n- b\n", "top level of a spec must be a mapping", 1, None, None),
    "empty file": Bad("# nothing\n", "empty", 1, None, None),
    "missing required key": Bad("name: w\n", "'tasks' is required", 1, None, "tasks"),
    "python tag refused": Bad(T + "    python: !!python/object/apply:os.system ['echo hi']\n",
                              "unsupported YAML tag", 4, "a", "python"),
    "duplicate key": Bad(T + PY + PY, "duplicate key 'python'", 5, "a", "python"),
    "unquoted boolean key": Bad(T + PY + "    args: {on: 1}\n", "reads as True", 5, "a", "args"),
    "env name with a dash": Bad(T + PY + "    env: {MY-VAR: x}\n", "not an environment variable",
                                5, "a", "env.MY-VAR"),
    "env value a list": Bad(T + PY + "    env:\n      PATHS: [a, b]\n", "text or a number", 6,
                            "a", "env.PATHS"),
    "env value a boolean": Bad(T + PY + "    env: {DEBUG: true}\n", "text or a number", 5, "a",
                               "env.DEBUG"),
    "env on a workflow task": Bad(T + "    workflow: stats.yaml\n    env: {A: b}\n",
                                  "takes no 'env'", 5, "a", "env"),
}


@pytest.mark.parametrize("case", list(BAD.values()), ids=list(BAD))
def test_bad_spec(folder: Path, case: Bad) -> None:
    (folder / "lib").mkdir()
    for name, text in case.files.items():
        (folder / name).write_text(text)
    path = folder / "wf.yaml"
    path.write_text(case.text)
    with pytest.raises(SpecError) as caught:
        (load_plan if case.plan else load_workflow)(path)
    err = caught.value
    assert case.fragment in err.message, str(err)
    assert Path(err.location.file or "").name == case.file, str(err)
    assert (err.location.line, err.task, err.field) == (case.line, case.task, case.field), str(err)
    assert str(err).startswith(f"{err.location.file}:{case.line}")


def test_table_is_large_enough() -> None:
    assert len(BAD) >= 25


def test_cycle_error_carries_the_path(folder: Path) -> None:
    text = T + PY + "    after: [c]\n  - id: b\n" + PY + "    after: [a]\n  - id: c\n" + PY + \
        "    after: [b]\n"
    with pytest.raises(CycleError) as caught:
        load_workflow_text(text, folder / "wf.yaml")
    assert caught.value.cycle in (["a", "c", "b", "a"], ["a", "b", "c", "a"])


def test_alias_bomb_fails_fast(folder: Path) -> None:
    levels = ["  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"]
    for i in range(1, 10):
        levels.append(f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n")
    text = "name: w\ninputs:\n" + "".join(levels) + "tasks:\n  - id: a\n" + PY
    start = time.perf_counter()
    with pytest.raises(SpecError, match="alias bomb") as caught:
        load_workflow_text(text, folder / "bomb.yaml")
    assert time.perf_counter() - start < 0.5
    assert caught.value.location.file == str(folder / "bomb.yaml")
    assert "12,345,679,032 nodes" in caught.value.message  # counted on the node graph, not built


def test_recursive_alias_and_deep_nesting(folder: Path) -> None:
    with pytest.raises(SpecError, match="recursive alias"):
        load_workflow_text("name: w\ninputs: {x: &x [*x]}\ntasks: []\n", folder / "wf.yaml")
    deep = "name: w\ninputs: {x: " + "[" * 100 + "]" * 100 + "}\ntasks: []\n"
    with pytest.raises(SpecError, match="nested more than"):
        load_workflow_text(deep, folder / "wf.yaml")
    deeper = "name: w\ninputs: {x: " + "[" * 3000 + "]" * 3000 + "}\ntasks: []\n"
    with pytest.raises(SpecError, match="nested more than"):
        load_workflow_text(deeper, folder / "wf.yaml")


def test_file_size_and_encoding_are_bounded(folder: Path) -> None:
    big = folder / "big.yaml"
    big.write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    with pytest.raises(SpecError, match="larger than 16 MiB"):
        load_workflow(big)
    latin = folder / "latin.yaml"
    latin.write_bytes("name: w\ndescription: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(SpecError, match="not UTF-8"):
        load_workflow(latin)
    with pytest.raises(SpecError, match="cannot read"):
        load_workflow(folder / "absent.yaml")


def test_include_depth_is_bounded(folder: Path) -> None:
    for i in range(20):
        (folder / f"w{i}.yaml").write_text(f"name: w{i}\ntasks:\n  - id: t\n    workflow: w{i + 1}.yaml\n")
    with pytest.raises(SpecError, match="nested more than 16 deep") as caught:
        load_workflow(folder / "w0.yaml")
    assert caught.value.location.file.endswith("w15.yaml")


def test_module_lookup_imports_nothing(folder: Path) -> None:
    pkg = folder / "sidefx_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise RuntimeError('imported!')\n")
    (pkg / "mod.py").write_text("def f():\n    pass\n\nraise RuntimeError('imported!')\n")
    wf = load_workflow_text(T + "    python: sidefx_pkg.mod:f\n", folder / "wf.yaml")
    assert wf.tasks["a"].action == PythonCall("sidefx_pkg.mod:f")
    assert "sidefx_pkg" not in sys.modules


# --- good specs ------------------------------------------------------------------------

REALISTIC = """\
name: sweep-demo
python_path: [lib]
defaults:
  resources: {cores: 2, memory: 1G}
  retries: 1
tasks:
  - id: make
    python: mymod:make_data
    args: {n: 10}
    resources: {memory: 4G, time: 5m}
  - id: sim
    python: helpers/sim.py:run
    args: {data: "${make}"}
    sweep:
      product: {alpha: [0.1, 0.2, 0.3], seed: {range: [0, 4]}}
  - id: score
    python: mymod:simulate
    sweep:
      zip: {data: "${sim}"}
  - id: fit
    method: {class: mymod:Model, init: [2], call: fit}
    args: {x: "${score[*]}"}
  - id: plot
    shell: ["python", "plot.py", "{summary}", "--out", "{png}"]
    outputs: {png: "plot-{tag}.png"}
    args: {summary: "${fit}", tag: "$${literal}"}
    timeout: 10m
  - id: stats
    workflow: stats.yaml
    inputs: {data: "${sim[*]}"}
    after: [make]
  - id: report
    shell: "cat {{ignored}} {figure} {mean}"
    stdout: true
    args: {figure: "${plot.png}", mean: "${stats.mean}"}
outputs: {best: "${fit}", report: "${report}"}
"""


@pytest.fixture
def realistic(folder: Path) -> Path:
    (folder / "lib").mkdir()
    (folder / "helpers").mkdir()
    (folder / "helpers" / "sim.py").write_text("def run(data, alpha, seed):\n    return alpha\n")
    path = folder / "wf.yaml"
    path.write_text(REALISTIC)
    return path


def test_realistic_spec_builds_the_model(realistic: Path) -> None:
    folder = realistic.parent
    wf = load_workflow(realistic)
    assert wf.name == "sweep-demo"
    assert wf.python_path == [str(folder.resolve()), str((folder / "lib").resolve())]
    make, sim, score, fit, plot, stats, report = wf.tasks.values()
    assert make.resources == hf.Resources.build(cores=2, memory="4G", time="5m")
    assert (make.retries, make.timeout, plot.timeout) == (1, None, 600.0)
    assert sim.action == PythonCall(f"{(folder / 'helpers' / 'sim.py').resolve()}:run")
    assert sim.sweep.params == {"alpha": [0.1, 0.2, 0.3], "seed": range(0, 4)}
    each = score.sweep.params["data"]
    assert (score.sweep.mode, each.task, each.mode) == ("zip", "sim", "each")
    assert fit.action == MethodCall("mymod:Model", "fit", (2,), {})
    assert (fit.kwargs["x"].task, fit.kwargs["x"].mode) == ("score", "all")
    assert plot.action == ShellCommand(("python", "plot.py", "{summary}", "--out", "{png}"),
                                       {"png": "plot-{tag}.png"}, False)
    assert plot.kwargs["tag"] == "${literal}"
    assert isinstance(stats.action, SubWorkflow) and stats.after == ("make",)
    assert stats.action.workflow.inputs == {"data": REQUIRED, "scale": 2}
    assert stats.resources == hf.Resources()  # defaults are for this file's own tasks
    assert report.action.stdout and report.kwargs["mean"].key == "mean"
    assert wf.outputs["best"].task == "fit"
    assert make.location.file == str(realistic) and make.location.line == 7
    assert report.location.line == 32


def test_realistic_spec_flattens(realistic: Path) -> None:
    plan = load_plan(realistic)
    sizes = {g.name: g.size for g in plan.groups}
    assert sizes == {"make": 1, "sim": 12, "score": 12, "fit": 1, "plot": 1, "stats/mean": 1,
                     "report": 1}
    assert plan.group_of.size == 29
    # make->sim 12, sim->score 12, score->fit 12, fit->plot, sim->stats/mean 12,
    # make->stats/mean (after), plot->report, stats/mean->report
    assert plan.pred.size == 12 + 12 + 12 + 1 + 12 + 1 + 1 + 1
    assert plan.python_path[0] == str(realistic.parent.resolve())


def test_example_in_the_reference_loads(folder: Path) -> None:
    (folder / "lib").mkdir()
    (folder / "lib" / "mymod.py").write_text(MYMOD)  # the example names lib/ on python_path
    path = folder / "example.yaml"
    path.write_text(spec_reference.EXAMPLE)
    plan = load_plan(path)
    assert {g.name: g.size for g in plan.groups}["sim"] == 20
    assert "```yaml\n" + spec_reference.EXAMPLE + "```" in spec_reference.render()


def test_reference_document_is_generated() -> None:
    committed = (ROOT / "docs" / "yaml-reference.md").read_text()
    assert committed == spec_reference.render(), (
        "docs/yaml-reference.md is stale: python -m hpcflow.spec.reference > docs/yaml-reference.md")


def test_references_and_escapes(folder: Path) -> None:
    text = spec("""
        name: w
        inputs: {n: 3, lit: "$${not_a_ref}"}
        tasks:
          - id: a.b
            python: mymod:make_data
            args: {n: "${inputs.n}"}
          - id: c
            python: mymod:simulate
            args:
              data: ["${a.b}", "${a.b.key.sub}", {k: "${a.b[*]}", j: "${a.b[*].x}"}]
              alpha: "cost $$5 and $${x}"
        """)
    wf = load_workflow_text(text, folder / "wf.yaml")
    assert wf.inputs == {"n": 3, "lit": "${not_a_ref}"}
    assert wf.tasks["a.b"].kwargs == {"n": Param("n")}
    one, keyed, nested = wf.tasks["c"].kwargs["data"]
    assert (one.task, one.key, one.mode) == ("a.b", None, "one")
    assert (keyed.task, keyed.key) == ("a.b", "key.sub")
    assert (nested["k"].mode, nested["j"].key, nested["j"].mode) == ("all", "x", "all")
    assert wf.tasks["c"].kwargs["alpha"] == "cost $$5 and ${x}"


def test_sweep_over_a_swept_task_with_gather_and_key(folder: Path) -> None:
    text = T + "    python: mymod:simulate\n    sweep: {product: {seed: {range: [1, 10, 3]}}}\n" + \
        "  - id: b\n    python: mymod:simulate\n    sweep: {product: {data: '${a[*].k}', seed: [7, 8]}}\n"
    wf = load_workflow_text(text, folder / "wf.yaml")
    ref = wf.tasks["b"].sweep.params["data"]
    assert (ref.task, ref.key, ref.mode) == ("a", "k", "each")
    plan = flatten(wf)
    assert [g.size for g in plan.groups] == [3, 6]


def test_yaml_anchors_and_merge_keys(folder: Path) -> None:
    text = spec("""
        name: w
        x-big: &big {cores: 4, memory: 8G}
        tasks:
          - id: a
            python: mymod:make_data
            resources: {<<: *big, cores: 8}
        """)
    with pytest.raises(SpecError, match="unknown key 'x-big'"):
        load_workflow_text(text, folder / "wf.yaml")
    anchored = "defaults:\n  resources: &big {cores: 4, memory: 8G}\n"
    text = text.replace("x-big: &big {cores: 4, memory: 8G}\n", anchored)
    wf = load_workflow_text(text, folder / "wf.yaml")
    assert wf.tasks["a"].resources == hf.Resources.build(cores=8, memory="8G")


def test_shared_include_is_loaded_once(folder: Path) -> None:
    text = T + "    workflow: stats.yaml\n    inputs: {data: 1}\n  - id: b\n    workflow: ./stats.yaml\n" + \
        "    inputs: {data: '${a.mean}'}\n"
    wf = load_workflow_text(text, folder / "wf.yaml")
    assert wf.tasks["a"].action.workflow is wf.tasks["b"].action.workflow
    assert [g.name for g in flatten(wf).groups] == ["a/mean", "b/mean"]


def test_text_paths_resolve_against_the_named_file(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")
    wf = load_workflow_text(T + "    workflow: stats.yaml\n    inputs: {data: 1}\n", folder / "wf.yaml")
    assert wf.python_path == [str(folder.resolve())]
    assert wf.tasks["a"].action.workflow.location.file == str(folder / "stats.yaml")


# --- the Python API and YAML give the same plan ------------------------------------------

def _shape(plan: Plan) -> tuple[dict[str, int], set[tuple[str, str]]]:
    names = [g.member_name(m) for g in plan.groups for m in range(g.size)]
    edges = {(names[int(src)], names[dst])
             for dst in range(len(names))
             for src in plan.pred[plan.pred_ptr[dst]:plan.pred_ptr[dst + 1]]}
    return {g.name: g.size for g in plan.groups}, edges


EQUIVALENT_YAML = """\
name: demo
tasks:
  - id: make_data
    python: mymod:make_data
    args: {n: 10}
  - id: simulate
    python: mymod:simulate
    args: {data: "${make_data}"}
    sweep:
      product: {alpha: [0.1, 0.2], seed: {range: [3]}}
  - id: Model.fit
    method: {class: mymod:Model, init: {order: 2}, call: fit}
    args: {x: "${simulate[*]}"}
  - id: python
    shell: "python plot.py {summary} --out {png}"
    outputs: {png: plot.png}
    args: {summary: "${Model.fit}"}
  - id: stats
    workflow: stats.yaml
    inputs: {data: "${simulate[*]}"}
outputs: {best: "${Model.fit}", fig: "${python}", mean: "${stats.mean}"}
"""


def test_python_api_and_yaml_flatten_alike(folder: Path) -> None:
    data = hf.task("mymod:make_data")(n=10)
    runs = hf.task("mymod:simulate").sweep({"alpha": [0.1, 0.2], "seed": range(3)}, data=data)
    best = hf.method("mymod:Model", "fit", order=2)(x=runs)
    fig = hf.shell("python plot.py {summary} --out {png}", outputs={"png": "plot.png"})(summary=best)
    inner = hf.task("mymod:simulate").options(name="mean")(data=hf.param("data"), alpha=hf.param("scale"))
    sub = hf.workflow("stats", {"mean": inner}, inputs={"data": REQUIRED, "scale": 2})
    mean = hf.nested(sub, name="stats", data=runs)
    api = hf.workflow("demo", {"best": best, "fig": fig, "mean": mean["mean"]})

    path = folder / "wf.yaml"
    path.write_text(EQUIVALENT_YAML)
    yaml_wf = load_workflow(path)
    assert set(api.tasks) == set(yaml_wf.tasks)
    for tid, task in api.tasks.items():
        other = yaml_wf.tasks[tid]
        if not isinstance(task.action, SubWorkflow):
            assert task.action == other.action, tid
        assert (task.resources, task.retries, task.timeout) == (other.resources, other.retries,
                                                                 other.timeout)
    api_sizes, api_edges = _shape(flatten(api))
    yaml_sizes, yaml_edges = _shape(load_plan(path))
    assert api_sizes == yaml_sizes == {"make_data": 1, "simulate": 6, "Model.fit": 1, "python": 1,
                                       "stats/mean": 1}
    assert api_edges == yaml_edges
    assert len(api_edges) == 6 + 6 + 1 + 6


def test_reference_parser_rejects_what_is_not_a_reference() -> None:
    from hpcflow.spec import refs

    for bad in ("${}", "${a b}", "${a[*]x}", "${a[0]}", "${inputs.1x}", "${a..b}"):
        with pytest.raises(refs.ValueProblem):
            refs.parse(bad, {"a"})
    assert repr(refs.parse("${t[*]}", set())) == repr(Ref("t", None, "all"))  # Ref: eq by identity
    assert repr(refs.parse("${t[*].k}", set())) == repr(Ref("t", "k", "all"))


def test_node_budget_stops_the_composer() -> None:
    from hpcflow.spec._yaml import Budget, parse_document

    text = "x: [" + ", ".join(["1"] * 100) + "]\n"
    with pytest.raises(SpecError, match="more nodes than") as caught:
        parse_document(text, "big.yaml", Budget(nodes_left=50))
    assert caught.value.location.line == 1
    budget = Budget(nodes_left=500)
    parse_document(text, "big.yaml", budget)
    assert budget.nodes_left == 500 - 103


def test_include_cycle_shows_the_chain(folder: Path) -> None:
    (folder / "wf.yaml").write_text(T + "    workflow: sub/b.yaml\n")
    (folder / "sub").mkdir()
    (folder / "sub" / "b.yaml").write_text("name: b\ntasks:\n  - id: y\n    workflow: ../wf.yaml\n")
    with pytest.raises(SpecError) as caught:
        load_workflow(folder / "wf.yaml")
    wf, b = str(folder / "wf.yaml"), str(folder / "sub" / "b.yaml")
    assert f"include cycle: {wf} -> {b} -> {wf} (included from {wf}:4)" in str(caught.value)
