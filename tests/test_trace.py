"""``hpcflow trace``: one row per attempt, from real runs (retries, failures, skips,
resumes, a coordinator that died with a task in flight)."""

from __future__ import annotations

import csv
import io
import socket
from datetime import datetime
from pathlib import Path

import pytest

import hpcflow as hf
from hpcflow.cli import main
from hpcflow.report.trace import COLUMNS, trace_rows
from hpcflow.store.journal import Event, Journal, read_journal

pytestmark = pytest.mark.timeout(60)


def flaky(marker: str) -> str:
    """Fails on its first try (no marker file yet), succeeds on the second."""
    path = Path(marker)
    if not path.exists():
        path.write_text("tried")
        raise RuntimeError("first try fails")
    return "second try"


def broken(x: int) -> int:
    raise ValueError(f"cannot take {x}")


def after(value: int) -> int:
    return value


def double(x: int) -> int:
    return 2 * x


def _workflow(tmp_path: Path) -> hf.Workflow:
    retry = hf.task(flaky, name="flaky", retries=1)(str(tmp_path / "tried"))
    bad = hf.task(broken, name="bad")(1)
    skipped = hf.task(after, name="after")(bad)
    sweep = hf.task(double, name="double").sweep({"x": range(3)})
    return hf.workflow("traced", outputs={"r": retry, "s": skipped, "d": sweep.all()})


def _by_task(rows: list) -> dict[str, list]:
    out: dict[str, list] = {}
    for row in rows:
        out.setdefault(row.task, []).append(row)
    return out


def test_every_attempt_is_a_row(tmp_path):
    run = tmp_path / "run"
    hf.run(_workflow(tmp_path), workers=2, run_dir=str(run), check=False)
    rows = _by_task(trace_rows(run))
    assert [(r.attempt, r.status) for r in rows["flaky"]] == [(1, "retried"), (2, "done")]
    assert rows["flaky"][0].error == "RuntimeError: first try fails"
    [bad] = rows["bad"]
    assert bad.status == "failed" and bad.error == "ValueError: cannot take 1"
    assert Path(bad.log).is_file() and "cannot take 1" in Path(bad.log).read_text()
    assert [(r.status, r.attempt) for r in rows["after"]] == [("skipped", 0)]
    assert sorted(rows) == ["after", "bad", "double[0]", "double[1]", "double[2]", "flaky"]
    for row in (r for r in trace_rows(run) if r.status != "skipped"):
        assert row.submit <= row.start <= row.end and row.seconds == row.end - row.start
        assert row.node == socket.gethostname() and row.worker in (0, 1) and row.session == 1


def test_a_resume_is_a_second_session_of_only_what_ran(tmp_path):
    run = tmp_path / "run"
    wf = _workflow(tmp_path)
    hf.run(wf, workers=2, run_dir=str(run), check=False)
    hf.run(wf, workers=2, resume=str(run), force=["double[1]"], check=False)
    second = [(r.task, r.status) for r in trace_rows(run) if r.session == 2]
    assert sorted(second) == [("after", "skipped"), ("bad", "failed"), ("double[1]", "done")]


def test_a_task_in_flight_when_the_coordinator_died_is_lost(tmp_path):
    run = tmp_path / "run"
    hf.run(hf.workflow("w", outputs=[hf.task(double).sweep({"x": range(4)}).all()]),
           workers=2, run_dir=str(run))
    events = list(read_journal(run / "journal.bin"))
    last_done = max(k for k, e in enumerate(events) if e[0] == Event.DONE)
    lost = events[last_done][1]
    (run / "journal.bin").unlink()
    with Journal(run / "journal.bin") as journal:  # as a kill -9 leaves it: no DONE, no END
        for event in events[:last_done]:
            journal.record(*event)
        journal.flush()
    statuses = {r.id: r.status for r in trace_rows(run)}
    assert statuses.pop(lost) == "lost" and set(statuses.values()) == {"done"}


def test_cli_writes_a_tsv_that_parses(tmp_path, capsys):
    run = tmp_path / "run"
    hf.run(_workflow(tmp_path), workers=2, run_dir=str(run), check=False)
    assert main(["trace", str(run), "-o", "-"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out), delimiter="\t"))
    assert list(table[0]) == COLUMNS and len(table) == 7  # flaky twice, bad, after, 3 doubles
    assert main(["trace", str(run)]) == 0
    assert capsys.readouterr().out.strip() == f"trace: {run / 'trace.tsv'}"
    written = list(csv.DictReader((run / "trace.tsv").open(), delimiter="\t"))
    assert written == table
    rows = {(r.task, r.attempt): r for r in trace_rows(run)}
    for line in table:  # the file says what the rows say, times in UTC ISO 8601
        row = rows[line["task"], int(line["attempt"])]
        assert line["status"] == row.status and line["node"] == row.node
        if row.start is not None:
            assert datetime.fromisoformat(line["start"]).timestamp() == pytest.approx(
                row.start, abs=1e-3)
            assert float(line["seconds"]) == pytest.approx(row.seconds, abs=1e-6)
    assert main(["trace", str(tmp_path / "nowhere")]) == 2
