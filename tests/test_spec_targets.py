"""``validate`` finds a ``python:`` target that names a function or class the module
lacks, or a name bound to a plain value, by reading the module's source (never importing
it); what the source cannot settle passes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hpcflow.errors import SpecError
from hpcflow.model import MethodCall, PythonCall
from hpcflow.spec import load_workflow_text

HEAD = "name: w\ntasks:\n  - id: first\n    shell: 'true'\n  - id: calc\n"


def _load(folder: Path, module: str, task: str, name: str = "mymod.py"):
    (folder / name).write_text(textwrap.dedent(module))
    return load_workflow_text(HEAD + task, folder / "wf.yaml")


def _error(folder: Path, module: str, task: str, name: str = "mymod.py") -> SpecError:
    with pytest.raises(SpecError) as caught:
        _load(folder, module, task, name)
    return caught.value


def test_a_missing_function_names_file_line_task_and_field(tmp_path):
    err = _error(tmp_path, "def simulate(x):\n    return x\n", "    python: mymod:simulte\n")
    assert (err.task, err.field, err.location.line) == ("calc", "python", 6)
    assert err.location.file.endswith("wf.yaml")
    assert f"{tmp_path / 'mymod.py'} has no top-level function or class 'simulte'" in err.message
    assert "did you mean 'simulate'?" in err.message


def test_a_missing_name_in_a_file_target(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "sim.py").write_text("def runn():\n    pass\n")
    with pytest.raises(SpecError, match=r"sim\.py has no top-level function or class 'run'") as caught:
        load_workflow_text(HEAD + "    python: lib/sim.py:run\n", tmp_path / "wf.yaml")
    assert (caught.value.task, caught.value.field) == ("calc", "python")


@pytest.mark.parametrize("module, kind", [
    ("simulate = 3\n", "int"),
    ("simulate = 'not code'\n", "str"),
    ("simulate = None\n", "NoneType"),
    ("simulate = [1, 2]\n", "list"),
    ("simulate: dict = {'a': 1}\n", "dict"),
    ("def simulate():\n    pass\n\nsimulate = 1.5\n", "float"),
])
def test_a_name_bound_to_a_plain_value_is_not_callable(tmp_path, module, kind):
    err = _error(tmp_path, module, "    python: mymod:simulate\n")
    assert err.field == "python" and err.task == "calc"
    assert "'simulate' in" in err.message and "is not a function or class" in err.message
    assert err.message.endswith(f"sets it to a value of type {kind}")


def test_a_missing_class_of_a_method_task(tmp_path):
    err = _error(tmp_path, "class Model:\n    def fit(self):\n        pass\n",
                 "    method: {class: mymod:Modle, call: fit}\n")
    assert (err.task, err.field) == ("calc", "method.class")
    assert "did you mean 'Model'?" in err.message


def test_a_module_that_does_not_parse_is_named_with_its_line(tmp_path):
    err = _error(tmp_path, "def simulate(:\n    pass\n", "    python: mymod:simulate\n")
    assert f"{tmp_path / 'mymod.py'}:1: the module does not parse" in err.message


def test_the_module_is_read_not_imported(tmp_path):
    source = "raise RuntimeError('imported!')\n\ndef simulate():\n    pass\n"
    wf = _load(tmp_path, source, "    python: sidefx_mod:simulate\n", name="sidefx_mod.py")
    assert wf.tasks["calc"].action == PythonCall("sidefx_mod:simulate")
    with pytest.raises(SpecError, match="no top-level function or class 'other'"):
        _load(tmp_path, source, "    python: sidefx_mod:other\n", name="sidefx_mod.py")
    assert "sidefx_mod" not in sys.modules


@pytest.mark.parametrize("module", [
    "def simulate(x):\n    return x\n",
    "class simulate:\n    pass\n",
    "async def simulate():\n    pass\n",
    "simulate = 1\n\ndef simulate():\n    pass\n",
    "simulate = make_it()\n",
    "simulate = lambda x: x\n",
    "from math import sqrt as simulate\n",
    "import simulate\n",
    "if True:\n    def simulate():\n        pass\n",
    "try:\n    from fast import simulate\nexcept ImportError:\n    simulate = None\n",
    "for simulate in [print]:\n    pass\n",
    "with open(__file__) as simulate:\n    pass\n",
    "def setup():\n    global simulate\n    simulate = print\n",
    "from helpers import *\n",
    "def __getattr__(name):\n    return print\n",
    "globals()['simulate'] = print\n",
    "setattr(sys.modules[__name__], 'simulate', print)\n",
    "if True:\n    simulate = 3\n",
    "(simulate := print)\n",
])
def test_what_the_source_cannot_settle_passes(tmp_path, module):
    wf = _load(tmp_path, module, "    python: mymod:simulate\n")
    assert wf.tasks["calc"].action == PythonCall("mymod:simulate")


def test_only_the_first_part_of_a_dotted_name_is_checked(tmp_path):
    module = "class Model:\n    pass\n\nCONFIG = {'a': 1}\n"
    _load(tmp_path, module, "    python: mymod:Model.build\n")
    _load(tmp_path, module, "    python: mymod:CONFIG.get\n")
    with pytest.raises(SpecError, match="no top-level function or class 'Modle'"):
        _load(tmp_path, module, "    python: mymod:Modle.build\n")


def test_a_method_name_is_not_checked(tmp_path):
    wf = _load(tmp_path, "class Model:\n    pass\n", "    method: {class: mymod:Model, call: fit}\n")
    assert isinstance(wf.tasks["calc"].action, MethodCall)


def test_a_package_submodule_and_its_init(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("def run():\n    pass\n")
    (pkg / "tools.py").write_text("")
    _load(tmp_path, "", "    python: pkg:run\n")
    _load(tmp_path, "", "    python: pkg:tools\n")  # a submodule: not the source's to say
    with pytest.raises(SpecError, match=r"pkg/__init__.py has no top-level function or class 'walk'"):
        _load(tmp_path, "", "    python: pkg:walk\n")


def test_installed_and_builtin_modules(tmp_path):
    _load(tmp_path, "", "    python: math:sqrt\n")  # built in: no source to read
    _load(tmp_path, "", "    python: json:dumps\n")
    with pytest.raises(SpecError, match=r"json/__init__\.py has no top-level function or class 'dumsp'"):
        _load(tmp_path, "", "    python: json:dumsp\n")


def test_hpcflow_validate_says_it_in_one_line(tmp_path):
    (tmp_path / "mymod.py").write_text("def simulate():\n    pass\n")
    spec = tmp_path / "wf.yaml"
    spec.write_text(HEAD + "    python: mymod:simulat\n")
    done = subprocess.run([sys.executable, "-m", "hpcflow", "validate", str(spec)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"hpcflow validate: {spec}:6: task 'calc': field 'python': {tmp_path / 'mymod.py'} has no "
        "top-level function or class 'simulat' (did you mean 'simulate'?)"]
