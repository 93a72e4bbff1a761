"""Figure helpers shared by every report: a new constrained-layout figure, array conversion, grid shapes,
moving averages, and :func:`save_figure` (PNG, atomic)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "check_window",
    "grid_shape",
    "moving_average",
    "new_figure",
    "save_figure",
    "tick_label",
    "to_numpy",
]


def new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def to_numpy(values: Any, name: str) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a numeric array; got {type(values).__name__}") from err


def tick_label(value: float) -> str:
    return f"{value:g}"


def moving_average(steps: np.ndarray, values: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Trailing moving average; each output point sits at the last step of its window."""
    window = min(int(window), values.shape[0])
    if window <= 1:
        return steps, values
    kernel = np.ones(window) / window
    return steps[window - 1 :], np.convolve(values, kernel, mode="valid")


def check_window(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative int (0 or 1 = no smoothing); got {value!r}")
    return int(value)


def grid_shape(count: int, max_cols: int) -> tuple[int, int]:
    ncols = max(1, min(count, max_cols))
    return math.ceil(count / ncols), ncols


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 120) -> Path:
    """Write a figure as PNG (creating the parent folder) and close it.

    Args:
        fig (`matplotlib.figure.Figure`):
            The figure.
        path (`str` or `os.PathLike`):
            Target file; `.png` is appended when the name has no suffix.
        dpi (`int`, defaults to `120`):
            Resolution.

    Returns:
        `Path`: the written file.
    """
    path = Path(path)
    if path.suffix == "":
        path = path.with_suffix(".png")
    if path.suffix.lower() != ".png":
        raise ValueError(f"save_figure writes PNG files; got path {str(path)!r} with suffix {path.suffix!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # bbox_inches="tight" grows the canvas to fit long titles, rotated tick labels and colour-bar labels that the
    # constrained layout alone would clip at the figure's edge.
    fig.savefig(path, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.1)
    # Figures built with the object API hold no global state; only pyplot-managed ones need closing.
    if getattr(fig.canvas, "manager", None) is not None:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return path
