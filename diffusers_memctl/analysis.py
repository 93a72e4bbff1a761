"""Correlations with intervals over the result rows of a CI-grid sweep.

The paper ([arXiv 2601.21348](https://arxiv.org/abs/2601.21348), Sec. 4, Fig. 3 (c)/(d)) reads the effect of the
CI's mean location and width on memorization through Pearson correlations with Fisher-z 95% intervals. This module
computes the same numbers (plus Spearman's rank correlation) from result rows: one dict per sweep cell and seed with
the columns ``cell``, ``timestep_sampling``, ``ci_lower``, ``ci_upper``, ``ci_mean``, ``ci_width``, ``seed``,
``run_dir``, ``final_loss`` and the metric names of ``metrics.json``.

Everything here is pure numpy/scipy; pandas is imported only by [`rows_to_dataframe`].
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import special, stats

from .multiple_testing import annotate_holm
from .run_folder import LOSS_HISTORY_NAME, RunFolder

__all__ = [
    "PAPER_REFERENCE",
    "analyze_sweep",
    "load_loss_histories",
    "pearson_with_ci",
    "rows_to_dataframe",
    "spearman",
    "timestep_bin_losses",
]

# Numbers reported in the paper (Sec. 4.2, Fig. 3 (c)/(d)); "distance" is the mean L2 distance between generated
# and training images, our `mean_l2`. The paper does not state n; its interval width implies n of about 88-90.
PAPER_REFERENCE: dict[str, dict[str, Any]] = {
    "mean_vs_distance": {
        "metric": "mean_l2",
        "variable": "ci_mean",
        "r": -0.7388,
        "ci_low": -0.8212,
        "ci_high": -0.6263,
        "confidence": 0.95,
        "source": "arXiv 2601.21348, Sec. 5.1 / Fig. 3 (c): correlation between CI mean location and distance",
    },
    "width_vs_distance": {
        "metric": "mean_l2",
        "variable": "ci_width",
        "r": 0.316,
        "ci_low": None,
        "ci_high": None,
        "confidence": 0.95,
        "source": "arXiv 2601.21348, Sec. 5.1 / Fig. 3 (d): correlation between CI width and distance (significant)",
    },
}

# Columns of a result row that describe the run rather than measure it.
_ID_COLUMNS = frozenset(
    {
        "cell",
        "timestep_sampling",
        "seed",
        "run_dir",
        "num_train_timesteps",
        "dataset_name",
        "modality",
        "status",
        "method",
        "loss_weighting",
        "group",
        "train_subset_size",
        "train_subset_seed",
        "pretrain_seed",
    }
)


def _finite_pairs(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    xa = _as_float_array(x, "x")
    ya = _as_float_array(y, "y")
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must have the same length; got {xa.shape[0]} and {ya.shape[0]}")
    keep = np.isfinite(xa) & np.isfinite(ya)
    return xa[keep], ya[keep]


def _as_float_array(values: Any, name: str) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    obj = np.asarray(values, dtype=object)
    if obj.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional; got shape {obj.shape}")
    return np.asarray([np.nan if (v := _num(item)) is None else v for item in obj], dtype=np.float64)


def _degenerate(keys: Sequence[str], n: int, note: str, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {key: float("nan") for key in keys}
    out.update(extra)
    out["n"] = n
    out["note"] = note
    return out


def _correlation_core(xa: np.ndarray, ya: np.ndarray) -> tuple[float, float]:
    """Pearson r and its two-sided p-value (t test with n - 2 degrees of freedom) of finite, non-constant data."""
    n = xa.shape[0]
    xc = xa - xa.mean()
    yc = ya - ya.mean()
    r = float(np.dot(xc, yc) / math.sqrt(np.dot(xc, xc) * np.dot(yc, yc)))
    r = min(1.0, max(-1.0, r))
    # P(|T| >= |t|) for T ~ t(n - 2), t = r sqrt((n - 2) / (1 - r^2)), written as a regularised incomplete beta
    # so that |r| = 1 gives exactly 0 without dividing by zero.
    dof = n - 2
    p_value = float(special.betainc(dof / 2.0, 0.5, min(1.0, max(0.0, 1.0 - r * r)))) if dof > 0 else 1.0
    return r, p_value


def pearson_with_ci(x: Any, y: Any, *, confidence: float = 0.95) -> dict[str, Any]:
    """Pearson correlation with a Fisher-z confidence interval.

    The interval is ``tanh(atanh(r) +- z / sqrt(n - 3))`` with ``z = Phi^-1((1 + confidence) / 2)``, the method
    behind the paper's reported interval. Pairs with a missing (NaN/None/inf) value on either side are dropped.

    Args:
        x (`array-like`):
            First variable, shape `(n,)`.
        y (`array-like`):
            Second variable, shape `(n,)`.
        confidence (`float`, defaults to `0.95`):
            Coverage of the interval, in `(0, 1)`.

    Returns:
        `dict`: `r`, `ci_low`, `ci_high`, `p_value` (two-sided), `n` (pairs used), `confidence` and `note`
        (`None`, or why the values are NaN: fewer than 4 pairs or a constant variable).
    """
    if not isinstance(confidence, (int, float)) or not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be a float in (0, 1); got {confidence!r}")
    xa, ya = _finite_pairs(x, y)
    n = int(xa.shape[0])
    keys = ("r", "ci_low", "ci_high", "p_value")
    if n < 4:
        return _degenerate(keys, n, f"only {n} complete pairs; need at least 4", confidence=float(confidence))
    for name, arr in (("x", xa), ("y", ya)):
        if np.ptp(arr) == 0.0:
            return _degenerate(keys, n, f"{name} is constant; correlation undefined", confidence=float(confidence))
    r, p_value = _correlation_core(xa, ya)
    z_crit = float(stats.norm.ppf(0.5 * (1.0 + float(confidence))))
    half_width = z_crit / math.sqrt(n - 3)
    with np.errstate(divide="ignore"):
        z = float(np.arctanh(r))
    return {
        "r": r,
        "ci_low": float(np.tanh(z - half_width)),
        "ci_high": float(np.tanh(z + half_width)),
        "p_value": p_value,
        "n": n,
        "confidence": float(confidence),
        "note": None,
    }


def spearman(x: Any, y: Any) -> dict[str, Any]:
    """Spearman rank correlation (ties get average ranks) with its two-sided t-test p-value.

    Args:
        x (`array-like`):
            First variable, shape `(n,)`.
        y (`array-like`):
            Second variable, shape `(n,)`.

    Returns:
        `dict`: `rho`, `p_value`, `n` (pairs used after dropping missing values) and `note` (`None`, or why the
        values are NaN: fewer than 3 pairs or a constant variable).
    """
    xa, ya = _finite_pairs(x, y)
    n = int(xa.shape[0])
    keys = ("rho", "p_value")
    if n < 3:
        return _degenerate(keys, n, f"only {n} complete pairs; need at least 3")
    for name, arr in (("x", xa), ("y", ya)):
        if np.ptp(arr) == 0.0:
            return _degenerate(keys, n, f"{name} is constant; correlation undefined")
    rho, p_value = _correlation_core(stats.rankdata(xa), stats.rankdata(ya))
    return {"rho": rho, "p_value": p_value, "n": n, "note": None}


# ----------------------------------------------------------------------------------------------------------------
# Result rows
# ----------------------------------------------------------------------------------------------------------------


def _as_records(rows: Any) -> list[dict[str, Any]]:
    """Result rows as a list of plain dicts, with `ci_mean` / `ci_width` filled in from the bounds where missing."""
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):
        records = rows.to_dict(orient="records")
    elif isinstance(rows, Mapping):
        raise ValueError("rows must be a sequence of dicts or a DataFrame, not a single dict")
    else:
        records = [dict(row) for row in rows]
    for row in records:
        lo, hi = _num(row.get("ci_lower")), _num(row.get("ci_upper"))
        if _num(row.get("ci_mean")) is None and lo is not None and hi is not None:
            row["ci_mean"] = 0.5 * (lo + hi)
        if _num(row.get("ci_width")) is None and lo is not None and hi is not None:
            row["ci_width"] = hi - lo
    return records


def _num(value: Any) -> float | None:
    """A finite float, or None for missing / non-numeric / NaN values."""
    if value is None or isinstance(value, (bool, np.bool_, str)):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _is_ci_row(row: Mapping[str, Any]) -> bool:
    sampling = row.get("timestep_sampling")
    if isinstance(sampling, str):
        return sampling == "ci_normal"
    # Rows without a sampler name count as CI cells when they carry an interval.
    return _num(row.get("ci_mean")) is not None


def _is_baseline_row(row: Mapping[str, Any]) -> bool:
    # Uniform sampling *and* no re-weighting: min-SNR and P2 runs also sample uniformly.
    return row.get("timestep_sampling") == "uniform" and row.get("loss_weighting") in (None, "none")


def _metric_columns(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Numeric columns that measure a run, in order of first appearance."""
    names: list[str] = []
    for row in records:
        for key, value in row.items():
            if key in names or key in _ID_COLUMNS or key.startswith(("ci_", "ref_")):
                continue
            if _num(value) is not None:
                names.append(key)
    return names


def _summary(values: Sequence[float | None]) -> dict[str, Any]:
    finite = np.asarray([v for v in values if v is not None], dtype=np.float64)
    n = int(finite.shape[0])
    return {
        "mean": float(finite.mean()) if n else None,
        "std": float(finite.std(ddof=1)) if n >= 2 else None,
        "n": n,
    }


def _json_safe(value: Any) -> Any:
    """Recursively replace NaN/inf by None and numpy scalars by Python ones."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_json_safe(v) for v in value.tolist()]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def _cell_key(row: Mapping[str, Any]) -> str:
    cell = row.get("cell")
    if cell is not None and not (isinstance(cell, float) and math.isnan(cell)):
        return str(cell)
    return f"{row.get('timestep_sampling')}_{row.get('ci_lower')}_{row.get('ci_upper')}"


def analyze_sweep(
    rows: Any,
    metrics: Sequence[str] | None = None,
    *,
    confidence: float = 0.95,
    unit: Literal["run", "cell"] = "run",
) -> dict[str, Any]:
    """Correlate every metric with the CI mean location and width over the cells of a sweep.

    Only `ci_normal` rows enter the correlations; the `uniform` baseline is summarised on its own under
    `"baseline"`. The result holds no NaN (missing numbers are `None`) and can be written with `json.dump`.

    Args:
        rows (`list[dict]` or `pandas.DataFrame`):
            Result rows, one per sweep cell and seed.
        metrics (`Sequence[str]`, *optional*):
            Metric columns to analyse. Defaults to every numeric column that is not an identifier or a `ci_*`
            column (so `final_loss` is included).
        confidence (`float`, defaults to `0.95`):
            Coverage of the Fisher-z intervals.
        unit (`str`, defaults to `"run"`):
            `"run"` correlates every (cell, seed) row; `"cell"` first averages the seeds of each cell.

    Returns:
        `dict`: `metrics`, `unit`, `confidence`, counts (`n_rows`, `n_ci_rows`, `n_cells`), `correlations`
        (`{metric: {"ci_mean" | "ci_width": {"pearson": {...}, "spearman": {...}}}}`, each with its p-value and the
        Holm-adjusted `p_holm` within the family stated under `multiple_testing`), `baseline`
        (`{metric: {mean, std, n}}`, empty without a uniform row), `cells` (per-cell mean/std over seeds) and
        `paper_reference`.
    """
    if unit not in ("run", "cell"):
        raise ValueError(f"unit must be 'run' or 'cell'; got {unit!r}")
    if not isinstance(confidence, (int, float)) or not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be a float in (0, 1); got {confidence!r}")
    records = _as_records(rows)
    if metrics is None:
        metric_names = _metric_columns(records)
    else:
        metric_names = list(metrics)
        present = {key for row in records for key in row}
        missing = [m for m in metric_names if m not in present]
        if missing:
            raise ValueError(f"metrics {missing} are not columns of the rows; available: {sorted(present)}")

    ci_rows = [row for row in records if _is_ci_row(row)]
    baseline_rows = [row for row in records if _is_baseline_row(row)]

    # Per-cell summaries, in order of first appearance.
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in records:
        groups.setdefault(_cell_key(row), []).append(row)
    cells = []
    for name, members in groups.items():
        first = members[0]
        cells.append(
            {
                "cell": name,
                "timestep_sampling": first.get("timestep_sampling"),
                "ci_lower": _num(first.get("ci_lower")),
                "ci_upper": _num(first.get("ci_upper")),
                "ci_mean": _num(first.get("ci_mean")),
                "ci_width": _num(first.get("ci_width")),
                "n_seeds": len(members),
                "seeds": [m.get("seed") for m in members],
                "metrics": {metric: _summary([_num(m.get(metric)) for m in members]) for metric in metric_names},
            }
        )

    ci_cell_names = {_cell_key(row) for row in ci_rows}
    if unit == "run":
        points = [{k: _num(row.get(k)) for k in ("ci_mean", "ci_width", *metric_names)} for row in ci_rows]
    else:
        points = [
            {"ci_mean": c["ci_mean"], "ci_width": c["ci_width"], **{m: c["metrics"][m]["mean"] for m in metric_names}}
            for c in cells
            if c["cell"] in ci_cell_names
        ]

    def column(key: str) -> list[float]:
        return [np.nan if p[key] is None else p[key] for p in points]

    correlations = {
        metric: {
            variable: {
                "pearson": pearson_with_ci(column(variable), column(metric), confidence=confidence),
                "spearman": spearman(column(variable), column(metric)),
            }
            for variable in ("ci_mean", "ci_width")
        }
        for metric in metric_names
    }
    # Every metric against both CI variables is many tests at once: Holm within each kind of correlation.
    for kind in ("pearson", "spearman"):
        family = [correlations[m][v][kind] for m in metric_names for v in ("ci_mean", "ci_width")]
        annotate_holm(family, f"every {kind} correlation of this analysis (each metric vs ci_mean and vs ci_width)")
    baseline = {metric: _summary([_num(row.get(metric)) for row in baseline_rows]) for metric in metric_names}

    result = {
        "schema_version": 1,
        "metrics": metric_names,
        "unit": unit,
        "confidence": float(confidence),
        "n_rows": len(records),
        "n_ci_rows": len(ci_rows),
        "n_cells": len(ci_cell_names),
        "correlations": correlations,
        "multiple_testing": {
            "family": f"one per kind (Pearson, Spearman): every metric vs ci_mean and vs ci_width at unit={unit!r}",
            "method": "Holm (statsmodels multipletests, method='holm'); adjusted p in p_holm beside p_value",
        },
        "baseline": baseline if baseline_rows else {},
        "baseline_cells": sorted({_cell_key(row) for row in baseline_rows}),
        "cells": cells,
        "paper_reference": PAPER_REFERENCE,
    }
    return _json_safe(result)


def load_loss_histories(
    run_dirs: Iterable[str | Path] | Mapping[str, str | Path],
    *,
    missing: Literal["raise", "skip"] = "raise",
) -> dict[str, list[dict[str, Any]]]:
    """Read `loss_history.jsonl` of several run folders.

    Args:
        run_dirs (`Iterable[str | Path]` or `Mapping[str, str | Path]`):
            Run folders. With a mapping, its keys label the histories; otherwise the label is `str(run_dir)`, the
            same string as the rows' `run_dir` column.
        missing (`str`, defaults to `"raise"`):
            `"raise"` a `FileNotFoundError` for a folder without `loss_history.jsonl`, or `"skip"` it.

    Returns:
        `dict[str, list[dict]]`: label -> records (one JSON object per optimizer step), in file order.
    """
    if missing not in ("raise", "skip"):
        raise ValueError(f"missing must be 'raise' or 'skip'; got {missing!r}")
    items = run_dirs.items() if isinstance(run_dirs, Mapping) else ((str(d), d) for d in run_dirs)
    histories: dict[str, list[dict[str, Any]]] = {}
    for label, run_dir in items:
        folder = RunFolder(run_dir)
        if not folder.loss_history.is_file():
            if missing == "skip":
                continue
            raise FileNotFoundError(
                f"no {LOSS_HISTORY_NAME} in run folder {str(run_dir)!r} (looked for {folder.loss_history})"
            )
        # A partial last line (an append cut by a kill) is dropped; any other bad line names the file and the line.
        histories[str(label)] = folder.read_loss_history()
    return histories


def timestep_bin_losses(
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    rows: Any,
    *,
    tail_fraction: float = 0.25,
) -> list[dict[str, Any]]:
    """Each cell's training loss on the same timesteps: per timestep bin, over the last steps, seeds pooled.

    The total training loss of two cells does not compare them: each averages over the timesteps its own sampler
    draws, and the epsilon-prediction loss falls steeply with t (at high noise `x_t` is nearly the noise itself), so
    a cell trained on late timesteps reports a low loss without having learned more. The paper's ECG loss curves
    (Sec. 5.2, Fig. 7) compare exactly those totals. `loss_history.jsonl` keeps, per optimizer step, the mean loss
    in each tenth of the timestep axis and how many draws fell there; pooled over the last `tail_fraction` of the
    steps of every seed, they give each cell's loss on fixed timesteps, comparable across cells and with the uniform
    baseline.

    Args:
        histories (`Mapping[str, list[dict]]`):
            `loss_history.jsonl` records keyed like the rows' `run_dir` (see [`load_loss_histories`]).
        rows (`list[dict]` or `pandas.DataFrame`):
            Result rows; rows without a history are left out.
        tail_fraction (`float`, defaults to `0.25`):
            Share of the last logged steps of each run to pool, in `(0, 1]`.

    Returns:
        `list[dict]`: One entry per cell, in row order: `cell`, `timestep_sampling`, `ci_lower`, `ci_upper`,
        `ci_mean`, `ci_width`, `n_runs`, `bin_losses` (count-weighted mean loss per bin, `None` where no timestep of
        that bin was drawn) and `bin_counts`.
    """
    if not 0.0 < float(tail_fraction) <= 1.0:
        raise ValueError(f"tail_fraction must be in (0, 1]; got {tail_fraction!r}")
    cells: dict[str, dict[str, Any]] = {}
    sums: dict[str, np.ndarray] = {}  # per cell: sum of loss x count in each bin
    counts: dict[str, np.ndarray] = {}
    for row in _as_records(rows):
        records = [r for r in histories.get(str(row.get("run_dir")), []) if r.get("bin_losses") is not None]
        if not records:
            continue
        tail = records[-max(1, math.ceil(len(records) * float(tail_fraction))) :]
        width = len(tail[0]["bin_losses"])
        key = _cell_key(row)
        if key not in cells:
            cells[key] = {
                "cell": key,
                "timestep_sampling": row.get("timestep_sampling"),
                **{k: _num(row.get(k)) for k in ("ci_lower", "ci_upper", "ci_mean", "ci_width")},
                "n_runs": 0,
            }
            sums[key], counts[key] = np.zeros(width), np.zeros(width, dtype=np.int64)
        if len(sums[key]) != width:
            raise ValueError(f"cell {key}: runs log {len(sums[key])} and {width} timestep bins")
        cells[key]["n_runs"] += 1
        for record in tail:
            losses, logged = record["bin_losses"], record.get("bin_counts") or [1] * width
            if len(losses) != width or len(logged) != width:
                raise ValueError(f"run {row.get('run_dir')}: step {record.get('step')} does not log {width} bins")
            for k, (loss, count) in enumerate(zip(losses, logged)):
                if loss is not None and count:
                    sums[key][k] += float(loss) * int(count)
                    counts[key][k] += int(count)
    result = [
        {
            **entry,
            "bin_losses": [float(s / c) if c else None for s, c in zip(sums[key], counts[key])],
            "bin_counts": [int(c) for c in counts[key]],
        }
        for key, entry in cells.items()
    ]
    return _json_safe(result)


def rows_to_dataframe(rows: Any):
    """Result rows as a `pandas.DataFrame` with identifying columns first and `ci_mean` / `ci_width` filled in.

    Args:
        rows (`list[dict]` or `pandas.DataFrame`):
            Result rows, one per sweep cell and seed.

    Returns:
        `pandas.DataFrame`: one row per input row, in input order.
    """
    import pandas as pd

    records = _as_records(rows)
    frame = pd.DataFrame.from_records(records)
    leading = [
        c
        for c in ("cell", "timestep_sampling", "ci_lower", "ci_upper", "ci_mean", "ci_width", "seed", "run_dir")
        if c in frame.columns
    ]
    return frame[leading + [c for c in frame.columns if c not in leading]]
