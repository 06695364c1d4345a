"""The model and the Python API: resources parsing, building, checks, flattening."""

from __future__ import annotations

import numpy as np
import pytest

import hpcflow as hf
from hpcflow.errors import CycleError, SpecError
from hpcflow.model.resources import format_memory, format_slurm_time, parse_memory, parse_time
from hpcflow.model.task import PythonCall, Ref, Task
from hpcflow.model.workflow import Workflow
from hpcflow.plan.flatten import flatten


@pytest.mark.parametrize("text, seconds", [
    ("90s", 90), ("5m", 300), ("2h", 7200), ("1d", 86400), ("10:00", 600), ("01:30:00", 5400),
    ("1-00", 86400), ("1-02:03", 93780), ("2-00:00:05", 172805), (45, 45.0), (1.5, 1.5),
])
def test_parse_time_accepts_slurm_forms(text, seconds):
    assert parse_time(text) == seconds


@pytest.mark.parametrize("bad, fragment", [
    ("30", "ambiguous"), ("1:2:3:4", "look like"), ("-5", "look like"), (True, "duration"),
    (-1, "non-negative"), ("abc", "look like"),
])
def test_parse_time_rejects(bad, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_time(bad)


@pytest.mark.parametrize("text, nbytes", [
    ("4G", 4 * 2**30), ("500M", 500 * 2**20), ("1.5GiB", int(1.5 * 2**30)), ("64K", 65536),
    (100, 100 * 2**20), ("2T", 2 * 2**40),
])
def test_parse_memory(text, nbytes):
    assert parse_memory(text) == nbytes


@pytest.mark.parametrize("bad", ["4X", "G4", "", -1, "1e3G", True])
def test_parse_memory_rejects(bad):
    with pytest.raises(ValueError):
        parse_memory(bad)


def test_formats_round_trip():
    assert format_slurm_time(93780) == "1-02:03:00"
    assert format_slurm_time(59.2) == "00:01:00"
    assert format_memory(4 * 2**30) == "4G" and format_memory(1536 * 2**10) == "1536K"


def _add(a, b=0):
    return a + b


def test_api_builds_lazily_and_names_tasks():
    calls = []
    add = hf.task(lambda a, b=0: calls.append(1) or a + b, name=None)
    x = add(1, 2)
    y = add(x, 3)
    wf = hf.workflow("w", outputs={"y": y})
    assert calls == []  # nothing ran
    assert list(wf.tasks) == ["_lambda_", "_lambda_-2"]
    second = list(wf.tasks.values())[1]
    assert isinstance(second.args[0], Ref) and second.args[0].task == "_lambda_"


def test_api_duplicate_explicit_names_rejected():
    add = hf.task(_add)
    a = add.options(name="same")(1)
    b = add.options(name="same")(a)
    with pytest.raises(SpecError, match="two tasks have this name"):
        hf.workflow("w", outputs=[b])


def test_swept_ref_is_gathered_in_plain_call_and_each_in_map():
    add = hf.task(_add)
    runs = add.sweep({"a": [1, 2, 3]}, b=10)
    plus = add.map(a=runs)
    total = hf.task(sum, name="total")(plus)
    wf = hf.workflow("w", outputs={"t": total})
    assert wf.tasks["_add-2"].sweep.params["a"].mode == "each"
    assert wf.tasks["total"].args[0].mode == "all"
    plan = flatten(wf)
    assert [g.size for g in plan.groups] == [3, 3, 1]
    assert plan.predecessors(plan.index_of("_add-2[1]")).tolist() == [1]
    assert plan.predecessors(plan.index_of("total")).tolist() == [3, 4, 5]


def test_product_and_zip_sweeps():
    add = hf.task(_add)
    prod = add.sweep({"a": [1, 2], "b": [10, 20, 30]})
    zipped = add.sweep({"a": [1, 2], "b": [10, 20]}, mode="zip")
    plan = flatten(hf.workflow("w", outputs=[prod.all(), zipped.all()]))
    assert [g.size for g in plan.groups] == [6, 2]
    assert plan.bind(4, {}) == ((), {"a": 2, "b": 20})  # product, row-major
    assert plan.bind(7, {}) == ((), {"a": 2, "b": 20})  # zip, second member


def test_each_with_index_shifts_members():
    add = hf.task(_add)
    layer = add.sweep({"a": np.arange(4)})
    nxt = add.sweep({"a": layer.each(), "b": layer.each(index=[1, 2, 3, 0])}, mode="zip")
    plan = flatten(hf.workflow("w", outputs=[nxt.all()]))
    assert plan.predecessors(plan.index_of("_add-2[3]")).tolist() == [0, 3]
    assert plan.bind(plan.index_of("_add-2[3]"), {0: "r0", 3: "r3"})[1] == {"a": "r3", "b": "r0"}


def test_nested_workflow_namespaces_and_maps_outputs():
    add = hf.task(_add)
    inner = hf.workflow("inner", outputs={"out": add(hf.param("x"), 1)}, inputs=["x"])
    first = add(1)
    use = hf.nested(inner, name="sub", x=first)
    last = add(use["out"])
    plan = flatten(hf.workflow("outer", outputs=[last]))
    names = [g.name for g in plan.groups]
    assert "sub/_add" in names
    sub = plan.index_of("sub/_add")
    assert plan.predecessors(sub).tolist() == [plan.index_of("_add")]
    assert plan.predecessors(plan.index_of("_add-2")).tolist() == [sub]


def test_nested_missing_and_unknown_inputs():
    add = hf.task(_add)
    inner = hf.workflow("inner", outputs={"out": add(hf.param("x"))}, inputs=["x"])
    with pytest.raises(SpecError, match="missing workflow input"):
        hf.nested(inner)
    with pytest.raises(SpecError, match="unknown workflow input"):
        hf.nested(inner, x=1, y=2)


def test_cycle_reported_with_path():
    act = PythonCall(_add)
    tasks = [Task("a", act, args=(Ref("c"),)), Task("b", act, args=(Ref("a"),)),
             Task("c", act, args=(Ref("b"),))]
    with pytest.raises(CycleError) as info:
        Workflow.from_tasks("w", tasks)
    cycle = info.value.cycle
    assert cycle[0] == cycle[-1] and set(cycle) == {"a", "b", "c"} and len(cycle) == 4
    assert " -> " in str(info.value)


@pytest.mark.parametrize("task_id", ["has space", "semi;colon", "new\nline", "1starts_digit", ""])
def test_bad_task_ids(task_id):
    with pytest.raises(SpecError, match="task id"):
        Workflow.from_tasks("w", [Task(task_id, PythonCall(_add))])


def test_plain_ref_to_swept_task_is_an_error_at_flatten():
    act = PythonCall(_add)
    from hpcflow.model.task import Sweep

    tasks = [Task("s", act, sweep=Sweep({"a": [1, 2]})), Task("t", act, args=(Ref("s"),))]
    with pytest.raises(SpecError, match=r"s\[\*\]"):
        flatten(Workflow.from_tasks("w", tasks))


def test_resources_validation():
    with pytest.raises(ValueError, match="cores"):
        hf.task(_add, cores=0)
    res = hf.task(_add, cores=2, gpus=1, memory="1G", time="01:00:00", ranks=2)
    assert res._options.resources == hf.Resources(2, 1, 2**30, 3600.0, 2)


def test_errors_survive_pickling_with_their_fields():
    import pickle

    from hpcflow.errors import Location, ResourceError, RunFailed, RunInterrupted, TaskFailed

    errors = [SpecError("m", task="t", field="f", location=Location("a.yaml", 3)),
              CycleError(["a", "b", "a"]), ResourceError("t", "too big"),
              TaskFailed("t", "boom", "/log"), RunFailed([TaskFailed("t", "boom")], 2, "/run"),
              RunInterrupted("/run")]  # crosses ranks too (the MPI session sends it)
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
        assert {k: str(v) for k, v in vars(copy).items()} == {k: str(v) for k, v in vars(error).items()}
