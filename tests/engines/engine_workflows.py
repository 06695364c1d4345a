"""The workflows the engine-agnostic suite runs on every engine.

Each builder takes no argument, so that the CLI can load it too
(``hpcflow run tests/engines/engine_workflows.py:sweep_gather --engine mpi``); what a
workflow needs from its test (a scratch folder) comes from ``$HPCFLOW_TEST_DIR``.
The task functions live here, in a module that remote workers cannot import: the
backends must ship them by value, as they do a user's workflow file.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import numpy as np

import hpcflow as hf

DAG_TASKS = 200
DAG_SEED = 20240607
FAILING_DAG_TASKS = 60
SHORT_SWEEP = 600
LAYERS, WIDTH = 6, 30
BAD = (3, 7)  # the layered DAG's task that fails (layer, index)
RETRIED = 50  # the member of the flaky sweep that fails its first attempt


def square(x):
    return x * x


def total(xs):
    return sum(xs)


def fail_on(x, bad):
    if x == bad:
        raise ValueError(f"refusing {x}")
    return x


def flaky(marker):
    """Fails on its first two attempts (counted in ``marker``), then succeeds."""
    path = Path(marker)
    n = int(path.read_text()) if path.exists() else 0
    path.write_text(str(n + 1))
    if n < 2:
        raise RuntimeError(f"attempt {n}")
    return "ok"


def split(i):
    return {"a": i, "b": [i, i + 1]}


def firsts(lists):
    return [items[0] for items in lists]


def big(n):
    return np.arange(n, dtype=np.float64)


def allocate(mib):
    """Peaks about ``mib`` MiB above what its process already holds."""
    return len(bytearray(mib * 2**20)) // 2**20


def checksum(array, scale=1.0):
    return float(array.sum()) * scale


def node(i, inputs):
    """A random DAG's task: a value that depends on every input, and on the order."""
    value = i * 31
    for k, x in enumerate(inputs):
        value = (value * 7 + x * (k + 3)) % 1_000_003
    return value


def node_or_fail(i, inputs):
    if i % 13 == 5:
        raise ValueError(f"node {i} fails on purpose")
    return node(i, inputs)


def nap(i, folder, seconds):
    (Path(folder) / f"started-{i}").write_text(str(os.getpid()))
    time.sleep(seconds)
    return i


def mark(tag, cores, log):
    """Logs its start and end, for the no-oversubscription check."""
    with open(log, "a") as fh:
        fh.write(f"start {tag} {cores} {time.time()}\n")
    time.sleep(0.3)
    with open(log, "a") as fh:
        fh.write(f"end {tag} {cores} {time.time()}\n")


def visible_gpu(i):
    start = time.time()
    time.sleep(0.3)
    return os.environ.get("CUDA_VISIBLE_DEVICES"), start, time.time()


def step(k, i, a, b, folder, fail):
    """A layered DAG's task: leaves ran-<k>-<i> in ``folder``; with ``fail``, BAD fails."""
    (Path(folder) / f"ran-{k}-{i}").touch()
    if fail and (k, i) == BAD:
        raise ValueError(f"step {k}-{i} fails on purpose")
    return (a * 3 + b + k) % 1009


def first_try_fails(x, folder):
    """Fails the first attempt of member RETRIED; returns (x, the attempt that ran)."""
    mark = Path(folder) / f"try-{x}"
    attempt = int(mark.read_text()) + 1 if mark.exists() else 1
    mark.write_text(str(attempt))
    if x == RETRIED and attempt == 1:
        raise RuntimeError(f"first attempt of {x}")
    return x, attempt


def follow(value):
    return value


class Scaler:
    def __init__(self, factor):
        self.factor = factor

    def apply(self, x):
        return self.factor * x


def read_env(*names):
    return [os.environ.get(name) for name in names]


class EnvReader:
    def __init__(self):
        self.at_init = os.environ.get("HF_TEST_ENV_A")

    def read(self, name):
        return self.at_init, os.environ.get(name)


def _scratch() -> Path:
    return Path(os.environ.get("HPCFLOW_TEST_DIR", "."))


# -- the workflows --------------------------------------------------------------------
def sweep_gather() -> hf.Workflow:
    sq = hf.task(square).sweep({"x": range(10)})
    return hf.workflow("sweep_gather", outputs={"sum": hf.task(total)(sq), "all": sq.all()})


def failing() -> hf.Workflow:
    runs = hf.task(fail_on).sweep({"x": range(4)}, bad=2)
    after = hf.task(square).map(x=runs)
    return hf.workflow("failing", outputs=[after.all()])


def keyed() -> hf.Workflow:
    """Results read by key and gathered: handles must carry the key to the worker."""
    parts = hf.task(split).sweep({"i": range(4)})
    sum_a = hf.task(total, name="sum_a")(parts["a"])
    squares = hf.task(square).map(x=parts["a"])
    first_b = hf.task(firsts)(parts["b"])
    return hf.workflow("keyed", outputs={"sum_a": sum_a, "squares": squares.all(),
                                         "first_b": first_b})


def retries() -> hf.Workflow:
    marker = _scratch() / "tries"
    return hf.workflow("retries", outputs=[hf.task(flaky, retries=2)(str(marker))])


def shell_outputs() -> hf.Workflow:
    hostile = "x'; touch " + str(_scratch() / "pwned") + "; echo '"
    write = hf.shell("printf '%s' {text} > {out}; echo done", outputs={"out": "o.txt"},
                     name="write")(text=hostile)
    echo = hf.shell(["echo", "{path}"], stdout=True, name="echo")(path=write["out"])
    return hf.workflow("shell", outputs={"file": write["out"], "echo": echo})


def shell_timeout() -> hf.Workflow:
    sleeper = hf.shell("sleep 30 & echo $! > {p}; wait", name="sleeper",
                       timeout=1)(p=str(_scratch() / "child.pid"))
    return hf.workflow("timeout", outputs=[sleeper])


def large() -> hf.Workflow:
    """A 1.6 MB result (above the journal's inline limit) read by two tasks."""
    array = hf.task(big)(200_000)
    once = hf.task(checksum, name="once")(array)
    twice = hf.task(checksum, name="twice")(array, scale=2.0)
    return hf.workflow("large", outputs={"once": once, "twice": twice})


def memory() -> hf.Workflow:
    """A Python task and a shell command that each peak about 200 MiB."""
    python = hf.task(allocate, name="big_python")(200)
    command = hf.shell("\"$HPCFLOW_PYTHON\" -c 'b = bytearray(200 * 2**20)'",
                       name="big_shell")()
    return hf.workflow("memory", outputs={"python": python, "shell": command})


def method() -> hf.Workflow:
    return hf.workflow("method", outputs=[hf.method(Scaler, "apply", factor=3)(x=5)])


def environments() -> hf.Workflow:
    """Each kind of task with an ``env`` of its own (one with ``$HOME`` to expand); the
    Python ones read it in and after the call's environment."""
    env = {"HF_TEST_ENV_A": "a value", "HF_TEST_ENV_B": 4, "HF_TEST_ENV_C": "${HOME}/x:$NOPE"}
    names = sorted(env)
    python = hf.task(read_env, env=env, name="python")(*names)
    timed = hf.task(read_env, env=env, timeout=60, name="forked")(*names)
    shell = hf.shell('printf "%s|%s|%s" "$HF_TEST_ENV_A" "$HF_TEST_ENV_B" "$HF_TEST_ENV_C"',
                     stdout=True, env=env, name="shell")()
    method = hf.method(EnvReader, "read").options(env=env, name="method")("HF_TEST_ENV_B")
    return hf.workflow("environments", outputs={"python": python, "forked": timed,
                                                "shell": shell, "method": method})


def python_timeout() -> hf.Workflow:
    """A Python task past its time-out (run in a child process the Executor forks), and
    one within it."""
    late = hf.task(nap, timeout=1, name="late")(0, folder=str(_scratch()), seconds=30)
    early = hf.task(nap, timeout=20, name="early")(1, folder=str(_scratch()), seconds=0)
    return hf.workflow("python_timeout", outputs=[late, early])


def naps() -> hf.Workflow:
    """Four 5-second tasks, each leaving started-<i> in the scratch folder: for Ctrl-C."""
    tasks = hf.task(nap).sweep({"i": range(4)}, folder=str(_scratch()), seconds=5)
    return hf.workflow("naps", outputs=[tasks.all()])


def wide_and_narrow() -> hf.Workflow:
    """2-core and 1-core tasks on two 1-core slots: never more than 2 cores at once."""
    log = str(_scratch() / "cores.log")
    wide = hf.task(mark, cores=2, name="wide").sweep({"tag": ["w0", "w1"]}, cores=2, log=log)
    narrow = hf.task(mark, name="narrow").sweep({"tag": ["n0", "n1", "n2"]}, cores=1, log=log)
    return hf.workflow("wide_and_narrow", outputs=[wide.all(), narrow.all()])


def gpu_tasks() -> hf.Workflow:
    return hf.workflow("gpus", outputs=[hf.task(visible_gpu, gpus=1).sweep({"i": range(6)}).all()])


def short_sweep() -> hf.Workflow:
    """Many short members of a sweep over values, and a gather: they travel as runs."""
    sq = hf.task(square).sweep({"x": range(SHORT_SWEEP)})
    return hf.workflow("short_sweep", outputs={"all": sq.all(), "sum": hf.task(total)(sq)})


def layered(failing: bool = False) -> hf.Workflow:
    """LAYERS x WIDTH short tasks, each reading two of the layer above (the benchmarks'
    layered DAG): the first layer goes as runs, the others in bundles."""
    folder = str(_scratch())
    shifted = [(i + 1) % WIDTH for i in range(WIDTH)]
    prev = hf.task(square, name="top").sweep({"x": range(WIDTH)})
    for k in range(1, LAYERS):
        prev = hf.task(step, name=f"layer{k}").sweep(
            {"a": prev.each(), "b": prev.each(shifted), "i": range(WIDTH)}, mode="zip",
            k=k, folder=folder, fail=failing)
    return hf.workflow("layered", outputs={"last": prev.all()})


def layered_failing() -> hf.Workflow:
    return layered(failing=True)


def retried_member() -> hf.Workflow:
    """A short sweep whose member RETRIED fails once, and a task per member reading it."""
    sweep = hf.task(first_try_fails, retries=1).sweep({"x": range(100)}, folder=str(_scratch()))
    return hf.workflow("retried_member", outputs={"all": hf.task(follow).map(value=sweep).all()})


def random_dag() -> hf.Workflow:
    return _random_dag("random_dag", DAG_TASKS, node)


def random_dag_failing() -> hf.Workflow:
    return _random_dag("random_dag_failing", FAILING_DAG_TASKS, node_or_fail)


def _random_dag(name: str, n: int, fn) -> hf.Workflow:
    """``n`` tasks, each reading up to 3 of the 30 before it (seeded), and a gather of all."""
    tasks = []
    for i, parents in enumerate(dag_edges(n)):
        tasks.append(hf.task(fn, name=f"n{i}")(i, [tasks[p] for p in parents]))
    return hf.workflow(name, outputs={"values": hf.task(list, name="gather")(tasks)})


def dag_edges(n: int, seed: int = DAG_SEED) -> list[list[int]]:
    rng = random.Random(seed)
    return [rng.sample(range(max(0, i - 30), i), rng.randint(0, min(3, i))) for i in range(n)]


def expected_random_dag(n: int = DAG_TASKS) -> list[int]:
    """The random DAG's values computed in plain Python: the reference's reference."""
    values: list[int] = []
    for i, parents in enumerate(dag_edges(n)):
        values.append(node(i, [values[p] for p in parents]))
    return values


def expected_layered(failing: bool) -> tuple[list[int] | None, set[tuple[int, int]]]:
    """The layered DAG's last layer (None when it fails) and the tasks that must run:
    with ``failing``, none downstream of BAD."""
    row = [x * x for x in range(WIDTH)]
    blocked: set[tuple[int, int]] = set()
    ran: set[tuple[int, int]] = set()
    for k in range(1, LAYERS):
        for i in range(WIDTH):
            if (k - 1, i) in blocked or (k - 1, (i + 1) % WIDTH) in blocked:
                blocked.add((k, i))
            else:
                ran.add((k, i))
                if failing and (k, i) == BAD:
                    blocked.add((k, i))
        row = [(row[i] * 3 + row[(i + 1) % WIDTH] + k) % 1009 for i in range(WIDTH)]
    return (None if failing else row), ran


def expected_failing_dag(n: int = FAILING_DAG_TASKS) -> tuple[set[int], int]:
    """Which of the failing DAG's tasks fail, and how many tasks are skipped (the gather
    included): a task downstream of a failure never runs."""
    failed: set[int] = set()
    blocked: set[int] = set()
    for i, parents in enumerate(dag_edges(n)):
        if any(p in failed or p in blocked for p in parents):
            blocked.add(i)
        elif i % 13 == 5:
            failed.add(i)
    return failed, len(blocked) + 1
