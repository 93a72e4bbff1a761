"""Figures for CI-grid sweeps and for single evaluated runs.

Sweep figures read result rows only (one dict per sweep cell and seed, see [`diffusers_memctl.analysis`]); per-run
figures take arrays. matplotlib is imported inside the functions (it is an optional dependency), every function
returns a `matplotlib.figure.Figure` built with the object API (no pyplot state, nothing shown), and
[`save_figure`] writes it as PNG. The figures follow the paper ([arXiv 2601.21348](https://arxiv.org/abs/2601.21348)):
heatmaps over (t_lower, t_upper) and metric vs mean / width (Fig. 3), PCA distributions and distances (Fig. 4, 5),
training loss by mean within each width (Fig. 7).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .analysis import _as_records, _cell_key, _is_baseline_row, _is_ci_row, _num, analyze_sweep, pearson_with_ci
from .run_folder import GRADIENT_PROFILES_NAME, REPORT_NAME, write_text_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "plot_gradient_contribution",
    "plot_gradient_profile",
    "plot_image_nn_grid",
    "plot_loss_curves_by_width",
    "plot_loss_history",
    "plot_metric_heatmap",
    "plot_metric_vs_mean",
    "plot_metric_vs_width",
    "plot_nn_distance_histogram",
    "plot_pca_distances_vs_mean",
    "plot_pca_scatter",
    "plot_replicated_pairs",
    "plot_sampling_distributions",
    "plot_signal_overlay",
    "plot_timestep_bin_losses",
    "save_figure",
    "write_sweep_report",
]


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _to_numpy(values: Any, name: str) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a numeric array; got {type(values).__name__}") from err


def _require_metric(records: Sequence[Mapping[str, Any]], metric: str) -> None:
    if not any(metric in row for row in records):
        columns = sorted({key for row in records for key in row})
        raise ValueError(f"metric {metric!r} is not a column of the rows; available: {columns}")


def _points(records: Sequence[Mapping[str, Any]], variable: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(variable, metric) of the ci_normal rows where both are finite."""
    pairs = [(_num(row.get(variable)), _num(row.get(metric))) for row in records if _is_ci_row(row)]
    pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
    return np.asarray([p[0] for p in pairs], dtype=np.float64), np.asarray([p[1] for p in pairs], dtype=np.float64)


def _baseline_mean(records: Sequence[Mapping[str, Any]], metric: str) -> float | None:
    values = [_num(row.get(metric)) for row in records if _is_baseline_row(row)]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _format_pearson(result: Mapping[str, Any]) -> str:
    if result.get("note"):
        return f"r = n/a ({result['note']}, n = {result['n']})"
    level = round(100 * result["confidence"])
    return (
        f"r = {result['r']:+.3f} [{level}% CI {result['ci_low']:+.3f}, {result['ci_high']:+.3f}], "
        f"p = {result['p_value']:.2g}, n = {result['n']}"
    )


def _tick_label(value: float) -> str:
    return f"{value:g}"


def _moving_average(steps: np.ndarray, values: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Trailing moving average; each output point sits at the last step of its window."""
    window = min(int(window), values.shape[0])
    if window <= 1:
        return steps, values
    kernel = np.ones(window) / window
    return steps[window - 1 :], np.convolve(values, kernel, mode="valid")


def _check_window(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative int (0 or 1 = no smoothing); got {value!r}")
    return int(value)


def _grid_shape(count: int, max_cols: int) -> tuple[int, int]:
    ncols = max(1, min(count, max_cols))
    return math.ceil(count / ncols), ncols


# ----------------------------------------------------------------------------------------------------------------
# sweep figures
# ----------------------------------------------------------------------------------------------------------------


def plot_metric_heatmap(
    rows: Any,
    metric: str,
    *,
    num_train_timesteps: int = 1000,
    cmap: str = "viridis",
    annotate: bool = True,
) -> Figure:
    """Heatmap of a metric over the triangular (t_lower, t_upper) grid of a sweep (the paper's Fig. 3 (a)/(b)).

    Column `j` is the `j`-th smallest `ci_lower`, row `i` (from the bottom) the `i`-th smallest `ci_upper`; each
    cell shows the mean over seeds, pairs with no run are blank.

    Args:
        rows (`list[dict]` or `pandas.DataFrame`):
            Result rows; only `ci_normal` rows are drawn (the uniform baseline goes into the title).
        metric (`str`):
            Metric column to show.
        num_train_timesteps (`int`, defaults to `1000`):
            T; intervals must satisfy `0 <= ci_lower < ci_upper <= T`.
        cmap (`str`, defaults to `"viridis"`):
            Colormap name.
        annotate (`bool`, defaults to `True`):
            Write each cell's value into it.

    Returns:
        `matplotlib.figure.Figure`
    """
    records = _as_records(rows)
    _require_metric(records, metric)
    values: dict[tuple[float, float], list[float]] = {}
    for row in records:
        if not _is_ci_row(row):
            continue
        lo, hi = _num(row.get("ci_lower")), _num(row.get("ci_upper"))
        if lo is None or hi is None or not 0 <= lo < hi <= num_train_timesteps:
            raise ValueError(
                f"row {_cell_key(row)!r} has interval ({row.get('ci_lower')!r}, {row.get('ci_upper')!r}); "
                f"need 0 <= ci_lower < ci_upper <= num_train_timesteps={num_train_timesteps}"
            )
        entry = values.setdefault((lo, hi), [])
        value = _num(row.get(metric))
        if value is not None:
            entry.append(value)
    if not values:
        raise ValueError("rows hold no ci_normal cell; a heatmap needs at least one interval")
    lowers = sorted({lo for lo, _ in values})
    uppers = sorted({hi for _, hi in values})
    grid = np.full((len(uppers), len(lowers)), np.nan)
    for (lo, hi), cell_values in values.items():
        if cell_values:
            grid[uppers.index(hi), lowers.index(lo)] = float(np.mean(cell_values))

    fig = _new_figure(1.0 + 0.6 * len(lowers) + 1.5, 1.0 + 0.5 * len(uppers) + 0.5)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(grid), origin="lower", cmap=cmap, aspect="auto")
    ax.set_xticks(np.arange(len(lowers)), [_tick_label(v) for v in lowers])
    ax.set_yticks(np.arange(len(uppers)), [_tick_label(v) for v in uppers])
    ax.set_xlabel("t_lower")
    ax.set_ylabel("t_upper")
    finite_values = grid[np.isfinite(grid)]
    constant = finite_values.size > 0 and float(finite_values.min()) == float(finite_values.max())
    if not constant:
        # A constant metric gets no colour bar: its scale would be an arbitrary +-0.1 around the value.
        fig.colorbar(image, ax=ax, label=metric)
    if annotate and np.isfinite(grid).any():
        finite = grid[np.isfinite(grid)]
        mid = 0.5 * (finite.min() + finite.max())
        for i, j in zip(*np.nonzero(np.isfinite(grid))):
            # viridis-like maps are dark at the low end: white text there, black text above the middle.
            color = "black" if grid[i, j] > mid else "white"
            ax.text(j, i, f"{grid[i, j]:.3g}", ha="center", va="center", fontsize=7, color=color)
    title = f"{metric}\nmean over seeds, T = {num_train_timesteps}"
    if constant:
        title += f"; constant: {float(finite_values[0]):.3g} in every cell"
    baseline = _baseline_mean(records, metric)
    if baseline is not None:
        title += f"\nuniform baseline: {baseline:.3g}"
    ax.set_title(title, fontsize=9)
    return fig


def plot_metric_vs_mean(rows: Any, metric: str, *, confidence: float = 0.95, cmap: str = "viridis") -> Figure:
    """Scatter of a metric against the CI mean with a least-squares line; Pearson r and its interval in the title.

    Args:
        rows (`list[dict]` or `pandas.DataFrame`):
            Result rows; every `ci_normal` row is a point (coloured by CI width), the uniform baseline a dashed line.
        metric (`str`):
            Metric column on the y axis.
        confidence (`float`, defaults to `0.95`):
            Coverage of the Fisher-z interval in the title.
        cmap (`str`, defaults to `"viridis"`):
            Colormap for the CI width.

    Returns:
        `matplotlib.figure.Figure`
    """
    records = _as_records(rows)
    _require_metric(records, metric)
    x, y = _points(records, "ci_mean", metric)
    widths = np.asarray(
        [
            _num(row.get("ci_width"))
            for row in records
            if _is_ci_row(row) and _num(row.get("ci_mean")) is not None and _num(row.get(metric)) is not None
        ],
        dtype=np.float64,
    )
    result = pearson_with_ci(x, y, confidence=confidence)

    fig = _new_figure(6.5, 4.5)
    ax = fig.add_subplot()
    if x.size:
        points = ax.scatter(x, y, c=widths, cmap=cmap, s=28, edgecolors="black", linewidths=0.3)
        fig.colorbar(points, ax=ax, label="CI width")
    if np.unique(x).size >= 2:
        slope, intercept = np.polyfit(x, y, 1)
        xs = np.linspace(x.min(), x.max(), 50)
        ax.plot(xs, slope * xs + intercept, color="tab:red", label=f"fit: slope {slope:.3g}")
    baseline = _baseline_mean(records, metric)
    if baseline is not None:
        ax.axhline(baseline, color="gray", linestyle="--", label=f"uniform baseline {baseline:.3g}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.set_xlabel("CI mean location (t_lower + t_upper) / 2")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs CI mean\n{_format_pearson(result)}", fontsize=10)
    return fig


def plot_metric_vs_width(rows: Any, metric: str, *, confidence: float = 0.95) -> Figure:
    """Box plots of a metric for each CI width (the paper's Fig. 3 (d)), every run drawn as a point on top.

    Args:
        rows (`list[dict]` or `pandas.DataFrame`):
            Result rows; only `ci_normal` rows are drawn, the uniform baseline as a dashed line.
        metric (`str`):
            Metric column on the y axis.
        confidence (`float`, defaults to `0.95`):
            Coverage of the Fisher-z interval of the Pearson r (metric vs width) in the title.

    Returns:
        `matplotlib.figure.Figure`
    """
    records = _as_records(rows)
    _require_metric(records, metric)
    x, y = _points(records, "ci_width", metric)
    widths = sorted(set(x.tolist()))
    groups = [y[x == w] for w in widths]
    result = pearson_with_ci(x, y, confidence=confidence)

    fig = _new_figure(max(5.0, 0.6 * len(widths) + 2.5), 4.5)
    ax = fig.add_subplot()
    positions = np.arange(len(widths))
    if widths:
        ax.boxplot(groups, positions=positions, widths=0.6, showfliers=False)
        for position, group in zip(positions, groups):
            ax.plot(np.full(group.shape, position), group, "o", color="tab:blue", alpha=0.5, markersize=3)
        ax.set_xticks(positions, [_tick_label(w) for w in widths])
    baseline = _baseline_mean(records, metric)
    if baseline is not None:
        ax.axhline(baseline, color="gray", linestyle="--", label=f"uniform baseline {baseline:.3g}")
        ax.legend(fontsize=8)
    ax.set_xlabel("CI width (t_upper - t_lower)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by CI width\n{_format_pearson(result)}", fontsize=10)
    return fig


def plot_pca_distances_vs_mean(rows: Any, n_components: int = 2) -> Figure:
    """Wasserstein-1 and Jensen-Shannon distance of each PCA component against the CI mean (the paper's Fig. 5).

    Each panel shows every run as a faint point and the mean over runs sharing a CI mean as a line.

    Args:
        rows (`list[dict]` or `pandas.DataFrame`):
            Result rows with `pca_pc{k}_wasserstein_1` and `pca_pc{k}_js_distance` for `k = 1..n_components`.
        n_components (`int`, defaults to `2`):
            Number of components (columns of panels).

    Returns:
        `matplotlib.figure.Figure`
    """
    if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)) or n_components < 1:
        raise ValueError(f"n_components must be a positive int; got {n_components!r}")
    records = _as_records(rows)
    kinds = (("wasserstein_1", "Wasserstein-1"), ("js_distance", "JS distance"))
    columns = [f"pca_pc{k}_{kind}" for k in range(1, n_components + 1) for kind, _ in kinds]
    missing = [c for c in columns if not any(c in row for row in records)]
    if missing:
        raise ValueError(f"rows lack PCA metric columns {missing} needed for n_components={n_components}")

    fig = _new_figure(3.6 * n_components, 6.0)
    axes = fig.subplots(2, n_components, squeeze=False)
    for k in range(1, n_components + 1):
        for r, (kind, label) in enumerate(kinds):
            ax = axes[r, k - 1]
            metric = f"pca_pc{k}_{kind}"
            x, y = _points(records, "ci_mean", metric)
            ax.plot(x, y, "o", color="tab:blue", alpha=0.3, markersize=4)
            means = sorted(set(x.tolist()))
            ax.plot(means, [float(y[x == m].mean()) for m in means], "-o", color="tab:blue", markersize=4)
            baseline = _baseline_mean(records, metric)
            if baseline is not None:
                ax.axhline(baseline, color="gray", linestyle="--", label="uniform baseline")
                ax.legend(fontsize=7)
            ax.set_title(f"PC{k}: {label}", fontsize=10)
            ax.set_xlabel("CI mean")
            ax.set_ylabel(label)
    return fig


def _history_lookup(histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Sequence[Mapping[str, Any]]]:
    lookup: dict[str, Sequence[Mapping[str, Any]]] = {}
    for key, records in histories.items():
        lookup[str(key)] = records
        lookup.setdefault(str(Path(str(key))), records)
    return lookup


def _find_history(lookup: Mapping[str, Any], row: Mapping[str, Any]) -> Sequence[Mapping[str, Any]] | None:
    candidates = []
    if row.get("run_dir") is not None:
        candidates += [str(row["run_dir"]), str(Path(str(row["run_dir"])))]
    candidates.append(_cell_key(row))
    for key in candidates:
        if key in lookup:
            return lookup[key]
    return None


def _mean_curve(histories: Sequence[Sequence[Mapping[str, Any]]]) -> tuple[np.ndarray, np.ndarray]:
    """Loss averaged over runs (seeds) at each step any of them logged."""
    by_step: dict[int, list[float]] = {}
    for records in histories:
        for record in records:
            loss = _num(record.get("loss"))
            if loss is not None and record.get("step") is not None:
                by_step.setdefault(int(record["step"]), []).append(loss)
    steps = np.asarray(sorted(by_step), dtype=np.float64)
    return steps, np.asarray([np.mean(by_step[int(s)]) for s in steps], dtype=np.float64)


def plot_loss_curves_by_width(
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    rows: Any,
    *,
    smooth: int = 25,
    last_steps: int | None = None,
    log_y: bool = False,
    cmap: str = "viridis",
) -> Figure:
    """Training loss with one panel per CI width and one curve per CI mean (the paper's Fig. 7).

    Seeds of a cell are averaged step by step; the uniform baseline, when present, is a dashed curve in every panel.

    Args:
        histories (`Mapping[str, list[dict]]`):
            `loss_history.jsonl` records keyed by run folder (as from [`load_loss_histories`]) or by cell name.
        rows (`list[dict]` or `pandas.DataFrame`):
            Result rows; their `run_dir` (or `cell`) selects the history of each run.
        smooth (`int`, defaults to `25`):
            Trailing moving-average window in logged steps (0 or 1: raw values).
        last_steps (`int`, *optional*):
            Show only the last this-many steps of each curve (the paper shows the last 30 epochs).
        log_y (`bool`, defaults to `False`):
            Logarithmic loss axis.
        cmap (`str`, defaults to `"viridis"`):
            Colormap for the CI mean.

    Returns:
        `matplotlib.figure.Figure`
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    smooth = _check_window(smooth, "smooth")
    if last_steps is not None and (not isinstance(last_steps, (int, np.integer)) or last_steps < 1):
        raise ValueError(f"last_steps must be a positive int or None; got {last_steps!r}")
    records = _as_records(rows)
    lookup = _history_lookup(histories)

    curves: dict[float, dict[float, list[Sequence[Mapping[str, Any]]]]] = {}
    baseline_histories = []
    for row in records:
        history = _find_history(lookup, row)
        if history is None:
            continue
        if _is_baseline_row(row):
            baseline_histories.append(history)
        elif _is_ci_row(row) and _num(row.get("ci_width")) is not None and _num(row.get("ci_mean")) is not None:
            curves.setdefault(_num(row["ci_width"]), {}).setdefault(_num(row["ci_mean"]), []).append(history)
    if not curves:
        raise ValueError(
            f"no loss history matches a ci_normal row (by run_dir or cell); history keys: {sorted(histories)[:5]}"
        )

    def prepare(runs: Sequence[Sequence[Mapping[str, Any]]]) -> tuple[np.ndarray, np.ndarray]:
        steps, losses = _mean_curve(runs)
        if last_steps is not None and steps.size:
            keep = steps > steps.max() - last_steps
            steps, losses = steps[keep], losses[keep]
        return _moving_average(steps, losses, smooth) if steps.size else (steps, losses)

    widths = sorted(curves)
    all_means = sorted({m for by_mean in curves.values() for m in by_mean})
    norm = Normalize(
        vmin=min(all_means), vmax=max(all_means) if max(all_means) > min(all_means) else min(all_means) + 1
    )
    colormap = colormaps[cmap]
    baseline_curve = prepare(baseline_histories) if baseline_histories else None

    nrows, ncols = _grid_shape(len(widths), 4)
    fig = _new_figure(3.6 * ncols + 1.0, 3.0 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for index, width in enumerate(widths):
        ax = axes.flat[index]
        for mean in sorted(curves[width]):
            steps, losses = prepare(curves[width][mean])
            ax.plot(steps, losses, color=colormap(norm(mean)), linewidth=1.0, label=f"mean {mean:g}")
        if baseline_curve is not None:
            ax.plot(*baseline_curve, color="black", linestyle="--", linewidth=1.0, label="uniform")
        if len(curves[width]) <= 8:
            ax.legend(fontsize=6)
        if log_y:
            ax.set_yscale("log")
        ax.set_title(f"CI width {width:g}", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("loss" + (f" (moving avg {smooth})" if smooth > 1 else ""))
    for ax in axes.flat[len(widths) :]:
        ax.set_visible(False)
    fig.colorbar(ScalarMappable(norm=norm, cmap=colormap), ax=axes, label="CI mean")
    return fig


def plot_sampling_distributions(
    probs_by_label: Mapping[str, Any],
    *,
    log_y: bool = False,
    cmap: str = "viridis",
) -> Figure:
    """Probability of each training timestep, one curve per sampler / sweep cell.

    Args:
        probs_by_label (`Mapping[str, np.ndarray]`):
            Label -> probability vector of length T (the caller computes them, e.g. with the samplers' `probs()`).
        log_y (`bool`, defaults to `False`):
            Logarithmic probability axis (shows the uniform tail mass).
        cmap (`str`, defaults to `"viridis"`):
            Colormap spread over the labels in order.

    Returns:
        `matplotlib.figure.Figure`
    """
    from matplotlib import colormaps

    if not probs_by_label:
        raise ValueError("probs_by_label is empty; pass at least one label -> probability vector")
    colormap = colormaps[cmap]
    fig = _new_figure(7.0, 4.0)
    ax = fig.add_subplot()
    count = len(probs_by_label)
    for index, (label, probs) in enumerate(probs_by_label.items()):
        p = _to_numpy(probs, f"probs_by_label[{label!r}]")
        if p.ndim != 1 or p.size == 0 or not np.isfinite(p).all():
            raise ValueError(f"probs_by_label[{label!r}] must be a finite 1D vector; got shape {p.shape}")
        ax.plot(np.arange(p.size), p, color=colormap(index / max(1, count - 1)), linewidth=1.0, label=str(label))
    if log_y:
        ax.set_yscale("log")
    ax.legend(fontsize=6, ncol=max(1, math.ceil(count / 14)))
    ax.set_xlabel("timestep t")
    ax.set_ylabel("P(t)")
    ax.set_title("Training timestep distributions")
    return fig


# ----------------------------------------------------------------------------------------------------------------
# per-run evaluation figures
# ----------------------------------------------------------------------------------------------------------------


def plot_pca_scatter(gen_proj: Any, train_proj: Any, *, title: str | None = None, bins: int = 50) -> Figure:
    """Generated vs training samples in the first two PCA components (the paper's Fig. 4), with marginals.

    Args:
        gen_proj (`np.ndarray` or `torch.Tensor`):
            Generated samples projected on the training PCA basis, shape `(N, K)` with `K >= 2`.
        train_proj (`np.ndarray` or `torch.Tensor`):
            Training samples in the same basis, shape `(M, K)`.
        title (`str`, *optional*):
            Figure title.
        bins (`int`, defaults to `50`):
            Histogram bins of the marginals (shared by both sets).

    Returns:
        `matplotlib.figure.Figure`
    """
    gen = _to_numpy(gen_proj, "gen_proj")
    train = _to_numpy(train_proj, "train_proj")
    for name, arr in (("gen_proj", gen), ("train_proj", train)):
        if arr.ndim != 2 or arr.shape[1] < 2 or arr.shape[0] == 0:
            raise ValueError(f"{name} must have shape (N, K) with N >= 1 and K >= 2; got {arr.shape}")
    fig = _new_figure(12.0, 4.0)
    axes = fig.subplots(1, 3)
    axes[0].scatter(train[:, 0], train[:, 1], s=6, alpha=0.4, color="tab:gray", label=f"training (n={len(train)})")
    axes[0].scatter(gen[:, 0], gen[:, 1], s=6, alpha=0.6, color="tab:orange", label=f"generated (n={len(gen)})")
    axes[0].set_xlabel("PC1")
    axes[0].set_ylabel("PC2")
    axes[0].legend(fontsize=8)
    for k in range(2):
        edges = np.histogram_bin_edges(np.concatenate([train[:, k], gen[:, k]]), bins=bins)
        axes[k + 1].hist(train[:, k], bins=edges, density=True, alpha=0.5, color="tab:gray", label="training")
        axes[k + 1].hist(gen[:, k], bins=edges, density=True, alpha=0.5, color="tab:orange", label="generated")
        axes[k + 1].set_xlabel(f"PC{k + 1}")
        axes[k + 1].set_ylabel("density")
        axes[k + 1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def plot_nn_distance_histogram(
    nn_distances: Any,
    *,
    memorization_ratio: Any = None,
    threshold: float = 1.0 / 3.0,
    bins: int = 50,
) -> Figure:
    """Histogram of nearest-training-sample distances of the generated samples.

    Args:
        nn_distances (`np.ndarray` or `torch.Tensor`):
            Distance of each generated sample to its nearest training sample, shape `(N,)`.
        memorization_ratio (`float` or `np.ndarray`, *optional*):
            Either the per-sample nearest / second-nearest distance ratios, shape `(N,)`, drawn in a second panel
            with the memorization threshold, or a scalar memorized fraction, written in the title.
        threshold (`float`, defaults to `1/3`):
            Ratio below which a sample counts as memorized (Yoon et al. 2023).
        bins (`int`, defaults to `50`):
            Histogram bins.

    Returns:
        `matplotlib.figure.Figure`
    """
    distances = _to_numpy(nn_distances, "nn_distances").ravel()
    distances = distances[np.isfinite(distances)]
    if distances.size == 0:
        raise ValueError("nn_distances holds no finite value")
    ratios = None if memorization_ratio is None else _to_numpy(memorization_ratio, "memorization_ratio")
    two_panels = ratios is not None and ratios.ndim >= 1
    fig = _new_figure(10.0 if two_panels else 5.5, 4.0)
    axes = fig.subplots(1, 2 if two_panels else 1, squeeze=False)[0]
    axes[0].hist(distances, bins=bins, color="tab:blue", alpha=0.8)
    axes[0].axvline(
        float(np.median(distances)), color="black", linestyle="--", label=f"median {np.median(distances):.3g}"
    )
    axes[0].set_xlabel("L2 distance to nearest training sample")
    axes[0].set_ylabel("count")
    axes[0].legend(fontsize=8)
    title = f"Nearest-neighbour distances (n={distances.size}, mean {distances.mean():.3g})"
    if ratios is not None and ratios.ndim == 0:
        title += f"\nmemorized fraction: {float(ratios):.3g}"
    elif two_panels:
        finite = ratios.ravel()[np.isfinite(ratios.ravel())]
        axes[1].hist(finite, bins=np.linspace(0.0, max(1.0, float(finite.max(initial=1.0))), bins + 1), alpha=0.8)
        axes[1].axvline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:.3g}")
        axes[1].set_xlabel("nearest / second-nearest distance")
        axes[1].set_ylabel("count")
        axes[1].set_title(f"memorized fraction: {float(np.mean(finite < threshold)) if finite.size else 0.0:.3g}")
        axes[1].legend(fontsize=8)
    axes[0].set_title(title, fontsize=10)
    return fig


def _check_images(name: str, images: np.ndarray) -> None:
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have shape (N, C, H, W) with C = 1 or 3; got {images.shape}")


def plot_image_nn_grid(
    generated: Any,
    nearest: Any,
    *,
    max_items: int = 16,
    ncols: int = 8,
    distances: Any = None,
    ratios: Any = None,
    threshold: float | None = None,
) -> Figure:
    """Generated images, each above its nearest training image; with `ratios` and `threshold`, copies marked.

    A pair counts as a copy when the generated image's nearest training image is less than `threshold` times as far
    as the second nearest (``ratios < threshold``, the test behind ``memorized_fraction``): both images of such a pair
    get a red frame and the title says how many of the pairs shown, and of all `ratios`, are copies.

    Args:
        generated (`np.ndarray` or `torch.Tensor`):
            Generated images, shape `(N, C, H, W)` in `[-1, 1]`, `C` = 1 or 3.
        nearest (`np.ndarray` or `torch.Tensor`):
            Nearest training image of each, same shape.
        max_items (`int`, defaults to `16`):
            Show at most this many pairs (the first ones).
        ncols (`int`, defaults to `8`):
            Pairs per row.
        distances (`np.ndarray`, *optional*):
            Distance of each pair, shape `(N,)`, written above the generated image.
        ratios (`np.ndarray`, *optional*):
            Nearest / second-nearest training distance of every generated sample (all of them, not only those
            shown; the first ones belong to the pairs shown), shape `(M,)` with `M >= N`.
        threshold (`float`, *optional*):
            Ratio under which a pair counts as a copy (the evaluation's ``--memorization_threshold``, 1/3 by
            default). Required with `ratios`.

    Returns:
        `matplotlib.figure.Figure`
    """
    gen = _to_numpy(generated, "generated")
    near = _to_numpy(nearest, "nearest")
    _check_images("generated", gen)
    _check_images("nearest", near)
    if gen.shape != near.shape:
        raise ValueError(f"generated and nearest must have the same shape; got {gen.shape} and {near.shape}")
    if max_items < 1 or ncols < 1:
        raise ValueError(f"max_items and ncols must be positive; got max_items={max_items}, ncols={ncols}")
    count = min(gen.shape[0], max_items)
    if count == 0:
        raise ValueError("generated holds no image")
    dist = None if distances is None else _to_numpy(distances, "distances").ravel()
    ratio = None if ratios is None else _to_numpy(ratios, "ratios").ravel()
    if ratio is not None and (threshold is None or ratio.size < count):
        raise ValueError(
            f"ratios needs a threshold and one value per pair shown; got threshold={threshold}, {ratio.size} ratios "
            f"for {count} pairs"
        )
    copy = np.zeros(count, dtype=bool) if ratio is None else ratio[:count] < float(threshold)
    pair_rows, cols = _grid_shape(count, ncols)
    fig = _new_figure(1.4 * cols, 2.9 * pair_rows + 0.4)
    axes = fig.subplots(2 * pair_rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for index in range(count):
        row, col = divmod(index, cols)
        for offset, images in enumerate((gen, near)):
            image = np.clip((images[index] + 1.0) / 2.0, 0.0, 1.0)
            ax = axes[2 * row + offset, col]
            if image.shape[0] == 1:
                ax.imshow(image[0], cmap="gray", vmin=0.0, vmax=1.0)
            else:
                ax.imshow(np.transpose(image, (1, 2, 0)))
            if copy[index]:
                # A frame needs the axes on; ticks stay hidden.
                ax.set_axis_on()
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_edgecolor("red")
                    spine.set_linewidth(3)
        parts = [] if dist is None or index >= dist.size else [f"d={dist[index]:.3g}"]
        parts += [] if ratio is None else [f"r={ratio[index]:.2f}"]
        if parts:
            color = "red" if copy[index] else "black"
            axes[2 * row, col].set_title(" ".join(parts), fontsize=7, color=color)
    title = "top: generated, bottom: nearest training sample"
    if ratio is not None:
        title += (
            f"\nred frame = copy (r = nearest / second-nearest distance < {float(threshold):.3g}): "
            f"{int(copy.sum())} of the {count} shown, {100 * float(np.mean(ratio < float(threshold))):.1f}% of all "
            f"{ratio.size} samples"
        )
    fig.suptitle(title, fontsize=10)
    return fig


def plot_replicated_pairs(
    generated: Any,
    matched: Any,
    similarity: Any,
    *,
    threshold: float | None = 0.5,
    ncols: int = 4,
    train_indices: Any = None,
) -> Figure:
    """Generated images, each beside its most similar training image in feature space, with their similarity.

    The figure of replication studies (Somepalli et al. 2023, https://arxiv.org/abs/2212.03860): pass the pairs of
    highest cosine similarity first. Similarities at or above `threshold` (replicas) are titled in red.

    Args:
        generated (`np.ndarray` or `torch.Tensor`):
            Generated images, shape `(N, C, H, W)` in `[-1, 1]`, `C` = 1 or 3.
        matched (`np.ndarray` or `torch.Tensor`):
            The most similar training image of each, same shape.
        similarity (`np.ndarray`):
            Cosine similarity of each pair, shape `(N,)`.
        threshold (`float`, *optional*, defaults to `0.5`):
            Replication threshold; `None` colours nothing.
        ncols (`int`, defaults to `4`):
            Pairs per row.
        train_indices (`np.ndarray`, *optional*):
            Index of each matched training image, shown above it.

    Returns:
        `matplotlib.figure.Figure`
    """
    gen = _to_numpy(generated, "generated")
    near = _to_numpy(matched, "matched")
    idx = None if train_indices is None else np.asarray(train_indices).ravel()
    sim = _to_numpy(similarity, "similarity").ravel()
    _check_images("generated", gen)
    _check_images("matched", near)
    if gen.shape != near.shape or sim.size != gen.shape[0]:
        raise ValueError(
            f"generated, matched and similarity must describe the same pairs; got shapes {gen.shape}, {near.shape} "
            f"and {sim.shape}"
        )
    if gen.shape[0] == 0 or ncols < 1:
        raise ValueError(f"need at least one pair and ncols >= 1; got {gen.shape[0]} pairs, ncols={ncols}")
    rows, cols = _grid_shape(gen.shape[0], ncols)
    fig = _new_figure(2.6 * cols, 1.5 * rows + 0.4)
    axes = fig.subplots(rows, 2 * cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for index in range(gen.shape[0]):
        row, col = divmod(index, cols)
        for offset, images in enumerate((gen, near)):
            image = np.clip((images[index] + 1.0) / 2.0, 0.0, 1.0)
            ax = axes[row, 2 * col + offset]
            if image.shape[0] == 1:
                ax.imshow(image[0], cmap="gray", vmin=0.0, vmax=1.0)
            else:
                ax.imshow(np.transpose(image, (1, 2, 0)))
        replica = threshold is not None and sim[index] >= threshold
        axes[row, 2 * col].set_title(f"sim={sim[index]:.3f}", fontsize=7, color="red" if replica else "black")
        label = "training" if idx is None else f"training #{int(idx[index])}"
        axes[row, 2 * col + 1].set_title(label, fontsize=6, color="gray")
    fig.suptitle("generated (left) beside its most similar training image (right)", fontsize=10)
    return fig


def plot_signal_overlay(generated: Any, training: Any, *, max_items: int = 50) -> Figure:
    """Generated signals drawn over faint training signals, and mean +- std of both (one row per channel).

    Args:
        generated (`np.ndarray` or `torch.Tensor`):
            Generated signals, shape `(N, C, L)`.
        training (`np.ndarray` or `torch.Tensor`):
            Training signals, shape `(M, C, L)`.
        max_items (`int`, defaults to `50`):
            Draw at most this many signals of each set in the overlay (the statistics use all).

    Returns:
        `matplotlib.figure.Figure`
    """
    gen = _to_numpy(generated, "generated")
    train = _to_numpy(training, "training")
    for name, arr in (("generated", gen), ("training", train)):
        if arr.ndim != 3 or arr.shape[0] == 0:
            raise ValueError(f"{name} must have shape (N, C, L) with N >= 1; got {arr.shape}")
    if gen.shape[1:] != train.shape[1:]:
        raise ValueError(f"generated and training must share (C, L); got {gen.shape[1:]} and {train.shape[1:]}")
    if max_items < 1:
        raise ValueError(f"max_items must be positive; got {max_items}")
    channels, length = gen.shape[1], gen.shape[2]
    t = np.arange(length)
    fig = _new_figure(11.0, 3.2 * channels)
    axes = fig.subplots(channels, 2, squeeze=False)
    for c in range(channels):
        overlay, stats_ax = axes[c]
        for signal in train[:max_items, c]:
            overlay.plot(t, signal, color="tab:gray", alpha=0.15, linewidth=0.6)
        for signal in gen[:max_items, c]:
            overlay.plot(t, signal, color="tab:orange", alpha=0.5, linewidth=0.8)
        overlay.set_title(f"channel {c}: generated (orange) over training (gray)", fontsize=9)
        overlay.set_xlabel("t")
        for arr, color, label in ((train, "tab:gray", "training"), (gen, "tab:orange", "generated")):
            mean, std = arr[:, c].mean(axis=0), arr[:, c].std(axis=0)
            stats_ax.plot(t, mean, color=color, label=f"{label} mean (n={arr.shape[0]})")
            stats_ax.fill_between(t, mean - std, mean + std, color=color, alpha=0.25, label=f"{label} +- std")
        stats_ax.set_title(f"channel {c}: mean +- std", fontsize=9)
        stats_ax.set_xlabel("t")
        stats_ax.legend(fontsize=7)
    return fig


def _bin_matrix(records: Sequence[Mapping[str, Any]], num_bins: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-step bin losses and counts, (S, num_bins), merged from finer logged bins with count weights."""
    logged = [r.get("bin_losses") for r in records if r.get("bin_losses") is not None]
    if not logged:
        return None
    width = len(logged[0])
    if width == 0 or width % num_bins:
        raise ValueError(f"records hold {width} bin_losses per step; num_bins={num_bins} must divide it")
    losses = np.full((len(records), width), np.nan)
    counts = np.zeros((len(records), width))
    for i, record in enumerate(records):
        bin_losses = record.get("bin_losses") or [None] * width
        if len(bin_losses) != width:
            raise ValueError(f"step {record.get('step')} has {len(bin_losses)} bin_losses; expected {width}")
        bin_counts = record.get("bin_counts") or [1] * width
        for k, (loss, count) in enumerate(zip(bin_losses, bin_counts)):
            if _num(loss) is not None and _num(count) and count > 0:
                losses[i, k], counts[i, k] = float(loss), float(count)
    group = width // num_bins
    weighted = np.nan_to_num(losses) * counts
    merged_counts = counts.reshape(len(records), num_bins, group).sum(axis=2)
    merged_sums = weighted.reshape(len(records), num_bins, group).sum(axis=2)
    return merged_sums, merged_counts


def plot_loss_history(records: Sequence[Mapping[str, Any]], *, num_bins: int = 10, smooth: int = 1) -> Figure:
    """Total training loss and the loss of each timestep bin over optimizer steps.

    Args:
        records (`list[dict]`):
            `loss_history.jsonl` records (`step`, `loss`, optional `bin_losses` / `bin_counts`).
        num_bins (`int`, defaults to `10`):
            Bins to draw; finer logged bins are merged weighted by their counts (must divide the logged number).
        smooth (`int`, defaults to `1`):
            Trailing moving-average window in steps (0 or 1: raw); bin losses are averaged weighted by counts.

    Returns:
        `matplotlib.figure.Figure`
    """
    from matplotlib import colormaps

    smooth = _check_window(smooth, "smooth")
    if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive int; got {num_bins!r}")
    records = list(records)
    if not records:
        raise ValueError("records is empty; pass the loss_history.jsonl records of a run")
    missing = [i for i, r in enumerate(records) if "step" not in r or "loss" not in r]
    if missing:
        raise ValueError(f"records {missing[:5]} lack 'step' or 'loss'")
    steps = np.asarray([float(r["step"]) for r in records])
    losses = np.asarray([np.nan if _num(r["loss"]) is None else float(r["loss"]) for r in records])
    bins = _bin_matrix(records, num_bins)

    fig = _new_figure(11.0 if bins is not None else 6.0, 4.0)
    axes = fig.subplots(1, 2 if bins is not None else 1, squeeze=False)[0]
    finite = np.isfinite(losses)
    axes[0].plot(steps[finite], losses[finite], color="tab:gray", alpha=0.4 if smooth > 1 else 1.0, linewidth=0.8)
    if smooth > 1 and finite.sum() > 1:
        axes[0].plot(*_moving_average(steps[finite], losses[finite], smooth), color="tab:blue", label=f"avg {smooth}")
        axes[0].legend(fontsize=8)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("loss")
    axes[0].set_title("training loss")
    if bins is not None:
        sums, counts = bins
        window = max(1, min(smooth, len(records)))
        kernel = np.ones(window)
        colormap = colormaps["viridis"]
        positive = True
        for k in range(num_bins):
            numerator = np.convolve(sums[:, k], kernel, mode="valid")
            denominator = np.convolve(counts[:, k], kernel, mode="valid")
            with np.errstate(invalid="ignore", divide="ignore"):
                curve = np.where(denominator > 0, numerator / denominator, np.nan)
            keep = np.isfinite(curve)
            positive &= bool((curve[keep] > 0).all())
            label = f"bin {k}" + (" (least noise)" if k == 0 else " (most noise)" if k == num_bins - 1 else "")
            axes[1].plot(steps[window - 1 :][keep], curve[keep], color=colormap(k / max(1, num_bins - 1)), label=label)
        if positive:
            axes[1].set_yscale("log")
        axes[1].set_xlabel("step")
        axes[1].set_ylabel("loss in timestep bin")
        axes[1].set_title(f"loss by timestep bin ({num_bins} bins of width T/{num_bins})")
        axes[1].legend(fontsize=6, ncol=2)
    return fig


# ----------------------------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------------------------


def _bin_loss_ratios(entries: Sequence[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], np.ndarray, bool]:
    """CI cells (by width, then mean) and their bin losses, divided by the uniform baseline's where there is one."""
    baseline = next((e for e in entries if e.get("timestep_sampling") == "uniform"), None)
    cells = sorted(
        (e for e in entries if e.get("timestep_sampling") == "ci_normal"),
        key=lambda e: (e.get("ci_width") or 0.0, e.get("ci_mean") or 0.0),
    )
    values = np.array([[np.nan if v is None else v for v in e["bin_losses"]] for e in cells], dtype=np.float64)
    if baseline is not None and values.size:
        reference = np.array([np.nan if v is None else v for v in baseline["bin_losses"]], dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            values = values / reference[None, :]
    return cells, values, baseline is not None


def plot_timestep_bin_losses(entries: Sequence[Mapping[str, Any]], *, num_train_timesteps: int = 1000) -> Figure:
    """Each CI cell's end-of-training loss per timestep bin, relative to the uniform baseline on the same bins.

    Cells are rows (sorted by width, then mean), timestep bins columns; colour and number give the loss ratio to the
    uniform run (log colour scale, 1 = same loss; raw losses when there is no uniform baseline). This compares cells
    on the same timesteps, which their total losses do not (see [`~diffusers_memctl.analysis.timestep_bin_losses`]).

    Args:
        entries (`list[dict]`):
            Output of [`~diffusers_memctl.analysis.timestep_bin_losses`].
        num_train_timesteps (`int`, defaults to `1000`):
            T, for the bin labels.

    Returns:
        `matplotlib.figure.Figure`
    """
    from matplotlib.colors import LogNorm

    cells, values, relative = _bin_loss_ratios(entries)
    if not cells:
        raise ValueError("no ci_normal cell among the entries: nothing to draw")
    num_bins = values.shape[1]
    fig = _new_figure(1.0 + 0.75 * num_bins, 1.2 + 0.32 * len(cells))
    ax = fig.add_subplot()
    finite = values[np.isfinite(values) & (values > 0)]
    if relative and finite.size:
        spread = float(max(np.max(np.abs(np.log10(finite))), 0.05))
        norm = LogNorm(vmin=10**-spread, vmax=10**spread)
        cmap = "RdBu_r"
    else:
        norm = LogNorm(vmin=finite.min(), vmax=finite.max()) if finite.size else None
        cmap = "viridis"
    image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap=cmap, norm=norm)
    for i in range(len(cells)):
        for k in range(num_bins):
            if np.isfinite(values[i, k]):
                ax.text(k, i, f"{values[i, k]:.2g}", ha="center", va="center", fontsize=7)
    edges = np.linspace(0, num_train_timesteps, num_bins + 1)
    ax.set_xticks(range(num_bins), [f"{edges[k]:.0f}-{edges[k + 1]:.0f}" for k in range(num_bins)], rotation=45)
    ax.set_yticks(range(len(cells)), [f"[{_tick_label(c['ci_lower'])}, {_tick_label(c['ci_upper'])}]" for c in cells])
    ax.set_xlabel("timestep bin")
    ax.set_ylabel("CI cell")
    label = "loss / uniform's loss" if relative else "loss"
    bar = fig.colorbar(image, ax=ax, label=label)
    from matplotlib.ticker import FormatStrFormatter

    bar.ax.yaxis.set_major_formatter(FormatStrFormatter("%.2g"))
    bar.ax.yaxis.set_minor_formatter(FormatStrFormatter("%.2g"))
    ax.set_title("Training loss on the same timesteps\n(end of training, seeds pooled)", fontsize=10)
    return fig


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


def _fmt(value: Any, spec: str = ".4g") -> str:
    number = _num(value)
    return "–" if number is None else format(number, spec)


def _fmt_p(value: Any) -> str:
    number = _num(value)
    if number is None:
        return "–"
    return f"{number:.2e}" if number < 1e-3 else f"{number:.3f}"


def _fmt_interval(low: Any, high: Any) -> str:
    return "–" if _num(low) is None or _num(high) is None else f"[{_num(low):+.4f}, {_num(high):+.4f}]"


def _mean_std(summary: Mapping[str, Any] | None) -> str:
    if not summary or summary.get("mean") is None:
        return "–"
    return _fmt(summary["mean"]) + ("" if summary.get("std") is None else f" ± {_fmt(summary['std'], '.2g')}")


def _sweep_summary(records: Sequence[Mapping[str, Any]], analysis: Mapping[str, Any]) -> list[str]:
    """Plain-language opening of a sweep report: copies per cell against the data's own reference."""
    lines = ["## In short", ""]
    cells = analysis.get("cells", [])
    copies = [(c.get("cell"), (c.get("metrics", {}).get("memorized_fraction") or {}).get("mean")) for c in cells]
    copies = [(name, v) for name, v in copies if v is not None]
    reference = next(
        (_num(r.get("ref_memorized_fraction")) for r in records if r.get("ref_memorized_fraction") is not None), None
    )
    ratio_ref = next(
        (_num(r.get("ref_nn_ratio_mean")) for r in records if r.get("ref_nn_ratio_mean") is not None), None
    )
    seeds = sorted({int(s) for r in records if (s := _num(r.get("seed"))) is not None})
    lines.append(
        f"All {len(records)} runs fine-tune **one** pretrained model (seeds {seeds}): differences between cells "
        "describe this pretraining only; a second pretraining may rank them differently."
        + (" With one seed per cell every number is a single measurement." if len(seeds) < 2 else "")
    )
    lines.append("")
    if copies:
        listed = ", ".join(f"{name} {100 * v:.1f}%" for name, v in copies)
        lines.append(
            "**Copies** (`memorized_fraction`: share of generated samples whose nearest training sample is under a "
            f"third as far as the second nearest; 0% = no near-duplicate of a training sample): {listed}."
            + (
                f" The training set's own share of near-duplicates is {100 * reference:.1f}%."
                if reference is not None
                else ""
            )
        )
        if all(v == 0 for _, v in copies):
            lines.append(
                ""
                "\nNo run copied: these models are not in a memorization regime, so the sweep measures distribution "
                "metrics, not copying. `nn_ratio_mean` (1 = far from any single training sample"
                + (f"; the data's own value {ratio_ref:.3f}" if ratio_ref is not None else "")
                + ") shows whether samples drift toward training points."
            )
    return lines


def _correlation_table(metrics, correlations, cell_level, paper_by_key, analysis) -> list[str]:
    level = round(100 * float(analysis.get("confidence", 0.95)))
    lines = [
        "Cell level: Pearson r over cell means (seeds averaged; the honest unit when every run shares one "
        "pretrained model). Run level: every run as if independent (pseudo-replicated; comparable to the paper's "
        "way of counting). p_Holm: Holm-adjusted within one family per level, every metric of this table against "
        "the CI mean and against the CI width.",
        "",
        f"| metric | vs | r, cell means [{level}% CI] | p | p_Holm | n | r, runs [{level}% CI] | p | p_Holm | n "
        "| paper r | paper 95% CI |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for metric in metrics:
        for variable in ("ci_mean", "ci_width"):
            run = correlations.get(metric, {}).get(variable, {}).get("pearson", {})
            cell = cell_level.get(metric, {}).get(variable, {}).get("pearson", {})
            ref = paper_by_key.get((metric, variable), {})
            lines.append(
                f"| {metric} | {variable} | {_fmt(cell.get('r'), '+.3f')} "
                f"{_fmt_interval(cell.get('ci_low'), cell.get('ci_high'))} | {_fmt_p(cell.get('p_value'))} | "
                f"{_fmt_p(cell.get('p_holm'))} | {cell.get('n', '–')} | {_fmt(run.get('r'), '+.3f')} "
                f"{_fmt_interval(run.get('ci_low'), run.get('ci_high'))} | {_fmt_p(run.get('p_value'))} | "
                f"{_fmt_p(run.get('p_holm'))} | {run.get('n', '–')} | {_fmt(ref.get('r'), '+.4f')} | {_fmt_interval(ref.get('ci_low'), ref.get('ci_high'))} |"
            )
    return lines + [""]


def _gradient_profile_section(sweep_dir: Path) -> list[str]:
    """Where each run learns, when ``memctl-diagnose SWEEP_DIR`` has written ``gradient_profiles.csv`` there."""
    import csv

    path = sweep_dir / GRADIENT_PROFILES_NAME
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    shares = [c for c in (rows[0] if rows else {}) if c.startswith("share_") and not c.endswith("_se")]
    if not shares:
        return []
    windows = [c[len("share_") :].replace("_", "-") for c in shares]
    lines = [
        "## Where each run learns (gradient profiles)",
        "",
        "From `memctl-diagnose` on this folder (`gradient_profiles.csv`): each run's share of the expected gradient "
        "signal per window of timesteps under its own sampler, ± jackknife standard error, and the gradient coherence "
        "(||E g|| / E||g||) there.",
        "",
        "| run | "
        + " | ".join(f"share {w}" for w in windows)
        + " | "
        + " | ".join(f"coherence {w}" for w in windows)
        + " |",
        "|" + "---|" * (1 + 2 * len(windows)),
    ]

    def value(row: Mapping[str, str], column: str, spec: str) -> str:
        text = row.get(column)
        return _fmt(float(text) if text not in (None, "") else None, spec)

    for row in rows:
        share_cells = [f"{value(row, c, '.3f')} ± {value(row, c + '_se', '.2g')}" for c in shares]
        coherence = [value(row, c.replace("share_", "coherence_"), ".2f") for c in shares]
        lines.append(f"| {row.get('run')} | " + " | ".join(share_cells + coherence) + " |")
    return lines + [""]


def write_sweep_report(
    sweep_dir: str | os.PathLike,
    rows: Any,
    analysis: Mapping[str, Any] | None = None,
    figure_paths: Mapping[str, str | os.PathLike] | None = None,
    *,
    title: str = "CI-grid sweep report",
) -> Path:
    """Write `REPORT.md` in a sweep folder: figures, correlation table (with the paper's numbers) and cell table.

    Args:
        sweep_dir (`str` or `os.PathLike`):
            Sweep folder (created if missing); figure links are relative to it.
        rows (`list[dict]` or `pandas.DataFrame`):
            Result rows of the sweep.
        analysis (`dict`, *optional*):
            Output of [`analyze_sweep`]; computed from `rows` when omitted.
        figure_paths (`Mapping[str, Path]`, *optional*):
            Figure title -> PNG path, embedded in this order.
        title (`str`, defaults to `"CI-grid sweep report"`):
            First heading.

    Returns:
        `Path`: the written `REPORT.md`.
    """
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    records = _as_records(rows)
    if analysis is None:
        analysis = analyze_sweep(records)
    metrics = list(analysis.get("metrics", []))
    correlations = analysis.get("correlations", {})
    paper = analysis.get("paper_reference", {})
    paper_by_key = {(ref.get("metric"), ref.get("variable")): ref for ref in paper.values()}

    lines = [f"# {title}", "", *_sweep_summary(records, analysis), ""]
    lines.append(
        f"{analysis.get('n_rows', len(records))} result rows; {analysis.get('n_ci_rows', '?')} ci_normal runs over "
        f"{analysis.get('n_cells', '?')} cells enter the correlations; the uniform baseline is excluded from them and "
        "listed separately."
    )
    lines.append("")

    lines += ["## Correlations", ""]
    cell_level = analysis.get("cell_level_correlations") or {}
    n_cells = int(analysis.get("n_cells") or 0)
    if n_cells < 4:
        lines += [
            f"Only {n_cells} CI cell(s): too few for a correlation with the interval's mean or width (a Fisher-z "
            "interval needs at least 4 cells); compare the cells in the table below instead.",
            "",
        ]
    else:
        lines += _correlation_table(metrics, correlations, cell_level, paper_by_key, analysis)
    if paper and n_cells >= 4:
        lines.append("Paper reference (arXiv 2601.21348):")
        lines.append("")
        for name, ref in paper.items():
            interval = _fmt_interval(ref.get("ci_low"), ref.get("ci_high"))
            lines.append(f"- {name}: r = {_fmt(ref.get('r'), '+.4f')}, 95% CI {interval} ({ref.get('source', '')})")
        lines.append("")

    if figure_paths:
        lines += ["## Figures", ""]
        for label, figure_path in figure_paths.items():
            figure_path = Path(figure_path)
            try:
                link = Path(os.path.relpath(figure_path, sweep_dir)).as_posix()
            except ValueError:  # another drive on Windows
                link = figure_path.as_posix()
            lines += [f"### {label}", "", f"![{label}]({link})", ""]

    baseline = analysis.get("baseline") or {}
    if baseline:
        lines += ["## Uniform baseline", "", "| metric | mean ± std | n |", "|---|---|---|"]
        for metric in metrics:
            lines.append(
                f"| {metric} | {_mean_std(baseline.get(metric))} | {(baseline.get(metric) or {}).get('n', 0)} |"
            )
        lines.append("")

    bin_entries = analysis.get("timestep_bin_losses") or []
    if any(e.get("timestep_sampling") == "ci_normal" for e in bin_entries):
        cells, values, relative = _bin_loss_ratios(bin_entries)
        num_bins = values.shape[1]
        lines += ["## Loss on the same timesteps", ""]
        lines.append(
            "Total training losses do not compare cells: each averages over the timesteps its own sampler draws, and "
            "the loss falls steeply with t. Below, each cell's loss per tenth of the timestep axis over the last 25% "
            "of its steps (seeds pooled)"
            + (
                ", divided by the uniform baseline's loss on the same bin (< 1: lower than uniform)."
                if relative
                else "."
            )
        )
        lines.append("")
        lines.append("| cell | " + " | ".join(f"bin {k}" for k in range(num_bins)) + " |")
        lines.append("|" + "---|" * (num_bins + 1))
        for cell, row in zip(cells, values):
            lines.append(
                f"| [{_fmt(cell.get('ci_lower'), 'g')}, {_fmt(cell.get('ci_upper'), 'g')}] | "
                + " | ".join(_fmt(v if np.isfinite(v) else None, ".3g") for v in row)
                + " |"
            )
        lines.append("")

    lines += _gradient_profile_section(sweep_dir)
    lines += ["## Cells (mean ± std over seeds)", ""]
    lines.append("| cell | sampling | t_lower | t_upper | mean | width | seeds | " + " | ".join(metrics) + " |")
    lines.append("|" + "---|" * (7 + len(metrics)))
    for cell in analysis.get("cells", []):
        values = " | ".join(_mean_std(cell.get("metrics", {}).get(m)) for m in metrics)
        lines.append(
            f"| {cell.get('cell')} | {cell.get('timestep_sampling')} | {_fmt(cell.get('ci_lower'), 'g')} | "
            f"{_fmt(cell.get('ci_upper'), 'g')} | {_fmt(cell.get('ci_mean'), 'g')} | {_fmt(cell.get('ci_width'), 'g')} | "
            f"{cell.get('n_seeds', '–')} | {values} |"
        )
    lines.append("")

    return write_text_atomic(sweep_dir / REPORT_NAME, "\n".join(lines))


# ----------------------------------------------------------------------------------------------------------------
# gradient profiles (diffusers_memctl.diagnostics; read the content of gradient_profile.json)
# ----------------------------------------------------------------------------------------------------------------


def _profile_column(bins: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    return np.array([np.nan if row.get(key) is None else float(row[key]) for row in bins])


def plot_gradient_profile(profile: Mapping[str, Any]) -> Figure:
    """Gradient norms, coherence and alignment against the timestep, with one-standard-error bars.

    Args:
        profile (`Mapping`): The content of ``gradient_profile.json`` (see `diffusers_memctl.diagnostics`).

    Returns:
        `matplotlib.figure.Figure`
    """
    bins = profile.get("bins") or []
    if not bins:
        raise ValueError("the gradient profile has no bins")
    t = _profile_column(bins, "timestep")
    fig = _new_figure(13.0, 3.8)
    axes = fig.subplots(1, 3)
    for key, label in (("mean_batch_grad_norm", "E||g|| (per batch)"), ("mean_grad_norm", "||E g|| (U-statistic)")):
        axes[0].errorbar(t, _profile_column(bins, key), yerr=_profile_column(bins, f"{key}_se"), marker="o",
                         ms=3, capsize=2, label=label)  # fmt: skip
    axes[0].set_yscale("log")
    axes[0].set_ylabel("gradient norm")
    axes[0].legend(fontsize=8)
    axes[1].errorbar(t, _profile_column(bins, "coherence"), yerr=_profile_column(bins, "coherence_se"), marker="o",
                     ms=3, capsize=2, color="C2")  # fmt: skip
    axes[1].set_ylabel("coherence ||E g|| / E||g||")
    axes[1].set_ylim(bottom=0)
    axes[2].errorbar(t, _profile_column(bins, "alignment"), yerr=_profile_column(bins, "alignment_se"), marker="o",
                     ms=3, capsize=2, color="C3", label="batch gradients")  # fmt: skip
    if "per_sample_alignment" in bins[0]:
        axes[2].errorbar(t, _profile_column(bins, "per_sample_alignment"),
                         yerr=_profile_column(bins, "per_sample_alignment_se"), marker="s", ms=3, capsize=2,
                         color="C4", label="per-sample gradients")  # fmt: skip
    axes[2].set_ylabel("alignment (Chatterjee alpha)")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("timestep t")
        ax.grid(alpha=0.3)
    settings = profile.get("settings", {})
    fig.suptitle(
        f"gradient profile: {settings.get('num_batches', '?')} batches of {settings.get('batch_size', '?')} per bin "
        "(error bars: 1 jackknife SE)"
    )
    return fig


def plot_gradient_contribution(profile: Mapping[str, Any], specs: Sequence[str] | None = None) -> Figure:
    """Contribution share of every timestep bin under each sampler, with a one-standard-error band.

    Args:
        profile (`Mapping`): The content of ``gradient_profile.json`` with its ``contribution`` entries.
        specs (`Sequence[str]`, *optional*): Which samplers to draw (default: all in the file).

    Returns:
        `matplotlib.figure.Figure`
    """
    contribution = profile.get("contribution") or {}
    specs = list(contribution) if specs is None else list(specs)
    missing = [spec for spec in specs if spec not in contribution]
    if not specs or missing:
        raise ValueError(f"no contribution shares for {missing or 'any sampler'}; the file has {list(contribution)}")
    t = _profile_column(profile["bins"], "timestep")
    fig = _new_figure(7.5, 4.2)
    ax = fig.subplots()
    for i, spec in enumerate(specs):
        shares = np.asarray(contribution[spec]["shares"])
        se = np.asarray(contribution[spec]["shares_se"])
        ax.plot(t, shares, marker="o", ms=3, color=f"C{i % 10}", label=spec)
        ax.fill_between(t, shares - se, shares + se, color=f"C{i % 10}", alpha=0.2, linewidth=0)
    ax.set_xlabel("timestep t (bin midpoint)")
    ax.set_ylabel("share of the expected gradient")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("contribution share per bin: P(bin) w(bin) ||E g_bin||, normalised (band: 1 SE)")
    return fig
