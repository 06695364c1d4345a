"""Task code of the GPU sweep example: gradient descent on a linear model, with numpy.

Each ``train`` task is declared to need one GPU. hpcflow gives it one device id through
``CUDA_VISIBLE_DEVICES`` (the ids a run was given with ``--gpus``, or Slurm's). Real GPU
code would simply use "the first visible device" there (``torch.device("cuda")``,
``cupy.cuda.Device(0)``), which is the one it was given; this example only reads the
variable, to show which id it got, and computes on the CPU, so it runs anywhere.
"""

from __future__ import annotations

import os

import numpy as np


def train(lr: float, seed: int, steps: int = 300) -> dict:
    """Fit ``y = x @ w`` by gradient descent; the final mean squared error is the loss."""
    device = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(512, 8))
    y = x @ np.linspace(0.5, 4.0, 8) + rng.normal(0.0, 0.1, 512)
    w = np.zeros(8)
    for _ in range(steps):
        w -= lr * x.T @ (x @ w - y) / len(y)
    loss = float(np.mean((x @ w - y) ** 2))
    return {"lr": lr, "seed": seed, "device": device, "loss": loss}


def pick_best(results: list) -> dict:
    """The run with the lowest loss."""
    return min(results, key=lambda r: r["loss"])
