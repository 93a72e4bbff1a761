"""Tables, figures and ``REPORT.md`` of a memorization-regime study (see :mod:`diffusers_memctl.study`).

Everything is rebuilt from result rows alone (``study_results.csv``), so an exported study folder regenerates its
report without the run folders: ``python -m diffusers_memctl.cli.report STUDY_DIR --from_csv``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .analysis import _num
from .methods import resolve_method
from .replicates import (
    holm_contrasts,
    holm_correlations,
    method_contrasts,
    replicate_correlations,
    replicate_values,
    t_interval,
)
from .run_folder import (
    ANALYSIS_NAME,
    FIGURES_DIR,
    NEAREST_NEIGHBORS_PLOT,
    PLOTS_DIR,
    REPORT_NAME,
    STUDY_RESULTS_NAME,
    write_text_atomic,
)

__all__ = [
    "MEMORIZATION_METRICS",
    "QUALITY_METRICS",
    "mixed_model_fit_counts",
    "plot_pareto",
    "study_analysis",
    "write_study_analysis",
    "write_study_report",
]

#: Copy measures (lower `memorized_fraction` = fewer copies; higher `nn_ratio_mean` / `nn_l2_mean` = further from them).
MEMORIZATION_METRICS = ("memorized_fraction", "nn_ratio_mean", "nn_l2_mean")
#: Which way each copy measure points, for axis labels. `nn_ratio_mean` is nearest / second-nearest training
#: distance (near 0 = a near-duplicate of one training sample), `nn_l2_mean` the distance to the nearest one.
COPY_DIRECTION = {
    "memorized_fraction": "lower = fewer copies",
    "nn_ratio_mean": "higher = farther from any one\ntraining sample = fewer copies",
    "nn_l2_mean": "higher = farther from the\ntraining samples = fewer copies",
}
#: Quality measures, lower = better. Only the held-out ones do not reward copying the training set.
QUALITY_METRICS = (
    "heldout_frechet_distance",
    "heldout_frechet_gap_ratio",
    "pca_frechet_distance",
    "pca_pc1_wasserstein_1",
    "signal_js_mean",
    "mean_l2",
)
_METHOD_ORDER = (
    "uniform",
    "ci_late",
    "ci_mid",
    "ci_narrow_late",
    "ci_early",
    "logit_normal_late",
    "min_snr",
    "p2",
    "importance_ci_late",
)


def _methods(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    present = list(dict.fromkeys(str(r.get("method")) for r in rows))
    return [m for m in _METHOD_ORDER if m in present] + [m for m in present if m not in _METHOD_ORDER]


def _sizes(rows: Sequence[Mapping[str, Any]]) -> list[int]:
    return sorted({int(r["train_subset_size"]) for r in rows if _num(r.get("train_subset_size")) is not None})


def _present(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> list[str]:
    return [m for m in names if any(_num(r.get(m)) is not None for r in rows)]


def _references(rows: Sequence[Mapping[str, Any]]) -> dict[int, dict[str, float]]:
    """Per size, the mean over replicates of the training subsets' own leave-one-out values and the held-out floors."""
    out: dict[int, dict[str, float]] = {}
    for size in _sizes(rows):
        at_size = [r for r in rows if _num(r.get("train_subset_size")) == size]
        keys = {k for r in at_size for k in r if k.startswith("ref_")}
        keys |= {"heldout_frechet_copier", "heldout_frechet_fresh"}
        values = {}
        for key in sorted(keys):
            per_rep: dict[Any, float] = {}
            for r in at_size:
                if (v := _num(r.get(key))) is not None:
                    per_rep.setdefault(r.get("pretrain_seed"), v)
            if per_rep:
                values[key] = float(np.mean(list(per_rep.values())))
        out[size] = values
    return out


def study_analysis(rows: Sequence[Mapping[str, Any]], *, confidence: float = 0.95) -> dict[str, Any]:
    """The content of a study's ``analysis.json``: counts, replicate table, contrasts and correlations.

    Every p-value has its Holm-adjusted value beside it (``p_holm``), adjusted within the families stated under
    ``multiple_testing``; every mixed-model fit records whether it converged and whether it sits on the boundary,
    and ``mixed_model_fits`` counts them.
    """
    metrics = _present(rows, (*MEMORIZATION_METRICS, *QUALITY_METRICS, "final_loss"))
    methods = _methods(rows)
    ci_methods = sorted({str(r.get("method")) for r in rows if _num(r.get("ci_mean")) is not None})
    vs_uniform = {m: method_contrasts(rows, m, confidence=confidence) for m in metrics}
    # The paper's late interval against every other method: is a peer's difference from it resolved?
    vs_late = (
        {m: method_contrasts(rows, m, baseline="ci_late", confidence=confidence) for m in metrics}
        if "ci_late" in methods
        else {}
    )
    correlations = {
        f"{m}_vs_{v}": replicate_correlations(rows, m, v, confidence=confidence)
        for m in metrics
        for v in ("ci_mean", "ci_width")
    }
    multiple_testing = {
        "contrasts_vs_uniform": holm_contrasts(vs_uniform),
        "contrasts_vs_ci_late": holm_contrasts(vs_late),
        "ci_correlations": holm_correlations(correlations),
    }
    analysis = {
        "schema_version": 1,
        "unit_of_replication": "pretraining (pretrain_seed): fine-tune seeds are averaged within it first",
        "confidence": confidence,
        "sizes": _sizes(rows),
        "methods": methods,
        "n_runs": len(rows),
        "n_replicates": {
            str(size): len({r.get("pretrain_seed") for r in rows if _num(r.get("train_subset_size")) == size})
            for size in _sizes(rows)
        },
        "references": {str(k): v for k, v in _references(rows).items()},
        "multiple_testing": multiple_testing,
        "replicate_values": replicate_values(rows, metrics),
        "contrasts_vs_uniform": vs_uniform,
        "contrasts_vs_ci_late": vs_late,
        "ci_correlations": {"methods": ci_methods, **correlations},
    }
    analysis["mixed_model_fits"] = mixed_model_fit_counts(analysis)
    return analysis


def _mixed_model_fits(analysis: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    fits = []
    for section, part in (
        ("contrasts_vs_uniform", "mixed_model"),
        ("contrasts_vs_ci_late", "mixed_model"),
        ("ci_correlations", "mixed_model_slope"),
    ):
        for entries in analysis.get(section, {}).values():
            if isinstance(entries, list):
                fits += [e[part] for e in entries if isinstance(e, dict) and e[part].get("converged") is not None]
    return fits


def mixed_model_fit_counts(analysis: Mapping[str, Any]) -> dict[str, int]:
    """How many mixed-model fits in `analysis` were made, converged, warned, sit on the boundary, can be quoted."""
    fits = _mixed_model_fits(analysis)
    return {
        "fitted": len(fits),
        "not_converged": sum(not f["converged"] for f in fits),
        "with_convergence_warning": sum(bool(f["convergence_warnings"]) for f in fits),
        "hessian_not_positive_definite": sum(f["hessian_positive_definite"] is False for f in fits),
        "boundary": sum(bool(f["boundary"]) for f in fits),
        "quotable": sum(bool(f["quotable"]) for f in fits),
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
    from .plotting import _new_figure

    quality_metric = quality_metric or next(iter(_present(rows, ("heldout_frechet_distance", "pca_frechet_distance"))))
    sizes = _sizes(rows)
    methods = _methods(rows)
    refs = _references(rows)
    fig = _new_figure(4.6 * len(sizes) + 1.8, 4.4)
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
    from .plotting import _new_figure

    fig = _new_figure(7.5, 4.0)
    ax = fig.subplots()
    table = replicate_values(rows, [metric])
    for i, method in enumerate(_methods(rows)):
        xs, ys, errs = [], [], []
        for size in _sizes(rows):
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


def _study_figures(out_dir: Path, rows: Sequence[Mapping[str, Any]]) -> dict[str, Path]:
    from .plotting import save_figure

    figures_dir = out_dir / FIGURES_DIR
    figures: dict[str, Path] = {}
    figures["Copies vs held-out quality (Pareto)"] = save_figure(plot_pareto(rows), figures_dir / "pareto.png")
    if "nn_ratio_mean" in _present(rows, ["nn_ratio_mean"]):
        figures["Distance ratio vs held-out quality"] = save_figure(
            plot_pareto(rows, copies_metric="nn_ratio_mean"), figures_dir / "pareto_nn_ratio.png"
        )
    # A by-size figure needs two sizes at least: with one it is a column of points on empty axes (the Pareto
    # figure already shows them).
    for metric in _present(rows, ("memorized_fraction", "heldout_frechet_distance")) if len(_sizes(rows)) > 1 else ():
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


def _f(value: Any, spec: str = ".3g") -> str:
    v = _num(value)
    return "–" if v is None else format(v, spec)


def _interval(entry: Mapping[str, Any], spec: str = "+.3g") -> str:
    if entry.get("ci_low") is None:
        return "–"
    return f"[{format(entry['ci_low'], spec)}, {format(entry['ci_high'], spec)}]"


def _p(value: Any) -> str:
    v = _num(value)
    return "–" if v is None else ("< 0.001" if v < 0.001 else f"{v:.3f}")


def _resolved(rl: Mapping[str, Any]) -> bool:
    """The 95% interval of a difference excludes 0."""
    return rl.get("ci_low") is not None and (rl["ci_low"] > 0 or rl["ci_high"] < 0)


def _marks(rl: Mapping[str, Any]) -> str:
    """`*`: the interval excludes 0; `†`: so does the Holm-adjusted test (p_holm < 0.05)."""
    holm = _num(rl.get("p_holm"))
    return ("*" if _resolved(rl) else "") + ("†" if holm is not None and holm < 0.05 else "")


#: Said once, above the first table that uses the marks.
MARKS_FOOTNOTE = (
    "Marks: `*` = the 95% t interval of the difference excludes 0 (no correction for the many comparisons); "
    "`†` = still significant after Holm correction (adjusted p < 0.05) within its family: one metric at one size, "
    "every method against the same baseline. p is the paired t test's, p_Holm its adjusted value."
)


def _contrast(
    analysis: Mapping[str, Any], metric: str, size: int, method: str, section: str = "contrasts_vs_uniform"
) -> Mapping[str, Any] | None:
    for entry in (analysis.get(section) or {}).get(metric, []):
        if entry["train_subset_size"] == size and entry["method"] == method:
            return entry
    return None


def _mean_of(analysis: Mapping[str, Any], metric: str, size: int, method: str) -> float | None:
    vals = [
        r[metric]
        for r in analysis["replicate_values"]
        if r["train_subset_size"] == size and r["method"] == method and r.get(metric) is not None
    ]
    return float(np.mean(vals)) if vals else None


def _described(method: str) -> str:
    """What `method` is, in words (its study description, or the name alone for an unknown one)."""
    try:
        return resolve_method(method).description
    except ValueError:
        return method


def _short(method: str) -> str:
    """`ci_late` (timesteps from [750, 1000]): the interval in the sentence that names the method."""
    try:
        interval = resolve_method(method).ci_interval
    except ValueError:
        interval = None
    if interval is None:
        return f"`{method}`"
    return f"`{method}` (CI-normal timesteps on [{interval[0]:g}, {interval[1]:g}])"


def _support(rl: Mapping[str, Any], scale: float, spec: str) -> str:
    """What the difference rests on: the interval over pretrainings with p and Holm-adjusted p, or "no interval"."""
    if rl["n"] < 2:
        return "one pretraining: a single measurement, no interval"
    scaled = {k: (None if rl.get(k) is None else scale * rl[k]) for k in ("ci_low", "ci_high")}
    text = f"95% interval {_interval(scaled, spec)} over {rl['n']} pretrainings"
    if rl.get("p_value") is not None:
        text += f", p = {_p(rl['p_value'])}"
        if rl.get("p_holm") is not None:
            text += f", Holm-adjusted {_p(rl['p_holm'])} over the {rl['holm_family_size']} methods vs uniform"
    return text


def _verdict(rl: Mapping[str, Any], fewer: str, more: str) -> str:
    if rl["n"] < 2:
        return ""
    holm = _num(rl.get("p_holm"))
    if not _resolved(rl):
        return "no difference the interval can resolve"
    word = fewer if rl["mean"] < 0 else more
    if holm is not None and holm >= 0.05:
        return f"{word} by its own interval, but not after Holm correction for the methods compared"
    return f"{word} (the interval excludes 0, also after Holm correction)"


def _answer(analysis: Mapping[str, Any], late: str) -> list[str]:
    """Per size: copies and held-out quality of uniform and `late`, the differences, and what they support."""
    quality = next(
        (m for m in ("heldout_frechet_distance", "pca_frechet_distance") if m in analysis["contrasts_vs_uniform"]),
        None,
    )
    lines = []
    for size in analysis["sizes"]:
        ref = analysis["references"].get(str(size), {})
        uni = _mean_of(analysis, "memorized_fraction", size, "uniform")
        lat = _mean_of(analysis, "memorized_fraction", size, late)
        c = _contrast(analysis, "memorized_fraction", size, late)
        if uni is None or lat is None or c is None:
            continue
        rl = c["replicate_level"]
        text = (
            f"- **{size} training samples**: uniform fine-tuning copies {100 * uni:.1f}% of its samples, "
            f"{_short(late)} {100 * lat:.1f}%"
        )
        if uni == 0 and lat == 0:
            text += ": neither copies, at this size the models are not in a memorization regime."
        else:
            verdict = _verdict(rl, "fewer copies", "more copies")
            text += (
                f": {abs(100 * rl['mean']):.1f} points {'fewer' if rl['mean'] < 0 else 'more'} "
                f"({_support(rl, 100, '+.1f')})" + (f", {verdict}" if verdict else "") + "."
            )
        q = _contrast(analysis, quality, size, late) if quality else None
        if q is not None and q["replicate_level"]["mean"] is not None:
            ql = q["replicate_level"]
            verdict = _verdict(ql, "better", "worse")
            text += (
                f" Quality on held-out data (`{quality}`, lower = better): uniform {_f(q['baseline_mean'])}, "
                f"`{late}` {_f(q['method_mean'])}: `{late}` is {abs(ql['mean']):.2f} "
                f"{'worse' if ql['mean'] > 0 else 'better'} ({_support(ql, 1, '+.2f')})"
                + (f", {verdict}" if verdict else "")
                + "."
            )
        text += (
            f" The training subset itself has {100 * ref.get('ref_memorized_fraction', 0):.1f}% near-duplicates by "
            "the same test."
        )
        lines.append(text)
    return lines


def write_study_report(
    out_dir: Path, rows: Sequence[Mapping[str, Any]], analysis: Mapping[str, Any], figures: Mapping[str, Path]
) -> Path:
    """Write ``REPORT.md``: the plain answer first, then method x size tables, figures, correlations."""
    methods = analysis["methods"]
    late = "ci_late" if "ci_late" in methods else next((m for m in methods if m != "uniform"), "uniform")
    n_reps = sorted(set(analysis["n_replicates"].values()))
    reps_text = str(n_reps[0]) if len(n_reps) == 1 else f"{n_reps[0]}-{n_reps[-1]}"
    intervals = (
        "With one pretraining there is no interval: every number below is a single measurement."
        if n_reps == [1]
        else f"Intervals are Student-t 95% intervals over {reps_text} pretrainings."
    )
    lines = [
        "# Memorization study",
        "",
        "## The answer",
        "",
        "The methods, each fine-tuning the same pretrained model for the same number of steps:",
        "",
        *(f"- `{m}`: {_described(m)}" for m in methods),
        "",
        "A sample counts as a **copy** when its nearest training sample is less than a third as far as the second "
        "nearest (`memorized_fraction`; Yoon et al. 2023, Gu et al. 2023). 0% means no sample is a near-duplicate "
        "of one training sample. Each value is the mean over independent pretrainings (the replicate; fine-tune "
        f"seeds are averaged inside it first). {intervals}",
        "",
        *_answer(analysis, late),
        "",
    ]
    if n_reps == [1]:
        lines += [
            "**Caveat:** one pretraining and one fine-tune per method: every number above is a single measurement. "
            "Whether the difference holds for another pretraining is what the replicated study answers "
            '(docs/REPRODUCTION.md, "Memorization regime").',
            "",
        ]
    elif any(n < 3 for n in n_reps):
        lines += ["With fewer than 3 pretrainings per size the intervals are wide: read them with care.", ""]
    lines += _copy_figures(out_dir, rows, late)
    lines += _method_tables(analysis, rows)
    lines += _head_to_head(analysis)
    for title, path in figures.items():
        lines += [f"![{title}]({path.relative_to(out_dir).as_posix()})", ""]
    lines += _correlation_section(analysis)
    lines += _mixed_model_section(analysis)
    return write_text_atomic(out_dir / REPORT_NAME, "\n".join(lines) + "\n")


def _copy_figures(out_dir: Path, rows: Sequence[Mapping[str, Any]], late: str) -> list[str]:
    """Nearest-neighbour figures (generated sample beside its nearest training sample) of uniform and `late` at the
    smallest size and first replicate, when the run folders are there (not in an exported study)."""
    sizes = _sizes(rows)
    if not sizes:
        return []
    lines = []
    first = [r for r in rows if _num(r.get("train_subset_size")) == sizes[0]]
    replicate = min((r.get("pretrain_seed") for r in first), key=lambda v: (v is None, v), default=None)
    for method in ("uniform", late):
        run = next((r for r in first if r.get("method") == method and r.get("pretrain_seed") == replicate), None)
        if run is None:
            continue
        figure = Path(str(run["run_dir"])) / PLOTS_DIR / NEAREST_NEIGHBORS_PLOT
        if not figure.is_absolute():
            figure = out_dir / figure
        if figure.is_file():
            link = Path(os.path.relpath(figure, out_dir)).as_posix()
            lines += [
                f"Generated samples (top) beside their nearest training sample (bottom), `{method}`, "
                f"{sizes[0]} training samples:",
                "",
                f"![nearest neighbours, {method}]({link})",
                "",
            ]
    return lines


def _difference_cell(rl: Mapping[str, Any]) -> str:
    """A table cell: difference, interval, p and Holm-adjusted p, marks (only what one pretraining supports)."""
    if rl.get("mean") is None:
        return "–"
    text = _f(rl["mean"], "+.3g")
    if rl.get("n", 0) < 2:
        return text
    text += f" {_interval(rl)}{_marks(rl)}"
    if rl.get("p_value") is not None:
        text += f"<br>p {_p(rl['p_value'])}, p_Holm {_p(rl.get('p_holm'))}"
    return text


def _method_tables(analysis: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> list[str]:
    sizes, methods = analysis["sizes"], analysis["methods"]
    replicated = any(n >= 2 for n in analysis["n_replicates"].values())
    lines = ["## Method x training-set size", ""]
    lines += [MARKS_FOOTNOTE, ""] if replicated else []
    below = (
        "the difference from uniform (paired within each pretraining) with its 95% t interval, p and p_Holm"
        if replicated
        else "the difference from uniform (one pretraining: no interval)"
    )
    metrics = [m for m in (*MEMORIZATION_METRICS, *QUALITY_METRICS) if m in analysis["contrasts_vs_uniform"]]
    for metric in metrics:
        lines += [
            f"### `{metric}`",
            "",
            f"Mean over pretrainings; below it, {below}.",
            "",
            "| method | " + " | ".join(f"n = {s}" for s in sizes) + " |",
            "|---|" + "---|" * len(sizes),
        ]
        for method in methods:
            cells = []
            for size in sizes:
                c = _contrast(analysis, metric, size, method)
                text = _f(_mean_of(analysis, metric, size, method))
                if c is not None and c["replicate_level"]["mean"] is not None:
                    text += f"<br>{_difference_cell(c['replicate_level'])}"
                cells.append(text)
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        ref_key = f"ref_{metric}"
        refs = [analysis["references"].get(str(s), {}).get(ref_key) for s in sizes]
        if any(v is not None for v in refs):
            lines.append("| *training subset (leave-one-out)* | " + " | ".join(_f(v) for v in refs) + " |")
        if metric == "heldout_frechet_distance":
            for key, label in (
                ("heldout_frechet_copier", "replaying the training set"),
                ("heldout_frechet_fresh", "fresh held-out data"),
            ):
                vals = [analysis["references"].get(str(s), {}).get(key) for s in sizes]
                lines.append(f"| *{label}* | " + " | ".join(_f(v) for v in vals) + " |")
        lines.append("")
    return lines


def _head_to_head(analysis: Mapping[str, Any]) -> list[str]:
    """Every method minus `ci_late` (paired within a pretraining) on copies and held-out quality, per size."""
    contrasts = analysis.get("contrasts_vs_ci_late") or {}
    metrics = [m for m in ("memorized_fraction", "heldout_frechet_distance") if contrasts.get(m)]
    if not metrics:
        return []
    sizes = analysis["sizes"]
    lines = [
        "## Head to head with `ci_late` [750, 1000]",
        "",
        "Each method minus `ci_late`, paired within a pretraining, with its 95% t interval, p and p_Holm (Holm "
        "family: one metric at one size, every method minus `ci_late`); marks as above.",
        "",
    ]
    for metric in metrics:
        lines += [f"`{metric}`:", "", "| method | " + " | ".join(f"n = {s}" for s in sizes) + " |"]
        lines.append("|---|" + "---|" * len(sizes))
        for method in dict.fromkeys(c["method"] for c in contrasts[metric]):
            cells = []
            for size in sizes:
                entry = _contrast(analysis, metric, size, method, "contrasts_vs_ci_late")
                cells.append(_difference_cell(entry["replicate_level"]) if entry else "–")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _slope_text(mm: Mapping[str, Any]) -> str:
    if mm.get("estimate") is None:
        return "–"
    text = f"{100 * mm['estimate']:+.3g} [{100 * mm['ci_low']:+.3g}, {100 * mm['ci_high']:+.3g}]"
    return text if mm.get("quotable") else f"({text}, not quotable: {mm.get('note')})"


def _correlation_section(analysis: Mapping[str, Any]) -> list[str]:
    corr = analysis["ci_correlations"]
    lines = [
        "## CI-normal methods: metric vs interval mean and width",
        "",
        f"Over the CI-normal methods ({', '.join(corr['methods'])}). Replicate level: Pearson r per pretraining "
        "over that pretraining's CI methods (so each r rests on as many points as there are distinct CI means or "
        "widths: listed), averaged as Fisher z with a t interval over the pretrainings whose r is defined (used / "
        "total). *Without lowest*: the same r with the lowest CI mean or width left out; an r near -1 or +1 that "
        "vanishes there is one interval against the rest, not a dose-response. p_Holm: Holm within one size and one "
        "variable, every metric. Mixed model: slope per 100 timesteps with a random intercept per pretraining, on "
        "every run; a fit that did not converge, has a singular Hessian or sits on the boundary (random-intercept "
        "variance 0) is shown in parentheses and should not be quoted. Run level: every run pooled as if independent "
        "(pseudo-replicated; shown for comparison with the earlier reproduction only).",
        "",
        "| metric | variable | n | pretrainings used | points (values) | replicate-level r [95%] | p, p_Holm "
        "| r without lowest | mixed-model slope per 100 steps [95%] | run-level r [95%] |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    excluded_notes = []
    for key, entries in corr.items():
        if key == "methods":
            continue
        for e in entries:
            rl, mm, run = e["replicate_level"], e["mixed_model_slope"], e["run_level"]
            if rl["n_replicates"] < 2 and mm["estimate"] is None:
                continue
            without = list(e.get("per_replicate_r_without_lowest", {}).values())
            without_text = _f(float(np.mean(without)), "+.2f") + f" (mean of {len(without)})" if without else "–"
            values = ", ".join(_f(v, "g") for v in e.get("variable_values", []))
            lines.append(
                f"| `{e['metric']}` | {e['variable']} | {e['train_subset_size']} | "
                f"{rl['n_replicates']} / {e.get('n_replicates_total', rl['n_replicates'])} | "
                f"{e.get('n_points_per_replicate', '–')} ({values}) | {_f(rl['r'], '+.2f')} {_interval(rl, '+.2f')} | "
                f"{_p(rl.get('p_value'))}, {_p(rl.get('p_holm'))} | {without_text} | {_slope_text(mm)} | "
                f"{_f(run.get('r'), '+.2f')} {_interval(run, '+.2f')} |"
            )
            for replicate, why in (e.get("excluded_replicates") or {}).items():
                excluded_notes.append(
                    f"- `{e['metric']}` vs {e['variable']} at {e['train_subset_size']}: pretraining {replicate} left "
                    f"out ({why}); the replicate-level r rests on {rl['n_replicates']} pretrainings."
                )
    if len(lines) == 6:
        return lines[:2] + ["Too few CI-normal methods or pretrainings for a correlation.", ""]
    return lines + [""] + excluded_notes + ([""] if excluded_notes else [])


def _mixed_model_section(analysis: Mapping[str, Any]) -> list[str]:
    counts = analysis.get("mixed_model_fits") or {}
    if not counts.get("fitted"):
        return []
    return [
        "## Mixed-model fits",
        "",
        f"`analysis.json` holds {counts['fitted']} linear mixed-model fits (statsmodels `MixedLM`, a random "
        "intercept per pretraining), a check beside the replicate-level t statistics. "
        f"{counts['not_converged']} did not converge, {counts['hessian_not_positive_definite']} have a Hessian that "
        f"is not positive definite (unreliable standard errors), {counts['boundary']} sit on the boundary (random-"
        f"intercept variance 0: ordinary least squares in disguise); {counts['quotable']} are quotable. "
        f"{counts['with_convergence_warning']} raised a statsmodels `ConvergenceWarning` (recorded per fit under "
        '`convergence_warnings`; most are statsmodels\' "MLE may be on the boundary", which compares the variance '
        "with an absolute 0.01 and so fires on any metric measured in small units). Each fit's `quotable` and `note` "
        "say which it is.",
        "",
    ]


# ----------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------


def write_study_analysis(out_dir: Path, rows: Sequence[Mapping[str, Any]], *, make_plots: bool = True) -> dict:
    """Write ``study_results.csv`` (run folders relative to `out_dir`), ``analysis.json``, figures, ``REPORT.md``."""
    from .analysis import _json_safe
    from .sweep import write_results_csv

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [dict(r) for r in rows]
    for row in rows:
        run_dir = Path(str(row.get("run_dir", "")))
        if run_dir.is_absolute() and out_dir.resolve() in run_dir.resolve().parents:
            row["run_dir"] = run_dir.resolve().relative_to(out_dir.resolve()).as_posix()
    write_results_csv(out_dir / STUDY_RESULTS_NAME, rows)
    analysis = _json_safe(study_analysis(rows))
    write_text_atomic(out_dir / ANALYSIS_NAME, json.dumps(analysis, indent=2))
    figures = _study_figures(out_dir, rows) if make_plots else {}
    write_study_report(out_dir, rows, analysis, figures)
    return {"rows": rows, "analysis": analysis, "figures": figures}


def report_from_study_csv(results_dir: str | Path) -> dict:
    """Rebuild ``analysis.json``, figures and ``REPORT.md`` from an exported ``study_results.csv``."""
    from .sweep import read_results_csv

    results_dir = Path(results_dir)
    rows = read_results_csv(results_dir / STUDY_RESULTS_NAME)
    for row in rows:
        for key in ("train_subset_size", "pretrain_seed", "train_subset_seed"):
            if _num(row.get(key)) is not None:
                row[key] = int(row[key])
    return write_study_analysis(results_dir, rows)
