"""Holm correction of p-values within a stated family of tests.

A study or sweep reports many p-values at once (every method against the baseline, on every metric, at every size):
some fall under 0.05 by chance. Each family named by the caller (e.g. "the 8 methods vs uniform on copies at 16
images") is corrected with Holm's step-down method (statsmodels ``multipletests(method="holm")``), which controls the
family-wise error rate under any dependence between the tests. The unadjusted p stays beside the adjusted one.
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping, Sequence
from typing import Any

import numpy as np
from statsmodels.stats.multitest import multipletests

__all__ = ["annotate_holm", "holm_adjust"]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float, np.floating)) and not isinstance(value, bool) and math.isfinite(value)


def holm_adjust(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-adjusted p-values, in input order; `None` / NaN entries are not tests and stay `None`.

    The family size is the number of finite p-values.
    """
    index = [i for i, p in enumerate(p_values) if _finite(p)]
    out: list[float | None] = [None] * len(p_values)
    if not index:
        return out
    adjusted = multipletests([float(p_values[i]) for i in index], method="holm")[1]
    for i, p in zip(index, adjusted):
        out[i] = float(p)
    return out


def annotate_holm(
    entries: Sequence[MutableMapping[str, Any]],
    family: str,
    *,
    p_key: str = "p_value",
    out_key: str = "p_holm",
) -> None:
    """Write the Holm-adjusted ``entries[i][p_key]`` into ``entries[i][out_key]``, in place, as one family.

    Each entry also gets ``holm_family`` (the caller's description of the family) and ``holm_family_size`` (how
    many tests it holds). Entries without a finite p get `None`.
    """
    adjusted = holm_adjust([entry.get(p_key) for entry in entries])
    size = sum(p is not None for p in adjusted)
    for entry, p in zip(entries, adjusted):
        entry[out_key] = p
        entry["holm_family"] = family
        entry["holm_family_size"] = size
