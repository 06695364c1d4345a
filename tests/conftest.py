"""Shared test set-up: every run folder (and the history of measured tasks) goes under
pytest's tmp_path, never the repo or the user's home."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _runs_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCFLOW_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("HPCFLOW_HISTORY", str(tmp_path / "history.sqlite"))


_MPI_SUITE = ("the MPI suite runs under mpiexec: mpiexec -n 3 python -m pytest --with-mpi "
              "tests/mpi (scripts/test.sh runs it at 2, 3 and 4 ranks)")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """pytest-mpi skips tests/mpi outside mpiexec saying only 'need --with-mpi option to
    run': say how to run them."""
    for item in items:
        for index, mark in enumerate(item.own_markers):
            if mark.name == "skip" and "--with-mpi" in str(mark.kwargs.get("reason", "")):
                item.own_markers[index] = pytest.mark.skip(reason=_MPI_SUITE).mark
