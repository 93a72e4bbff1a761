"""Tables, figures and ``REPORT.md`` of a memorization-regime study (see :mod:`diffusers_memctl.experiments.study`).

Everything is rebuilt from result rows alone (``study_results.csv``), so an exported study folder regenerates its
report without the run folders: ``python -m diffusers_memctl.cli.report STUDY_DIR --from_csv``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..experiments.statistics.replicates import (
    replicate_values,
    t_interval,
)
from ..experiments.statistics.studies import present_metrics, size_references, study_methods, study_sizes
from ..run_folder import FIGURES_DIR
from .figures import new_figure, save_figure

__all__ = [
    "plot_metric_by_size",
    "plot_pareto",
    "write_study_figures",
]

#: Which way each copy measure points, for axis labels. `nn_ratio_mean` is nearest / second-nearest training
#: distance (near 0 = a near-duplicate of one training sample), `nn_l2_mean` the distance to the nearest one.
COPY_DIRECTION = {
    "memorized_fraction": "lower = fewer copies",
    "nn_ratio_mean": "higher = farther from any one\ntraining sample = fewer copies",
    "nn_l2_mean": "higher = farther from the\ntraining samples = fewer copies",
}


# ----------------------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------------------


def plot_pareto(
    rows: Sequence[Mapping[str, Any]],
    *,
    copies_metric: str = "memorized_fraction",
    quality_metric: str | None = None,
    title: str | None = None,
):
    """Copies against quality, one point per method (mean over replicates, bars: t 95% interval), one panel per size.

    The best corner is bottom-left: few copies, low held-out Frechet distance. Dashed lines mark what replaying the
    training set would score (vertical) and the training subset's own share of near-duplicates (horizontal).
    """

    quality_metric = quality_metric or next(
        iter(present_metrics(rows, ("heldout_frechet_distance", "pca_frechet_distance")))
    )
    sizes = study_sizes(rows)
    methods = study_methods(rows)
    refs = size_references(rows)
    fig = new_figure(4.6 * len(sizes) + 1.8, 4.4)
    axes = fig.subplots(1, len(sizes), squeeze=False)[0]
    table = replicate_values(rows, [copies_metric, quality_metric])
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    for ax, size in zip(axes, sizes):
        for method in methods:
            reps = [r for r in table if r["train_subset_size"] == size and r["method"] == method]
            xs = [r[quality_metric] for r in reps if r[quality_metric] is not None]
            ys = [r[copies_metric] for r in reps if r[copies_metric] is not None]
            if not xs or not ys:
                continue
            sx, sy = t_interval(xs), t_interval(ys)
            xerr = None if sx["ci_high"] is None else [[sx["mean"] - sx["ci_low"]], [sx["ci_high"] - sx["mean"]]]
            yerr = None if sy["ci_high"] is None else [[sy["mean"] - sy["ci_low"]], [sy["ci_high"] - sy["mean"]]]
            marker = "s" if method == "uniform" else ("o" if method.startswith("ci_") else "^")
            ax.errorbar(
                sx["mean"],
                sy["mean"],
                xerr=xerr,
                yerr=yerr,
                fmt=marker,
                color=colors[method],
                capsize=2,
                label=method,
                markersize=7 if method == "uniform" else 5,
                alpha=0.9,
            )
        ref = refs.get(size, {})
        if quality_metric == "heldout_frechet_distance" and "heldout_frechet_copier" in ref:
            ax.axvline(ref["heldout_frechet_copier"], color="0.4", ls="--", lw=0.8, label="replaying the training set")
        if quality_metric == "heldout_frechet_distance" and "heldout_frechet_fresh" in ref:
            ax.axvline(ref["heldout_frechet_fresh"], color="0.6", ls="-.", lw=0.8, label="fresh held-out data")
        if f"ref_{copies_metric}" in ref:
            level = ref[f"ref_{copies_metric}"]
            # Drawn over the points and kept inside the axes: at 0 copies it would otherwise sit on the frame.
            ax.axhline(level, color="tab:red", ls=(0, (4, 2)), lw=1.4, zorder=5, label="training subset itself")
            low, high = ax.get_ylim()
            pad = 0.04 * max(high - low, 1e-9)
            ax.set_ylim(min(low, level - pad), max(high, level + pad))
        ax.set_title(f"{size} training samples", fontsize=10)
        ax.set_xlabel(f"{quality_metric} (lower = better)", fontsize=9)
        ax.set_ylabel(f"{copies_metric}\n({COPY_DIRECTION.get(copies_metric, 'see the report')})", fontsize=9)
        ax.tick_params(labelsize=8)
    axes[-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_metric_by_size(rows: Sequence[Mapping[str, Any]], metric: str):
    """A metric against training-set size, one line per method (replicate means, bars: t 95% interval)."""

    fig = new_figure(7.5, 4.0)
    ax = fig.subplots()
    table = replicate_values(rows, [metric])
    for i, method in enumerate(study_methods(rows)):
        xs, ys, errs = [], [], []
        for size in study_sizes(rows):
            vals = [r[metric] for r in table if r["train_subset_size"] == size and r["method"] == method]
            vals = [v for v in vals if v is not None]
            if not vals:
                continue
            s = t_interval(vals)
            xs.append(size)
            ys.append(s["mean"])
            errs.append(0.0 if s["ci_high"] is None else s["ci_high"] - s["mean"])
        ax.errorbar(xs, ys, yerr=errs, label=method, marker="o", ms=3, capsize=2, lw=1, color=f"C{i % 10}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training samples")
    ax.set_ylabel(metric)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    return fig


def write_study_figures(out_dir: Path, rows: Sequence[Mapping[str, Any]]) -> dict[str, Path]:

    figures_dir = out_dir / FIGURES_DIR
    figures: dict[str, Path] = {}
    figures["Copies vs held-out quality (Pareto)"] = save_figure(plot_pareto(rows), figures_dir / "pareto.png")
    if "nn_ratio_mean" in present_metrics(rows, ["nn_ratio_mean"]):
        figures["Distance ratio vs held-out quality"] = save_figure(
            plot_pareto(rows, copies_metric="nn_ratio_mean"), figures_dir / "pareto_nn_ratio.png"
        )
    # A by-size figure needs two sizes at least: with one it is a column of points on empty axes (the Pareto
    # figure already shows them).
    for metric in (
        present_metrics(rows, ("memorized_fraction", "heldout_frechet_distance")) if len(study_sizes(rows)) > 1 else ()
    ):
        figures[f"{metric} by training-set size"] = save_figure(
            plot_metric_by_size(rows, metric), figures_dir / f"by_size_{metric}.png"
        )
    for stale in figures_dir.glob("*.png"):
        if stale not in figures.values():
            stale.unlink()
    return figures


# ----------------------------------------------------------------------------------------------------------------
# REPORT.md
# ----------------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------
