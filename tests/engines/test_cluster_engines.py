"""What is particular to the Dask, Ray and Spark backends: handles that keep results on
the cluster, resources, what Spark refuses, Ctrl-C, and a missing package."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import WORKFLOWS, cli_env, skip_unless_installed
from engine_workflows import LAYERS, WIDTH

import hpcflow as hf
from hpcflow.engine.backends import bundle, remote
from hpcflow.errors import EngineError, ResourceError
from hpcflow.store.journal import read_journal

pytestmark = pytest.mark.timeout(240)
CLUSTER_ENGINES = ("dask", "ray", "spark")


on = pytest.mark.engines  # run only with these of the session's engines (conftest.py)


@on(*CLUSTER_ENGINES)
def test_results_feeding_tasks_stay_on_the_cluster(engine, tmp_path, monkeypatch):
    """The 1.6 MB array reaches its two readers as a handle, never through the coordinator,
    which loads only the two (inline) outputs and sends no task payload near its size."""
    handles: list[int] = []
    payloads: list[int] = []
    loaded: list[str] = []
    real_swap, real_load = remote.swap, remote.load_result
    real_pack, real_payload = remote.pack_call, bundle.Bundle.payload

    def swap(call, refs, seen):
        before = len(refs)
        found = real_swap(call, refs, seen)
        handles.append(len(refs) - before)
        return found

    def load(stored):
        loaded.append(stored[0])
        return real_load(stored)

    def pack(*items):
        payloads.append(len(data := real_pack(*items)))
        return data

    def payload(self):
        payloads.append(len(data := real_payload(self)))
        return data

    monkeypatch.setattr(remote, "swap", swap)
    monkeypatch.setattr(bundle, "swap", swap)
    monkeypatch.setattr(remote, "load_result", load)
    monkeypatch.setattr(remote, "pack_call", pack)
    monkeypatch.setattr(bundle.Bundle, "payload", payload)
    got = engine.run("large", tmp_path)
    assert got.status == "succeeded"
    assert sum(handles) in (1, 2)  # once and twice each read it: one reference if bundled
    assert loaded == ["inline", "inline"]
    assert payloads and max(payloads) < 10_000


@on("dask", "ray")
def test_short_tasks_share_framework_tasks(engine, reference, tmp_path, monkeypatch):
    """Once tasks are known to be short, calls placed on one slot go as one framework
    task (a bundle) and sweeps as runs: far fewer Dask or Ray tasks than tasks."""
    tasks: list[bundle.Bundle] = []
    real = bundle.bundles

    def record(*args):
        found = real(*args)
        tasks.extend(found)
        return found

    monkeypatch.setattr(bundle, "bundles", record)
    got = engine.run("layered", tmp_path)
    assert got == reference("layered", tmp_path)
    members = [len(t.members) for t in tasks]
    assert sum(members) == LAYERS * WIDTH
    assert max(members) > 1 and len(tasks) < LAYERS * WIDTH // 2, members


def test_cores_above_a_share_never_oversubscribe(engine, tmp_path):
    if engine.name == "spark":
        with pytest.raises(EngineError, match=r"needs 2 cores.*spark.task.cpus"):
            engine.run("wide_and_narrow", tmp_path)
        return
    got = engine.run("wide_and_narrow", tmp_path)
    assert got.status == "succeeded"
    in_use = peak = 0
    lines = (tmp_path / "cores.log").read_text().splitlines()
    for _, kind, cores in sorted((float(t), k, int(c)) for k, _, c, t in map(str.split, lines)):
        in_use += cores if kind == "start" else -cores
        peak = max(peak, in_use)
    assert peak <= 2


@on("ray")
def test_ray_gpus_are_the_ones_ray_assigned(engine, tmp_path):
    """The session's Ray declares two (logical) GPUs; no two running tasks share one."""
    _assert_gpus_never_shared(engine.run("gpu_tasks", tmp_path).result.outputs["out0"])


@pytest.mark.slow
def test_dask_gpu_tasks_pinned_on_a_cluster_of_our_own(tmp_path):
    skip_unless_installed("dask")
    import engine_workflows

    result = hf.run(engine_workflows.gpu_tasks(), engine="dask", workers=2, gpus=("0", "1"))
    _assert_gpus_never_shared(result.outputs["out0"])


def _assert_gpus_never_shared(runs: list) -> None:
    assert {gpu for gpu, _, _ in runs} == {"0", "1"}
    for a in runs:
        for b in runs:
            overlap = a is not b and a[1] < b[2] and b[1] < a[2]
            assert not (overlap and a[0] == b[0]), "two running tasks shared a GPU"


@on("dask")
def test_dask_request_fits_what_workers_declare(engine, tmp_path):
    """A task that needs 3 GiB runs on workers that declare no memory (not requested)."""
    wf = hf.workflow("mem", outputs=[hf.task(len, memory="3G")([1, 2])])
    result = hf.run(wf, engine="dask", workers=2, address=engine.address)
    assert result.outputs == {"out0": 2}


@pytest.mark.parametrize("ask", [{"gpus": 1}, {"memory": "1G"}, {"ranks": 2}])
def test_spark_refuses_what_it_cannot_honour_before_anything_runs(ask, tmp_path):
    skip_unless_installed("spark")
    marker = tmp_path / "ran"
    first = hf.task(marker.write_text, name="first")("x")
    other = hf.shell("true", name="asks", **ask)() if "ranks" in ask else \
        hf.task(len, name="asks", **ask)([1])
    with pytest.raises(EngineError, match=r"task 'asks' asks for .* Spark engine cannot"):
        hf.run(hf.workflow("w", outputs=[first, other]), engine="spark", gpus=("0",))
    assert not marker.exists()


@on("ray")
def test_ray_task_bigger_than_the_cluster_is_refused(engine, tmp_path):
    with pytest.raises(ResourceError, match="huge"):
        hf.run(hf.workflow("w", outputs=[hf.task(len, cores=64, name="huge")([1])]),
               engine="ray")


@pytest.mark.parametrize("name, packages", [("dask", ("dask", "distributed")), ("ray", ("ray",)),
                                            ("spark", ("pyspark",))])
def test_missing_package_is_one_line_and_exit_3(name, packages, tmp_path):
    """Every package of the extra hidden, whichever of them this machine has."""
    code = (f"import sys; sys.modules.update(dict.fromkeys({packages!r})); "
            "from hpcflow.cli import main; sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", code, "run", f"{WORKFLOWS}:sweep_gather",
                           "--engine", name], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env=cli_env(HPCFLOW_RUNS=str(tmp_path / "runs")))
    assert done.returncode == 3
    assert done.stderr.strip().splitlines() == [
        f"hpcflow run: the {name} engine needs the Python package '{packages[0]}', which is not "
        f"installed: pip install 'hpcflow-mpi[{name}]'"]


@on("dask")
def test_dask_cli_address_and_ctrl_c_leave_the_cluster_running(engine, tmp_path):
    import distributed

    rc, after, _ = _interrupt(["--engine", "dask", "--address", engine.address], tmp_path)
    assert rc == 130 and after < 15
    with distributed.Client(engine.address, timeout=20) as client:
        assert client.submit(sum, [1, 2], pure=False).result(timeout=30) == 3
    assert _last_event(tmp_path) == ("end", "stopped")


@pytest.mark.slow
@pytest.mark.parametrize("name, extra", [("dask", []), ("ray", []),
                                         ("spark", ["--master", "local[2]"])])
def test_ctrl_c_stops_what_we_started(name, extra, tmp_path):
    skip_unless_installed(name)
    rc, after, children = _interrupt(["--engine", name, "--workers", "2", *extra], tmp_path)
    assert rc == 130 and after < 60
    assert children, "the engine started no process of its own"
    _, alive = psutil.wait_procs(children, timeout=20)
    assert not alive, f"left running: {[p.info for p in alive]}"
    assert _last_event(tmp_path) == ("end", "stopped")


@pytest.mark.slow
def test_cli_runs_on_an_own_spark_with_master(tmp_path):
    skip_unless_installed("spark")
    done = subprocess.run([sys.executable, "-m", "hpcflow", "run", f"{WORKFLOWS}:keyed",
                           "--engine", "spark", "--master", "local[2]", "--json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=180,
                          env=cli_env(HPCFLOW_RUNS=str(tmp_path / "runs")))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["outputs"]["sum_a"] == "6"


def _interrupt(options: list[str], scratch: Path) -> tuple[int, float, list[psutil.Process]]:
    """Start the naps workflow through the CLI, SIGINT it once a task has started; its
    exit code, seconds from the signal to its exit, and the processes it had started."""
    env = cli_env(HPCFLOW_RUNS=str(scratch / "runs"), HPCFLOW_TEST_DIR=str(scratch))
    with open(scratch / "out.log", "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hpcflow", "run", f"{WORKFLOWS}:naps",
                                 *options], cwd=scratch, env=env, stdout=out, stderr=out)
        try:
            deadline = time.monotonic() + 150
            while not list(scratch.glob("started-*")):
                assert proc.poll() is None, (scratch / "out.log").read_text()
                assert time.monotonic() < deadline, "no task started"
                time.sleep(0.1)
            children = psutil.Process(proc.pid).children(recursive=True)
            proc.send_signal(signal.SIGINT)
            sent = time.monotonic()
            rc = proc.wait(timeout=90)
            return rc, time.monotonic() - sent, children
        finally:
            if proc.poll() is None:
                proc.kill()


def _last_event(scratch: Path) -> tuple:
    [run] = (scratch / "runs").iterdir()
    return tuple(list(read_journal(run / "journal.bin"))[-1][:2])


@on("dask")
def test_a_dask_cluster_s_gpu_ids_are_each_worker_s_own(engine):
    """Slots of a running cluster take the GPU ids each worker sees (as Slurm's
    --gpus-per-task sets them for the workers a batch job starts), not the client's."""
    import distributed

    from hpcflow.engine.backends.dask import _cluster_slots

    workers = {f"w{k}": {"cls": distributed.Nanny, "options": {
        "nthreads": 1, "resources": {"cores": 1, "gpus": 1}, "host": "127.0.0.1",
        "env": {"CUDA_VISIBLE_DEVICES": str(k + 5)}}} for k in range(2)}
    scheduler = {"cls": distributed.Scheduler, "options": {"host": "127.0.0.1", "port": 0,
                                                            "dashboard_address": ":0"}}
    with distributed.SpecCluster(workers=workers, scheduler=scheduler) as cluster, \
            distributed.Client(cluster, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=60)
        slots, _, declared = _cluster_slots(client)
    assert sorted(slot.gpus for slot in slots) == [("5",), ("6",)]
    assert declared["gpus"] == 1.0
