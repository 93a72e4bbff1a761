"""Figures for CI-grid sweeps and for single evaluated runs.

Sweep figures read result rows only (one dict per sweep cell and seed, see [`diffusers_memctl.experiments.statistics.analysis`]); per-run
figures take arrays. matplotlib is imported inside the functions (it is an optional dependency), every function
returns a `matplotlib.figure.Figure` built with the object API (no pyplot state, nothing shown), and
[`save_figure`] writes it as PNG. The figures follow the paper ([arXiv 2601.21348](https://arxiv.org/abs/2601.21348)):
heatmaps over (t_lower, t_upper) and metric vs mean / width (Fig. 3), PCA distributions and distances (Fig. 4, 5),
training loss by mean within each width (Fig. 7).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..experiments.statistics.analysis import (
    as_records,
    cell_key,
    finite_or_none,
    is_baseline_row,
    is_ci_row,
    pearson_with_ci,
)
from ..run_folder import FIGURES_DIR, RunFolder
from ..timestep_sampling import ci_normal_timestep_probs
from .figures import check_window, grid_shape, moving_average, new_figure, save_figure, tick_label, to_numpy

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "bin_loss_ratios",
    "plot_loss_curves_by_width",
    "plot_metric_heatmap",
    "plot_metric_vs_mean",
    "plot_metric_vs_width",
    "plot_pca_distances_vs_mean",
    "plot_sampling_distributions",
    "plot_timestep_bin_losses",
    "save_figure",
    "write_sweep_figures",
]


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------


def _require_metric(records: Sequence[Mapping[str, Any]], metric: str) -> None:
    if not any(metric in row for row in records):
        columns = sorted({key for row in records for key in row})
        raise ValueError(f"metric {metric!r} is not a column of the rows; available: {columns}")


def _points(records: Sequence[Mapping[str, Any]], variable: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(variable, metric) of the ci_normal rows where both are finite."""
    pairs = [(finite_or_none(row.get(variable)), finite_or_none(row.get(metric))) for row in records if is_ci_row(row)]
    pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
    return np.asarray([p[0] for p in pairs], dtype=np.float64), np.asarray([p[1] for p in pairs], dtype=np.float64)


def _baseline_mean(records: Sequence[Mapping[str, Any]], metric: str) -> float | None:
    values = [finite_or_none(row.get(metric)) for row in records if is_baseline_row(row)]
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
    records = as_records(rows)
    _require_metric(records, metric)
    values: dict[tuple[float, float], list[float]] = {}
    for row in records:
        if not is_ci_row(row):
            continue
        lo, hi = finite_or_none(row.get("ci_lower")), finite_or_none(row.get("ci_upper"))
        if lo is None or hi is None or not 0 <= lo < hi <= num_train_timesteps:
            raise ValueError(
                f"row {cell_key(row)!r} has interval ({row.get('ci_lower')!r}, {row.get('ci_upper')!r}); "
                f"need 0 <= ci_lower < ci_upper <= num_train_timesteps={num_train_timesteps}"
            )
        entry = values.setdefault((lo, hi), [])
        value = finite_or_none(row.get(metric))
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

    fig = new_figure(1.0 + 0.6 * len(lowers) + 1.5, 1.0 + 0.5 * len(uppers) + 0.5)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(grid), origin="lower", cmap=cmap, aspect="auto")
    ax.set_xticks(np.arange(len(lowers)), [tick_label(v) for v in lowers])
    ax.set_yticks(np.arange(len(uppers)), [tick_label(v) for v in uppers])
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
    records = as_records(rows)
    _require_metric(records, metric)
    x, y = _points(records, "ci_mean", metric)
    widths = np.asarray(
        [
            finite_or_none(row.get("ci_width"))
            for row in records
            if is_ci_row(row)
            and finite_or_none(row.get("ci_mean")) is not None
            and finite_or_none(row.get(metric)) is not None
        ],
        dtype=np.float64,
    )
    result = pearson_with_ci(x, y, confidence=confidence)

    fig = new_figure(6.5, 4.5)
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
    records = as_records(rows)
    _require_metric(records, metric)
    x, y = _points(records, "ci_width", metric)
    widths = sorted(set(x.tolist()))
    groups = [y[x == w] for w in widths]
    result = pearson_with_ci(x, y, confidence=confidence)

    fig = new_figure(max(5.0, 0.6 * len(widths) + 2.5), 4.5)
    ax = fig.add_subplot()
    positions = np.arange(len(widths))
    if widths:
        ax.boxplot(groups, positions=positions, widths=0.6, showfliers=False)
        for position, group in zip(positions, groups):
            ax.plot(np.full(group.shape, position), group, "o", color="tab:blue", alpha=0.5, markersize=3)
        ax.set_xticks(positions, [tick_label(w) for w in widths])
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
    records = as_records(rows)
    kinds = (("wasserstein_1", "Wasserstein-1"), ("js_distance", "JS distance"))
    columns = [f"pca_pc{k}_{kind}" for k in range(1, n_components + 1) for kind, _ in kinds]
    missing = [c for c in columns if not any(c in row for row in records)]
    if missing:
        raise ValueError(f"rows lack PCA metric columns {missing} needed for n_components={n_components}")

    fig = new_figure(3.6 * n_components, 6.0)
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
    candidates.append(cell_key(row))
    for key in candidates:
        if key in lookup:
            return lookup[key]
    return None


def _mean_curve(histories: Sequence[Sequence[Mapping[str, Any]]]) -> tuple[np.ndarray, np.ndarray]:
    """Loss averaged over runs (seeds) at each step any of them logged."""
    by_step: dict[int, list[float]] = {}
    for records in histories:
        for record in records:
            loss = finite_or_none(record.get("loss"))
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

    smooth = check_window(smooth, "smooth")
    if last_steps is not None and (not isinstance(last_steps, (int, np.integer)) or last_steps < 1):
        raise ValueError(f"last_steps must be a positive int or None; got {last_steps!r}")
    records = as_records(rows)
    lookup = _history_lookup(histories)

    curves: dict[float, dict[float, list[Sequence[Mapping[str, Any]]]]] = {}
    baseline_histories = []
    for row in records:
        history = _find_history(lookup, row)
        if history is None:
            continue
        if is_baseline_row(row):
            baseline_histories.append(history)
        elif (
            is_ci_row(row)
            and finite_or_none(row.get("ci_width")) is not None
            and finite_or_none(row.get("ci_mean")) is not None
        ):
            curves.setdefault(finite_or_none(row["ci_width"]), {}).setdefault(
                finite_or_none(row["ci_mean"]), []
            ).append(history)
    if not curves:
        raise ValueError(
            f"no loss history matches a ci_normal row (by run_dir or cell); history keys: {sorted(histories)[:5]}"
        )

    def prepare(runs: Sequence[Sequence[Mapping[str, Any]]]) -> tuple[np.ndarray, np.ndarray]:
        steps, losses = _mean_curve(runs)
        if last_steps is not None and steps.size:
            keep = steps > steps.max() - last_steps
            steps, losses = steps[keep], losses[keep]
        return moving_average(steps, losses, smooth) if steps.size else (steps, losses)

    widths = sorted(curves)
    all_means = sorted({m for by_mean in curves.values() for m in by_mean})
    norm = Normalize(
        vmin=min(all_means), vmax=max(all_means) if max(all_means) > min(all_means) else min(all_means) + 1
    )
    colormap = colormaps[cmap]
    baseline_curve = prepare(baseline_histories) if baseline_histories else None

    nrows, ncols = grid_shape(len(widths), 4)
    fig = new_figure(3.6 * ncols + 1.0, 3.0 * nrows)
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
    fig = new_figure(7.0, 4.0)
    ax = fig.add_subplot()
    count = len(probs_by_label)
    for index, (label, probs) in enumerate(probs_by_label.items()):
        p = to_numpy(probs, f"probs_by_label[{label!r}]")
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


# ----------------------------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------------------------


def bin_loss_ratios(entries: Sequence[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], np.ndarray, bool]:
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
    on the same timesteps, which their total losses do not (see [`~diffusers_memctl.experiments.statistics.analysis.timestep_bin_losses`]).

    Args:
        entries (`list[dict]`):
            Output of [`~diffusers_memctl.experiments.statistics.analysis.timestep_bin_losses`].
        num_train_timesteps (`int`, defaults to `1000`):
            T, for the bin labels.

    Returns:
        `matplotlib.figure.Figure`
    """
    from matplotlib.colors import LogNorm

    cells, values, relative = bin_loss_ratios(entries)
    if not cells:
        raise ValueError("no ci_normal cell among the entries: nothing to draw")
    num_bins = values.shape[1]
    fig = new_figure(1.0 + 0.75 * num_bins, 1.2 + 0.32 * len(cells))
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
    ax.set_yticks(range(len(cells)), [f"[{tick_label(c['ci_lower'])}, {tick_label(c['ci_upper'])}]" for c in cells])
    ax.set_xlabel("timestep bin")
    ax.set_ylabel("CI cell")
    label = "loss / uniform's loss" if relative else "loss"
    bar = fig.colorbar(image, ax=ax, label=label)
    from matplotlib.ticker import FormatStrFormatter

    bar.ax.yaxis.set_major_formatter(FormatStrFormatter("%.2g"))
    bar.ax.yaxis.set_minor_formatter(FormatStrFormatter("%.2g"))
    ax.set_title("Training loss on the same timesteps\n(end of training, seeds pooled)", fontsize=10)
    return fig


# ----------------------------------------------------------------------------------------------------------------
# gradient profiles (diffusers_memctl.diagnostics; read the content of gradient_profile.json)
# ----------------------------------------------------------------------------------------------------------------


def write_sweep_figures(
    sweep_dir: Path, rows: list[dict], histories: dict, bin_losses: list[dict], num_train_timesteps: int | None
) -> dict[str, Path]:

    out = sweep_dir / FIGURES_DIR
    T = num_train_timesteps or RunFolder(rows[0]["run_dir"]).read_training_config()["sampler"]["num_train_timesteps"]
    ci_rows = [r for r in rows if r["timestep_sampling"] == "ci_normal"]
    figures: dict[str, Path] = {}
    if ci_rows:
        for metric in REPORT_METRICS:
            if not any(r.get(metric) is not None for r in ci_rows):
                continue
            figures[f"{metric} over (t_lower, t_upper)"] = save_figure(
                plot_metric_heatmap(rows, metric, num_train_timesteps=T), out / f"heatmap_{metric}.png"
            )
            figures[f"{metric} vs CI mean"] = save_figure(
                plot_metric_vs_mean(rows, metric), out / f"vs_mean_{metric}.png"
            )
            figures[f"{metric} vs CI width"] = save_figure(
                plot_metric_vs_width(rows, metric), out / f"vs_width_{metric}.png"
            )
        figures["PCA distances vs CI mean"] = save_figure(plot_pca_distances_vs_mean(rows), out / "pca_vs_mean.png")
        intervals = sorted({(r["ci_lower"], r["ci_upper"]) for r in ci_rows})
        probs = {f"[{lo}, {hi}]": ci_normal_timestep_probs(T, lo, hi) for lo, hi in intervals}
        figures["Sampling distributions"] = save_figure(plot_sampling_distributions(probs), out / "sampling.png")
    if histories:
        figures["Loss curves by CI width"] = save_figure(
            plot_loss_curves_by_width(histories, rows), out / "loss_curves_by_width.png"
        )
        if ci_rows and any(e["timestep_sampling"] == "ci_normal" for e in bin_losses):
            figures["Loss on the same timesteps"] = save_figure(
                plot_timestep_bin_losses(bin_losses, num_train_timesteps=T), out / "timestep_bin_losses.png"
            )
    # Drop anything a previous, larger report left behind.
    for stale in out.glob("*.png"):
        if stale not in figures.values():
            stale.unlink()
    return figures


#: Metrics drawn as heatmaps and against the interval mean / width in a sweep report.
REPORT_METRICS = (
    "mean_l2",
    "nn_l2_mean",
    "memorized_fraction",
    "nn_ratio_mean",
    "pca_pc1_wasserstein_1",
    "pca_frechet_distance",
    "feature_replication_score",
    "feature_frechet_distance",
    "feature_precision",
    "feature_recall",
    "final_loss",
)
