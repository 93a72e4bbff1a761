"""Matched-quality analysis: does a method copy less than *training less* with uniform sampling?

A method that trains less at low noise (``ci_late`` draws 4.4% of its timesteps below t = 750, uniform 75%) copies
less and generalises worse; so does stopping early or lowering the learning rate. Comparing methods at matched steps
cannot tell these apart. This module compares them at matched *quality* instead, per independent pretraining:

1. **Uniform's frontier.** Every uniform state the study evaluated (the pretraining along its own steps, and the
   uniform fine-tunes at the study's and at lower learning rates, at every evaluated step) is a point (held-out
   Frechet distance, copied share). Its lower-left Pareto set, joined by straight lines, is what "train uniform, but
   less" reaches.
2. **Two read-offs per method state.** (a) The copies uniform has at the method's held-out quality, (b) the held-out
   quality uniform has at the method's copies. A method *below* the frontier copies less at equal quality
   (a: ``copies - uniform's copies < 0``) and has better quality at equal copies (b: ``Frechet - uniform's < 0``);
   a method *on* it only moves along it, as training less does.
3. **Replicate-level statistics.** Paired over pretrainings (the independent unit): mean difference, t interval,
   one-sample t test, Holm-adjusted within each family (dataset x size x read-off x state), every p beside its
   adjusted p (``statsmodels.stats.multitest.multipletests``).

Raw rows (one per arm, size, pretraining and step) live in ``frontier_rows.csv``;
``python -m diffusers_memctl.experiments.frontier FOLDER`` rebuilds ``analysis.json``, ``REPORT.md`` and ``figures/`` from them,
and ``--export STUDY_DIR FOLDER`` collects them from a study's ``metrics_history.jsonl`` files first.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

from ..reports.figures import save_figure
from ..reports.frontier import matched_quality_answer, plot_frontier, render_frontier_report
from ..run_folder import (
    ANALYSIS_NAME,
    CELLS_DIR,
    FIGURES_DIR,
    FRONTIER_ROWS_NAME,
    PRETRAINED_DIR,
    REPORT_NAME,
    RunFolder,
    write_json_atomic,
    write_text_atomic,
)
from .statistics.frontier import COPIES, QUALITY, UNIFORM_ARMS, analyze_frontier

__all__ = [
    "FRONTIER_ROWS_NAME",
    "UNIFORM_ARMS",
    "add_matched_quality_to_study",
    "analyze_frontier",
    "collect_frontier_rows",
    "main",
    "matched_quality_answer",
    "read_frontier_rows",
    "write_frontier_report",
    "write_frontier_rows",
]

ROW_FIELDS = (
    "dataset", "train_subset_size", "pretrain_seed", "arm", "step", "final", "learning_rate", "num_samples",
    COPIES, QUALITY, "nn_l2_mean", "nn_ratio_mean", "pca_frechet_distance", "eval_seconds",
)  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# Raw rows
# --------------------------------------------------------------------------------------------------------------


def _rows_of_run(run_dir: Path, base: dict[str, Any], arm: str) -> list[dict[str, Any]]:
    config = RunFolder(run_dir).read_training_config()
    lr = config["args"].get("learning_rate")
    rows = []
    for record in RunFolder(run_dir).read_metrics_history():
        rows.append({**base, "arm": arm, "learning_rate": lr, **{k: record.get(k) for k in ROW_FIELDS if k in record}})
    return rows


def _dataset_name(run_dir: Path) -> str:
    args = RunFolder(run_dir).read_training_config()["args"]
    return str(args.get("dataset_name") or Path(str(args.get("train_data_dir") or "data")).name)


def collect_frontier_rows(study_dir: str | Path, dataset: str | None = None) -> list[dict[str, Any]]:
    """One row per (arm, size, pretraining, evaluated step) from a study's ``metrics_history.jsonl`` files.

    The pretraining's own trajectory is the arm ``pretraining``; fine-tunes are named by their method. A fine-tune's
    step counts from its start (step 0 = the pretrained model).
    """
    rows = []
    for group in sorted(p for p in Path(study_dir).glob("n*-p*") if p.is_dir()):
        size, seed = group.name[1:].split("-p")
        pretrained = RunFolder(group / PRETRAINED_DIR)
        if dataset is None and pretrained.has_training_config:
            dataset = _dataset_name(pretrained.path)
        base = {"dataset": dataset or "data", "train_subset_size": int(size), "pretrain_seed": int(seed)}
        if pretrained.is_trained:
            rows += _rows_of_run(pretrained.path, base, "pretraining")
        for run_dir in sorted((group / CELLS_DIR).glob("*-seed*")):
            if not RunFolder(run_dir).is_evaluated:
                continue  # unfinished: its history may still grow
            arm = RunFolder(run_dir).read_training_config()["args"].get("method_name")
            rows += _rows_of_run(run_dir, base, arm or run_dir.name.rsplit("-seed", 1)[0])
    return rows


def _format_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_frontier_rows(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write the raw rows as a compact CSV (6 significant digits)."""
    lines = [",".join(ROW_FIELDS)]
    lines += [",".join(_format_cell(row.get(k)) for k in ROW_FIELDS) for row in rows]
    return write_text_atomic(Path(path), "\n".join(lines) + "\n")


def read_frontier_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``frontier_rows.csv`` with numbers parsed."""
    ints = {"train_subset_size", "pretrain_seed", "step", "num_samples"}
    rows = []
    with open(path, newline="") as handle:
        for raw in csv.DictReader(handle):
            row: dict[str, Any] = {}
            for key, value in raw.items():
                if value == "":
                    row[key] = None
                elif key in ints:
                    row[key] = int(value)
                elif key == "final":
                    row[key] = value == "1"
                elif key in ("dataset", "arm"):
                    row[key] = value
                else:
                    row[key] = float(value)
            rows.append(row)
    return rows


def write_frontier_report(folder: str | Path, rows: list[dict[str, Any]], *, make_plots: bool = True) -> dict:
    """``analysis.json``, ``REPORT.md`` and ``figures/frontier_<dataset>.png`` of `rows` into `folder`."""
    folder = Path(folder)
    analysis = analyze_frontier(rows)
    write_json_atomic(folder / ANALYSIS_NAME, analysis)
    figures = []
    if make_plots:
        for dataset in sorted({r["dataset"] for r in rows}):
            path = save_figure(
                plot_frontier(rows, analysis, dataset), folder / FIGURES_DIR / f"frontier_{dataset}.png"
            )
            figures.append(path.relative_to(folder).as_posix())
    write_text_atomic(folder / REPORT_NAME, render_frontier_report(analysis, figures))
    return {"analysis": analysis, "figures": figures, "rows": rows}


# --------------------------------------------------------------------------------------------------------------
# The plain answer (a study's REPORT.md opens with it)
# --------------------------------------------------------------------------------------------------------------

MATCHED_QUALITY_DIR = "matched_quality"
ANSWER_START, ANSWER_END = "<!-- matched-quality answer -->", "<!-- end of the matched-quality answer -->"


def add_matched_quality_to_study(study_dir: str | Path, *, make_plots: bool = True) -> dict[str, Any] | None:
    """When a study evaluated along training: its frontier analysis into ``matched_quality/``, and the plain answer
    at the top of its ``REPORT.md``. `None` (nothing written) for a study without ``metrics_history.jsonl``."""
    study_dir = Path(study_dir)
    rows = collect_frontier_rows(study_dir)
    arms = {r["arm"] for r in rows}
    if not rows or not (arms - set(UNIFORM_ARMS)) or not (arms & set(UNIFORM_ARMS)):
        return None
    folder = study_dir / MATCHED_QUALITY_DIR
    folder.mkdir(parents=True, exist_ok=True)
    write_frontier_rows(folder / FRONTIER_ROWS_NAME, rows)
    result = write_frontier_report(folder, rows, make_plots=make_plots)
    method = "ci_late" if "ci_late" in arms else sorted(arms - set(UNIFORM_ARMS))[0]
    answer = [
        "## Does it beat training less? (matched quality)",
        "",
        "Every run was evaluated along its training (`metrics_history.jsonl`), the pretraining included, so each "
        "method can be compared with uniform sampling *trained less* at the same held-out quality, not only at the "
        "same number of steps:",
        "",
        *matched_quality_answer(result["analysis"], method),
        "",
        *[f"![copies vs held-out quality along training]({MATCHED_QUALITY_DIR}/{f})" for f in result["figures"]],
        "",
        f"Details: [{MATCHED_QUALITY_DIR}/{REPORT_NAME}]({MATCHED_QUALITY_DIR}/{REPORT_NAME}).",
        "",
    ]
    report = study_dir / REPORT_NAME
    if report.is_file():
        text = report.read_text()
        if ANSWER_END in text:  # rebuilt: replace the earlier answer, do not stack a second one
            text = text[: text.index(ANSWER_START)] + text[text.index(ANSWER_END) + len(ANSWER_END) + 1 :]
        head, _, rest = text.partition("\n")
        block = "\n".join([ANSWER_START, *answer, ANSWER_END])
        write_text_atomic(report, head + "\n\n" + block + "\n" + rest.lstrip("\n"))
    return result


def main(argv: list[str] | None = None) -> dict:
    """``python -m diffusers_memctl.experiments.frontier FOLDER [--export STUDY_DIR]``: (collect and) rebuild the analysis."""
    parser = argparse.ArgumentParser(description="Rebuild the matched-quality frontier analysis from its raw rows.")
    parser.add_argument("folder", help="Folder holding frontier_rows.csv (written there with --export).")
    parser.add_argument("--export", metavar="STUDY_DIR", default=None, help="Collect the rows from this study first.")
    parser.add_argument("--dataset", default=None, help="Dataset name of the rows (default: from STUDY_DIR's name).")
    parser.add_argument("--no_plots", action="store_true", help="Skip the figures.")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    if args.export:
        dataset = args.dataset or Path(args.export).name.removeprefix("frontier_")
        rows = collect_frontier_rows(args.export, dataset)
        if not rows:
            raise SystemExit(f"--export {args.export}: no metrics_history.jsonl rows in its groups")
        folder.mkdir(parents=True, exist_ok=True)
        write_frontier_rows(folder / FRONTIER_ROWS_NAME, rows)
    rows = read_frontier_rows(folder / FRONTIER_ROWS_NAME)
    result = write_frontier_report(folder, rows, make_plots=not args.no_plots)
    print(f"{len(rows)} rows; {len(result['analysis']['tests'])} tests; figures: {', '.join(result['figures'])}")
    return result


if __name__ == "__main__":
    main()
