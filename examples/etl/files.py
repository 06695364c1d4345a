"""The one Python task of the ETL example: absolute paths of the input files shipped
beside the workflow.

A shell task runs in its own folder inside the run folder, so a relative path such as
``data/sales.csv`` would not reach the files next to the spec. This task turns such
paths into absolute ones (relative to this file, wherever hpcflow is started from)
and fails early, naming the file, when one is missing.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def locate(**files: str) -> dict[str, str]:
    """``{name: absolute path}`` for each ``name=relative path`` given."""
    found = {name: HERE / relative for name, relative in files.items()}
    missing = [str(path) for path in found.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"input file(s) missing: {', '.join(missing)}")
    return {name: str(path) for name, path in found.items()}
