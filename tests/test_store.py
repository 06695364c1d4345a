"""The journal survives a torn write; the run folder is private, locked and safe to name."""

from __future__ import annotations

import os
import stat

import pytest

from hpcflow.errors import RunDirError
from hpcflow.store.journal import Journal, read_journal
from hpcflow.store.rundir import INLINE_RESULT_LIMIT, RunDir, load_result


def test_journal_round_trip_and_torn_tail(tmp_path):
    path = tmp_path / "journal.bin"
    with Journal(path) as journal:
        journal.record("done", 1, "a")
        journal.record("done", 2, "b")
        journal.flush()
        journal.record("done", 3, "c")
    assert [e[1] for e in read_journal(path)] == [1, 2, 3]
    whole = path.read_bytes()
    for cut in range(1, 12):  # a coordinator killed in the middle of its last write
        path.write_bytes(whole[:-cut])
        assert [e[1] for e in read_journal(path)] == [1, 2]
    path.write_bytes(whole[:-3] + b"\xff\xff\xff")  # corrupt tail: ignored, not raised
    assert [e[1] for e in read_journal(path)] == [1, 2]


def test_journal_appends_across_openings(tmp_path):
    path = tmp_path / "j"
    for n in range(3):
        with Journal(path) as journal:
            journal.record("run", n)
    assert [e[1] for e in read_journal(path)] == [0, 1, 2]


def test_run_dir_is_private_and_locked(tmp_path):
    run = RunDir.create("wf", root=tmp_path)
    assert stat.S_IMODE(os.stat(run.path).st_mode) == 0o700
    run.lock()
    other = RunDir(run.path)
    with pytest.raises(RunDirError, match="in use"):
        other.lock()
    run.unlock()
    other.lock()
    other.unlock()


def test_run_dir_refuses_non_empty_explicit_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("keep me")
    with pytest.raises(RunDirError, match="not empty"):
        RunDir.create("wf", path=tmp_path / "x")
    assert (tmp_path / "x" / "file").read_text() == "keep me"


def test_open_requires_run_json(tmp_path):
    with pytest.raises(RunDirError, match="not a run folder"):
        RunDir.open(tmp_path)


def test_task_dir_names_cannot_escape(tmp_path):
    run = RunDir.create("wf", root=tmp_path)
    for name in ["../../etc", "a/../../b", "x;rm -rf", "sim[3]", "stats/mean"]:
        folder = run.task_dir(name)
        assert folder.resolve().is_relative_to(run.path / "tasks")


def test_large_results_go_to_files_small_inline(tmp_path):
    run = RunDir.create("wf", root=tmp_path)
    small = run.store_result(1, [1, 2, 3])
    big = run.store_result(2, b"x" * (INLINE_RESULT_LIMIT + 1))
    assert small[0] == "inline" and isinstance(small[1], bytes)  # sealed, not the value
    assert load_result(small) == [1, 2, 3]
    assert big[0] == "file" and os.path.exists(big[1])
    assert load_result(big) == b"x" * (INLINE_RESULT_LIMIT + 1)
