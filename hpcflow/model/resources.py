"""What a task needs: cores, GPUs, memory, a wall-time estimate and MPI ranks.

Memory is written like Slurm's (``500M``, ``4G``; a bare integer means megabytes, as
in ``sbatch --mem``). Times take Slurm's forms (``MM:SS``, ``HH:MM:SS``,
``D-HH[:MM[:SS]]``; as in Slurm the first field is unbounded, ``48:00:00`` or
``90:00``, the others are 0-59, hours after days 0-23) or a number with a unit
(``90s``, ``5m``, ``2h``, ``1d``); a Python number means seconds. A bare numeric string
such as ``"30"`` is refused: Slurm reads it as minutes, most people as seconds.

Every value has an upper bound (:data:`LIMITS`), far above any machine, so that the
planner's arrays (``int32`` cores, GPUs and ranks, ``int64`` bytes, ``float64``
seconds) and the sums it makes of them never overflow: a larger value is an error
naming the field, not an ``OverflowError`` later.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)
_MEMORY_UNITS = {"": 1024**2, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_UNIT_TIME_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SLURM_TIME_RE = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")

DEFAULT_TIME_ESTIMATE = 60.0
"""Seconds assumed for planning when a task gives no ``time``."""

LIMITS = {"cores": 2**20, "gpus": 2**20, "ranks": 2**20, "memory": 2**50, "time": 100 * 365 * 86400}
"""The largest value of each resource: cores and GPUs per rank, ranks per task, bytes
(1 PiB) and seconds (100 years)."""


def _at_most(name: str, value: float, shown: object) -> None:
    if value > LIMITS[name]:
        limit = format_memory(LIMITS[name]) if name == "memory" else f"{LIMITS[name]:,}"
        if name == "time":
            limit = f"{LIMITS[name] // 86400:,} days"
        raise ValueError(f"{name} must be at most {limit}, got {shown!r}")


def parse_memory(value: str | int) -> int:
    """Bytes from ``"4G"``, ``"500M"``, ``"1.5GiB"`` or an integer number of megabytes."""
    if isinstance(value, bool):
        raise ValueError(f"memory must be a size such as '4G', not {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"memory must not be negative, got {value}")
        _at_most("memory", value * 1024**2, value)
        return value * 1024**2
    if not isinstance(value, str):
        raise ValueError(f"memory must be a size such as '4G', not {value!r}")
    match = _MEMORY_RE.match(value)
    if not match:
        raise ValueError(f"memory must be a size such as '500M' or '4G', not {value!r}")
    number, unit = float(match.group(1)), match.group(2).upper()
    _at_most("memory", number * _MEMORY_UNITS[unit], value)
    return int(number * _MEMORY_UNITS[unit])


def parse_time(value: str | int | float) -> float:
    """Seconds from Slurm's time forms, ``"90s"``/``"5m"``/``"2h"``/``"1d"``, or a number of seconds."""
    seconds = _seconds(value)
    _at_most("time", seconds, value)
    return seconds


def _seconds(value: str | int | float) -> float:
    if isinstance(value, bool):
        raise ValueError(f"time must be a duration such as '01:30:00', not {value!r}")
    if isinstance(value, (int, float)):
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"time must be a finite, non-negative number of seconds, got {value}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"time must be a duration such as '01:30:00', not {value!r}")
    text = value.strip()
    unit = _UNIT_TIME_RE.match(text)
    if unit:
        return float(unit.group(1)) * _UNIT_SECONDS[unit.group(2).lower()]
    if text.isdigit():
        raise ValueError(
            f"time {value!r} is ambiguous: write '{text}s', '{text}m' or 'HH:MM:SS'"
        )
    return _parse_slurm_time(text, value)


def _parse_slurm_time(text: str, original: str) -> float:
    match = _SLURM_TIME_RE.match(text)
    if not match:
        raise ValueError(
            f"time must look like 'MM:SS', 'HH:MM:SS', 'D-HH:MM:SS' or '5m', not {original!r}"
        )
    days, a, b, c = (int(g) if g is not None else None for g in match.groups())
    if days is not None:  # D-HH, D-HH:MM, D-HH:MM:SS
        hours, minutes, seconds = a, b or 0, c or 0
    elif c is not None:  # HH:MM:SS
        hours, minutes, seconds = a, b, c
    else:  # MM:SS
        hours, minutes, seconds = 0, a, b or 0
    leading_minutes = days is None and c is None  # Slurm leaves the first field unbounded
    for name, part, top in (("hours", hours, 23 if days is not None else None),
                            ("minutes", minutes, None if leading_minutes else 59),
                            ("seconds", seconds, 59)):
        if top is not None and part > top:
            raise ValueError(f"time {original!r}: {name} must be 0-{top}, got {part} (Slurm's "
                             "forms: MM:SS, HH:MM:SS, D-HH:MM:SS)")
    return float((((days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds)


def split_seconds(total: int) -> tuple[int, int, int, int]:
    """``(days, hours, minutes, seconds)`` of a whole number of seconds."""
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return days, hours, minutes, secs


def format_slurm_time(seconds: float) -> str:
    """``D-HH:MM:SS`` (or ``HH:MM:SS`` under a day), rounded up to whole seconds."""
    days, hours, minutes, secs = split_seconds(math.ceil(seconds))
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}-{clock}" if days else clock


def format_memory(nbytes: int) -> str:
    """Largest whole unit: ``4G``, ``500M``, ``1536K``."""
    for unit in ("T", "G", "M", "K"):
        size = _MEMORY_UNITS[unit]
        if nbytes and nbytes % size == 0:
            return f"{nbytes // size}{unit}"
    return f"{math.ceil(nbytes / 1024)}K"


@dataclass(frozen=True, slots=True)
class Resources:
    """Per-instance needs of a task. ``memory`` is bytes (0 = unspecified), ``time`` the
    wall-time estimate in seconds (None = unknown), ``ranks`` the MPI ranks of a task that
    is itself parallel (each rank gets ``cores`` cores and ``gpus`` GPUs)."""

    cores: int = 1
    gpus: int = 0
    memory: int = 0
    time: float | None = None
    ranks: int = 1

    def __post_init__(self) -> None:
        for name, least in (("cores", 1), ("ranks", 1), ("gpus", 0), ("memory", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name} must be a whole number of at least {least}, got {value!r}")
            _at_most(name, value, value)
        if self.time is not None:
            _at_most("time", self.time, self.time)

    @classmethod
    def build(
        cls,
        cores: int = 1,
        gpus: int = 0,
        memory: str | int | None = None,
        time: str | float | None = None,
        ranks: int = 1,
    ) -> Resources:
        """From user-facing values (``memory="4G"``, ``time="01:00:00"``)."""
        return cls(
            cores=cores,
            gpus=gpus,
            memory=parse_memory(memory) if memory is not None else 0,
            time=parse_time(time) if time is not None else None,
            ranks=ranks,
        )

    def updated(self, **changes: object) -> Resources:
        """A copy with user-facing values changed (same parsing as :meth:`build`)."""
        if "memory" in changes and changes["memory"] is not None:
            changes["memory"] = parse_memory(changes["memory"])  # type: ignore[arg-type]
        if "time" in changes and changes["time"] is not None:
            changes["time"] = parse_time(changes["time"])  # type: ignore[arg-type]
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def time_estimate(self) -> float:
        return self.time if self.time is not None else DEFAULT_TIME_ESTIMATE
