"""Engines for the engine-agnostic suite, each started once per session.

``engine`` is a session-scoped fixture parametrised over every engine: pytest groups
the tests by engine and tears one engine down before it starts the next, so Ray's or
Spark's start-up (seconds) is paid once, and never two clusters idle side by side. Dask
runs against a cluster started here (``--address``: the external-cluster path); Ray and
Spark against the connection or context started here, which the backends use and leave
running, as they would a notebook's. The MPI engine runs through the CLI under the
``mpiexec`` it launches. An engine whose package is missing is skipped, saying what
to install.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hpcflow.engine.core import RunOptions, RunResult
from hpcflow.engine.runner import EngineConfig, run_workflow

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
WORKFLOWS = HERE / "engine_workflows.py"
sys.path.insert(0, str(HERE))
ENGINES = ("local", "mpi", "dask", "ray", "spark")
EXTRA = {"dask": "distributed", "ray": "ray", "spark": "pyspark"}
WORKERS = 2


@dataclass
class Summary:
    """What must come out the same on every engine (outputs as repr, run folder elided)."""

    status: str
    outputs: dict[str, str]
    failures: list[tuple[str, str]]
    skipped: int
    done: int
    run_dir: str = field(compare=False)
    result: RunResult | None = field(default=None, compare=False, repr=False)


@dataclass
class Engine:
    name: str
    address: str | None = None
    cluster: Any = field(default=None, repr=False)

    def run(self, builder: str, scratch: Path, timeout: float = 120, **options: Any) -> Summary:
        """Run ``engine_workflows.<builder>()`` here; ``scratch`` is its $HPCFLOW_TEST_DIR."""
        scratch.mkdir(parents=True, exist_ok=True)
        os.environ["HPCFLOW_TEST_DIR"] = str(scratch)
        if self.name == "mpi":
            return self._run_cli(builder, scratch, timeout)
        import engine_workflows

        config = EngineConfig(engine=self.name, workers=WORKERS, address=self.address,
                              options=RunOptions(retry_delay=0.01, **options))
        result = run_workflow(getattr(engine_workflows, builder)(), config)
        failures = sorted((f.task, f.error) for f in result.failures)
        return _summary(result.status, {k: repr(v) for k, v in result.outputs.items()},
                        failures, result.skipped, result.done, result.run_dir, result)

    def _run_cli(self, builder: str, scratch: Path, timeout: float) -> Summary:
        env = cli_env(HPCFLOW_TEST_DIR=str(scratch))
        done = subprocess.run(
            [sys.executable, "-m", "hpcflow", "run", f"{WORKFLOWS}:{builder}", "--engine",
             "mpi", "--workers", str(WORKERS), "--json"],
            cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode in (0, 1), done.stderr
        data = json.loads(done.stdout)
        failures = sorted((f["task"], f["error"]) for f in data["failed"])
        return _summary(data["status"], data["outputs"], failures, data["skipped"],
                        data["done"], data["run_dir"])


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for ``python -m hpcflow`` in a subprocess: this checkout first on
    the path, whichever copy is installed."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, **extra)


def _summary(status: str, outputs: dict[str, str], failures: list[tuple[str, str]],
             skipped: int, done: int, run_dir: str, result: RunResult | None = None) -> Summary:
    outputs = {k: v.replace(run_dir, "<run>") for k, v in outputs.items()}
    return Summary(status, outputs, failures, skipped, done, run_dir, result)


def skip_unless_installed(name: str) -> None:
    package = EXTRA.get(name)
    if package and importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed: pip install -e '.[{name}]'")
    if name == "spark" and not (shutil.which("java") or os.environ.get("JAVA_HOME")):
        pytest.skip("Spark needs Java: apt-get install openjdk-17-jre-headless")
    if name == "mpi" and shutil.which("mpiexec") is None:
        pytest.skip("no mpiexec: pip install -e '.[mpich]'")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "engines(*names): run the test only with these engines")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect (not skip: nothing is missing) a test's runs on engines it is not about."""
    keep, drop = [], []
    for item in items:
        marker = item.get_closest_marker("engines")
        name = getattr(getattr(item, "callspec", None), "params", {}).get("engine")
        (drop if marker and name is not None and name not in marker.args else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session", params=ENGINES,
                ids=lambda name: "mpiexec" if name == "mpi" else name)  # pytest-mpi skips "mpi"
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    name = request.param
    skip_unless_installed(name)
    yield from STARTERS.get(name, _plain)(name)


def _plain(name: str) -> Iterator[Engine]:
    yield Engine(name)


def _dask(name: str) -> Iterator[Engine]:
    import distributed

    cluster = distributed.LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True,
                                       resources={"cores": 1}, dashboard_address=None,
                                       silence_logs=logging.ERROR)
    try:
        yield Engine(name, address=cluster.scheduler_address, cluster=cluster)
    finally:
        cluster.close()


def _ray(name: str) -> Iterator[Engine]:
    import ray

    ray.init(address="local", num_cpus=WORKERS, num_gpus=2, include_dashboard=False,
             logging_level=logging.WARNING)  # logical GPUs: the GPU test needs no device
    try:
        yield Engine(name)
    finally:
        ray.shutdown()


def _spark(name: str) -> Iterator[Engine]:
    from hpcflow.engine.backends.spark import start_context

    sc = start_context(f"local[{WORKERS}]")
    try:
        yield Engine(name, cluster=sc)
    finally:
        sc.stop()


STARTERS: dict[str, Callable[[str], Iterator[Engine]]] = {"dask": _dask, "ray": _ray,
                                                          "spark": _spark}


@pytest.fixture(scope="session")
def reference() -> Callable[[str, Path], Summary]:
    """The local engine's summary of a workflow, computed once per session."""
    cache: dict[str, Summary] = {}

    def get(builder: str, scratch: Path) -> Summary:
        if builder not in cache:
            cache[builder] = Engine("local").run(builder, scratch / "reference")
        return cache[builder]

    return get
