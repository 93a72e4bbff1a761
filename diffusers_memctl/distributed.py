"""The launch's process layout, read the way `accelerate.Accelerator` reads it."""

from __future__ import annotations

from typing import Any


def process_state() -> Any:
    """The [`accelerate.PartialState`] of this launch, honouring `ACCELERATE_USE_CPU`.

    `Accelerator()` treats `ACCELERATE_USE_CPU` (set by `accelerate launch --cpu`, or by hand for `torchrun` on a
    machine without GPUs) as `cpu=True`, but a bare `PartialState()` does not. The first state created fixes the
    process layout of the whole launch, so a sweep that asks `PartialState()` before its first `Accelerator` would
    run every process alone. Library code asks here instead.

    Returns:
        `accelerate.PartialState`: The shared state (a singleton: every call returns the same layout).
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
