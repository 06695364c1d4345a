"""Real submissions to the local Slurm cluster (``slurm/start.sh``), and following jobs.

The ``slurm``-marked tests submit with ``hpcflow submit`` and check what the workflow
wrote into its run folder and what Slurm recorded (``scontrol show job``, ``sacct``).
They skip, naming how to start the cluster, when ``slurm/status.sh`` says it is down,
and fail instead when ``HPCFLOW_REQUIRE_SLURM=1`` (CI). Polls are at least 2 s apart and
bounded by a timeout; every subprocess has a timeout. The first tests need no cluster:
they drive :func:`job_state`'s fallbacks with recorded Slurm answers.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from hpcflow.engine import walltime
from hpcflow.engine.walltime import signal_marker
from hpcflow.scheduler.slurm import follow
from hpcflow.scheduler.slurm._cmd import run_slurm
from hpcflow.scheduler.slurm.errors import SlurmError
from hpcflow.scheduler.slurm.script import NEXT_NAME
from hpcflow.store.journal import Event, read_journal

ROOT = Path(__file__).resolve().parent.parent
SWEEP = ROOT / "examples" / "sweep" / "workflow.yaml"
POLL = 2.0
JOB_TIMEOUT = 240.0


# --- job_state with recorded answers (no cluster needed) -------------------------------

class Recorded:
    """Stands in for run_slurm: answers by command name, and counts the calls."""

    def __init__(self, **answers: tuple[int, str, str]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def __call__(self, argv):
        self.calls.append(argv[0])
        if argv[0] not in self.answers:
            raise SlurmError(f"'{argv[0]}' not found")
        rc, out, err = self.answers[argv[0]]
        return subprocess.CompletedProcess(argv, rc, out, err)


def _info(tmp_path: Path) -> dict:
    (tmp_path / "batch").mkdir(exist_ok=True)
    return {"slurm_job_id": "42", "run_dir": str(tmp_path)}


def test_job_state_reads_sacct_and_is_polite(tmp_path):
    run = Recorded(sacct=(0, "42|RUNNING|0:0|00:00:07|2|cpu=4,mem=18000M,node=2|n[1-2]|None\n", ""))
    info = _info(tmp_path)
    first = follow.job_state(info, run=run, now=1000.0)
    assert first["state"] == "RUNNING" and first["source"] == "sacct" and first["nodes"] == 2
    again = follow.job_state(info, run=run, now=1009.0)  # within 10 s: the cached answer
    assert again["cached"] and again["state"] == "RUNNING" and run.calls == ["sacct"]
    follow.job_state(info, run=run, now=1010.5)
    assert run.calls == ["sacct", "sacct"]


def test_job_state_falls_back_to_squeue_and_remembers_accounting_is_off(tmp_path):
    run = Recorded(sacct=(1, "", "sacct: error: Slurm accounting storage is disabled"),
                   squeue=(0, "42|PENDING|Resources|0:00|1|\n", ""))
    info = _info(tmp_path)
    state = follow.job_state(info, run=run, now=0.0)
    assert (state["state"], state["reason"], state["source"]) == ("PENDING", "Resources", "squeue")
    follow.job_state(info, run=run, now=20.0)
    assert run.calls == ["sacct", "squeue", "squeue"]  # sacct is not asked again


def test_job_state_falls_back_to_scontrol_then_unknown(tmp_path):
    done = ("JobId=42 JobName=w JobState=COMPLETED Reason=None ExitCode=0:0 RunTime=00:00:03 "
            "NumNodes=1 NumCPUs=2 NodeList=n1 TRES=cpu=2,mem=1G,node=1\n")
    run = Recorded(sacct=(1, "", "accounting storage is disabled"), squeue=(1, "", "Invalid job id"),
                   scontrol=(0, done, ""))
    state = follow.job_state(_info(tmp_path), run=run, now=0.0)
    assert (state["state"], state["source"], state["final"]) == ("COMPLETED", "scontrol", True)
    assert state["tres"] == "cpu=2,mem=1G,node=1"
    follow.job_state(_info(tmp_path), run=run, now=1e6)
    assert run.calls.count("scontrol") == 1  # a final state is never asked about again
    gone = Recorded(sacct=(1, "", "disabled"), squeue=(1, "", ""), scontrol=(1, "", "Invalid job id"))
    state = follow.job_state({"slurm_job_id": "43"}, run=gone)
    assert state["state"] == "UNKNOWN" and "no longer knows job 43" in state["error"]


def test_job_state_never_fails_when_slurm_is_missing():
    state = follow.job_state({"slurm_job_id": "7"}, run=Recorded())
    assert state["state"] == "UNKNOWN" and "not found" in state["error"]
    assert follow.job_state({}) == {}


def test_describe_says_it_in_one_line():
    state = {"job_id": "12", "state": "PENDING", "reason": "Resources", "source": "squeue"}
    assert follow.describe(state) == "Slurm job 12: PENDING (Resources) [squeue]"
    done = {"job_id": "12", "state": "COMPLETED", "final": True, "nodes": 2,
            "node_list": "n[1-2]", "elapsed": "00:00:05", "exit_code": "0:0", "source": "sacct"}
    assert follow.describe(done) == ("Slurm job 12: COMPLETED on 2 node(s) n[1-2] after "
                                     "00:00:05 exit 0:0 [sacct]")
    assert follow.describe({}) == ""


def test_the_chain_follows_the_continuations_the_script_noted(tmp_path):
    info = {**_info(tmp_path), "slurm_jobs": ["40", "41"]}
    for job, following in (("42", "43"), ("43", "44"), ("44", "nonsense"), ("30", "31")):
        (tmp_path / "batch" / NEXT_NAME.format(job=job)).write_text(f"{following}\n")
    assert follow.chain(info) == ["40", "41", "42", "43", "44"]
    run = Recorded(sacct=(0, "44|PENDING|0:0|00:00:00|2||None assigned|Dependency\n", ""))
    state = follow.job_state(info, run=run, now=0.0)
    assert (state["job_id"], state["state"], state["chain"][-1]) == ("44", "PENDING", "44")
    assert follow.describe(state).endswith("(job 5 of its chain: 40, 41, 42, 43, 44) [sacct]")
    argv: list[list[str]] = []
    follow.cancel_job(info, run=lambda a: argv.append(a) or subprocess.CompletedProcess(a, 0, "", ""))
    assert argv == [["scancel", "42", "43", "44"]]  # the run's job and its continuations
    assert follow.chain({"run_dir": str(tmp_path)}) == []


def test_a_folder_submit_prepared_is_accepted_once_and_keeps_the_job_id(tmp_path):
    from hpcflow.errors import RunDirError
    from hpcflow.store.rundir import RunDir

    folder = tmp_path / "run"
    (folder / "batch").mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"status": "submitted", "slurm_job_id": "5",
                                                 "run_dir": str(folder)}))
    run = RunDir.create("wf", path=folder)
    run.write_info({"workflow": "wf", "status": "running"})
    info = run.read_info()
    assert info["status"] == "running" and info["slurm_job_id"] == "5"
    with pytest.raises(RunDirError, match="not empty"):
        RunDir.create("wf", path=folder)  # no longer "submitted": a second run is refused
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("")
    with pytest.raises(RunDirError, match="not empty"):
        RunDir.create("wf", path=tmp_path / "other")


# --- the real cluster -----------------------------------------------------------------

def test_submit_resume_refuses_a_run_in_use_and_keeps_it(tmp_path):
    from hpcflow.errors import RunDirError
    from hpcflow.scheduler.slurm.submit import resubmit
    from hpcflow.store.rundir import RunDir

    run = RunDir.create("w", path=tmp_path / "run")
    run.write_info({"workflow": "w", "status": "running"})
    run.lock()
    try:
        with pytest.raises(RunDirError, match="in use by a live run"):
            resubmit(None, None, None, None, str(run.path), run=Recorded())  # type: ignore[arg-type]
    finally:
        run.unlock()
    assert json.loads((run.path / "run.json").read_text())["status"] == "running"


@pytest.fixture(scope="module")
def cluster() -> dict[str, str]:
    try:
        done = subprocess.run([str(ROOT / "slurm" / "status.sh"), "--env"], capture_output=True,
                              text=True, timeout=30)
        said, ok = done.stdout.strip() or done.stderr.strip(), done.returncode == 0
    except (OSError, subprocess.TimeoutExpired) as exc:
        said, ok = f"slurm/status.sh could not run: {exc}", False
    if not ok:
        reason = (f"local Slurm cluster not up ({said.splitlines()[0] if said else 'no answer'}); "
                  "start it with: sudo slurm/install.sh && sudo slurm/start.sh")
        if os.environ.get("HPCFLOW_REQUIRE_SLURM") == "1":
            pytest.fail(f"{reason} (HPCFLOW_REQUIRE_SLURM=1: failing instead of skipping)")
        pytest.skip(reason)
    return dict(line.split("=", 1) for line in done.stdout.splitlines()[1:] if "=" in line)


def hpcflow(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, HPCFLOW_RUNS=str(cwd / "runs"))
    return subprocess.run([sys.executable, "-m", "hpcflow", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def submit(target: Path | str, *options: str, cwd: Path) -> dict:
    done = hpcflow("submit", "--json", str(target), *options, cwd=cwd)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["job_id"].isdigit() and "Job" in (result["checked"] or "")
    return result


def wait_final(run_dir: str, timeout: float = JOB_TIMEOUT) -> dict:
    """Poll the job (every 2 s) until Slurm reports a final state."""
    info = json.loads((Path(run_dir) / "run.json").read_text())
    deadline = time.monotonic() + timeout
    while True:
        state = follow.job_state(info, min_interval=POLL)
        if state.get("final"):
            return state
        assert time.monotonic() < deadline, f"job {info['slurm_job_id']} still {state} after {timeout} s"
        time.sleep(POLL)


def scontrol_job(job: str) -> dict[str, str]:
    done = run_slurm(["scontrol", "show", "job", "-o", job])
    return dict(w.split("=", 1) for w in done.stdout.split() if "=" in w)


def sacct_job(job: str, timeout: float = 30.0) -> dict[str, str]:
    """The allocation's sacct record, polled until it is final (sacct lags a few s)."""
    fields = ["JobID", "State", "AllocTRES", "NNodes", "ExitCode"]
    deadline = time.monotonic() + timeout
    while True:
        done = run_slurm(["sacct", "-j", job, "-X", "-n", "-P", f"--format={','.join(fields)}"])
        rows = [dict(zip(fields, line.split("|"), strict=False)) for line in done.stdout.splitlines()]
        row = next((r for r in rows if r.get("JobID") == job), None)
        if row and row["State"].split()[0] in follow.FINAL_STATES and row["AllocTRES"]:
            return row
        assert time.monotonic() < deadline, f"sacct has no final record of job {job}: {rows}"
        time.sleep(POLL)


def tres(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(",") if "=" in item)


def run_info(run_dir: str) -> dict:
    return json.loads((Path(run_dir) / "run.json").read_text())


@pytest.mark.slurm
@pytest.mark.slow
def test_submit_the_sweep_on_two_nodes(cluster, tmp_path):
    mem_mb = int(cluster["HPCFLOW_SLURM_MEM_PER_NODE_MB"])
    cpus = int(cluster["HPCFLOW_SLURM_CPUS_PER_NODE"])
    result = submit(SWEEP, "--nodes", "2", cwd=tmp_path)
    job, run_dir = result["job_id"], result["run_dir"]
    assert Path(run_dir).stat().st_mode & 0o077 == 0  # private
    assert wait_final(run_dir)["state"] == "COMPLETED"
    info = run_info(run_dir)
    assert info["status"] == "succeeded" and info["slurm_job_id"] == job and info["engine"] == "mpi"
    assert info["workers"] == 2 * cpus - 1
    fastest = Path(run_dir) / "tasks" / "rank" / "fastest.csv"
    assert len(fastest.read_text().splitlines()) == 3
    out = (Path(run_dir) / "batch" / f"slurm-{job}.out").read_text()
    assert "succeeded: 17 task(s) done" in out
    shown = scontrol_job(job)
    assert shown["NumNodes"] == "2" and shown["NumCPUs"] == str(2 * cpus)
    assert tres(shown["TRES"])["mem"] == f"{2 * mem_mb}M" and tres(shown["TRES"])["node"] == "2"
    record = sacct_job(job)
    assert record["State"] == "COMPLETED" and record["NNodes"] == "2"
    assert tres(record["AllocTRES"])["cpu"] == str(2 * cpus)
    deadline = time.monotonic() + 60  # as without accounting: squeue, then scontrol
    while (fallback := follow._query(job, run_slurm, accounting=False)[0])[
            "state"] not in follow.FINAL_STATES:
        assert time.monotonic() < deadline, fallback
        time.sleep(POLL)
    assert fallback["state"] == "COMPLETED" and fallback["source"] in ("squeue", "scontrol")
    assert fallback["nodes"] == 2


@pytest.mark.slurm
@pytest.mark.slow
def test_submit_with_a_memory_request_on_one_node(cluster, tmp_path):
    result = submit(SWEEP, "--nodes", "1", "--mem", "3G", cwd=tmp_path)
    assert wait_final(result["run_dir"])["state"] == "COMPLETED"
    assert run_info(result["run_dir"])["status"] == "succeeded"
    shown = scontrol_job(result["job_id"])
    assert shown["NumNodes"] == "1" and tres(shown["TRES"])["mem"] == "3G"
    record = sacct_job(result["job_id"])
    assert tres(record["AllocTRES"])["mem"] == "3G" and record["NNodes"] == "1"


GPU_WORKFLOW = """\
name: gpu-probe
defaults:
  resources: {cores: 1, gpus: 1, memory: 100M, time: 10s}
tasks:
  - id: probe
    shell: "echo {i} > /dev/null; printf '%s' \\"$CUDA_VISIBLE_DEVICES\\" > {out}"
    sweep: {product: {i: [0, 1]}}
    outputs: {out: gpu.txt}
"""


@pytest.mark.slurm
@pytest.mark.slow
def test_submit_gpu_tasks(cluster, tmp_path):
    if int(cluster["HPCFLOW_SLURM_GPUS_PER_NODE"]) < 1:
        pytest.skip("the local cluster has no GPUs: sudo slurm/start.sh --gpus 2")
    spec = tmp_path / "gpu.yaml"
    spec.write_text(GPU_WORKFLOW)
    result = submit(spec, cwd=tmp_path)
    assert wait_final(result["run_dir"])["state"] == "COMPLETED"
    assert run_info(result["run_dir"])["status"] == "succeeded"
    seen = [(Path(result["run_dir"]) / "tasks" / f"probe[{i}]" / "gpu.txt").read_text()
            for i in range(2)]
    assert all(s.isdigit() for s in seen), seen  # each task saw one GPU id
    gpus = result["sizing"]["candidates"][result["sizing"]["chosen"]]["gpus_per_node"]
    assert gpus >= 1
    assert "gres/gpu" in scontrol_job(result["job_id"])["TRES"]
    assert tres(sacct_job(result["job_id"])["AllocTRES"])["gres/gpu"] == str(
        gpus * result["sizing"]["candidates"][result["sizing"]["chosen"]]["nodes"])


def _stale_profile(tmp_path: Path) -> Path:
    """A profile that promises more than the cluster has: Slurm must be the one to refuse."""
    path = tmp_path / "stale.yaml"
    path.write_text(textwrap.dedent("""\
        name: stale
        partitions:
          - {name: debug, nodes: 2, cores_per_node: 2, memory_per_node: 200G, max_time: "04:00:00"}
        """))
    return path


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.parametrize("option,value,slurm_says", [
    ("--mem", "100G", "Requested node configuration is not available"),
    ("--time", "2h", "time limit"),
])
def test_test_only_refuses_an_oversize_request_and_nothing_is_submitted(
        cluster, tmp_path, option, value, slurm_says):
    name = f"reject-{uuid.uuid4().hex[:8]}"
    spec = tmp_path / "w.yaml"
    spec.write_text(f"name: {name}\ntasks:\n  - id: a\n    shell: 'true'\n    resources: {{time: 5s}}\n")
    done = hpcflow("submit", str(spec), "--profile", str(_stale_profile(tmp_path)), option, value,
                   cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "sbatch --test-only" in done.stderr and slurm_says in done.stderr
    assert "submitted batch job" not in done.stdout
    assert not list((tmp_path / "runs").glob("*")), "the refused run's folder was left behind"
    jobs = run_slurm(["sacct", "-n", "-X", "-P", "--name", name, "--format=JobID"])
    assert jobs.stdout.strip() == ""
    ours = hpcflow("submit", str(spec), option, value, cwd=tmp_path)  # the discovered profile
    assert ours.returncode == 2, ours.stderr
    assert "more than partition 'debug'" in ours.stderr or "of partition 'debug'" in ours.stderr


SLEEPY = """\
name: sleepy
tasks:
  - id: nap
    shell: "sleep 120"
    resources: {time: 2m}
"""


@pytest.mark.slurm
@pytest.mark.slow
def test_cancel_a_running_job_and_follow_it(cluster, tmp_path):
    spec = tmp_path / "sleepy.yaml"
    spec.write_text(SLEEPY)
    result = submit(spec, cwd=tmp_path)
    info = run_info(result["run_dir"])
    deadline = time.monotonic() + 60
    while (state := follow.job_state(info, min_interval=POLL))["state"] != "RUNNING":
        assert time.monotonic() < deadline and not state.get("final"), state
        time.sleep(POLL)
    done = hpcflow("cancel", result["run_dir"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert wait_final(result["run_dir"], timeout=90)["state"] == "CANCELLED"
    assert sacct_job(result["job_id"])["State"].startswith("CANCELLED")



FLAKY_SPEC = """\
name: mended
tasks:
  - id: fine
    shell: "echo fine >> {log}"
    args: {log: LOG}
  - id: flaky
    shell: "test -f {marker} && sleep 4 && echo mended >> {log}"
    args: {marker: MARKER, log: LOG}
    after: [fine]
"""


@pytest.mark.slurm
@pytest.mark.slow
def test_submit_resume_continues_a_failed_job_in_its_folder(cluster, tmp_path):
    """A job whose task failed; the cause is fixed; ``submit --resume`` runs a new job in
    the same folder that runs the failed task alone. A second one is refused while that
    job is not over."""
    marker, log = tmp_path / "marker", tmp_path / "log"
    spec = tmp_path / "mended.yaml"
    spec.write_text(FLAKY_SPEC.replace("MARKER", str(marker)).replace("LOG", str(log)))
    first = submit(spec, "--engine", "local", cwd=tmp_path)
    run_dir = first["run_dir"]
    assert wait_final(run_dir)["state"] == "FAILED"
    assert run_info(run_dir)["status"] == "failed" and log.read_text() == "fine\n"
    shown = hpcflow("status", run_dir, cwd=tmp_path)
    assert shown.returncode == 1 and shown.stdout.splitlines()[-1] == (
        f"next     hpcflow submit --resume {run_dir} (once the causes are fixed)"), shown.stdout
    marker.write_text("fixed")
    done = hpcflow("submit", "--json", "--resume", run_dir, "--engine", "local", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    second = json.loads(done.stdout)
    assert second["run_dir"] == run_dir and second["job_id"] != first["job_id"]

    def predicted(result: dict) -> float:
        return result["sizing"]["candidates"][result["sizing"]["chosen"]]["makespan"]

    assert predicted(second) == predicted(first) / 2  # sized for what is left: flaky alone
    again = hpcflow("submit", "--resume", run_dir, "--engine", "local", cwd=tmp_path)
    assert again.returncode != 0 and f"job {second['job_id']}" in again.stderr, again.stderr
    assert "nothing was submitted" in again.stderr
    assert wait_final(run_dir)["state"] == "COMPLETED"
    info = run_info(run_dir)
    assert info["status"] == "succeeded" and info["reused"] == 1
    assert info["slurm_job_id"] == second["job_id"] and info["slurm_jobs"] == [first["job_id"]]
    assert log.read_text() == "fine\nmended\n"  # fine did not run again
    assert (Path(run_dir) / "batch" / f"job-{first['job_id']}.sh").is_file()
    forced = hpcflow("submit", "--resume", run_dir, "--force", "fine", "--engine", "local",
                     cwd=tmp_path)  # fine and what follows it (flaky, by `after`) again
    assert forced.returncode == 0, forced.stderr
    assert wait_final(run_dir)["state"] == "COMPLETED"
    assert log.read_text() == "fine\nmended\nfine\nmended\n"
    assert run_info(run_dir)["slurm_jobs"] == [first["job_id"], second["job_id"]]


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(150)
def test_usr1_never_reaches_the_ranks(cluster, tmp_path):
    """The batch script notes USR1 in its marker file and passes it to no rank: ranks
    that would die of it (as ranks without a handler yet do) run on to their end."""
    marks = tmp_path / "marks"
    marks.mkdir()
    fake = tmp_path / "fakepython"  # stands in for the engine
    fake.write_text(textwrap.dedent(f"""\
        #!/bin/bash
        trap 'echo usr1 > "{marks}/rank-$SLURM_PROCID"' USR1
        touch "{marks}/started-$SLURM_PROCID"
        sleep 6 & wait $!
        sleep 1 & wait $!
        """))
    fake.chmod(0o755)
    result = submit(SWEEP, "--nodes", "2", "--python", str(fake), cwd=tmp_path)
    job, run_dir = result["job_id"], result["run_dir"]
    deadline = time.monotonic() + 90
    while len(list(marks.glob("started-*"))) < 4:
        assert time.monotonic() < deadline, "the ranks did not start"
        time.sleep(0.2)
    _signal(job)
    assert wait_final(run_dir, timeout=60)["state"] == "COMPLETED"
    assert not list(marks.glob("rank-*"))
    assert signal_marker(run_dir, job).is_file()  # so a continuation was submitted, and then
    assert not (Path(run_dir) / "batch" / NEXT_NAME.format(job=job)).exists()  # cancelled


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.parametrize("how", ["mpiexec", "local-engine"])
def test_other_launchers(cluster, tmp_path, how):
    if how == "mpiexec":
        mpiexec = shutil.which("mpiexec")
        if not mpiexec:
            pytest.skip("no mpiexec on PATH: pip install mpich")
        profile = tmp_path / "p.yaml"
        discovered = hpcflow("cluster", "discover", "-o", str(profile), cwd=tmp_path)
        assert discovered.returncode == 0, discovered.stderr
        profile.write_text(profile.read_text().replace("launcher: srun", "launcher: mpiexec")
                           .replace("mpiexec: mpiexec", f"mpiexec: {mpiexec}"))
        options = ["--profile", str(profile), "--nodes", "2"]
    else:
        options = ["--engine", "local"]
    result = submit(SWEEP, *options, cwd=tmp_path)
    assert wait_final(result["run_dir"])["state"] == "COMPLETED"
    info = run_info(result["run_dir"])
    assert info["status"] == "succeeded", (Path(result["run_dir"]) / "batch").glob("*")
    assert info["engine"] == ("mpi" if how == "mpiexec" else "local")


@pytest.mark.slurm
def test_discover_and_plan_on_the_real_cluster(cluster, tmp_path):
    done = hpcflow("cluster", "discover", cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    import yaml

    profile = yaml.safe_load(done.stdout)
    part = next(p for p in profile["partitions"] if p["name"] == cluster["HPCFLOW_SLURM_PARTITION"])
    assert part["nodes"] == int(cluster["HPCFLOW_SLURM_NODES"])
    assert part["cores_per_node"] == int(cluster["HPCFLOW_SLURM_CPUS_PER_NODE"])
    assert part["memory_per_node"] == f"{cluster['HPCFLOW_SLURM_MEM_PER_NODE_MB']}M"
    assert part["gpus_per_node"] == int(cluster["HPCFLOW_SLURM_GPUS_PER_NODE"])
    plan = hpcflow("plan", "--slurm", str(SWEEP), cwd=tmp_path, timeout=60)
    assert plan.returncode == 0 and "chosen:" in plan.stdout and "why: the cheapest" in plan.stdout


# --- Dask and Ray clusters that the job starts itself ----------------------------------

WHERE_PY = """\
import json, os, sys, time
from pathlib import Path

import hpcflow


def probe(i):
    time.sleep(1.0)  # long enough for the tasks to spread over every worker
    worker = None
    if "distributed" in sys.modules:
        try:
            worker = "dask:" + sys.modules["distributed"].get_worker().address
        except ValueError:
            pass
    if worker is None and "ray" in sys.modules and sys.modules["ray"].is_initialized():
        worker = "ray:" + sys.modules["ray"].get_runtime_context().get_node_id()
    return {"i": i, "square": i * i, "node": os.environ.get("SLURMD_NODENAME"),
            "worker": worker, "hpcflow": os.path.dirname(hpcflow.__file__)}


def collect(rows, out):
    Path(out).write_text(json.dumps(rows))
    return sum(row["square"] for row in rows)
"""

WHERE_YAML = """\
name: where
defaults:
  resources: {{cores: 1, memory: 100M, time: 2s}}
tasks:
  - id: probe
    python: where:probe
    sweep: {{product: {{i: {{range: [0, 12]}}}}}}
  - id: collect
    python: where:collect
    args: {{rows: "${{probe[*]}}", out: {out}}}
outputs:
  total: "${{collect}}"
"""


def _where_workflow(tmp_path: Path) -> Path:
    """Twelve 1-s tasks that say where they ran (Slurm node, Dask worker or Ray node,
    the hpcflow they imported) and a gather that writes it all to rows.json."""
    (tmp_path / "where.py").write_text(WHERE_PY)
    spec = tmp_path / "where.yaml"
    spec.write_text(WHERE_YAML.format(out=json.dumps(str(tmp_path / "rows.json"))))
    return spec


def _job_processes(job: str) -> list[str]:
    """Processes still running with this job's SLURM_JOB_ID in their environment."""
    mark = f"SLURM_JOB_ID={job}".encode()
    left = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if mark in (proc / "environ").read_bytes().split(b"\0"):
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                left.append(f"{proc.name} {command}")
        except OSError:
            continue
    return left


def _no_processes_left(job: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (left := _job_processes(job)) and time.monotonic() < deadline:
        time.sleep(POLL)
    assert not left, f"job {job} left processes behind: {left}"


def _batch_text(run_dir: str, job: str, kind: str) -> str:
    return (Path(run_dir) / "batch" / f"slurm-{job}.{kind}").read_text()


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("engine", ["dask", "ray"])
def test_submit_starts_its_own_cluster_on_two_nodes(cluster, tmp_path, engine):
    import hpcflow

    if int(cluster["HPCFLOW_SLURM_NODES"]) < 2:
        pytest.skip("the local cluster has one node: sudo slurm/start.sh --nodes 2")
    pytest.importorskip("distributed" if engine == "dask" else "ray",
                        reason=f"pip install 'hpcflow-mpi[{engine}]'")
    started = time.monotonic()
    result = submit(_where_workflow(tmp_path), "--engine", engine, "--nodes", "2", cwd=tmp_path)
    job, run_dir = result["job_id"], result["run_dir"]
    state = wait_final(run_dir)
    print(f"\n{engine} on 2 nodes: job {job} {state['state']} after {time.monotonic() - started:.1f} s"
          f" (Slurm: {state.get('elapsed')})")
    err = _batch_text(run_dir, job, "err")
    assert state["state"] == "COMPLETED", err
    info = run_info(run_dir)
    assert info["status"] == "succeeded" and info["engine"] == engine, err
    assert "output total = 506" in _batch_text(run_dir, job, "out")
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert sorted(r["i"] for r in rows) == list(range(12))
    assert all(r["square"] == r["i"] ** 2 for r in rows)
    assert {r["hpcflow"] for r in rows} == {os.path.dirname(hpcflow.__file__)}  # this checkout
    nodes = {r["node"] for r in rows}
    workers = {r["worker"] for r in rows}
    assert len(nodes) == 2 and None not in nodes, rows  # work ran on both nodes
    assert all(w and w.startswith(f"{engine}:") for w in workers), workers
    where = {w: {r["node"] for r in rows if r["worker"] == w} for w in workers}
    assert all(len(n) == 1 for n in where.values()), where  # each worker stands on one node
    assert len(workers) == (3 if engine == "dask" else 2), where  # 1 + 2 slots / 2 nodes
    assert "hpcflow cluster wait:" in err and f"the {engine} cluster stopped" in err
    assert "did not end within" not in err  # every part stopped by itself, nothing was killed
    _no_processes_left(job)
    steps = run_slurm(["sacct", "-j", job, "-n", "-P", "--format=JobName,State,ExitCode"]).stdout
    workers = [line.split("|") for line in steps.splitlines() if line.startswith("hpcflow-")]
    assert workers, steps
    if engine == "dask":  # the scheduler closed them: every nanny exited 0
        assert all(state == "COMPLETED" and code == "0:0" for _, state, code in workers), steps
    else:  # `ray start --block` ends its node on TERM, then exits 1 (Ray's choice)
        assert all(code in ("0:0", "1:0") for _, _, code in workers), steps
    if engine == "ray":
        assert not list(Path("/tmp").glob(f"hpcflow-ray-{job}*")), "Ray's files were left in /tmp"


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(200)
def test_a_cluster_that_cannot_start_stops_the_job_at_once(cluster, tmp_path):
    pytest.importorskip("distributed", reason="pip install 'hpcflow-mpi[dask]'")
    python = tmp_path / "python"  # the real one, except that no Dask worker can start
    python.write_text(textwrap.dedent(f"""\
        #!/bin/bash
        if [ "$2" = distributed.cli.dask_worker ]; then echo "no worker today" >&2; exit 1; fi
        exec {sys.executable} "$@"
        """))
    python.chmod(0o755)
    started = time.monotonic()
    result = submit(_where_workflow(tmp_path), "--engine", "dask", "--nodes", "2", "--python",
                    str(python), cwd=tmp_path)
    job, run_dir = result["job_id"], result["run_dir"]
    state = wait_final(run_dir, timeout=150)
    took = time.monotonic() - started
    print(f"\ndask cluster that cannot start: job {job} {state['state']} after {took:.1f} s")
    err = _batch_text(run_dir, job, "err")
    assert state["state"] == "FAILED" and state["exit_code"].startswith("3"), (state, err)
    assert "exited while waiting for" in err and "the dask cluster did not come up" in err
    assert took < 120  # the watch ended the wait; the 300 s start time-out did not
    assert run_info(run_dir)["status"] == "submitted"  # nothing ran
    assert not (tmp_path / "rows.json").exists()
    _no_processes_left(job)


NAPS_PY = """\
import os, time


def nap(i, seconds, log):
    with open(log, "a") as fh:
        fh.write(f"{i} {os.environ.get('SLURM_JOB_ID')} {time.time():.2f}\\n")
    time.sleep(seconds)
    return i
"""

NAPS_YAML = """\
name: {name}
defaults:
  resources: {{cores: 1, memory: 100M, time: {estimate}}}
tasks:
  - id: nap
    python: naps:nap
    sweep: {{product: {{i: {{range: [0, {n}]}}}}}}
    args: {{seconds: {seconds}, log: {log}}}
"""


def _naps(tmp_path: Path, n: int, seconds: float, estimate: str) -> tuple[Path, Path, str]:
    """``n`` tasks that sleep ``seconds`` and declare ``estimate``; each appends
    ``i job time`` to the log when it starts. Returns the spec, the log, the job name."""
    log = tmp_path / "naps.log"
    (tmp_path / "naps.py").write_text(NAPS_PY)
    name = f"naps-{uuid.uuid4().hex[:8]}"
    spec = tmp_path / "naps.yaml"
    spec.write_text(NAPS_YAML.format(name=name, n=n, seconds=seconds, estimate=estimate,
                                     log=json.dumps(str(log))))
    return spec, log, name


def _starts(log: Path) -> list[tuple[int, str, float]]:
    if not log.exists():
        return []
    return [(int(i), job, float(at)) for i, job, at in
            (line.split() for line in log.read_text().splitlines())]


def _signal(job: str) -> None:
    sent = run_slurm(["scancel", "--signal=USR1", "--batch", job])
    assert sent.returncode == 0, sent.stderr


def _queued(name: str) -> list[str]:
    done = run_slurm(["squeue", "-h", "-n", name, "-o", "%i %T"])
    return done.stdout.split("\n")[:-1]


def _wait_running(job: str, timeout: float = 120.0) -> float:
    """Poll (every 0.1 s) until ``job`` runs; the time it was first seen running."""
    deadline = time.monotonic() + timeout
    while run_slurm(["squeue", "-h", "-j", job, "-o", "%T"]).stdout.strip() != "RUNNING":
        assert time.monotonic() < deadline, f"job {job} did not start"
        time.sleep(0.1)
    return time.time()


def _wait_status(run_dir: str, timeout: float) -> dict:
    """Poll run.json until the run has an outcome that no continuation will change."""
    deadline = time.monotonic() + timeout
    while (info := run_info(run_dir)).get("status") not in ("succeeded", "failed", "stalled"):
        assert time.monotonic() < deadline, info
        time.sleep(POLL)
    return info


def _jobs(info: dict) -> list[str]:
    return [*info.get("slurm_jobs", []), info["slurm_job_id"]]


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_early_and_repeated_usr1_are_warnings_and_the_run_finishes_in_its_job(cluster, tmp_path):
    """Tasks that take what they declare, in the job the sizing asked for: a USR1 right
    after the job starts, and three more during the run, kill no step and start no other
    job; the job ends COMPLETED well within its limit."""
    spec, log, name = _naps(tmp_path, 9, 6.0, "6s")
    result = submit(spec, "--nodes", "2", cwd=tmp_path)
    job, run_dir = result["job_id"], result["run_dir"]
    started = _wait_running(job)
    _signal(job)
    signalled = time.time() - started
    deadline = time.monotonic() + 90
    while len(_starts(log)) < 4:  # the second round of tasks has begun
        assert time.monotonic() < deadline, "no tasks started"
        time.sleep(0.2)
    for _ in range(3):
        _signal(job)
        time.sleep(0.3)
    state = wait_final(run_dir, timeout=120)
    info = run_info(run_dir)
    print(f"\nearly USR1 {signalled:.2f} s after the job started; job {state['state']} "
          f"after {state['elapsed']}")
    assert signalled < 1.5
    assert state["state"] == "COMPLETED" and info["status"] == "succeeded", \
        _batch_text(run_dir, job, "err")
    assert _jobs(info) == [job]
    assert sorted(i for i, _, _ in _starts(log)) == list(range(9))
    assert signal_marker(run_dir, job).is_file()
    record = sacct_job(job)
    assert record["State"] == "COMPLETED" and record["ExitCode"] == "0:0"
    limit = scontrol_job(job)["TimeLimit"]
    assert _seconds(state["elapsed"]) < _seconds(limit)
    assert not _queued(name)  # the continuation submitted at the first USR1 was cancelled
    sizing = result["sizing"]
    predicted = sizing["front"][sizing["chosen"]]["makespan"]  # the time asked for fits it
    assert _seconds(limit) == sizing["time"] <= max(1.25 * predicted, predicted + 180)


def _seconds(text: str) -> int:
    """``[D-]HH:MM:SS`` or ``MM:SS`` as seconds."""
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    return int(days or 0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_workflow_longer_than_the_limit_goes_on_in_a_chain_of_completed_jobs(cluster, tmp_path):
    """Thirty 5-s tasks (150 s of work, 50 s on 3 workers) in one-minute jobs: each job
    starts what fits before its end minus the grace, hands over (exit 0), and the chain
    finishes on its own; every task ran once, in at most ceil(work / usable) + 1 jobs."""
    spec, log, _ = _naps(tmp_path, 30, 5.0, "5s")
    started = time.monotonic()
    result = submit(spec, "--nodes", "2", "--time", "1m", cwd=tmp_path)
    info = _wait_status(result["run_dir"], timeout=360)
    jobs = _jobs(info)
    print(f"\nchain of {len(jobs)} one-minute jobs: {info['status']} after "
          f"{time.monotonic() - started:.1f} s")
    assert info["status"] == "succeeded", info
    starts = _starts(log)
    assert sorted(i for i, _, _ in starts) == list(range(30))  # each task once
    usable = 60 - walltime.GRACE
    assert 2 <= len(jobs) <= math.ceil(30 * 5.0 / 3 / usable) + 1
    assert {j for _, j, _ in starts} == set(jobs)  # every job did some of the work
    for job in jobs:
        assert sacct_job(job)["State"] == "COMPLETED", (job, _batch_text(info["run_dir"], job, "err"))
    kinds = [e[0] for e in read_journal(Path(info["run_dir"]) / "journal.bin")]
    assert kinds.count(Event.DONE) == 30 and Event.STOPPED not in kinds
    status = hpcflow("status", info["run_dir"], cwd=tmp_path)
    assert f"Slurm job {jobs[-1]}: COMPLETED" in status.stdout, status.stdout
    assert f"job {len(jobs)} of its chain" in status.stdout


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_chain_whose_jobs_finish_nothing_stops_after_three(cluster, tmp_path):
    """A task that needs longer than any job gives, declared short: each job starts it,
    stops it at its end minus the grace and hands over (COMPLETED, not TIMEOUT); the
    third job in a row that finished nothing ends the chain with a message."""
    spec, log, name = _naps(tmp_path, 1, 600.0, "10s")
    started = time.monotonic()
    result = submit(spec, "--engine", "local", "--nodes", "1", "--time", "1m", cwd=tmp_path)
    info = _wait_status(result["run_dir"], timeout=330)
    run_dir, jobs = info["run_dir"], _jobs(info)
    print(f"\nidle chain: {info['status']} after {len(jobs)} jobs, "
          f"{time.monotonic() - started:.1f} s")
    assert info["status"] == "stalled" and len(jobs) == walltime.IDLE_JOBS
    assert [sacct_job(j)["State"] for j in jobs] == ["COMPLETED", "COMPLETED", "FAILED"]
    assert "3 jobs in a row finished no task" in _batch_text(run_dir, jobs[-1], "err")
    kinds = [e[0] for e in read_journal(Path(run_dir) / "journal.bin")]
    assert kinds.count(Event.STOPPED) == 3 and Event.DONE not in kinds
    assert [j for _, j, _ in _starts(log)] == jobs  # started once in each job
    deadline = time.monotonic() + 30
    while _queued(name):  # the continuation the last job submitted at USR1 is cancelled
        assert time.monotonic() < deadline, _queued(name)
        time.sleep(POLL)
    status = hpcflow("status", run_dir, cwd=tmp_path)
    assert "status   stalled" in status.stdout and "in a row finished no task" in status.stdout


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_usr1_during_the_dask_cluster_start_and_the_run_kills_nothing(cluster, tmp_path):
    """USR1 while the job's own Dask cluster starts, and again while tasks run: the
    cluster comes up, the run finishes in this job, which ends COMPLETED."""
    pytest.importorskip("distributed", reason="pip install 'hpcflow-mpi[dask]'")
    spec, log, name = _naps(tmp_path, 6, 3.0, "3s")
    result = submit(spec, "--engine", "dask", "--nodes", "2", cwd=tmp_path)
    job, run_dir = result["job_id"], result["run_dir"]
    _wait_running(job)
    _signal(job)
    deadline = time.monotonic() + 120
    while not _starts(log):
        assert time.monotonic() < deadline, "no task started"
        time.sleep(0.2)
    _signal(job)
    state = wait_final(run_dir, timeout=180)
    err = _batch_text(run_dir, job, "err")
    assert state["state"] == "COMPLETED" and run_info(run_dir)["status"] == "succeeded", err
    assert "the dask cluster stopped" in err
    assert sorted(i for i, _, _ in _starts(log)) == list(range(6))
    assert not _queued(name)
    _no_processes_left(job)


GPU_SPREAD = """\
name: gpu-spread
defaults:
  resources: {cores: 1, gpus: 1, memory: 100M, time: 3s}
tasks:
  - id: probe
    shell: >-
      s=$(date +%s.%N); sleep 2; e=$(date +%s.%N);
      printf '%s %s %s %s' "$SLURMD_NODENAME" "$CUDA_VISIBLE_DEVICES" "$s" "$e" > {out}
    sweep: {product: {i: [0, 1, 2, 3, 4, 5]}}
    outputs: {out: gpu.txt}
"""


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("engine", ["dask", "ray"])
def test_gpu_tasks_on_the_job_s_own_cluster_get_gpus_of_their_own(cluster, tmp_path, engine):
    """Each GPU task sees one GPU, and two tasks that ran at the same time on one node
    never saw the same one (Dask: each worker its own, by --gpus-per-task; Ray: its node's
    GPUs, which Ray hands out)."""
    if int(cluster["HPCFLOW_SLURM_GPUS_PER_NODE"]) < 2 or int(cluster["HPCFLOW_SLURM_NODES"]) < 2:
        pytest.skip("needs 2 nodes with 2 GPUs each: sudo slurm/start.sh --nodes 2 --gpus 2")
    pytest.importorskip("distributed" if engine == "dask" else "ray",
                        reason=f"pip install 'hpcflow-mpi[{engine}]'")
    spec = tmp_path / "gpu.yaml"
    spec.write_text(GPU_SPREAD)
    started = time.monotonic()
    result = submit(spec, "--engine", engine, "--nodes", "2", cwd=tmp_path)
    run_dir = result["run_dir"]
    state = wait_final(run_dir)
    print(f"\n{engine} GPU tasks on 2 nodes: {state['state']} after {time.monotonic() - started:.1f} s")
    assert state["state"] == "COMPLETED", _batch_text(run_dir, result["job_id"], "err")
    seen = []
    for i in range(6):
        node, gpus, start, end = (Path(run_dir) / "tasks" / f"probe[{i}]" / "gpu.txt").read_text().split()
        seen.append((node, gpus, float(start), float(end)))
    assert all(gpus.isdigit() for _, gpus, _, _ in seen), seen  # one GPU each
    assert len({node for node, _, _, _ in seen}) == 2, seen
    for k, (node, gpus, start, end) in enumerate(seen):
        for other in seen[k + 1:]:
            if other[0] == node and other[2] < end and start < other[3]:  # at the same time
                assert other[1] != gpus, seen
    _no_processes_left(result["job_id"])
