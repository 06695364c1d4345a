"""Resume: reuse of completed tasks by fingerprint, reruns with their reasons, torn journals."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

import hpcflow as hf
from hpcflow.cli import main
from hpcflow.engine.runner import resume_preview
from hpcflow.store.journal import Event, complete_length, read_journal

pytestmark = pytest.mark.timeout(60)

MODULE = """
import os
from pathlib import Path

def _mark(name):
    with open(Path(os.environ["HF_TEST_LOG"]) / name, "a") as fh:
        fh.write(name + "\\n")

def a(x):
    _mark(f"a{x}")
    return x + 1

def b(values):
    _mark("b")
    return sum(values)

def c(total):
    if os.environ.get("HF_TEST_FAIL_C"):
        raise ValueError("c refuses")
    _mark("c")
    return total * 2

def d(x):
    _mark(f"d{x}")
    return -x
"""


def _workflow(module: Path, d_env: dict[str, str] | None = None) -> hf.Workflow:
    mod = str(module)
    a = hf.task(f"{mod}:a", name="a").sweep({"x": range(4)})
    b = hf.task(f"{mod}:b", name="b")(a.all())
    c = hf.task(f"{mod}:c", name="c")(b)
    d = hf.task(f"{mod}:d", name="d", env=d_env).sweep({"x": range(3)})
    return hf.workflow("w", outputs={"c": c, "d": d.all()})


@pytest.fixture
def setup(tmp_path, monkeypatch):
    log = tmp_path / "log"
    log.mkdir()
    monkeypatch.setenv("HF_TEST_LOG", str(log))
    module = tmp_path / "tasks_mod.py"
    module.write_text(MODULE)
    return module, log, tmp_path / "run"


def _counts(log: Path) -> dict[str, int]:
    return {p.name: len(p.read_text().splitlines()) for p in sorted(log.iterdir())}


def _edit(module: Path, old: str, new: str) -> None:
    text = module.read_text()
    assert old in text
    module.write_text(text.replace(old, new))


def test_resume_after_failure_runs_only_what_did_not_finish(setup, monkeypatch):
    module, log, run = setup
    monkeypatch.setenv("HF_TEST_FAIL_C", "1")
    first = hf.run(_workflow(module), workers=2, run_dir=str(run), check=False)
    assert first.status == "failed"
    monkeypatch.delenv("HF_TEST_FAIL_C")
    result = hf.run(_workflow(module), workers=2, resume=str(run))
    assert result.outputs == {"c": 20, "d": [0, -1, -2]}
    assert set(_counts(log).values()) == {1}  # no completed task ran twice
    assert json.loads((run / "run.json").read_text())["reused"] == 8
    again = hf.run(_workflow(module), workers=2, resume=str(run))
    assert again.outputs == result.outputs and set(_counts(log).values()) == {1}


def test_edited_task_reruns_with_its_descendants(setup):
    module, log, run = setup
    hf.run(_workflow(module), workers=2, run_dir=str(run))
    _edit(module, "return sum(values)", "return sum(values) + 1")
    plan, decision = resume_preview(_workflow(module), str(run))
    assert {plan.name(i): r for i, r in decision.reasons.items()} == {
        "b": "definition changed", "c": "an input changed (upstream b runs again)"}
    result = hf.run(_workflow(module), workers=2, resume=str(run))
    assert result.outputs["c"] == 22
    counts = _counts(log)
    assert counts["b"] == 2 and counts["c"] == 2
    assert all(counts[k] == 1 for k in counts if k[0] in "ad")


def test_a_changed_environment_reruns_the_task(setup):
    module, log, run = setup
    hf.run(_workflow(module), workers=2, run_dir=str(run))
    plan, decision = resume_preview(_workflow(module, {"X": "1"}), str(run))
    assert {plan.name(i): r for i, r in decision.reasons.items()} == {
        f"d[{k}]": "definition changed" for k in range(3)}
    hf.run(_workflow(module, {"X": "1"}), workers=2, resume=str(run))
    hf.run(_workflow(module, {"X": "1"}), workers=2, resume=str(run))  # now unchanged
    counts = _counts(log)
    assert all(counts[f"d{k}"] == 2 for k in range(3)) and counts["b"] == 1


def test_rerun_with_equal_content_reuses_descendants(setup):
    module, log, run = setup
    hf.run(_workflow(module), workers=2, run_dir=str(run))
    _edit(module, "return sum(values)", "return sum(values) + 0")
    result = hf.run(_workflow(module), workers=2, resume=str(run))
    assert result.outputs["c"] == 20
    assert _counts(log)["b"] == 2 and _counts(log)["c"] == 1
    again = hf.run(_workflow(module), workers=2, resume=str(run))  # still reused next time
    assert again.outputs["c"] == 20 and _counts(log)["c"] == 1 and _counts(log)["b"] == 2


def test_forced_task_reruns_with_everything_downstream(setup):
    """--force reruns a task although nothing changed, and its descendants although its
    result comes out the same (not candidates); one instance forces only its own path."""
    module, log, run = setup
    hf.run(_workflow(module), workers=2, run_dir=str(run))
    plan, decision = resume_preview(_workflow(module), str(run), ["b"])
    assert {plan.name(i): r for i, r in decision.reasons.items()} == {
        "b": "forced (--force)", "c": "forced (--force)"}
    assert not decision.candidates
    result = hf.run(_workflow(module), workers=2, resume=str(run), force=["b"])
    assert result.outputs["c"] == 20
    counts = _counts(log)
    assert counts["b"] == 2 and counts["c"] == 2  # c ran although b's result is equal
    assert all(counts[k] == 1 for k in counts if k[0] in "ad")
    hf.run(_workflow(module), workers=2, resume=str(run), force=["a[2]", "d[0]"])
    counts = _counts(log)
    assert (counts["a2"], counts["a1"], counts["d0"], counts["d1"]) == (2, 1, 2, 1)
    assert counts["b"] == 3 and counts["c"] == 3
    hf.run(_workflow(module), workers=2, resume=str(run))  # a plain resume reuses it all
    assert _counts(log) == counts


def test_a_force_is_journalled_until_the_forced_tasks_have_run(setup):
    """A FORCE event (written by a forced resume before its tasks ran, or by submit
    --resume --force) makes every later resume rerun those tasks until they have run: a
    forced run interrupted early loses nothing of what was asked."""
    from hpcflow.plan import flatten
    from hpcflow.store.resume import forced_ids, record_force
    from hpcflow.store.rundir import RunDir

    module, log, run = setup
    hf.run(_workflow(module), workers=2, run_dir=str(run))
    plan = flatten(_workflow(module))
    record_force(RunDir.open(run), plan, forced_ids(plan, ["b"]))  # as if then killed
    plan, decision = resume_preview(_workflow(module), str(run))
    assert {plan.name(i): r for i, r in decision.reasons.items()} == {
        "b": "forced (--force)", "c": "forced (--force)"}
    hf.run(_workflow(module), workers=2, resume=str(run))
    hf.run(_workflow(module), workers=2, resume=str(run))  # done now: nothing runs
    counts = _counts(log)
    assert counts["b"] == 2 and counts["c"] == 2 and counts["a0"] == 1 and counts["d0"] == 1


def test_force_names_are_checked_before_anything_runs(setup, capsys):
    module, log, run = setup
    with pytest.raises(hf.SpecError, match="resume"):
        hf.run(_workflow(module), workers=2, run_dir=str(run), force=["b"])
    assert not run.exists() and not list(log.iterdir())
    hf.run(_workflow(module), workers=2, run_dir=str(run))
    before = (run / "journal.bin").read_bytes()
    for name, hint in [("bb", "did you mean 'b'"), ("a[9]", "4 instances, a[0] to a[3]"),
                       ("b[0]", "'b' is not swept"), ("a[x]", "4 instances")]:
        with pytest.raises(hf.SpecError, match=r"field '--force': no task") as error:
            hf.run(_workflow(module), workers=2, resume=str(run), force=[name])
        assert hint in str(error.value)
    assert (run / "journal.bin").read_bytes() == before  # nothing ran, nothing journalled
    spec = run.parent / "spec.py"
    spec.write_text(f"import hpcflow as hf\nmodule = {str(module)!r}\n"
                    "a = hf.task(module + ':a', name='a').sweep({'x': range(4)})\n"
                    "b = hf.task(module + ':b', name='b')(a.all())\n"
                    "c = hf.task(module + ':c', name='c')(b)\n"
                    "d = hf.task(module + ':d', name='d').sweep({'x': range(3)})\n"
                    "workflow = hf.workflow('w', outputs={'c': c, 'd': d.all()})\n")
    assert main(["run", "--resume", str(run), "--force", "cc", f"{spec}:workflow"]) == 2
    assert "did you mean 'c'" in capsys.readouterr().err
    assert main(["run", "--resume", str(run), "--force", "c", "--dry-run", "--json",
                 f"{spec}:workflow"]) == 0
    assert json.loads(capsys.readouterr().out) == {"reused": 8, "rerun": {"c": "forced (--force)"}}
    assert [e for e in read_journal(run / "journal.bin") if e[0] == Event.FORCE] == []


def test_second_resume_reads_each_segment_with_its_own_plan(setup):
    """A resume whose workflow grew shifts the ids of later tasks; the next resume must
    still name the first run's events by the first plan (each RUN event carries its
    groups), so nothing that finished runs again."""
    module, log, run = setup
    hf.run(_workflow(module), workers=2, run_dir=str(run))
    grown_a = hf.task(f"{module}:a", name="a").sweep({"x": range(6)})
    b = hf.task(f"{module}:b", name="b")(grown_a.all())
    c = hf.task(f"{module}:c", name="c")(b)
    d = hf.task(f"{module}:d", name="d").sweep({"x": range(3)})
    grown = hf.workflow("w", outputs={"c": c, "d": d.all()})
    assert hf.run(grown, workers=2, resume=str(run)).outputs["c"] == 42
    before = _counts(log)
    assert before["a4"] == 1 and before["a0"] == 1 and before["d0"] == 1 and before["b"] == 2
    plan, decision = resume_preview(grown, str(run))
    assert decision.reasons == {}, {plan.name(i): r for i, r in decision.reasons.items()}
    assert hf.run(grown, workers=2, resume=str(run)).outputs["d"] == [0, -1, -2]
    assert _counts(log) == before


def test_dry_run_lists_reasons_and_runs_nothing(setup, monkeypatch, capsys):
    module, log, run = setup
    monkeypatch.setenv("HF_TEST_FAIL_C", "1")
    hf.run(_workflow(module), workers=2, run_dir=str(run), check=False)
    monkeypatch.delenv("HF_TEST_FAIL_C")
    spec = module.parent / "wf.py"
    spec.write_text(textwrap.dedent(f"""
        import hpcflow as hf
        mod = {str(module)!r}
        a = hf.task(mod + ":a", name="a").sweep({{"x": range(4)}})
        b = hf.task(mod + ":b", name="b")(a.all())
        c = hf.task(mod + ":c", name="c")(b)
        d = hf.task(mod + ":d", name="d").sweep({{"x": range(3)}})
        wf = hf.workflow("w", outputs={{"c": c, "d": d.all()}})
    """))
    _edit(module, "return -x", "return -x * 1")
    before = _counts(log)
    size = (run / "journal.bin").stat().st_size
    capsys.readouterr()
    assert main(["run", f"{spec}:wf", "--resume", str(run), "--dry-run", "--json"]) == 0
    rerun = json.loads(capsys.readouterr().out)["rerun"]
    assert rerun == {"c": "failed", "d[0]": "definition changed",
                     "d[1]": "definition changed", "d[2]": "definition changed"}
    _edit(module, "return sum(values)", "return sum(values) + 5")
    assert main(["run", f"{spec}:wf", "--resume", str(run), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "b: definition changed" in text and "c: failed" in text
    assert _counts(log) == before and (run / "journal.bin").stat().st_size == size


def test_torn_journal_is_cut_before_appending(setup):
    module, log, run = setup
    hf.run(_workflow(module), workers=2, run_dir=str(run))
    journal = run / "journal.bin"
    good = journal.stat().st_size
    with open(journal, "ab") as fh:
        fh.write(b"\x40\x00\x00\x00\x01\x02\x03\x04partial")  # a frame cut short
    assert complete_length(journal) == good
    result = hf.run(_workflow(module), workers=2, resume=str(run))
    assert result.status == "succeeded" and set(_counts(log).values()) == {1}
    events = list(read_journal(journal))
    assert events[-1][0] == Event.END and events[-1][1] == "succeeded"
    assert sum(1 for e in events if e[0] == Event.RUN) == 2  # the new frames are readable


def test_resume_cli_defaults_to_the_recorded_spec(setup, capsys):
    module, _log, run = setup
    spec = module.parent / "wf.yaml"
    spec.write_text(textwrap.dedent("""
        name: y
        tasks:
          - id: one
            shell: "echo hi > {out}"
            outputs: {out: one.txt}
    """))
    assert main(["run", str(spec), "--run-dir", str(run)]) == 0
    capsys.readouterr()
    assert main(["run", "--resume", str(run), "--dry-run"]) == 0
    assert "1 task(s) reused, 0 to run again" in capsys.readouterr().out
    assert main(["run", "--resume", str(run)]) == 0
