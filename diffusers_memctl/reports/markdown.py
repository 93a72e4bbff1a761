"""The one writer of ``REPORT.md`` for sweeps (:func:`write_sweep_report`) and studies (:func:`write_study_report`):
result rows and their analysis in, Markdown out (figures are linked, not drawn)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..experiments.methods import resolve_method
from ..experiments.statistics.analysis import analyze_sweep, as_records, finite_or_none
from ..experiments.statistics.studies import MEMORIZATION_METRICS, QUALITY_METRICS, study_sizes
from ..run_folder import GRADIENT_PROFILES_NAME, NEAREST_NEIGHBORS_PLOT, PLOTS_DIR, REPORT_NAME, write_text_atomic
from .sweeps import bin_loss_ratios

if TYPE_CHECKING:
    pass

__all__ = [
    "write_study_report",
    "write_sweep_report",
]


def _fmt(value: Any, spec: str = ".4g") -> str:
    number = finite_or_none(value)
    return "–" if number is None else format(number, spec)


def _fmt_p(value: Any) -> str:
    number = finite_or_none(value)
    if number is None:
        return "–"
    return f"{number:.2e}" if number < 1e-3 else f"{number:.3f}"


def _fmt_interval(low: Any, high: Any) -> str:
    return (
        "–"
        if finite_or_none(low) is None or finite_or_none(high) is None
        else f"[{finite_or_none(low):+.4f}, {finite_or_none(high):+.4f}]"
    )


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
        (
            finite_or_none(r.get("ref_memorized_fraction"))
            for r in records
            if r.get("ref_memorized_fraction") is not None
        ),
        None,
    )
    ratio_ref = next(
        (finite_or_none(r.get("ref_nn_ratio_mean")) for r in records if r.get("ref_nn_ratio_mean") is not None), None
    )
    seeds = sorted({int(s) for r in records if (s := finite_or_none(r.get("seed"))) is not None})
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


def _sweep_correlation_section(analysis: Mapping[str, Any], metrics: list[str]) -> list[str]:
    """The correlations with the interval's mean and width, and the paper's numbers beside them."""
    lines = ["## Correlations", ""]
    correlations = analysis.get("correlations", {})
    paper = analysis.get("paper_reference", {})
    paper_by_key = {(ref.get("metric"), ref.get("variable")): ref for ref in paper.values()}
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
    return lines


def _sweep_figures_section(sweep_dir: Path, figure_paths: Mapping[str, str | os.PathLike] | None) -> list[str]:
    """The figures, linked relative to the sweep folder."""
    lines: list[str] = []
    if figure_paths:
        lines += ["## Figures", ""]
        for label, figure_path in figure_paths.items():
            figure_path = Path(figure_path)
            try:
                link = Path(os.path.relpath(figure_path, sweep_dir)).as_posix()
            except ValueError:  # another drive on Windows
                link = figure_path.as_posix()
            lines += [f"### {label}", "", f"![{label}]({link})", ""]
    return lines


def _sweep_baseline_section(analysis: Mapping[str, Any], metrics: list[str]) -> list[str]:
    """The uniform baseline's metrics."""
    lines: list[str] = []
    baseline = analysis.get("baseline") or {}
    if baseline:
        lines += ["## Uniform baseline", "", "| metric | mean ± std | n |", "|---|---|---|"]
        for metric in metrics:
            lines.append(
                f"| {metric} | {_mean_std(baseline.get(metric))} | {(baseline.get(metric) or {}).get('n', 0)} |"
            )
        lines.append("")
    return lines


def _sweep_bin_loss_section(analysis: Mapping[str, Any]) -> list[str]:
    """Each cell's loss per timestep bin, relative to uniform's on the same bin when uniform ran."""
    lines: list[str] = []
    bin_entries = analysis.get("timestep_bin_losses") or []
    if any(e.get("timestep_sampling") == "ci_normal" for e in bin_entries):
        cells, values, relative = bin_loss_ratios(bin_entries)
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
    return lines


def _sweep_cells_section(analysis: Mapping[str, Any], metrics: list[str]) -> list[str]:
    """One row per cell: its interval and its metrics (mean ± std over seeds)."""
    lines: list[str] = []
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
    return lines


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
    records = as_records(rows)
    if analysis is None:
        analysis = analyze_sweep(records)
    metrics = list(analysis.get("metrics", []))

    lines = [f"# {title}", "", *_sweep_summary(records, analysis), ""]
    lines.append(
        f"{analysis.get('n_rows', len(records))} result rows; {analysis.get('n_ci_rows', '?')} ci_normal runs over "
        f"{analysis.get('n_cells', '?')} cells enter the correlations; the uniform baseline is excluded from them and "
        "listed separately."
    )
    lines.append("")

    lines += _sweep_correlation_section(analysis, metrics)
    lines += _sweep_figures_section(sweep_dir, figure_paths)
    lines += _sweep_baseline_section(analysis, metrics)
    lines += _sweep_bin_loss_section(analysis)
    lines += _gradient_profile_section(sweep_dir)
    lines += _sweep_cells_section(analysis, metrics)

    return write_text_atomic(sweep_dir / REPORT_NAME, "\n".join(lines))


def _f(value: Any, spec: str = ".3g") -> str:
    v = finite_or_none(value)
    return "–" if v is None else format(v, spec)


def _interval(entry: Mapping[str, Any], spec: str = "+.3g") -> str:
    if entry.get("ci_low") is None:
        return "–"
    return f"[{format(entry['ci_low'], spec)}, {format(entry['ci_high'], spec)}]"


def _p(value: Any) -> str:
    v = finite_or_none(value)
    return "–" if v is None else ("< 0.001" if v < 0.001 else f"{v:.3f}")


def _resolved(rl: Mapping[str, Any]) -> bool:
    """The 95% interval of a difference excludes 0."""
    return rl.get("ci_low") is not None and (rl["ci_low"] > 0 or rl["ci_high"] < 0)


def _marks(rl: Mapping[str, Any]) -> str:
    """`*`: the interval excludes 0; `†`: so does the Holm-adjusted test (p_holm < 0.05)."""
    holm = finite_or_none(rl.get("p_holm"))
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
    holm = finite_or_none(rl.get("p_holm"))
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
    sizes = study_sizes(rows)
    if not sizes:
        return []
    lines = []
    first = [r for r in rows if finite_or_none(r.get("train_subset_size")) == sizes[0]]
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
