"""The hpcflow command through a real subprocess: exit codes, outputs, the examples."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "sweep"
pytestmark = pytest.mark.timeout(120)


def hpcflow(*args: str, cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess:
    env = dict(os.environ, HPCFLOW_RUNS=str(cwd / "runs"))
    return subprocess.run([sys.executable, "-m", "hpcflow", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_validate_ok(tmp_path):
    done = hpcflow("validate", str(EXAMPLE / "workflow.yaml"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "17 task(s) in 6 group(s)" in done.stdout


def test_plan_text_and_json(tmp_path):
    text = hpcflow("plan", str(EXAMPLE / "workflow.yaml"), cwd=tmp_path)
    assert text.returncode == 0 and "critical path" in text.stdout
    data = json.loads(hpcflow("plan", "--json", str(EXAMPLE / "workflow.yaml"), cwd=tmp_path).stdout)
    assert data["tasks"] == 17


def test_run_yaml_and_python_give_the_same_outputs(tmp_path):
    outputs = []
    for target in ("workflow.yaml", "workflow.py"):
        done = hpcflow("run", "--json", "--workers", "2", str(EXAMPLE / target), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["status"] == "succeeded" and result["done"] == 17
        fastest = Path(eval(result["outputs"]["fastest"]))  # repr of a path string
        assert fastest.is_file() and len(fastest.read_text().splitlines()) == 3
        assert fastest.is_relative_to(tmp_path / "runs")
        outputs.append({k: v for k, v in result["outputs"].items() if k != "fastest"})
    assert outputs[0] == outputs[1]


def test_bad_spec_exits_2_and_names_file_line_task_field(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: w\ntasks:\n  - id: a\n    shell: echo hi\n    resourcse: {cores: 1}\n")
    done = hpcflow("run", str(spec), cwd=tmp_path)
    assert done.returncode == 2
    assert "bad.yaml:5" in done.stderr and "'a'" in done.stderr and "resourcse" in done.stderr
    assert not (tmp_path / "runs").exists()  # nothing ran, no run folder


def test_failed_task_exits_1_with_log_path(tmp_path):
    spec = tmp_path / "fail.yaml"
    spec.write_text("name: w\ntasks:\n  - id: boom\n    shell: 'echo broken >&2; exit 4'\n"
                    "  - id: fine\n    shell: 'true'\n")
    done = hpcflow("run", str(spec), cwd=tmp_path)
    assert done.returncode == 1
    assert "FAILED boom" in done.stderr and "stderr.log" in done.stderr
    log = next((tmp_path / "runs").glob("w-*/tasks/boom/stderr.log"))
    assert log.read_text() == "broken\n"
    # what to do next works as written: fix the cause, run the command it names
    command = re.search(r"hpcflow run (--resume \S+)", done.stderr)
    assert command, done.stderr
    spec.write_text(spec.read_text().replace("echo broken >&2; exit 4", "echo mended"))
    again = hpcflow("run", *command.group(1).split(), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    info = json.loads((log.parents[2] / "run.json").read_text())
    assert info["status"] == "succeeded" and info["reused"] == 1  # `fine` did not run again


@pytest.mark.parametrize("fmt, marker", [("dot", "digraph"), ("mermaid", "flowchart LR")])
def test_graph_formats(tmp_path, fmt, marker):
    done = hpcflow("graph", "--format", fmt, str(EXAMPLE / "workflow.yaml"), cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith(marker)
    assert "simulate [x12]" in done.stdout


def test_missing_file_and_unknown_engine(tmp_path):
    assert hpcflow("validate", "nope.yaml", cwd=tmp_path).returncode == 2
    done = hpcflow("run", "--engine", "warp", str(EXAMPLE / "workflow.yaml"), cwd=tmp_path)
    assert done.returncode == 3 and "unknown engine 'warp'" in done.stderr


def test_python_module_entry_point_and_version(tmp_path):
    done = hpcflow("--version", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("hpcflow ")


def test_run_reports_progress_on_stderr_and_quiet_silences_it(tmp_path):
    done = hpcflow("run", str(EXAMPLE / "workflow.yaml"), cwd=tmp_path)
    lines = [line for line in done.stderr.splitlines() if line.startswith("[hpcflow]")]
    assert done.returncode == 0 and lines and "17/17" in lines[-1]
    assert len(lines) <= 12  # a pipe gets a line per 10% at most, never one per task
    quiet = hpcflow("run", "-q", str(EXAMPLE / "workflow.yaml"), cwd=tmp_path)
    assert quiet.returncode == 0 and "[hpcflow]" not in quiet.stderr
