"""``hpcflow runs``: the run folders under a root, from their run.json."""

from __future__ import annotations

import json
import os

import pytest

import hpcflow as hf
from hpcflow.cli import main
from hpcflow.report.listing import list_runs, runs_text
from hpcflow.store.rundir import RunDir

pytestmark = pytest.mark.timeout(60)


def double(x):
    return 2 * x


def broken(x):
    raise ValueError(x)


def test_runs_lists_each_folder_with_its_state(tmp_path, capsys):
    root = tmp_path / "runs"
    ok = hf.run(hf.workflow("fine", outputs=[hf.task(double).sweep({"x": range(3)}).all()]),
                workers=1, runs_root=str(root))
    bad = hf.run(hf.workflow("bad", outputs=[hf.task(broken)(1)]), workers=1,
                 runs_root=str(root), check=False)
    hf.run(hf.workflow("fine", outputs=[hf.task(double).sweep({"x": range(3)}).all()]),
           workers=1, resume=ok.run_dir)
    died = root / "died-20260101-000000-1"  # a coordinator killed: run.json says running
    died.mkdir()
    (died / "run.json").write_text(json.dumps({"workflow": "died", "status": "running",
                                               "created": 1.0, "tasks": 5, "engine": "mpi"}))
    live = RunDir.create("live", root=root)
    live.write_info({"workflow": "live", "status": "running", "created": 2.0, "tasks": 1})
    live.lock()
    (root / "not-a-run").mkdir()
    foreign = root / "foreign-20260101-000000-1"
    foreign.mkdir()
    (foreign / "run.json").write_text("{}")
    os.chown(foreign, 65534, 65534)  # another user's: not listed (the tests run as root)
    try:
        runs = {os.path.basename(r.folder): r for r in list_runs(root)}
    finally:
        live.unlock()
    assert set(runs) == {os.path.basename(p) for p in (ok.run_dir, bad.run_dir, died, live.path)}
    assert runs[os.path.basename(ok.run_dir)].status == "succeeded"
    assert runs[os.path.basename(ok.run_dir)].reused == 3
    assert runs[os.path.basename(bad.run_dir)].status == "failed"
    assert runs[died.name].status == "gone" and runs[live.path.name].status == "running"
    text = runs_text(list_runs(root))
    assert text.splitlines()[1].split()[:3] == ["died-20260101-000000-1", "gone", "5"]  # oldest
    assert "3 (3 reused)" in text
    assert main(["runs", "--runs-root", str(root), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {r["folder"] for r in listed} == {r.folder for r in runs.values()}
    assert main(["runs", "--runs-root", str(tmp_path / "none")]) == 0
    assert capsys.readouterr().out == "no runs\n"
