"""Every engine adds its runs to the history: the same core records them at the end."""

from __future__ import annotations

import os

import pytest

from hpcflow.store.history import History
from hpcflow.store.measured import wait_for_recording


def _recorded() -> dict[str, list[tuple[str, str]]]:
    """Name -> [(engine, outcome)] of each recorded attempt."""
    wait_for_recording()
    with History(os.environ["HPCFLOW_HISTORY"]) as history:
        return {e.name: [(a.engine, a.sample.outcome) for a in history.attempts(e.definition)]
                for e in history.entries()}


@pytest.mark.timeout(180)
def test_every_attempt_of_a_run_is_recorded(engine, tmp_path):
    got = engine.run("sweep_gather", tmp_path)
    assert got.status == "succeeded"
    recorded = _recorded()
    assert recorded["square"] == [(engine.name, "done")] * 10
    assert recorded["total"] == [(engine.name, "done")]


@pytest.mark.timeout(180)
def test_a_timed_out_attempt_is_recorded_as_one(engine, tmp_path):
    engine.run("python_timeout", tmp_path)
    recorded = _recorded()
    assert recorded["late"] == [(engine.name, "timeout")]
    assert recorded["early"] == [(engine.name, "done")]
