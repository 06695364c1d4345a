"""Shared test set-up: every run folder goes under pytest's tmp_path, never the repo."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _runs_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCFLOW_RUNS", str(tmp_path / "runs"))
