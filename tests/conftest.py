"""Shared test set-up: every run folder (and the history of measured tasks) goes under
pytest's tmp_path, never the repo or the user's home."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _runs_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCFLOW_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("HPCFLOW_HISTORY", str(tmp_path / "history.sqlite"))
