"""The MPI engine seen from outside: the parent starts ``mpiexec`` (always with a
timeout) and checks exit codes, outputs, journals and leftover processes; plus the
pure parts (shares, launchers, relaunch command) without MPI.

Random DAGs are drawn here, in the parent, with a seeded generator, written out and
run under ``mpiexec``: never drawn inside the ranks, which would each draw their own.
This process never initialises MPI itself.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

import hpcflow as hf
from hpcflow.engine.mpi.discover import Machine, NodeView, share, split_ids
from hpcflow.engine.mpi.launch import in_allocation, relaunch_command, task_launcher
from hpcflow.engine.mpi.settings import Settings
from hpcflow.store.journal import Event, read_journal

REPO = Path(__file__).resolve().parents[1]
MPIEXEC = shutil.which("mpiexec")
needs_mpiexec = pytest.mark.skipif(
    MPIEXEC is None, reason="mpiexec not found: `pip install mpich` (or load your site's MPI)")
pytestmark = pytest.mark.timeout(300)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env.update(extra)
    return env


def mpiexec(ranks: int, script: Path, *args: str, timeout: float = 120,
            **env: str) -> subprocess.CompletedProcess[str]:
    assert MPIEXEC is not None
    return subprocess.run([MPIEXEC, "-n", str(ranks), sys.executable, str(script), *args],
                          cwd=script.parent, env=_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


# -- random DAGs: the MPI engine gives what the local engine gives -------------------

DAG_SCRIPT = """
    import json, sys
    import hpcflow as hf
    from mpi4py import MPI

    def node(i, *inputs, scale=1):  # a swept input arrives gathered, as a list
        flat = [v for x in inputs for v in (x if isinstance(x, list) else [x])]
        return (i * 7919 + scale * sum(flat)) % 1000003

    def build(spec):
        refs = []
        for i, (preds, sweep) in enumerate(spec):
            ins = [refs[p] for p in preds]
            if sweep:
                refs.append(hf.task(node, name=f"n{i}").sweep({"scale": list(range(1, sweep + 1))},
                                                                i, *ins))
            else:
                refs.append(hf.task(node, name=f"n{i}")(i, *ins))
        return hf.workflow("dag", outputs={f"n{i}": r for i, r in enumerate(refs)})

    dags = json.load(open(sys.argv[1]))
    engine = sys.argv[3]
    outputs = [hf.run(build(spec), engine=engine, workers=None if engine == "mpi" else 2).outputs
               for spec in dags]
    if engine == "local" or MPI.COMM_WORLD.rank == 0:
        json.dump(outputs, open(sys.argv[2], "w"))
"""


def random_dags(seed: int, count: int) -> list[list[tuple[list[int], int]]]:
    """Each DAG: per node, its predecessors (earlier nodes) and a sweep size (0: none)."""
    rng = random.Random(seed)
    dags = []
    for _ in range(count):
        n = rng.randint(1, 40)
        dags.append([(sorted(rng.sample(range(i), min(i, rng.randint(0, 3)))),
                      rng.choice([0, 0, 0, 2, 5])) for i in range(n)])
    return dags


@needs_mpiexec
@pytest.mark.slow
@pytest.mark.parametrize("ranks", [2, 4])
def test_random_dags_give_the_local_engines_results(tmp_path, ranks):
    dags = random_dags(seed=20240 + ranks, count=6)
    (tmp_path / "dags.json").write_text(json.dumps(dags))
    script = write(tmp_path, "dag.py", DAG_SCRIPT)
    local = subprocess.run([sys.executable, str(script), "dags.json", "local.json", "local"],
                           cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert local.returncode == 0, local.stderr
    proc = mpiexec(ranks, script, "dags.json", "mpi.json", "mpi")
    assert proc.returncode == 0, proc.stderr
    mpi = json.loads((tmp_path / "mpi.json").read_text())
    assert mpi == json.loads((tmp_path / "local.json").read_text())
    assert sum(len(o) for o in mpi) == sum(len(d) for d in dags)


# -- one run of many features under mpiexec -n 3 ------------------------------------

FEATURES_SCRIPT = """
    import json, os, sys, time
    import hpcflow as hf
    from mpi4py import MPI

    def allsum(x, comm):
        return comm.allreduce(x), comm.size

    def gpus(i):
        return os.environ.get("CUDA_VISIBLE_DEVICES")

    def hold(tag):
        time.sleep(0.3)
        return tag

    shell_program = ("import os; from mpi4py import MPI; c = MPI.COMM_WORLD; "
                     "open(os.path.join(os.environ['HPCFLOW_TASK_DIR'], 'r%d-%d' % (c.rank, c.size)), 'w')")
    wf = hf.workflow("features", outputs={
        "allsum": hf.task(allsum, ranks=2)(5),
        "shell": hf.shell(["python", "-c", shell_program], ranks=2, timeout=60, name="sh")(),
        "gpus": hf.task(gpus, gpus=1).sweep({"i": range(4)}).all(),
        "wide": hf.task(hold, cores=2, name="wide")("w"),
        "narrow": hf.task(hold, name="narrow").sweep({"tag": range(4)}).all(),
    })
    result = hf.run(wf, engine="mpi", gpus=("0", "1", "2", "3"))
    if MPI.COMM_WORLD.rank == 0:
        json.dump({"outputs": result.outputs, "run_dir": result.run_dir}, open("out.json", "w"))
"""


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    if MPIEXEC is None:
        pytest.skip("mpiexec not found: `pip install mpich` (or load your site's MPI)")
    folder = tmp_path_factory.mktemp("features")
    proc = mpiexec(3, write(folder, "features.py", FEATURES_SCRIPT),
                   HPCFLOW_RUNS=str(folder / "runs"), HPCFLOW_CORES_PER_WORKER="1")
    assert proc.returncode == 0, proc.stderr
    return json.loads((folder / "out.json").read_text())


@pytest.mark.slow  # the shared mpiexec run takes about 2.5 s
def test_python_task_with_two_ranks_gets_a_two_rank_communicator(features):
    assert features["outputs"]["allsum"] == [10, 2]


@pytest.mark.slow  # the shared mpiexec run takes about 2.5 s
def test_shell_task_with_two_ranks_runs_two_processes(features):
    folder = Path(features["run_dir"]) / "tasks" / "sh"
    assert sorted(p.name for p in folder.glob("r*-*")) == ["r0-2", "r1-2"]


@pytest.mark.slow  # the shared mpiexec run takes about 2.5 s
def test_gpu_task_sees_one_of_its_workers_pinned_ids(features):
    seen = features["outputs"]["gpus"]  # 4 fake ids, 2 per worker: a 1-GPU task holds one
    assert all(g in ("0", "2") for g in seen), seen


@pytest.mark.slow  # the shared mpiexec run takes about 2.5 s
def test_two_core_task_holds_two_one_core_ranks_and_nothing_oversubscribes(features):
    events = list(read_journal(Path(features["run_dir"]) / "journal.bin"))
    names = {g["start"]: g["name"] for g in
             json.loads((Path(features["run_dir"]) / "groups.json").read_text())}
    wide_id = next(i for i, name in names.items() if name == "wide")
    done = {e[1]: (e[4], e[5]) for e in events if e[0] == Event.DONE}
    wide = done[wide_id]
    narrow_ids = [i for i, name in names.items() if name == "narrow"]
    narrow_start = min(narrow_ids)
    overlapping = [i for i, (s, e) in done.items() if narrow_start <= i < narrow_start + 4
                   and s < wide[1] - 0.01 and e > wide[0] + 0.01]
    assert not overlapping, "a 1-core task ran beside the 2-core task on a 2-worker run"


# -- failure, signals, worker death ---------------------------------------------------

FAIL_SCRIPT = """
    import hpcflow as hf

    def boom(x):
        if x == 2:
            raise ValueError("boom at two")
        return x

    hf.run(hf.workflow("fail", outputs=[hf.task(boom).sweep({"x": range(5)}).all()]), engine="mpi")
"""


@needs_mpiexec
def test_failing_task_ends_the_run_with_a_nonzero_exit_and_names_the_task(tmp_path):
    proc = mpiexec(3, write(tmp_path, "fail.py", FAIL_SCRIPT), timeout=60)
    assert proc.returncode != 0
    assert "boom[2]" in proc.stderr and "boom at two" in proc.stderr


SLOW_SCRIPT = """
    import sys, time
    import hpcflow as hf

    def nap(x):
        time.sleep(120)

    sleepers = hf.shell("sleep {s}", name="sleeper").sweep({"s": [117.25, 117.5]})
    naps = hf.task(nap).sweep({"x": range(4)})
    hf.run(hf.workflow("slow", outputs=[sleepers.all(), naps.all()]), engine="mpi",
           run_dir=sys.argv[1])
"""


def _wait_for(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _dispatched(run_dir: Path) -> int:
    return sum(1 for e in read_journal(run_dir / "journal.bin") if e[0] == Event.DISPATCH)


def _leftovers(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if marker in cmdline and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


@needs_mpiexec
@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_every_rank_cleanly(tmp_path, signum):
    run_dir = tmp_path / "run"
    script = write(tmp_path, "slow.py", SLOW_SCRIPT)
    assert MPIEXEC is not None
    proc = subprocess.Popen([MPIEXEC, "-n", "3", sys.executable, str(script), str(run_dir)],
                            cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for(lambda: _dispatched(run_dir) >= 2, 60), "nothing was dispatched"
        started = time.monotonic()
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert time.monotonic() - started < 30
    assert proc.returncode != 0
    events = list(read_journal(run_dir / "journal.bin"))
    assert events[-1][0] == Event.END and events[-1][1] == "stopped", err
    assert "interrupted by" in err
    assert _wait_for(lambda: not _leftovers("117.25") and not _leftovers(str(script)), 30)


DEATH_SCRIPT = """
    import os, signal, sys, time
    import hpcflow as hf

    def die(x):
        if x == 3:
            time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGKILL)
        return x

    hf.run(hf.workflow("death", outputs=[hf.task(die).sweep({"x": range(6)}).all()]),
           engine="mpi", run_dir=sys.argv[1])
"""


@needs_mpiexec
def test_worker_death_ends_mpiexec_and_its_task_was_journalled(tmp_path):
    run_dir = tmp_path / "run"
    proc = mpiexec(3, write(tmp_path, "death.py", DEATH_SCRIPT), str(run_dir), timeout=60)
    assert proc.returncode != 0
    dispatched = {e[1] for e in read_journal(run_dir / "journal.bin") if e[0] == Event.DISPATCH}
    assert 3 in dispatched


# -- launching ------------------------------------------------------------------------

def test_mpi_engine_in_a_single_process_says_how_to_start_it(tmp_path):
    code = textwrap.dedent("""
        import hpcflow as hf
        wf = hf.workflow("one", outputs=[hf.task(abs)(-1)])
        hf.run(wf, engine="mpi", workers=2)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "EngineError" in proc.stderr and "mpiexec -n" in proc.stderr
    assert "hpcflow run --engine mpi --workers" in proc.stderr


SPEC = """
    name: relaunched
    tasks:
      - id: square
        python: builtins:pow
        args: [3, 2]
    outputs:
      nine: "${square}"
"""


@needs_mpiexec
@pytest.mark.slow
def test_cli_without_mpiexec_relaunches_itself_with_one_rank_per_worker(tmp_path):
    spec = write(tmp_path, "wf.yaml", SPEC)
    proc = subprocess.run([sys.executable, "-m", "hpcflow", "run", "--engine", "mpi", "--workers",
                           "2", "--run-dir", str(tmp_path / "run"), "--json", str(spec)],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    first = next(read_journal(tmp_path / "run" / "journal.bin"))
    assert first[0] == Event.RUN and first[1]["engine"] == "mpi" and first[1]["workers"] == 2


def test_relaunch_command_reruns_the_cli_under_mpiexec(monkeypatch):
    monkeypatch.setenv("HPCFLOW_MPIEXEC", "/opt/mpi/bin/mpiexec")
    command = relaunch_command(["/usr/bin/hpcflow", "run", "--workers", "3", "wf.yaml"], 3)
    assert command == ["/opt/mpi/bin/mpiexec", "-n", "4", sys.executable, "-m", "hpcflow",
                       "run", "--workers", "3", "wf.yaml"]
    with pytest.raises(hf.EngineError, match="at least 1"):
        relaunch_command(["hpcflow"], 0)


def test_shell_task_launcher_outside_and_inside_an_allocation(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    outside = task_launcher(Settings(), env={})
    assert outside(2) == ["/usr/bin/mpiexec", "-n", "2"]
    inside_env = {"SLURM_JOB_ID": "42", "SLURMD_NODENAME": "n1"}
    assert in_allocation(inside_env) and not in_allocation({"SLURM_JOB_ID": "42"})
    assert task_launcher(Settings(), env=inside_env)(3) == [
        "srun", "--overlap", "--mem=0", "-N", "1", "-n", "3", "--nodelist=n1", "--cpu-bind=none"]
    custom = Settings(launcher="mpiexec -launcher fork -n {ranks}")
    assert task_launcher(custom, env=inside_env)(4) == ["mpiexec", "-launcher", "fork", "-n", "4"]


# -- shares of a node ----------------------------------------------------------------

MACHINE = Machine(cpus=16, memory=64 * 2**30)


def test_share_divides_the_node_among_its_worker_ranks():
    view = NodeView("n1", workers=4, local_index=1)
    assert share(view, {}, Settings(), MACHINE) == (4, (), 16 * 2**30)
    assert share(view, {}, Settings(cores_per_worker=2), MACHINE)[0] == 2
    assert share(view, {}, Settings(), MACHINE, gpus=("a", "b", "c", "d", "e", "f", "g", "h"),
                 memory=8 * 2**30) == (4, ("c", "d"), 2 * 2**30)


def test_share_follows_slurm():
    view = NodeView("n1", workers=2, local_index=1)
    env = {"SLURM_CPUS_PER_TASK": "3", "SLURM_MEM_PER_CPU": "1000", "SLURM_JOB_GPUS": "4,5"}
    assert share(view, env, Settings(), MACHINE) == (3, ("5",), 3000 * 2**20)
    env = {"SLURM_CPUS_ON_NODE": "8", "SLURM_MEM_PER_NODE": "4000",
           "CUDA_VISIBLE_DEVICES": "0,1", "SLURM_JOB_GPUS": "6,7"}
    assert share(view, env, Settings(), MACHINE) == (4, ("1",), 2000 * 2**20)
    own = {"SLURM_GPUS_PER_TASK": "1", "CUDA_VISIBLE_DEVICES": "0"}
    assert share(view, own, Settings(), MACHINE)[1] == ("0",)  # Slurm gave this rank its own
    assert share(view, {"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, Settings(), MACHINE)[1] == ()


def test_fewer_gpu_ids_than_workers_go_one_each_to_the_first():
    assert [split_ids(["0", "1"], 3, i) for i in range(3)] == [("0",), ("1",), ()]
    assert split_ids(["0", "1", "2", "3", "4"], 2, 1) == ("2", "3")
    assert split_ids(["0"], 1, -1) == ()


# -- data beyond 2 GiB ---------------------------------------------------------------

BIG_SCRIPT = """
    import json, sys
    import numpy as np
    import hpcflow as hf
    from mpi4py import MPI

    def make(n):
        a = np.zeros(n, dtype=np.uint8)
        a[-1] = 7
        return a

    def check(a):
        return int(a.shape[0]), int(a[-1]), int(a[::4096].sum())

    n = int(2.1e9)
    result = hf.run(hf.workflow("big", outputs={"c": hf.task(check)(hf.task(make)(n))}), engine="mpi")
    if MPI.COMM_WORLD.rank == 0:
        json.dump(result.outputs["c"], open("big.json", "w"))
"""


@needs_mpiexec
@pytest.mark.slow
def test_array_beyond_2_gib_travels_between_ranks(tmp_path):
    if psutil.virtual_memory().available < 12 * 2**30:
        pytest.skip("needs about 12 GiB of free memory (a 2.1 GB array in four places)")
    proc = mpiexec(2 + 1, write(tmp_path, "big.py", BIG_SCRIPT), timeout=280,
                   HPCFLOW_RUNS=str(tmp_path / "runs"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "big.json").read_text()) == [2_100_000_000, 7, 0]


# -- under Slurm: srun and mpiexec inside a batch job ---------------------------------

SLURM_SCRIPT = """
    import json, os, sys
    import hpcflow as hf
    from mpi4py import MPI

    def allsum(x, comm):
        return comm.allreduce(x), comm.size

    def visible(i):
        return os.environ.get("CUDA_VISIBLE_DEVICES")

    program = ("import os; from mpi4py import MPI; c = MPI.COMM_WORLD; name = 'r%d-%d' % "
               "(c.rank, c.size); open(os.path.join(os.environ['HPCFLOW_TASK_DIR'], name), 'w')")
    wf = hf.workflow("slurm", outputs={
        "allsum": hf.task(allsum, ranks=2)(5),
        "shell": hf.shell(["python", "-c", program], ranks=2, timeout=60, name="sh")(),
        "gpus": hf.task(visible, gpus=1).sweep({"i": range(2)}).all(),
    })
    result = hf.run(wf, engine="mpi", run_dir=sys.argv[1])
    if MPI.COMM_WORLD.rank == 0:
        json.dump(result.outputs, open(sys.argv[2], "w"))
"""


def _slurm_ready() -> str | None:
    """None when the local cluster takes jobs with 2 GPUs a node, else why not."""
    status = REPO / "slurm" / "status.sh"
    try:
        up = subprocess.run([str(status), "-q"], capture_output=True, timeout=30).returncode == 0
        gres = subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True,
                              timeout=30).stdout if up else ""
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"slurm/status.sh could not run: {exc}"
    if not up:
        return "local Slurm cluster not up; start it with: sudo slurm/install.sh && sudo slurm/start.sh"
    return None if "gpu:2" in gres or "gpu:" in gres else "the cluster has no GPUs (start.sh --gpus 2)"


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["srun --mpi=pmi2", "mpiexec"])
def test_engine_runs_under_slurm_with_its_gpus_and_nested_launches(tmp_path, launcher):
    why = _slurm_ready()
    if why:
        if os.environ.get("HPCFLOW_REQUIRE_SLURM") == "1":
            pytest.fail(f"{why} (HPCFLOW_REQUIRE_SLURM=1: failing instead of skipping)")
        pytest.skip(why)
    script = write(tmp_path, "wf.py", SLURM_SCRIPT)
    word = shutil.which(launcher.split()[0]) or launcher.split()[0]
    job = write(tmp_path, "job.sh", f"""\
        #!/bin/bash
        #SBATCH -N 1 -n 3 --overcommit --gres=gpu:2 -t 2 -o {tmp_path}/job.out
        export PYTHONPATH={REPO}
        timeout 100 {word} {launcher.partition(' ')[2]} -n 3 {sys.executable} {script} \\
            {tmp_path}/run {tmp_path}/out.json
    """)
    done = subprocess.run(["sbatch", "--wait", "--parsable", str(job)], capture_output=True,
                          text=True, timeout=240, cwd=tmp_path)
    log = (tmp_path / "job.out").read_text() if (tmp_path / "job.out").exists() else ""
    assert done.returncode == 0, done.stderr + log
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["allsum"] == [10, 2]
    groups = json.loads((tmp_path / "run" / "groups.json").read_text())
    first = next(g["start"] for g in groups if g["name"] == "visible")
    worker_of = {e[1]: e[3] for e in read_journal(tmp_path / "run" / "journal.bin")
                 if e[0] == Event.DONE}
    for i, seen in enumerate(out["gpus"]):  # Slurm's two GPUs, one per worker rank
        assert seen == str(worker_of[first + i])
    shell_files = sorted(p.name for p in (tmp_path / "run" / "tasks" / "sh").glob("r*-*"))
    assert shell_files == ["r0-2", "r1-2"]  # started from a worker with the nested-step recipe
