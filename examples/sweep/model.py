"""Task code of the sweep example: a damped oscillator simulated with numpy.

Plain functions, no hpcflow imports: the workflow (workflow.yaml or workflow.py) says
how they connect. Each returns small, picklable values.
"""

from __future__ import annotations

import numpy as np


def make_grid(points: int, t_end: float) -> np.ndarray:
    """Time points shared by every simulation."""
    return np.linspace(0.0, t_end, points)


def simulate(grid: np.ndarray, damping: float, seed: int) -> dict:
    """One noisy damped oscillator; returns its settling summary."""
    rng = np.random.default_rng(seed)
    signal = np.exp(-damping * grid) * np.cos(2 * np.pi * grid)
    signal = signal + rng.normal(0.0, 0.01, grid.size)
    settled = np.flatnonzero(np.abs(signal) > 0.05)
    settle_time = float(grid[settled[-1]]) if settled.size else 0.0
    return {"damping": damping, "seed": seed, "settle_time": settle_time,
            "energy": float(np.sum(signal**2) * (grid[1] - grid[0]))}


def mean_of(values: list, field: str) -> float:
    return float(np.mean([v[field] for v in values]))


def spread_of(values: list, field: str) -> float:
    return float(np.std([v[field] for v in values]))


def to_csv(results: list, mean_settle: float) -> str:
    """One CSV line per run, with each run's settle time relative to the mean."""
    lines = ["damping,seed,settle_time,energy,relative"]
    for r in results:
        relative = r["settle_time"] / mean_settle if mean_settle else 0.0
        lines.append(f"{r['damping']},{r['seed']},{r['settle_time']:.4f},{r['energy']:.5f},"
                     f"{relative:.3f}")
    return "\n".join(lines) + "\n"
