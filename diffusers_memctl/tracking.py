"""Experiment trackers of a training run (accelerate's TensorBoard and Weights & Biases trackers).

As in diffusers' ``train_unconditional.py``: scalars every ``--logging_steps``, and the sample grid every
``--save_images_epochs`` (TensorBoard ``add_images``, ``wandb.Image``). Every tracker writes under
``<output_dir>/<logging_dir>`` (wandb: its run folder ``<logging_dir>/wandb``), so a run folder holds its logs and
nothing lands in the working directory.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["TRACKERS", "check_tracker_installed", "log_sample_grid", "sample_grid", "tracker_init_kwargs"]

#: ``--logger`` choices that name a tracker, and the extra that installs its package.
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb"}


def check_tracker_installed(name: str) -> None:
    """Raise a one-line `ValueError` naming the extra to install when the package of tracker `name` is missing."""
    if name in TRACKERS and importlib.util.find_spec(TRACKERS[name]) is None:
        extra = f"pip install 'diffusers-memctl[{name}]'" if name == "wandb" else f"pip install {TRACKERS[name]}"
        raise ValueError(f"--logger {name} needs the {TRACKERS[name]} package: {extra} (or pass --logger none)")


def tracker_init_kwargs(name: str, logging_dir: str | os.PathLike, run_name: str) -> dict[str, Any]:
    """``init_kwargs`` of ``Accelerator.init_trackers``: wandb's run folder inside the run's logging folder."""
    if name != "wandb":
        return {}
    Path(logging_dir).mkdir(parents=True, exist_ok=True)
    return {"wandb": {"dir": str(logging_dir), "name": run_name}}


def sample_grid(samples: torch.Tensor, nrow: int | None = None) -> np.ndarray:
    """Tile images in [-1, 1] of shape ``(N, C, H, W)`` into one RGB ``uint8`` grid ``(rows*H, nrow*W, 3)``."""
    samples = samples.detach().float().cpu().clamp(-1, 1)
    if samples.shape[1] == 1:
        samples = samples.repeat(1, 3, 1, 1)
    n, c, h, w = samples.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = torch.zeros(rows * h, nrow * w, c)
    for i, image in enumerate(samples):
        r, col = divmod(i, nrow)
        grid[r * h : (r + 1) * h, col * w : (col + 1) * w] = image.permute(1, 2, 0)
    return ((grid + 1) * 127.5).round().to(torch.uint8).numpy()


def log_sample_grid(accelerator: Any, grid: np.ndarray, step: int, *, key: str = "samples") -> None:
    """Send one RGB ``uint8`` image ``(H, W, 3)`` to every tracker of `accelerator` at `step` (main process only)."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({key: grid[None]}, step=step, dataformats="NHWC")
        elif tracker.name == "wandb":
            tracker.log_images({key: [grid]}, step=step)
