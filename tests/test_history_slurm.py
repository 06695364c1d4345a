"""On the real local Slurm: a workflow that declares 10x its real times asks, the second
time it is submitted, for the time its first run measured (the history in between)."""

from __future__ import annotations

import json
import math
import uuid

import pytest
from test_slurm_integration import (
    cluster,  # noqa: F401 (the fixture that skips when Slurm is down)
    hpcflow,
    run_info,
    scontrol_job,
    submit,
    wait_final,
)

from hpcflow.scheduler.slurm._cmd import run_slurm
from hpcflow.store.history import History

NAP_PY = """\
import time


def nap(seconds, after=None):
    time.sleep(seconds)
    return seconds
"""

CHAIN_YAML = """\
name: {name}
defaults:
  resources: {{cores: 1, memory: 100M, time: {declared}s}}
tasks:
  - id: first
    python: nap:nap
    args: {{seconds: {seconds}}}
  - id: second
    python: nap:nap
    args: {{seconds: {seconds}, after: "${{first}}"}}
"""


def _limit_seconds(job: str) -> float:
    """The job's TimeLimit (``[D-]HH:MM:SS`` or ``MM:SS``) in seconds."""
    text = scontrol_job(job)["TimeLimit"]
    days, _, rest = text.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    return (int(days or 0) * 24 + parts[0]) * 3600 + parts[1] * 60 + parts[2]


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.usefixtures("cluster")
def test_the_second_submission_asks_for_the_measured_time(tmp_path):
    seconds = 15
    (tmp_path / "nap.py").write_text(NAP_PY)
    spec = tmp_path / "chain.yaml"
    spec.write_text(CHAIN_YAML.format(name=f"chain-{uuid.uuid4().hex[:8]}", seconds=seconds,
                                      declared=10 * seconds))
    first = submit(spec, "--nodes", "1", cwd=tmp_path)
    try:
        assert wait_final(first["run_dir"], timeout=300)["state"] == "COMPLETED"
    finally:
        run_slurm(["scancel", first["job_id"]])
    info = run_info(first["run_dir"])
    assert info["status"] == "succeeded"
    with History() as history:
        measured = {e.name: history.samples(e.definition) for e in history.entries()}
    assert [s.outcome for s in measured["first"] + measured["second"]] == ["done", "done"]
    real = sum(s.duration for s in measured["first"] + measured["second"])
    planned = json.loads(hpcflow("plan", str(spec), "--json", cwd=tmp_path).stdout)
    assert [g["source"] for g in planned["estimates"]] == ["learned", "learned"]
    assert planned["critical_path"]["seconds"] == pytest.approx(real, rel=0.1)
    second = submit(spec, "--nodes", "1", cwd=tmp_path)
    try:
        asked, before = _limit_seconds(second["job_id"]), _limit_seconds(first["job_id"])
    finally:
        run_slurm(["scancel", second["job_id"]])
    assert before >= 10 * seconds * 2  # what the declaration asked for
    print(f"real makespan {real:.1f} s; asked {before:.0f} s, then {asked:.0f} s")
    assert asked <= math.ceil(max(1.25 * real, real + 180) / 60) * 60 < before
    plain = json.loads(hpcflow("plan", str(spec), "--json", "--no-history", cwd=tmp_path).stdout)
    assert plain["critical_path"]["seconds"] == pytest.approx(20 * seconds)
