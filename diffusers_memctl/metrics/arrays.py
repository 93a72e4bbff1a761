"""Validation of sample arrays of shape `(N, ...)`, shared by the neighbour search and the metrics.

Inputs are torch tensors or numpy arrays; every sample is flattened to a vector of dimension `D`. Bad input is refused
with one line that names the argument and the offending value.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__: list[str] = []


def _as_samples(x: Any, name: str, *, device: str | torch.device | None = None) -> torch.Tensor:
    """Converts `x` of shape `(N, ...)` to a finite floating tensor of shape `(N, D)` without copying when possible."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        try:
            arr = np.asarray(x)
        except ValueError as err:  # ragged nested sequences
            raise ValueError(f"`{name}` must be an array of shape (N, ...) with equal-sized samples: {err}") from None
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise ValueError(f"`{name}` must hold real numbers, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.is_complex():
        raise ValueError(f"`{name}` must be real-valued, got dtype {t.dtype}")
    if t.ndim < 2:
        raise ValueError(f"`{name}` must have shape (N, ...) with at least 2 dimensions, got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t[0].numel() == 0:
        raise ValueError(f"`{name}` is empty (shape {tuple(t.shape)}); need at least one sample of non-zero size")
    if t.dtype not in (torch.float32, torch.float64):
        # Integers, booleans and half precision are promoted; half-precision matmuls would break the error bounds.
        t = t.to(torch.float32)
    if device is not None:
        t = t.to(device)
    t = t.reshape(t.shape[0], -1)
    # min and max propagate NaN and show inf in one pass; the per-sample scan runs only when something is wrong.
    low, high = torch.aminmax(t)
    finite = None if bool(torch.isfinite(low) & torch.isfinite(high)) else torch.isfinite(t).all(dim=1)
    if finite is not None:
        bad = torch.nonzero(~finite).flatten()
        raise ValueError(
            f"`{name}` contains NaN or inf in {bad.numel()} sample(s) (first at index {int(bad[0])}); "
            "all values must be finite"
        )
    return t if t.is_contiguous() else t.contiguous()


def _as_pair(
    generated: Any, training: Any, *, device: str | torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validates and flattens generated/training sets that must share the per-sample shape and the device."""
    gen_shape = tuple(generated.shape[1:]) if hasattr(generated, "shape") else None
    train_shape = tuple(training.shape[1:]) if hasattr(training, "shape") else None
    if device is None:
        device = next((x.device for x in (generated, training) if isinstance(x, torch.Tensor)), None)
    gen = _as_samples(generated, "generated", device=device)
    train = _as_samples(training, "training", device=device)
    if gen_shape is not None and train_shape is not None and gen_shape != train_shape:
        raise ValueError(
            f"per-sample shapes differ: generated samples have shape {gen_shape}, training samples {train_shape}; "
            "they must be equal"
        )
    if gen.shape[1] != train.shape[1]:
        raise ValueError(
            f"sample dimensions differ: generated D={gen.shape[1]}, training D={train.shape[1]}; they must be equal"
        )
    return gen, train


def _to_numpy64(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def _check_int(value: Any, name: str, *, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"`{name}` must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        valid = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"`{name}` must be {valid}, got {value}")
    return int(value)


def _check_chunk(chunk_size: int | None) -> int | None:
    return None if chunk_size is None else _check_int(chunk_size, "chunk_size", low=1)
