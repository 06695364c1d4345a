"""The batch script: golden files, and hostile values rejected or made harmless.

Golden files: each case below (a workflow x a cluster profile x options) is sized and
rendered, and the text must equal ``tests/golden/slurm/<case>.sh`` exactly. When the
script format (``hpcflow/scheduler/slurm/template.py``) or the sizing policy changes on
purpose, regenerate them and review the diff before committing::

    HPCFLOW_UPDATE_GOLDEN=1 python -m pytest tests/test_slurm_script.py
    git diff tests/golden/slurm/

Safety: every directive value is matched against an allow-list or refused with an error
naming the field; every body word is quoted. The tests feed hostile values (newlines
with ``#SBATCH --wrap=...``, ``$(touch ...)``, backticks, ``;``, spaces) and check that
they are refused, or that bash, running the generated script, does nothing extra.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hpcflow as hf
from hpcflow.cli.load import load_plan
from hpcflow.errors import SpecError
from hpcflow.plan.analyse import analyse
from hpcflow.plan.flatten import flatten
from hpcflow.scheduler.slurm.errors import ProfileError, UnsafeValueError
from hpcflow.scheduler.slurm.profile import Profile, load_profile
from hpcflow.scheduler.slurm.safety import check_directive, quote_words
from hpcflow.scheduler.slurm.script import BatchJob, batch_job, job_name, render_script
from hpcflow.scheduler.slurm.sizing import Overrides, size

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "slurm"
CLUSTERS = ROOT / "examples" / "clusters"
PYTHON = "/opt/venv/bin/python"


def _gpu_workflow() -> hf.Workflow:
    train = hf.task("train:fit", cores=2, gpus=1, memory="4G", time="10m")
    runs = train.sweep({"lr": [0.1, 0.01, 0.001, 0.0001]})
    best = hf.task("train:pick", time="30s")(runs)
    return hf.workflow("gpu-sweep", outputs={"best": best})


def _wide_workflow() -> hf.Workflow:
    sim = hf.task("model:simulate", memory="2G", time="20m")
    runs = sim.sweep({"seed": range(2000)})
    return hf.workflow("wide-sweep", outputs={"summary": hf.task("model:summarise", time="5m")(runs)})


def _mpi_workflow() -> hf.Workflow:
    prep = hf.shell("prepare {n}", time="2m")(n=8)
    solve = hf.shell("solver --input {inp}", ranks=8, cores=4, memory="16G", time="3h")
    out = solve.sweep({"case": ["a", "b", "c"]}, inp=prep)
    return hf.workflow("mpi-solve", outputs={"out": hf.task("post:collect", time="5m")(out)})


WORKFLOWS = {
    "sweep": lambda: load_plan(str(ROOT / "examples" / "sweep" / "workflow.yaml")),
    "gpu": lambda: flatten(_gpu_workflow()),
    "wide": lambda: flatten(_wide_workflow()),
    "mpi": lambda: flatten(_mpi_workflow()),
}

CASES = {  # case: (workflow, profile, overrides, batch_job options)
    "sweep-local": ("sweep", "local", {}, {}),
    "sweep-local-1node-3G": ("sweep", "local", {"nodes": 1, "memory": 3 * 2**30}, {}),
    "sweep-local-engine-local": ("sweep", "local", {"engine": "local"}, {"engine": "local"}),
    "sweep-cpu-site-short": ("sweep", "cpu-site", {"partition": "short"}, {}),
    "wide-cpu-site": ("wide", "cpu-site", {}, {}),
    "mpi-cpu-site-overrides": ("mpi", "cpu-site", {"time": 6 * 3600.0},
                               {"account": "other-proj", "qos": "high", "constraint": "cpu&ib"}),
    "gpu-local": ("gpu", "local", {}, {}),
    "gpu-gpu-site": ("gpu", "gpu-site", {}, {}),
    # the engine's own cluster inside the allocation (frameworks.py)
    "sweep-local-dask": ("sweep", "local", {"nodes": 2, "engine": "dask"}, {"engine": "dask"}),
    "sweep-local-ray": ("sweep", "local", {"nodes": 2, "engine": "ray"}, {"engine": "ray"}),
    "gpu-local-dask": ("gpu", "local", {"engine": "dask"}, {"engine": "dask"}),
    "gpu-gpu-site-ray": ("gpu", "gpu-site", {"engine": "ray"}, {"engine": "ray"}),
}


def render_case(case: str) -> str:
    workflow, profile_name, over, options = CASES[case]
    plan = WORKFLOWS[workflow]()
    profile = load_profile(CLUSTERS / f"{profile_name}.yaml")
    sizing = size(plan, analyse(plan), profile, Overrides(**over))
    job = batch_job(sizing, profile, workflow=plan.workflow, python=profile.python or PYTHON,
                    run_dir=f"/scratch/alice/runs/{plan.workflow}-20260101-000000-1",
                    spec=f"/home/alice/flows/{workflow}.yaml", **options)
    return render_script(job)


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_script(case):
    text = render_case(case)
    golden = GOLDEN / f"{case}.sh"
    if os.environ.get("HPCFLOW_UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert golden.is_file(), f"no golden file {golden}: run with HPCFLOW_UPDATE_GOLDEN=1"
    assert text == golden.read_text(), (
        f"{case}: the script differs from {golden.relative_to(ROOT)}; if the change is "
        "intended, regenerate with HPCFLOW_UPDATE_GOLDEN=1 and review the diff")


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_scripts_parse_in_bash(case):
    done = subprocess.run(["bash", "-n", str(GOLDEN / f"{case}.sh")], capture_output=True,
                          text=True, timeout=10)
    assert done.returncode == 0, done.stderr


def test_golden_directives_say_what_the_sizing_chose():
    text = (GOLDEN / "gpu-gpu-site.sh").read_text()
    assert "#SBATCH --gres=gpu:" in text and "#SBATCH --mem-per-gpu=" in text
    assert "#SBATCH --constraint=a100&ib" in text and "#SBATCH --account=ml-lab" in text
    text = (GOLDEN / "sweep-cpu-site-short.sh").read_text()
    assert "#SBATCH --mem-per-cpu=" in text and "module load python/3.11 openmpi/4.1.5" in text
    assert "export OMP_NUM_THREADS=1" in text and "srun --mpi=pmix --cpu-bind=none python" in text
    text = (GOLDEN / "sweep-local-1node-3G.sh").read_text()
    assert "#SBATCH --nodes=1\n" in text and "#SBATCH --mem=3072M\n" in text
    assert "--engine local --workers 1" in (GOLDEN / "sweep-local-engine-local.sh").read_text()


# --- hostile values -------------------------------------------------------------------

HOSTILE_NAME = "wf\n#SBATCH --wrap=touch /tmp/hpcflow-pwned"


def _local() -> Profile:
    return load_profile(CLUSTERS / "local.yaml")


def _sweep_sizing(profile: Profile | None = None):
    plan = WORKFLOWS["sweep"]()
    return size(plan, analyse(plan), profile or _local())


def _sbatch_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("#SBATCH")]


def test_hostile_workflow_name_in_yaml_is_refused_naming_the_field(tmp_path):
    spec = tmp_path / "wf.yaml"
    spec.write_text('name: "wf\\n#SBATCH --wrap=touch x"\ntasks:\n  - id: a\n    shell: "true"\n')
    with pytest.raises(SpecError) as err:
        load_plan(str(spec))
    assert "name" in str(err.value)


def test_hostile_workflow_name_of_a_plan_is_sanitised_into_one_job_name():
    sizing = _sweep_sizing()
    assert job_name(HOSTILE_NAME) == "wf__SBATCH_--wrap_touch__tmp_hpcflow-pwned"
    text = render_script(batch_job(sizing, _local(), workflow=HOSTILE_NAME, run_dir="/r/x",
                                   spec="/s.yaml"))
    assert len(_sbatch_lines(text)) == len(_sbatch_lines(render_case("sweep-local")))
    assert not any(line.startswith("#SBATCH --wrap") for line in text.splitlines())


@pytest.mark.parametrize("field,value", [
    ("job-name", HOSTILE_NAME), ("partition", "debug --wrap=x"), ("partition", "de bug"),
    ("account", "a;touch x"), ("qos", "$(touch x)"), ("constraint", "`touch x`"),
    ("constraint", "a\nb"), ("time", "1:00:00 --wrap=x"), ("mem", "4G\n#SBATCH --x"),
    ("output", "/tmp/$(touch x)/slurm-%j.out"), ("nodes", "1 --exclusive"),
])
def test_hostile_directive_values_are_refused_naming_the_field(field, value):
    job = BatchJob(job_name="wf", launch=("true",), directives=(
        ("job-name", "wf"), ("nodes", "1"), ("ntasks-per-node", "2"),
        ("output", "/r/slurm-%j.out"), ("error", "/r/slurm-%j.err"), (field, value)))
    with pytest.raises(UnsafeValueError) as err:
        render_script(job)
    assert err.value.field == field and isinstance(err.value, ValueError)
    assert f"field '{field}'" in str(err.value)


@pytest.mark.parametrize("option", ["account", "qos", "constraint"])
def test_hostile_options_are_refused(option):
    sizing = _sweep_sizing()
    job = batch_job(sizing, _local(), workflow="wf", run_dir="/r/x", spec="/s.yaml",
                    **{option: "x; touch /tmp/hpcflow-pwned"})
    with pytest.raises(UnsafeValueError, match=option):
        render_script(job)


@pytest.mark.parametrize("run_dir", ["/tmp/a b", "/tmp/$(touch x)", "/tmp/`id`", "/tmp/a;b",
                                     "/tmp/100%"])
def test_hostile_run_folder_is_refused(run_dir):
    sizing = _sweep_sizing()
    with pytest.raises(UnsafeValueError, match="run folder"):
        batch_job(sizing, _local(), workflow="wf", run_dir=run_dir, spec="/s.yaml")


@pytest.mark.parametrize("key,value,field", [
    ("name", "de bug", "partitions[0].name"),
    ("name", "debug\n#SBATCH --wrap=x", "partitions[0].name"),
    ("name", "a;b", "partitions[0].name"),
])
def test_hostile_profile_partition_is_refused_with_file_line_field(tmp_path, key, value, field):
    path = tmp_path / "p.yaml"
    import yaml
    path.write_text(yaml.safe_dump({"partitions": [{key: value, "nodes": 1, "cores_per_node": 2,
                                                     "memory_per_node": "1G"}]}))
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    assert err.value.field == field and "p.yaml:" in str(err.value)


def test_profile_setup_line_with_a_newline_is_refused(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent("""\
        partitions: [{name: p, nodes: 1, cores_per_node: 2, memory_per_node: 1G}]
        defaults:
          setup: ["module load x\\ntouch /tmp/hpcflow-pwned"]
        """))
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    assert err.value.field == "defaults.setup" and "p.yaml:3" in str(err.value)


def _fake_launcher(tmp_path: Path) -> Path:
    """Stands in for mpiexec: records its arguments, one per line; USR1 leaves a mark."""
    fake = tmp_path / "fake launcher"
    fake.write_text(textwrap.dedent(f"""\
        #!/bin/bash
        trap 'echo got-usr1 > "{tmp_path}/usr1"; exit 7' USR1
        printf '%s\\n' "$@" > "{tmp_path}/argv"
        if [ -n "${{HPCFLOW_FAKE_SLEEP:-}}" ]; then sleep "$HPCFLOW_FAKE_SLEEP" & wait $!; fi
        """))
    fake.chmod(0o755)
    return fake


def _hostile_script(tmp_path: Path) -> tuple[str, str, Path]:
    """A script whose body carries hostile values everywhere the profile and paths allow."""
    marker = tmp_path / "pwned"
    spec_dir = tmp_path / f"$(touch {marker})" / f"a;touch {marker};`touch {marker}`"
    spec = f"{spec_dir}/wf $(touch {marker}).yaml"
    profile = _local().model_copy(update={
        "launcher": "mpiexec", "mpiexec": str(_fake_launcher(tmp_path)),
        "defaults": _local().defaults.model_copy(update={
            "setup": [f"echo $(touch {marker})", f"echo `touch {marker}`; touch {marker}",
                      f"echo 'quoted $(touch {marker})' | touch {marker}"],
            "env": {"HOSTILE": f"$(touch {marker}); `touch {marker}`"}})})
    sizing = _sweep_sizing(profile)
    text = render_script(batch_job(sizing, profile, workflow="wf", run_dir=str(tmp_path / "run"),
                                   spec=spec, python=f"{tmp_path}/py $(touch {marker})"))
    return text, spec, marker


def test_hostile_body_values_are_quoted_and_bash_does_nothing_extra(tmp_path):
    text, spec, marker = _hostile_script(tmp_path)
    script = tmp_path / "job.sh"
    script.write_text(text)
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not marker.exists(), "a hostile value was executed"
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv[:2] == ["-n", "4"] and argv[2] == f"{tmp_path}/py $(touch {marker})"
    assert argv[-1] == spec
    assert f"echo '$(touch' '{marker})'" in text  # set-up words are literal words
    assert f"touch {marker}" in done.stdout  # echo printed them instead of running them


def test_time_none_omits_time_and_signal_where_the_profile_allows_it():
    profile = _local().model_copy(update={"time_required": False})
    plan = WORKFLOWS["sweep"]()
    sizing = size(plan, analyse(plan), profile, Overrides(no_time=True))
    text = render_script(batch_job(sizing, profile, workflow="wf", run_dir="/r", spec="/s.yaml"))
    assert "#SBATCH --time" not in text and "#SBATCH --signal" not in text


def test_script_runs_the_engine_with_this_python_by_default():
    sizing = _sweep_sizing()
    text = render_script(batch_job(sizing, _local(), workflow="wf", run_dir="/r", spec="/s.yaml"))
    launch = next(line for line in text.splitlines() if line.startswith("srun "))
    assert re.fullmatch(rf"srun --mpi=pmi2 --cpu-bind=none {re.escape(sys.executable)} -m hpcflow "
                        r"run --engine mpi --resume /r /s\.yaml &", launch)


# --- any text: refused, or one clean directive; any words: read back unchanged ---------

_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


@given(_TEXT)
@settings(max_examples=300, deadline=None)
def test_any_text_is_refused_or_one_clean_directive_value(value):
    for name in ("job-name", "partition", "account", "qos", "constraint", "time", "mem"):
        try:
            checked = check_directive(name, value)
        except UnsafeValueError as err:
            assert err.field == name
            continue
        assert checked == value and not re.search(r"[\s'\"#$`;\\<>()!{}]", checked)


@given(st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                        max_size=12), min_size=1, max_size=4))
@settings(max_examples=40, deadline=None)
def test_quoted_words_are_read_back_by_bash_unchanged(words):
    done = subprocess.run(["bash", "-c", "printf '%s\\0' " + quote_words(words)],
                          capture_output=True, timeout=10)
    assert done.stdout.decode("utf-8", "surrogateescape").split("\0")[:-1] == words


# --- profiles: load, save, line numbers, discovery from recorded answers ---------------

def test_example_profiles_load_and_round_trip(tmp_path):
    for path in sorted(CLUSTERS.glob("*.yaml")):
        profile = load_profile(path)
        copy = tmp_path / path.name
        copy.write_text(profile.to_yaml())
        assert load_profile(copy) == profile


def test_profile_errors_name_file_line_and_field(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text("name: s\npartitions:\n  - name: p\n    nodes: 1\n    cores_per_node: two\n"
                    "    memory_per_node: 1G\n")
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    assert "site.yaml:5" in str(err.value) and err.value.field == "partitions[0].cores_per_node"
    path.write_text("partitions: [{name: p, nodes: 1, cores_per_node: 2, memory_per_node: 1G}]\n"
                    "memroy: mem\n")
    with pytest.raises(ProfileError, match="memroy"):
        load_profile(path)


def test_unquoted_yaml_times_and_bare_memory_numbers_mean_what_slurm_means(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("partitions: [{name: p, nodes: 1, cores_per_node: 2, memory_per_node: 9000,"
                    " max_time: 10:00:00}]\n")
    part = load_profile(path).partition()
    assert part.max_seconds == 36000 and part.memory == 9000 * 2**20


def _recorded(answers: dict[str, str]):
    def run(argv):
        key = " ".join(argv[:3])
        return subprocess.CompletedProcess(argv, 0, answers[key], "")
    return run


def test_discover_from_recorded_answers():
    from hpcflow.scheduler.slurm.profile import discover

    run = _recorded({
        "scontrol show partition": (
            "PartitionName=gpu Default=NO MaxTime=2-00:00:00 TotalNodes=4 State=UP\n"
            "PartitionName=cpu Default=YES MaxTime=UNLIMITED TotalNodes=10 State=UP\n"
            "PartitionName=odd;name Default=NO MaxTime=1:00:00 TotalNodes=1 State=UP\n"),
        "sinfo -h -o": ("gpu|64|512000|gpu:a100:4(S:0-1)\ngpu|32+|256000|gpu:a100:2\n"
                        "cpu|128|250000|(null)\nodd;name|1|100|(null)\n"),
        "scontrol show config": "SelectType              = select/cons_tres\n"})
    profile = discover(run)
    assert [p.name for p in profile.partitions] == ["gpu", "cpu"]  # the unsafe name is left out
    gpu = profile.partition("gpu")
    assert (gpu.cores_per_node, gpu.memory_per_node, gpu.gpus_per_node) == (32, "256000M", 2)
    assert gpu.max_seconds == 2 * 86400 and profile.partition().name == "cpu"
    assert profile.partition("cpu").max_seconds is None and profile.gpus == "gpus-per-node"


# --- the commands, without a cluster ---------------------------------------------------

def _hpcflow(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HPCFLOW_SLURM_PROFILE"}
    empty = cwd / "empty-bin"
    empty.mkdir(exist_ok=True)
    env.update(HPCFLOW_RUNS=str(cwd / "runs"), PATH=str(empty))  # no Slurm clients on PATH
    return subprocess.run([sys.executable, "-m", "hpcflow", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_plan_slurm_and_dry_run_with_a_profile_file(tmp_path):
    sweep, local = str(ROOT / "examples" / "sweep" / "workflow.yaml"), str(CLUSTERS / "local.yaml")
    done = _hpcflow("plan", "--slurm", "--profile", local, sweep, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "chosen: partition debug, 2 node(s) x 2 ranks" in done.stdout
    assert "why: the cheapest" in done.stdout and "within 5% of the fastest" in done.stdout
    done = _hpcflow("submit", "--dry-run", "--profile", local, "--nodes", "1", sweep, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("#!/bin/bash\n#SBATCH --job-name=oscillator-sweep\n")
    assert "#SBATCH --nodes=1\n" in done.stdout and "not checked with sbatch --test-only" in done.stderr
    assert not (tmp_path / "runs").exists()  # a dry run makes no run folder


def test_submit_errors_name_the_field_and_exit_2(tmp_path):
    sweep, local = str(ROOT / "examples" / "sweep" / "workflow.yaml"), str(CLUSTERS / "local.yaml")
    for args, says in [(["--account", "a;b"], "field 'account'"),
                       (["--partition", "nope"], "no partition 'nope'"),
                       (["--mem", "100G"], "more than partition 'debug' has"),
                       (["--time", "30"], "field '--time'"),
                       (["--deadline", "1m"], "continuation chain")]:
        done = _hpcflow("submit", "--dry-run", "--profile", local, *args, sweep, cwd=tmp_path)
        assert done.returncode == 2 and says in done.stderr, (args, done.stderr)
    done = _hpcflow("submit", sweep, cwd=tmp_path)  # no profile and no Slurm here
    assert done.returncode == 3 and "not found" in done.stderr


# --- Dask and Ray clusters inside the allocation (frameworks.py), without Slurm ---------

def test_cluster_scripts_declare_the_sized_slots():
    dask = (GOLDEN / "sweep-local-dask.sh").read_text()
    # the batch host keeps the coordinator's slot: 1 worker there, 2 on the other node
    assert '--ntasks=1 --ntasks-per-node=1 --nodelist="${SLURMD_NODENAME}"' in dask
    assert '--ntasks=2 --ntasks-per-node=2 --exclude="${SLURMD_NODENAME}"' in dask
    assert "--resources=cores=1,memory=4718592000" in dask and "--workers=3" in dask
    assert '--engine dask --address "${address}" --resume /scratch/' in dask
    gpu = (GOLDEN / "gpu-local-dask.sh").read_text()
    assert "--gpus-per-task=2" in gpu and "--gpus-per-task=1" in gpu  # each worker its own GPUs
    assert "--resources=cores=1,gpus=1,memory=4718592000" in gpu
    ray = (GOLDEN / "sweep-local-ray.sh").read_text()
    assert "--head --port=0" in ray and "--num-cpus=1 --num-gpus=0" in ray
    assert "--ntasks-per-node=1 --exclude=" in ray and "--cpus-per-task=2" in ray
    assert "--nodes=2 --timeout=300" in ray and "ray stop" not in ray.replace("`ray stop`", "")
    assert "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN" in ray
    alone = (GOLDEN / "gpu-gpu-site-ray.sh").read_text()  # one node: the head alone
    assert "srun" not in alone.split("cluster_failed() {")[1].split("hpcflow run")[0]
    assert "--num-cpus=48 --num-gpus=4" in alone


def test_the_profile_can_choose_the_engine_and_its_start_timeout():
    profile = _local().model_copy(update={"engine": "ray", "cluster_start_timeout": 60})
    text = render_script(batch_job(_sweep_sizing(profile), profile, workflow="wf", run_dir="/r",
                                   spec="/s.yaml"))
    assert "--engine ray --address" in text and "--timeout=60 " in text
    assert "timeout --kill-after=10 90 " in text


def _fake_cluster_tools(tmp_path: Path) -> tuple[dict[str, str], str, Path]:
    """A PATH where srun, squeue and scancel are small stand-ins, and a hostile-named
    interpreter that plays the scheduler, the workers, ``cluster wait`` and ``run``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "log"
    (bin_dir / "srun").write_text(textwrap.dedent(f"""\
        #!/bin/bash
        name=
        while [ $# -gt 0 ] && [ "${{1#--}}" != "$1" ]; do
          case $1 in --job-name=*) name=${{1#--job-name=}} ;; esac
          shift
        done
        echo "$$ $name" >> "{tmp_path}/steps"
        "$@" &
        child=$!
        trap 'kill -TERM $child' TERM
        wait $child
        wait $child
        """))
    (bin_dir / "squeue").write_text(f'#!/bin/bash\ncat "{tmp_path}/steps" 2>/dev/null\n')
    (bin_dir / "scancel").write_text("#!/bin/bash\n[ \"$1\" = --signal=TERM ] && kill -TERM \"$2\"\n")
    python = f"{tmp_path}/py $(touch pwned); `touch pwned`"  # run in tmp_path: makes ./pwned
    Path(python).write_text(textwrap.dedent(f"""\
        #!/bin/bash
        echo "call $*" >> "{log}"
        case $2 in
          distributed.cli.*|ray.scripts.scripts)
            echo $$ >> "{tmp_path}/parts"
            sleep 60 &
            s=$!
            trap 'echo "stopped $2 $4" >> "{log}"; kill $s; exit 0' TERM
            wait $s ;;
          hpcflow)
            if [ "$4" = stop ]; then  # as the Dask scheduler: it ends every part
              kill -TERM $(cat "{tmp_path}/parts")
              exit 0
            fi
            if [ "$3" = cluster ]; then  # as a real wait: the parts have started by then
              sleep 0.5
              echo tcp://fake:1
              exit "${{FAKE_WAIT:-0}}"
            fi
            printf '%s\\n' "$@" > "{tmp_path}/run-argv" ;;
        esac
        """))
    for tool in [*bin_dir.iterdir(), Path(python)]:
        tool.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURMD_NODENAME="n1",
               SLURM_JOB_ID=f"test-{os.getpid()}-{time.monotonic_ns()}")
    return env, python, log


@pytest.mark.parametrize("engine", ["dask", "ray"])
@pytest.mark.parametrize("wait_code", [0, 3])
def test_cluster_script_starts_runs_and_stops_in_order(tmp_path, engine, wait_code):
    env, python, log = _fake_cluster_tools(tmp_path)
    env["FAKE_WAIT"] = str(wait_code)
    spec = f"{tmp_path}/wf $(touch pwned);`touch pwned`.yaml"
    run_dir = tmp_path / "run"
    (run_dir / "batch").mkdir(parents=True)
    profile = _local()
    sizing = size(WORKFLOWS["sweep"](), analyse(WORKFLOWS["sweep"]()), profile,
                  Overrides(nodes=2, engine=engine))
    script = tmp_path / "job.sh"
    script.write_text(render_script(batch_job(sizing, profile, workflow="wf", run_dir=str(run_dir),
                                              spec=spec, python=python, engine=engine)))
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, env=env)
    assert not (tmp_path / "pwned").exists(), "a hostile value was executed"
    calls = log.read_text().splitlines()
    stopped = [line.removeprefix("stopped ") for line in calls if line.startswith("stopped ")]
    started = [line for line in calls if line.startswith("call -m ") and line.split()[2] != "hpcflow"]
    if wait_code:  # Dask: every part started; Ray: the head, whose address the others need
        assert len(started) == (3 if engine == "dask" else 1) == len(stopped), calls
        assert done.returncode == 3, done.stderr
        assert f"the {engine} cluster did not come up" in done.stderr
        assert not (tmp_path / "run-argv").exists()  # nothing ran
        return
    assert done.returncode == 0, done.stderr
    assert len(started) == (3 if engine == "dask" else 2) == len(stopped), calls
    if engine == "dask":  # the scheduler is asked to close itself and its workers
        asked = next(k for k, line in enumerate(calls) if " cluster stop dask " in line)
        assert all(k > asked for k, line in enumerate(calls) if line.startswith("stopped "))
    else:  # TERM to the other nodes first, the head last
        assert stopped == ["ray.scripts.scripts --address=tcp://fake:1", "ray.scripts.scripts --head"]
    argv = (tmp_path / "run-argv").read_text().splitlines()
    assert argv == ["-m", "hpcflow", "run", "--engine", engine, "--address", "tcp://fake:1",
                    "--resume", str(run_dir), spec]
    assert f"the {engine} cluster stopped" in done.stderr


# --- hpcflow cluster wait (inside the job) ---------------------------------------------

def test_cluster_wait_ray_head_reads_the_address_file(tmp_path):
    (tmp_path / "ray_current_cluster").write_text("10.0.0.1:6380\n")
    done = _hpcflow("cluster", "wait", "ray", "--temp-dir", str(tmp_path), "--timeout", "5",
                    cwd=tmp_path)
    assert done.returncode == 0 and done.stdout == "10.0.0.1:6380\n", done.stderr


def test_cluster_wait_ends_at_once_when_a_watched_part_exited(tmp_path):
    pytest.importorskip("distributed", reason="needs the dask extra: pip install -e '.[dask]'")
    gone = subprocess.Popen(["true"])
    gone.wait()
    started = time.monotonic()
    done = _hpcflow("cluster", "wait", "dask", "--scheduler-file", str(tmp_path / "none.json"),
                    "--workers", "2", "--timeout", "60", f"--watch=workers-1={gone.pid}",
                    cwd=tmp_path)
    assert done.returncode == 3 and "workers-1" in done.stderr and done.stdout == ""
    assert time.monotonic() - started < 30
    done = _hpcflow("cluster", "wait", "ray", "--temp-dir", str(tmp_path), "--timeout", "1",
                    cwd=tmp_path)
    assert done.returncode == 3 and "waited 1 s for the Ray head's address file" in done.stderr


def test_submit_dry_run_with_the_dask_engine(tmp_path):
    sweep, local = str(ROOT / "examples" / "sweep" / "workflow.yaml"), str(CLUSTERS / "local.yaml")
    done = _hpcflow("submit", "--dry-run", "--profile", local, "--engine", "dask", sweep, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "distributed.cli.dask_scheduler" in done.stdout and "--engine dask --address" in done.stdout


def test_a_batch_host_without_a_worker_slot_runs_only_the_scheduler_or_head():
    """One task per node: the batch host's only slot is the coordinator's."""
    profile = load_profile(CLUSTERS / "cpu-site.yaml")
    plan = WORKFLOWS["sweep"]()
    for engine in ("dask", "ray"):
        sizing = size(plan, analyse(plan), profile, Overrides(nodes=3, ntasks_per_node=1,
                                                              cpus_per_task=4, engine=engine))
        text = render_script(batch_job(sizing, profile, workflow="wf", run_dir="/r",
                                       spec="/s.yaml", engine=engine))
        sruns = [line for line in text.splitlines() if line.startswith("srun ")]
        assert len(sruns) == 1 and "--nodes=2 --ntasks=2 --ntasks-per-node=1 --exclude=" in sruns[0]
        assert "--cpus-per-task=4 " in sruns[0]
        if engine == "dask":
            assert "--workers=2 " in text
        else:
            assert "--head --port=0 --temp-dir=\"${ray_dir}\" --num-cpus=0 --num-gpus=0 --include" in text
            assert "--nodes=3 " in text
