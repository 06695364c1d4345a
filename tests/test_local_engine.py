"""The local engine end to end: results, shell tasks, failures, retries, resources."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import hpcflow as hf
from hpcflow.errors import ResourceError, RunFailed
from hpcflow.store.journal import Event, read_journal

pytestmark = pytest.mark.timeout(60)


def square(x):
    return x * x


def total(xs):
    return sum(xs)


def fail_on(x, bad):
    if x == bad:
        raise ValueError(f"refusing {x}")
    return x


def test_sweep_gather_results(tmp_path):
    sq = hf.task(square).sweep({"x": range(10)})
    wf = hf.workflow("w", outputs={"sum": hf.task(total)(sq), "all": sq.all()})
    result = hf.run(wf, workers=2)
    assert result.outputs == {"sum": 285, "all": [i * i for i in range(10)]}
    assert result.done == 11 and result.status == "succeeded"
    events = [e[0] for e in read_journal(Path(result.run_dir) / "journal.bin")]
    assert events[0] == Event.RUN and events[-1] == Event.END
    assert events.count(Event.DONE) == 11 and events.count(Event.DISPATCH) == 11


def test_failure_skips_dependents_and_finishes_independent_branches():
    f = hf.task(fail_on)
    runs = f.sweep({"x": range(4)}, bad=2)
    after = hf.task(square).map(x=runs)
    wf = hf.workflow("w", outputs=[after.all()])
    result = hf.run(wf, workers=2, check=False)
    assert result.status == "failed"
    assert [fl.task for fl in result.failures] == ["fail_on[2]"]
    assert "refusing 2" in result.failures[0].error
    log = Path(result.failures[0].log)
    assert log.is_file() and "Traceback" in log.read_text()
    assert result.skipped == 1 and result.done == 6  # 3 fail_on + 3 square
    with pytest.raises(RunFailed, match="fail_on\\[2\\]"):
        hf.run(wf, workers=2)


def test_stop_on_first_failure_runs_nothing_new():
    slow = hf.task(lambda i: time.sleep(0.2) or i, name="slow")
    first = hf.task(fail_on, name="first")(1, bad=1)
    many = slow.sweep({"i": range(20)})
    wf = hf.workflow("w", outputs=[first, many.all()])
    result = hf.run(wf, workers=1, keep_going=False, check=False)
    assert result.status == "failed" and result.done < 20


def test_retries_then_success(tmp_path):
    marker = tmp_path / "tries"

    def flaky():
        n = int(marker.read_text()) if marker.exists() else 0
        marker.write_text(str(n + 1))
        if n < 2:
            raise RuntimeError(f"attempt {n}")
        return "ok"

    wf = hf.workflow("w", outputs=[hf.task(flaky, retries=2)()])
    from hpcflow.engine.core import RunOptions
    from hpcflow.engine.runner import EngineConfig, run_workflow

    result = run_workflow(wf, EngineConfig(workers=1, options=RunOptions(retry_delay=0.01)))
    assert result.outputs == {"out0": "ok"} and marker.read_text() == "3"
    kinds = [e[0] for e in read_journal(Path(result.run_dir) / "journal.bin")]
    assert kinds.count(Event.RETRY) == 2


def test_shell_task_outputs_logs_and_quoting(tmp_path):
    hostile = "x'; touch " + str(tmp_path / "pwned") + "; echo '"
    write = hf.shell("printf '%s' {text} > {out}; echo done", outputs={"out": "o.txt"},
                     name="write")(text=hostile)
    echo = hf.shell(["echo", "{path}"], stdout=True, name="echo")(path=write["out"])
    result = hf.run(hf.workflow("w", outputs={"file": write["out"], "echo": echo}), workers=2)
    out = Path(result.outputs["file"])
    assert out.read_text() == hostile
    assert not (tmp_path / "pwned").exists()
    assert result.outputs["echo"].strip() == str(out)
    assert (out.parent / "stdout.log").read_text() == "done\n"


def test_shell_nonzero_exit_and_missing_output_are_reported():
    bad = hf.shell("echo oops >&2; exit 3", name="bad")()
    lazy = hf.shell("true", outputs={"o": "never.txt"}, name="lazy")()
    result = hf.run(hf.workflow("w", outputs=[bad, lazy]), workers=2, check=False)
    errors = {f.task: f for f in result.failures}
    assert "status 3" in errors["bad"].error
    assert Path(errors["bad"].log).read_text() == "oops\n"
    assert "never.txt" in errors["lazy"].error


def test_shell_timeout_kills_process_tree(tmp_path):
    pidfile = tmp_path / "child.pid"
    sleeper = hf.shell("sleep 30 & echo $! > {p}; wait", name="sleeper",
                       timeout=1)(p=str(pidfile))
    start = time.monotonic()
    result = hf.run(hf.workflow("w", outputs=[sleeper]), workers=1, check=False)
    assert time.monotonic() - start < 15
    assert "timed out" in result.failures[0].error
    child = int(pidfile.read_text())
    time.sleep(0.2)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]


def test_method_task_constructs_instance():
    class Scaler:
        def __init__(self, factor):
            self.factor = factor

        def apply(self, x):
            return self.factor * x

    m = hf.method(Scaler, "apply", factor=3)
    result = hf.run(hf.workflow("w", outputs=[m(x=5)]), workers=1)
    assert result.outputs["out0"] == 15


def read_env(name, after=None):
    return os.environ.get(name)


def test_a_task_s_environment_is_its_own(tmp_path, monkeypatch):
    """A Python task's env is set for its call only: the next task on the same worker
    sees the worker's own value again; defaults in YAML merge name by name."""
    monkeypatch.setenv("HF_TEST_KEPT", "worker's")
    first = hf.task(read_env, env={"HF_TEST_KEPT": "task's", "HF_TEST_NEW": 1})("HF_TEST_KEPT")
    new = hf.task(read_env, name="new_after")("HF_TEST_NEW", after=first)
    kept = hf.task(read_env, name="kept_after")("HF_TEST_KEPT", after=new)
    result = hf.run(hf.workflow("w", outputs={"in": first, "new": new, "kept": kept}), workers=1)
    assert result.outputs == {"in": "task's", "new": None, "kept": "worker's"}
    with pytest.raises(ValueError, match="not a plain name"):
        hf.task(read_env, env={"A B": "x"})
    spec = tmp_path / "wf.yaml"
    spec.write_text("name: w\ndefaults:\n  env: {A: from defaults, B: from defaults}\n"
                    "tasks:\n  - id: t\n    shell: 'printf %s-%s \"$A\" \"$B\"'\n"
                    "    stdout: true\n    env: {B: own}\noutputs: {t: '${t}'}\n")
    from hpcflow.cli.load import load

    assert hf.run(load(str(spec)), workers=1).outputs["t"] == "from defaults-own"
    module = tmp_path / "reads_at_import.py"  # a library configured when it is imported
    module.write_text("import os\nAT_IMPORT = os.environ.get('HF_TEST_AT_IMPORT')\n"
                      "def read():\n    return AT_IMPORT\n")
    task = hf.task(f"{module}:read", env={"HF_TEST_AT_IMPORT": "set"}, name="at_import")
    assert hf.run(hf.workflow("w", outputs=[task()]), workers=1).outputs["out0"] == "set"


def test_cores_above_share_hold_slots_and_never_oversubscribe(tmp_path):
    log = tmp_path / "log"

    def mark(tag, cores):
        with open(log, "a") as fh:
            fh.write(f"start {tag} {cores} {time.monotonic()}\n")
        time.sleep(0.3)
        with open(log, "a") as fh:
            fh.write(f"end {tag} {cores} {time.monotonic()}\n")

    wide = hf.task(mark, cores=2, name="wide").sweep({"tag": ["w0", "w1"]}, cores=2)
    narrow = hf.task(mark, name="narrow").sweep({"tag": ["n0", "n1", "n2"]}, cores=1)
    from hpcflow.engine.runner import EngineConfig, run_workflow

    result = run_workflow(hf.workflow("w", outputs=[wide.all(), narrow.all()]),
                          EngineConfig(workers=2, runs_root=str(tmp_path)))
    assert result.status == "succeeded"
    events = sorted((float(t), kind, int(c)) for kind, _, c, t in
                    (line.split() for line in log.read_text().splitlines()))
    in_use = peak = 0
    for _, kind, cores in events:
        in_use += cores if kind == "start" else -cores
        peak = max(peak, in_use)
    assert peak <= os.cpu_count() and peak <= 2


def test_task_bigger_than_any_worker_is_refused_before_running(tmp_path):
    marker = tmp_path / "ran"
    small = hf.task(lambda: marker.write_text("x"), name="small")()
    huge = hf.task(square, cores=64, name="huge")(2)
    with pytest.raises(ResourceError, match="huge"):
        hf.run(hf.workflow("w", outputs=[small, huge]), workers=2)
    assert not marker.exists()


def visible_gpu(i):
    start = time.monotonic()
    time.sleep(0.2)
    return os.environ.get("CUDA_VISIBLE_DEVICES"), start, time.monotonic()


def test_gpu_ids_pinned_and_never_shared_by_concurrent_tasks():
    tasks = hf.task(visible_gpu, gpus=1, name="g").sweep({"i": range(6)})
    result = hf.run(hf.workflow("w", outputs=[tasks.all()]), workers=2, gpus=("0", "1"))
    runs = result.outputs["out0"]
    assert {gpu for gpu, _, _ in runs} == {"0", "1"}
    for a in runs:
        for b in runs:
            overlap = a is not b and a[1] < b[2] and b[1] < a[2]
            assert not (overlap and a[0] == b[0]), "two running tasks shared a GPU"


def test_python_task_with_ranks_needs_mpi_engine():
    par = hf.task(square, ranks=2)(3)
    with pytest.raises(hf.EngineError, match="MPI engine"):
        hf.run(hf.workflow("w", outputs=[par]), workers=2)


def test_refused_run_leaves_no_run_folder(tmp_path):
    huge = hf.task(square, cores=64, name="huge")(2)
    with pytest.raises(ResourceError):
        hf.run(hf.workflow("w", outputs=[huge]), workers=2, runs_root=str(tmp_path / "r"))
    assert list((tmp_path / "r").iterdir()) == []


@pytest.mark.slow
def test_sigterm_stops_a_local_run_and_its_shell_programs(tmp_path):
    import json
    import signal
    import subprocess
    import sys

    spec = tmp_path / "wf.yaml"
    spec.write_text("name: w\ntasks:\n  - id: sleeper\n    shell: 'echo $$ > {pid}; sleep 60'\n"
                    f"    args: {{pid: '{tmp_path / 'pid'}'}}\n")
    proc = subprocess.Popen([sys.executable, "-m", "hpcflow", "run", "--runs-root",
                             str(tmp_path / "runs"), str(spec)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (tmp_path / "pid").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    shell_pid = int((tmp_path / "pid").read_text())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 130
    run = next((tmp_path / "runs").iterdir())
    assert f"continue with hpcflow run --resume {run}" in proc.stderr.read()
    assert json.loads((run / "run.json").read_text())["status"] == "stopped"
    events = [e[0] for e in read_journal(run / "journal.bin")]
    assert events[-1] == Event.END
    time.sleep(0.5)
    alive = Path(f"/proc/{shell_pid}").exists() and \
        Path(f"/proc/{shell_pid}/stat").read_text().split()[2] != "Z"
    assert not alive, "the shell task's program outlived the stopped run"
