"""Memory checks made before a large allocation: a clear error naming the setting instead of a `MemoryError`.

`numpy.empty` of 49 TiB fails only after the data set has been opened (or, with overcommit, much later and
harder); :func:`check_fits_in_memory` compares an estimate of the bytes needed with the memory the machine has
available and says which setting to lower.
"""

from __future__ import annotations

import os

__all__ = ["available_memory_bytes", "check_fits_in_memory", "format_bytes"]


def available_memory_bytes() -> int | None:
    """Memory available to a new allocation without swapping (Linux ``MemAvailable``), or `None` when unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def format_bytes(num_bytes: float) -> str:
    """``1.5 GiB``-style text."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if num_bytes < 1024 or unit == "TiB":
            return f"{num_bytes:.1f} {unit}" if unit != "B" else f"{int(num_bytes)} B"
        num_bytes /= 1024
    return f"{num_bytes:.1f} PiB"


def check_fits_in_memory(num_bytes: float, what: str, hint: str, *, available: int | None = None) -> None:
    """Raise `ValueError` when `num_bytes` exceed the available memory.

    Args:
        num_bytes (`float`): Estimate of the bytes the allocation needs.
        what (`str`): What would be allocated, with the settings that size it (e.g. ``"--resolution 100000: ..."``).
        hint (`str`): What to lower.
        available (`int`, *optional*): Available bytes (default: :func:`available_memory_bytes`).
    """
    available = available_memory_bytes() if available is None else available
    if available is not None and num_bytes > available:
        raise ValueError(
            f"{what} needs about {format_bytes(num_bytes)} of memory, more than the {format_bytes(available)} "
            f"available; {hint}"
        )
