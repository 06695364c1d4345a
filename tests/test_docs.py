"""The documentation's examples run, so that they cannot rot.

Every fenced block of README.md, docs/*.md and examples/README.md is found here:

- ``yaml``: a whole workflow (``name`` and ``tasks``) is validated as ``hpcflow
  validate`` does; a cluster profile (``partitions``) is loaded as ``--profile`` does.
  The block is written to a temporary folder, alone, or beside a copy of the folder
  named by an HTML comment just before the block (``<!-- test-in: examples/sweep -->``),
  or of the files that ``CONTEXTS`` gives for the blocks of files that cannot carry
  such a comment (the generated YAML reference);
- ``python``: executed as a script in a temporary folder (``HPCFLOW_RUNS`` there too);
  a block that calls ``engine="mpi"`` runs under ``mpiexec -n 3``; every block must be
  whole (no names left out);
- ``sh``: each ``hpcflow ...`` command on the bundled examples (``validate``, ``plan``,
  ``run``, ``graph``, ``status``, ``report``, ``trace``, ``runs``, possibly under ``mpiexec``) runs, in
  document order, in one temporary folder per file where ``examples/`` is a link to the
  repository's. Install commands, Slurm commands and commands on files that are not
  bundled (``WF.yaml``) are left out; a run folder named in the text
  (``hpcflow-runs/etl-20261125-140000-1``) stands for the newest run of that workflow;
  a command with a placeholder (``WF.yaml``, ``RUN``, ``...``) is left out.
  ``# exits N`` in a command's comment says the exit status it must give.

A block preceded by ``<!-- not-a-test -->`` (or ``<!-- not-a-test: why -->``) is left
out; every other yaml and python block must be exercised.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from hpcflow.cli import main as hpcflow_main

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "examples" / "README.md"]
MPIEXEC = shutil.which("mpiexec")
pytestmark = pytest.mark.timeout(600)

SKIP_MARK = "not-a-test"
CONTEXT_MARK = "test-in:"
RUNNABLE = {"validate", "plan", "run", "graph", "status", "report", "trace", "runs"}
MIN_SHELL_COMMANDS = 20
"""Fewer runnable commands than this across the docs means the parser lost them."""


def _stub_sweep_demo(folder: Path) -> None:
    """What docs/yaml-reference.md's example refers to: lib/mymod.py (only read, never
    imported, when validating) and stats.yaml with an input ``data``."""
    (folder / "lib").mkdir()
    (folder / "lib" / "mymod.py").write_text("def make_data(): ...\ndef simulate(): ...\n"
                                             "class Model: ...\n")
    (folder / "stats.yaml").write_text(textwrap.dedent("""\
        name: stats
        inputs: {data: null}
        tasks:
          - id: count
            shell: "echo {data}"
            args: {data: "${inputs.data}"}
            stdout: true
        outputs: {count: "${count}"}
        """))


def _copy_of(relative: str):
    def setup(folder: Path) -> None:
        shutil.copytree(ROOT / relative, folder, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return setup


CONTEXTS = {
    ("README.md", "oscillator-sweep"): _copy_of("examples/sweep"),
    ("docs/yaml-reference.md", "sweep-demo"): _stub_sweep_demo,
}
"""(file, workflow name) -> what to put beside the block, for files without test-in marks."""

@dataclass(frozen=True)
class Block:
    file: str  # relative to the repository
    line: int  # of the opening fence
    lang: str
    code: str
    mark: str  # the HTML comment just before the fence, or ""

    @property
    def skipped(self) -> bool:
        return self.mark.startswith(SKIP_MARK)

    @property
    def context(self) -> str | None:
        return self.mark[len(CONTEXT_MARK):].strip() if self.mark.startswith(CONTEXT_MARK) else None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


def blocks_of(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        fence = re.match(r"^(```+)\s*([\w+-]*)", lines[i])
        if not fence:
            i += 1
            continue
        start, ticks = i, fence.group(1)
        i += 1
        while i < len(lines) and not lines[i].startswith(ticks):
            i += 1
        previous = next((lines[k].strip() for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        comment = re.fullmatch(r"<!--\s*(.*?)\s*-->", previous)
        found.append(Block(str(path.relative_to(ROOT)), start + 1, fence.group(2).lower(),
                           "\n".join(lines[start + 1 : i]) + "\n", comment.group(1) if comment else ""))
        i += 1
    return found


BLOCKS = [b for doc in DOCS if doc.exists() for b in blocks_of(doc)]
YAML_BLOCKS = [b for b in BLOCKS if b.lang in ("yaml", "yml") and not b.skipped]
PYTHON_BLOCKS = [b for b in BLOCKS if b.lang in ("python", "py") and not b.skipped]
SHELL_FILES = sorted({b.file for b in BLOCKS if b.lang in ("sh", "bash", "shell") and not b.skipped})


def test_the_docs_are_found_and_have_blocks():
    files = {b.file for b in BLOCKS}
    for name in ("README.md", "docs/user-guide.md", "docs/python-api.md", "docs/cluster.md",
                 "docs/troubleshooting.md", "examples/README.md"):
        assert name in files, f"{name}: no fenced block found"
    assert len(YAML_BLOCKS) >= 6 and len(PYTHON_BLOCKS) >= 8


def test_every_mark_is_known():
    """A mistyped mark would leave a block untested (or tested where it should not be)."""
    for block in BLOCKS:
        if block.mark:
            assert block.skipped or block.context is not None, (
                f"{block}: unknown mark <!-- {block.mark} -->: use <!-- {SKIP_MARK} --> or "
                f"<!-- {CONTEXT_MARK} FOLDER -->")
            if block.context:
                assert (ROOT / block.context).is_dir(), f"{block}: no folder {block.context}"


def test_every_unmarked_yaml_block_is_a_workflow_or_a_profile():
    for block in YAML_BLOCKS:
        data = yaml.safe_load(block.code)
        kind = _yaml_kind(data)
        assert kind is not None, (
            f"{block}: a YAML block that is neither a whole workflow (name, tasks) nor a cluster "
            f"profile (partitions): make it whole, or put <!-- {SKIP_MARK} --> before it")


def _yaml_kind(data: object) -> str | None:
    if isinstance(data, dict) and "tasks" in data and "name" in data:
        return "workflow"
    if isinstance(data, dict) and "partitions" in data:
        return "profile"
    return None


# -- yaml ----------------------------------------------------------------------------

@pytest.mark.parametrize("block", YAML_BLOCKS, ids=str)
def test_yaml_block_validates(block, tmp_path, capsys):
    data = yaml.safe_load(block.code)
    folder = tmp_path / "doc"
    folder.mkdir()
    if _yaml_kind(data) == "profile":
        from hpcflow.scheduler.slurm.profile import load_profile

        path = folder / "profile.yaml"
        path.write_text(block.code)
        assert load_profile(path).partitions
        return
    if block.context:
        _copy_of(block.context)(folder)
    elif (block.file, data["name"]) in CONTEXTS:
        CONTEXTS[block.file, data["name"]](folder)
    path = folder / "_doc_block.yaml"
    path.write_text(block.code)
    code = hpcflow_main(["validate", str(path)])
    out = capsys.readouterr()
    assert code == 0, f"{block}: hpcflow validate said:\n{out.err}"
    assert f"ok: workflow '{data['name']}'" in out.out


# -- python --------------------------------------------------------------------------

def _sandbox(tmp_path: Path) -> Path:
    """A working folder where ``examples/`` is the repository's, and ``hpcflow`` and
    ``python`` on PATH are this interpreter."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")
    tools = tmp_path / "bin"
    tools.mkdir()
    for name, args in (("hpcflow", '-m hpcflow "$@"'), ("python", '"$@"')):
        shim = tools / name
        shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {args}\n')
        shim.chmod(0o755)
    return work


def _env(tmp_path: Path, runs: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HPCFLOW_RUNS"}
    env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    if runs is not None:
        env["HPCFLOW_RUNS"] = str(runs)
    return env


@pytest.mark.slow
@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=str)
def test_python_block_runs(block, tmp_path):
    work = _sandbox(tmp_path)
    script = work / "doc_block.py"
    script.write_text(block.code)
    command = [sys.executable, str(script)]
    if 'engine="mpi"' in block.code:
        if MPIEXEC is None:
            pytest.skip("mpiexec not found: `pip install mpich` (or load your site's MPI)")
        command = ["timeout", "-k", "10", "150", MPIEXEC, "-n", "3", *command]
    done = subprocess.run(command, cwd=work, env=_env(tmp_path, tmp_path / "runs"),
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{block} failed:\n{done.stdout}\n{done.stderr}"


# -- shell ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Command:
    text: str
    words: tuple[str, ...]
    exit: int


_SEPARATORS = {"&&", "||", ";"}


def commands_of(code: str) -> list[Command]:
    """The commands of a shell block: continuation lines joined, ``&&``/``;`` chains split
    (outside quotes). A command with a pipe or a redirection is left out (its words alone
    would not do what the line does), and so is a line that does not parse."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        expected = re.search(r"#\s*exits\s+(\d+)", line)
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        try:
            tokens = list(lexer)
        except ValueError:
            continue
        part: list[str] = []
        for token in [*tokens, ";"]:
            if token not in _SEPARATORS:
                part.append(token)
                continue
            if part and not any(set(w) <= set("|&<>()") for w in part):
                words = tuple(part)
                commands.append(Command(shlex.join(words), words,
                                        int(expected.group(1)) if expected else 0))
            part = []
    return commands


def _hpcflow_words(words: tuple[str, ...]) -> tuple[str, ...] | None:
    """The words after ``hpcflow`` (under ``timeout``/``mpiexec -n N``), or None."""
    rest = list(words)
    if rest[:1] == ["timeout"]:
        rest = rest[2:]
    if rest[:2] == ["mpiexec", "-n"]:
        rest = rest[3:]
    if rest[:1] == ["hpcflow"]:
        return tuple(rest[1:])
    if rest[:3] == ["python", "-m", "hpcflow"]:
        return tuple(rest[3:])
    return None


_RUN_NAME = re.compile(r"^(?:hpcflow-runs/)?(?P<workflow>[A-Za-z_][\w.-]*?)-\d{8}-\d{6}-\d+$")
_PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*(\.(yaml|py))?(:\w+)?$")


def plan_command(command: Command, work: Path) -> tuple[str | None, str]:
    """What to run for ``command`` in ``work`` (None: leave it out) and why."""
    args = _hpcflow_words(command.words)
    if args is None or not args:
        return None, "not an hpcflow command"
    if args[0] not in RUNNABLE:
        return None, f"'hpcflow {args[0]}' needs a cluster"
    if "--slurm" in args and "--profile" not in args:
        return None, "sizing without --profile asks the cluster"
    if ("mpiexec" in command.words or "mpi" in args) and MPIEXEC is None:
        return None, "mpiexec not found"
    words = list(command.words)
    for k, word in enumerate(words):
        if _PLACEHOLDER.match(word) or "..." in word:
            return None, f"placeholder {word}"
        named = _RUN_NAME.match(word)
        if named:
            runs = sorted((work / "hpcflow-runs").glob(f"{named['workflow']}-*"))
            if not runs:
                raise AssertionError(f"'{command.text}' names a run of '{named['workflow']}', "
                                     "but no command before it in this file ran that workflow")
            words[k] = str(runs[-1].relative_to(work))
        path = word.split(":")[0]
        if path.endswith((".yaml", ".yml", ".py")) and not (work / path).exists():
            return None, f"{path} is not a bundled file"
    text = shlex.join(words)
    if "mpiexec" in words or "mpi" in args:
        text = f"timeout -k 10 150 {text}"
    return text, ""


@pytest.mark.slow
@pytest.mark.parametrize("doc", SHELL_FILES)
def test_shell_commands_run(doc, tmp_path):
    work = _sandbox(tmp_path)
    env = _env(tmp_path, None)  # run folders go to ./hpcflow-runs, as the docs show them
    ran = []
    for block in (b for b in BLOCKS if b.file == doc and b.lang in ("sh", "bash", "shell")
                  and not b.skipped):
        for command in commands_of(block.code):
            text, _why = plan_command(command, work)
            if text is None:
                continue
            done = subprocess.run(["bash", "-c", text], cwd=work, env=env, capture_output=True,
                                  text=True, timeout=180)
            assert done.returncode == command.exit, (
                f"{block}: `{command.text}` exited {done.returncode}, expected {command.exit}:\n"
                f"{done.stdout}\n{done.stderr}")
            ran.append(command.text)
    print(f"{doc}: ran", *ran, sep="\n  ")


def test_enough_shell_commands_are_runnable(tmp_path):
    """Count what the shell test would run (a parser that loses commands fails here)."""
    work = _sandbox(tmp_path)
    (work / "hpcflow-runs").mkdir()
    runnable = 0
    for block in BLOCKS:
        if block.lang not in ("sh", "bash", "shell") or block.skipped:
            continue
        for command in commands_of(block.code):
            args = _hpcflow_words(command.words)
            named = [w for w in command.words if _RUN_NAME.match(w)]
            for word in named:  # stand-ins, so that run names count as runnable
                (work / "hpcflow-runs" / f"{_RUN_NAME.match(word)['workflow']}-0").mkdir(exist_ok=True)
            if args and plan_command(command, work)[0] is not None:
                runnable += 1
    assert runnable >= MIN_SHELL_COMMANDS


def test_commands_of_joins_and_splits():
    code = ("pip install x && hpcflow run \\\n  examples/a.yaml   # exits 1\n# a comment\n\n"
            "docker run img bash -c 'sbatch --wrap \"srun x\" && cat out'; hpcflow graph a.yaml > a.dot\n"
            "echo 'unbalanced\n")
    commands = commands_of(code)
    assert [c.words for c in commands] == [
        ("pip", "install", "x"), ("hpcflow", "run", "examples/a.yaml"),
        ("docker", "run", "img", "bash", "-c", 'sbatch --wrap "srun x" && cat out')]
    assert [c.exit for c in commands] == [1, 1, 0]
    assert _hpcflow_words(("timeout", "60", "mpiexec", "-n", "4", "hpcflow", "run", "x")) == ("run", "x")
    assert _hpcflow_words(("module", "load", "openmpi")) is None


# -- links ---------------------------------------------------------------------------

def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, flags=re.M)}


MY_DOCS = [ROOT / "docs" / n for n in ("user-guide.md", "python-api.md", "cluster.md",
                                       "troubleshooting.md")] + [ROOT / "examples" / "README.md"]


@pytest.mark.parametrize("doc", MY_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(doc):
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        assert path.exists(), f"{doc.name}: link to missing {target}"
        if anchor:
            assert anchor in _anchors(path), f"{doc.name}: no heading for #{anchor} in {path.name}"
