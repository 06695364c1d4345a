"""Every bundled example validates and runs, from a working directory outside the
repository, and gives the outputs its README promises (values and files).

Each run goes through the ``hpcflow`` command in a subprocess (with a timeout), the
way a user starts it; the MPI runs go through ``timeout 120 mpiexec -n N``. The pure
helpers of the examples are also called directly, without any engine.
"""

from __future__ import annotations

import ast
import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from hpcflow.store.journal import Event, read_journal

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
SPECS = sorted(p for p in EXAMPLES.glob("*/workflow.*") if p.suffix in (".yaml", ".py"))
MPIEXEC = shutil.which("mpiexec")
pytestmark = pytest.mark.timeout(300)


def _mpi_engine_missing() -> str | None:
    """Why the MPI example cannot run here, or None."""
    if MPIEXEC is None:
        return "mpiexec not found: `pip install mpich` (or load your site's MPI module)"
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py not installed: `pip install mpi4py`"
    if importlib.util.find_spec("hpcflow.engine.mpi.backend") is None:
        return "the MPI engine (hpcflow/engine/mpi) is not in this checkout"
    return None


needs_mpi = pytest.mark.skipif(_mpi_engine_missing() is not None,
                               reason=_mpi_engine_missing() or "")


def hpcflow(*args: str, cwd: Path, ranks: int = 0, timeout: float = 90,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``hpcflow ARGS`` in ``cwd`` (``mpiexec -n ranks`` first when ranks > 0)."""
    command = [sys.executable, "-m", "hpcflow", *args]
    if ranks:
        assert MPIEXEC is not None
        command = ["timeout", "-k", "10", "120", MPIEXEC, "-n", str(ranks), *command]
    full_env = dict(os.environ, HPCFLOW_RUNS=str(cwd / "runs"), **(env or {}))
    return subprocess.run(command, cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def run_json(*args: str, cwd: Path, ranks: int = 0) -> dict:
    """``hpcflow run --json ARGS``; its outcome with the outputs turned back into values."""
    done = hpcflow("run", "--json", *args, cwd=cwd, ranks=ranks)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "succeeded" and not result["failed"], result
    result["outputs"] = {k: ast.literal_eval(v) for k, v in result["outputs"].items()}
    return result


def spans(run_dir: str) -> dict[str, tuple[float, float]]:
    """Start and end time of every task instance that finished, by instance name."""
    groups = json.loads((Path(run_dir) / "groups.json").read_text())
    names = {}
    for g in groups:
        for m in range(g["size"]):
            names[g["start"] + m] = f"{g['name']}[{m}]" if g["size"] > 1 else g["name"]
    return {names[e[1]]: (e[4], e[5]) for e in read_journal(Path(run_dir) / "journal.bin")
            if e[0] == Event.DONE}


def load_module(path: Path):
    spec = importlib.util.spec_from_file_location(f"example_{path.parent.name}_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- every example -------------------------------------------------------------------

def test_examples_are_found():
    names = {p.parent.name for p in SPECS}
    assert {"sweep", "etl", "gpu_sweep", "mpi_task"} <= names


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_example_validates_from_another_folder(spec, tmp_path):
    done = hpcflow("validate", str(spec), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert ": ok: workflow " in done.stdout
    assert not (tmp_path / "runs").exists()  # validate runs nothing


def test_every_example_has_a_readme_section():
    text = (EXAMPLES / "README.md").read_text()
    for folder in {p.parent.name for p in SPECS}:
        assert f"## {folder}:" in text, f"examples/README.md has no section for {folder}/"


# -- etl -----------------------------------------------------------------------------

def expected_etl_report() -> list[list[str]]:
    """The ETL report computed here with the csv module, from the shipped data."""
    categories = dict(csv.reader((EXAMPLES / "etl/data/products.csv").open()))
    orders: dict[tuple[str, str], int] = defaultdict(int)
    revenue: dict[tuple[str, str], float] = defaultdict(float)
    with (EXAMPLES / "etl/data/sales.csv").open() as fh:
        for row in csv.DictReader(fh):
            key = (row["region"], row["product"])
            orders[key] += 1
            revenue[key] += float(f"{int(row['units']) * float(row['price']):.2f}")
    rows = []
    for region in ("north", "south", "east", "west"):
        mine = [(p, v) for (r, p), v in revenue.items() if r == region]
        for product, total in sorted(mine, key=lambda item: -item[1]):
            rows.append([region, product, categories[product], str(orders[region, product]),
                         f"{total:.2f}"])
    return rows


def test_etl_example_builds_the_report(tmp_path):
    result = run_json(str(EXAMPLES / "etl/workflow.yaml"), cwd=tmp_path)
    assert result["done"] == 12
    outputs = result["outputs"]
    assert outputs["sales_rows"] == "120\n"  # a task's standard output, as text
    report = Path(outputs["report"])
    assert report.is_relative_to(tmp_path / "runs") and report.name == "report.csv"
    lines = report.read_text().splitlines()
    assert lines[0] == "region,product,category,orders,revenue"
    assert lines[-1] == "# sales rows read: 120"
    assert [line.split(",") for line in lines[1:-1]] == expected_etl_report()

    run_dir = Path(result["run_dir"])
    for m in range(4):  # each extract instance wrote its declared file in its own folder
        rows = (run_dir / f"tasks/extract[{m}]/rows.csv").read_text().splitlines()
        assert rows and all(len(line.split(",")) == 2 for line in rows)
    times = spans(result["run_dir"])
    check_end = times["check"][1]
    assert all(times[f"extract[{m}]"][0] >= check_end for m in range(4))  # after: [check]


def test_etl_check_gate_stops_extract_on_a_bad_header(tmp_path):
    folder = tmp_path / "etl"
    shutil.copytree(EXAMPLES / "etl", folder, ignore=shutil.ignore_patterns("__pycache__"))
    sales = folder / "data/sales.csv"
    sales.write_text(sales.read_text().replace("date,region", "day,region", 1))
    done = hpcflow("run", "--json", str(folder / "workflow.yaml"), cwd=tmp_path)
    assert done.returncode == 1
    result = json.loads(done.stdout)
    assert [f["task"] for f in result["failed"]] == ["check"]
    assert result["skipped"] == 9  # 4 extract, 4 transform, load


def test_etl_locate_names_a_missing_file():
    files = load_module(EXAMPLES / "etl/files.py")
    found = files.locate(sales="data/sales.csv")
    assert Path(found["sales"]).is_absolute() and Path(found["sales"]).is_file()
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        files.locate(sales="data/nope.csv")


# -- gpu_sweep -----------------------------------------------------------------------

def check_gpu_outputs(outputs: dict) -> None:
    devices = outputs["devices"]
    assert len(devices) == 8 and set(devices) <= {"0", "1"}, devices
    best = outputs["best"]
    assert (best["lr"], best["seed"]) == (0.1, 1) and best["loss"] < 0.02
    assert best["device"] in ("0", "1")


@pytest.mark.parametrize("target", ["workflow.yaml", "workflow.py"])
def test_gpu_sweep_runs_without_gpus_given_ids(tmp_path, target):
    result = run_json("--gpus", "0,1", str(EXAMPLES / "gpu_sweep" / target), cwd=tmp_path)
    assert result["done"] == 9
    check_gpu_outputs(result["outputs"])


@pytest.mark.parametrize("workers", ["1", "2", "4"])
def test_gpu_sweep_with_fewer_or_more_workers_than_gpu_ids(tmp_path, workers):
    """Every train task gets one of the ids, whatever the number of workers."""
    result = run_json("--workers", workers, "--gpus", "0,1", str(EXAMPLES / "gpu_sweep/workflow.yaml"),
                      cwd=tmp_path)
    check_gpu_outputs(result["outputs"])


def test_gpu_sweep_without_gpus_is_refused_before_anything_runs(tmp_path):
    done = hpcflow("run", "--workers", "2", str(EXAMPLES / "gpu_sweep/workflow.yaml"), cwd=tmp_path)
    assert done.returncode == 2
    assert "task 'train': needs 1 rank(s) x (1 core(s), 1 GPU(s), 200M) on one node" in done.stderr
    assert "0 GPU(s)" in done.stderr


@pytest.mark.slow
@needs_mpi
def test_gpu_sweep_under_mpi(tmp_path):
    result = run_json("--engine", "mpi", "--gpus", "0,1", str(EXAMPLES / "gpu_sweep/workflow.yaml"),
                      cwd=tmp_path, ranks=3)
    check_gpu_outputs(result["outputs"])


def test_gpu_sweep_model_reads_the_device_it_was_given(monkeypatch):
    model = load_module(EXAMPLES / "gpu_sweep/model.py")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    run = model.train(lr=0.1, seed=1)
    assert run["device"] == "3" and run["loss"] < 0.02
    assert model.pick_best([run, {**run, "loss": 5.0}]) is run


# -- mpi_task ------------------------------------------------------------------------

N = 1_000_000
SUM = N * (N - 1) * (2 * N - 1) // 6


@pytest.mark.slow
@needs_mpi
def test_mpi_task_example_under_mpiexec(tmp_path):
    result = run_json("--engine", "mpi", str(EXAMPLES / "mpi_task/workflow.yaml"), cwd=tmp_path,
                      ranks=4)
    outputs = result["outputs"]
    assert outputs["sum"] == SUM
    assert outputs["ranks"] == 2  # the communicator held exactly the task's two ranks
    assert outputs["hello"].startswith("2 ranks on ")
    assert outputs["hello"].endswith(": sum of rank+1 = 3\n")


def test_mpi_task_example_needs_the_mpi_engine(tmp_path):
    done = hpcflow("run", str(EXAMPLES / "mpi_task/workflow.yaml"), cwd=tmp_path)
    assert done.returncode == 3
    assert ("task 'sum_squares' is a Python task with 2 ranks: run it with the MPI engine "
            "(--engine mpi)") in done.stderr


def test_mpi_task_functions_without_a_communicator():
    parallel = load_module(EXAMPLES / "mpi_task/parallel.py")
    alone = parallel.sum_of_squares(N)
    assert alone == {"total": SUM, "ranks": 1, "per_rank": [SUM]}
    assert parallel.check(alone, N) == SUM
    with pytest.raises(ValueError, match="parallel sum"):
        parallel.check({"total": 1, "per_rank": [1]}, N)
    found = parallel.program("hello_mpi.py")
    assert Path(found["script"]).is_file() and found["python"] == sys.executable


# -- graph output (SVG needs Graphviz's dot) -------------------------------------------

@pytest.mark.parametrize("fmt, marker", [("dot", "digraph"), ("mermaid", "flowchart LR")])
def test_graph_of_the_etl_example(tmp_path, fmt, marker):
    done = hpcflow("graph", "--format", fmt, str(EXAMPLES / "etl/workflow.yaml"), cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith(marker)
    assert "extract [x4]" in done.stdout and "transform [x4]" in done.stdout


@pytest.mark.skipif(shutil.which("dot") is None,
                    reason="Graphviz's dot not found: `apt-get install graphviz`")
def test_graph_svg_with_graphviz(tmp_path):
    out = tmp_path / "etl.svg"
    done = hpcflow("graph", "--format", "svg", "-o", str(out), str(EXAMPLES / "etl/workflow.yaml"),
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    svg = out.read_text()
    assert "<svg" in svg and "</svg>" in svg
    assert "extract [x4]" in svg and "load" in svg


def test_graph_svg_without_graphviz_says_what_to_install(tmp_path):
    empty = tmp_path / "no-tools"
    empty.mkdir()
    done = hpcflow("graph", "--format", "svg", str(EXAMPLES / "etl/workflow.yaml"), cwd=tmp_path,
                   env={"PATH": str(empty)})
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip() == ("hpcflow graph: SVG needs Graphviz's 'dot' "
                                   "(Debian: apt-get install graphviz)")
