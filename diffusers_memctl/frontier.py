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
``python -m diffusers_memctl.frontier FOLDER`` rebuilds ``analysis.json``, ``REPORT.md`` and ``figures/`` from them,
and ``--export STUDY_DIR FOLDER`` collects them from a study's ``metrics_history.jsonl`` files first.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from . import multiple_testing
from .methods import resolve_method
from .plotting import save_figure
from .run_folder import (
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

__all__ = [
    "FRONTIER_ROWS_NAME",
    "add_matched_quality_to_study",
    "matched_quality_answer",
    "UNIFORM_ARMS",
    "analyze_frontier",
    "collect_frontier_rows",
    "copies_at_quality",
    "pareto_frontier",
    "quality_at_copies",
    "read_frontier_rows",
    "write_frontier_report",
    "write_frontier_rows",
]

#: Arms that are uniform sampling "trained less": they make up uniform's frontier.
UNIFORM_ARMS = ("pretraining", "uniform", "uniform_lr0.5", "uniform_lr0.25")
COPIES, QUALITY = "memorized_fraction", "heldout_frechet_distance"
ROW_FIELDS = (
    "dataset", "train_subset_size", "pretrain_seed", "arm", "step", "final", "learning_rate", "num_samples",
    COPIES, QUALITY, "nn_l2_mean", "nn_ratio_mean", "pca_frechet_distance", "eval_seconds",
)  # fmt: skip
#: Read-offs: (a) copies at the method's quality, (b) quality at the method's copies.
READ_OFFS = {
    "copies_at_matched_quality": "copies - uniform's copies at the method's held-out Frechet (negative = fewer copies)",
    "quality_at_matched_copies": "Frechet - uniform's Frechet at the method's copies (negative = better quality)",
}
ALPHA = 0.05


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


# --------------------------------------------------------------------------------------------------------------
# The frontier and its read-offs
# --------------------------------------------------------------------------------------------------------------


def pareto_frontier(quality: Any, copies: Any) -> tuple[np.ndarray, np.ndarray]:
    """The lower-left Pareto set of points (lower Frechet and fewer copies are both better), by rising Frechet.

    Along the returned frontier the Frechet distance rises and the copied share falls strictly: every point is the
    fewest copies reached at that quality or better.
    """
    q, c = np.asarray(quality, dtype=float), np.asarray(copies, dtype=float)
    keep = np.isfinite(q) & np.isfinite(c)
    q, c = q[keep], c[keep]
    order = np.lexsort((c, q))
    frontier_q, frontier_c = [], []
    for qi, ci in zip(q[order], c[order]):
        if not frontier_c or ci < frontier_c[-1]:
            frontier_q.append(qi)
            frontier_c.append(ci)
    return np.array(frontier_q), np.array(frontier_c)


def copies_at_quality(frontier: tuple[np.ndarray, np.ndarray], quality: float) -> float:
    """Uniform's copied share at held-out Frechet `quality`, linearly interpolated between frontier points.

    Worse quality than the whole frontier: uniform's fewest copies (reached at better quality). Better quality than
    any uniform state: `nan` (uniform never got there; no read-off).
    """
    fq, fc = frontier
    if len(fq) == 0 or not math.isfinite(quality) or quality < fq[0]:
        return math.nan
    return float(np.interp(quality, fq, fc))


def quality_at_copies(frontier: tuple[np.ndarray, np.ndarray], copies: float) -> float:
    """Uniform's held-out Frechet at copied share `copies`, linearly interpolated between frontier points.

    More copies than the whole frontier: uniform's best quality. Fewer copies than any uniform state: `nan`.
    """
    fq, fc = frontier
    if len(fq) == 0 or not math.isfinite(copies) or copies < fc[-1]:
        return math.nan
    # Copies fall along the frontier; np.interp needs rising x.
    return float(np.interp(copies, fc[::-1], fq[::-1]))


def _is_dominated(frontier_points: list[tuple[float, float]], quality: float, copies: float) -> bool:
    """Whether some uniform state has both better-or-equal quality and fewer-or-equal copies, one strictly."""
    return any(q <= quality and c <= copies and (q < quality or c < copies) for q, c in frontier_points)


# --------------------------------------------------------------------------------------------------------------
# Replicate-level statistics
# --------------------------------------------------------------------------------------------------------------


def paired_summary(values: list[float]) -> dict[str, Any]:
    """Mean, t interval (95%) and one-sample t-test p of per-pretraining differences (nan values left out)."""
    x = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = len(x)
    out: dict[str, Any] = {"n": n, "mean": float(x.mean()) if n else None, "ci_low": None, "ci_high": None, "p": None}
    out["values"] = [float(v) for v in x]
    if n < 2:
        return out
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    out.update(ci_low=out["mean"] - half, ci_high=out["mean"] + half, sd=sd)
    if sd == 0:
        out["p"] = 1.0 if out["mean"] == 0 else 0.0
    else:
        out["p"] = float(stats.ttest_1samp(x, 0.0).pvalue)
    return out


def holm_adjust(tests: list[dict[str, Any]]) -> None:
    """Add ``p_holm`` to every test with a p (one family), by statsmodels' Holm step-down."""
    # The project's one Holm implementation (tests without a finite p are no tests and get none).
    for test, p_holm in zip(tests, multiple_testing.holm_adjust([t.get("p") for t in tests])):
        if p_holm is not None:
            test["p_holm"] = p_holm


def _verdict(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Where a method sits relative to uniform's frontier, from the Holm-adjusted read-offs."""

    def side(test: dict[str, Any]) -> int:
        if test.get("p_holm") is None or test["p_holm"] >= ALPHA:
            return 0
        return -1 if test["mean"] < 0 else 1

    sides = {side(a), side(b)}
    if sides >= {-1, 1}:
        return "mixed"
    if -1 in sides:
        return "below"
    if 1 in sides:
        return "above"
    return "unresolved"


VERDICT_WORDS = {
    "below": "below uniform's frontier (fewer copies at equal quality; resolved after Holm)",
    "above": "above uniform's frontier (training uniform less does better; resolved after Holm)",
    "unresolved": "not resolved from uniform's frontier (intervals include 0 after Holm)",
    "mixed": "mixed (the two read-offs disagree)",
}


# --------------------------------------------------------------------------------------------------------------
# The analysis
# --------------------------------------------------------------------------------------------------------------


def _read_off(frontier: tuple[np.ndarray, np.ndarray], points: list, row: dict[str, Any]) -> dict[str, Any]:
    q, c = row[QUALITY], row[COPIES]
    return {
        "step": row["step"],
        "heldout_frechet": q,
        "copies": c,
        "uniform_copies_at_quality": copies_at_quality(frontier, q),
        "uniform_quality_at_copies": quality_at_copies(frontier, c),
        "dominated_by_uniform": _is_dominated(points, q, c),
        # Better held-out quality than every uniform state: uniform trained less never gets there (no read-off a).
        "beyond_uniform_quality": bool(len(frontier[0]) and q < frontier[0][0]),
    }


def _per_pretraining(group_rows: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    """Uniform's frontier of one pretraining and every method state read against it (``final`` and each step)."""
    uniform = [r for r in group_rows if r["arm"] in UNIFORM_ARMS and r.get(QUALITY) is not None]
    frontier = pareto_frontier([r[QUALITY] for r in uniform], [r[COPIES] for r in uniform])
    points = [(r[QUALITY], r[COPIES]) for r in uniform]
    result: dict[str, Any] = {
        "frontier": {"heldout_frechet": frontier[0].tolist(), "copies": frontier[1].tolist()},
        "num_uniform_states": len(uniform),
        "methods": {},
    }
    for method in methods:
        mine = sorted((r for r in group_rows if r["arm"] == method and r.get(QUALITY) is not None),
                      key=lambda r: (r["step"], r["final"]))  # fmt: skip
        if not mine:
            continue
        # "final": the last step (matched compute with every arm); "step N": each evaluated step after 0 (step 0 is
        # the pretrained model, the same for every arm).
        states = {"final": _read_off(frontier, points, mine[-1])}
        for row in mine:
            if row["step"] > 0 and not row["final"]:
                states[f"step {row['step']}"] = _read_off(frontier, points, row)
        result["methods"][method] = states
    return result


def _difference(state: dict[str, Any], read_off: str) -> float:
    if read_off == "copies_at_matched_quality":
        return state["copies"] - state["uniform_copies_at_quality"]
    return state["heldout_frechet"] - state["uniform_quality_at_copies"]


def _state_names(results: dict[int, dict[str, Any]]) -> list[str]:
    names = {name for r in results.values() for states in r["methods"].values() for name in states}
    return ["final", *sorted((n for n in names if n != "final"), key=lambda n: int(n.split()[1]))]


def _family_tests(results: dict[int, dict[str, Any]], methods: list[str], key: dict[str, Any]) -> list[dict]:
    """One family: every method's paired differences for one (dataset, size, read-off, state), Holm-adjusted."""
    tests = []
    for method in methods:
        diffs = [
            _difference(r["methods"][method][key["state"]], key["read_off"])
            for r in results.values()
            if key["state"] in r["methods"].get(method, {})
        ]
        tests.append({**key, "method": method, "num_pretrainings": len(results), **paired_summary(diffs)})
    holm_adjust(tests)
    return tests


def _group_verdicts(results: dict[int, dict[str, Any]], tests: list[dict], methods: list[str], key: dict) -> list:
    verdicts = []
    for method in methods:
        final = {t["read_off"]: t for t in tests if t["method"] == method and t["state"] == "final"}
        verdict = _verdict(final["copies_at_matched_quality"], final["quality_at_matched_copies"])
        dominated = [r["methods"][method]["final"]["dominated_by_uniform"] for r in results.values()
                     if method in r["methods"]]  # fmt: skip
        below_steps = sorted(
            {
                t["state"]
                for t in tests
                if t["method"] == method
                and t["state"] != "final"
                and t.get("p_holm") is not None
                and t["p_holm"] < ALPHA
                and t["mean"] < 0
            }  # fmt: skip
        )
        beyond = [r["methods"][method]["final"]["beyond_uniform_quality"] for r in results.values()
                  if method in r["methods"]]  # fmt: skip
        verdicts.append({**key, "method": method, "verdict": verdict, "words": VERDICT_WORDS[verdict],
                         "dominated_in": int(sum(dominated)), "beyond_uniform_quality_in": int(sum(beyond)),
                         "num_pretrainings": len(dominated), "steps_resolved_below": below_steps})  # fmt: skip
    return verdicts


def analyze_frontier(rows: list[dict[str, Any]], *, methods: list[str] | None = None) -> dict[str, Any]:
    """The matched-quality analysis of frontier rows (see the module docstring).

    Args:
        rows (`list[dict]`): Raw rows (:func:`collect_frontier_rows` or :func:`read_frontier_rows`).
        methods (`list[str]`, *optional*): Methods to place against uniform's frontier (default: every arm that is
            not uniform).

    Returns:
        `dict`: ``per_pretraining`` read-offs, replicate-level ``tests`` (each with ``p`` and ``p_holm``), the
        ``families`` the Holm correction runs within, and one ``verdict`` per (dataset, size, method) from the
        final state.
    """
    arms = sorted({r["arm"] for r in rows})
    methods = methods or [a for a in arms if a not in UNIFORM_ARMS]
    groups: dict[tuple[str, int], dict[int, list[dict[str, Any]]]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["train_subset_size"]), {}).setdefault(row["pretrain_seed"], [])
        groups[(row["dataset"], row["train_subset_size"])][row["pretrain_seed"]].append(row)
    per_pretraining, tests, verdicts, families = [], [], [], []
    for (dataset, size), by_seed in sorted(groups.items()):
        results = {seed: _per_pretraining(group_rows, methods) for seed, group_rows in sorted(by_seed.items())}
        for seed, result in results.items():
            per_pretraining.append({"dataset": dataset, "train_subset_size": size, "pretrain_seed": seed, **result})
        group_tests = []
        for state in _state_names(results):
            for read_off in READ_OFFS:
                key = {"dataset": dataset, "train_subset_size": size, "read_off": read_off, "state": state}
                family = f"{dataset} n={size} {read_off} at {state}"
                families.append({"family": family, "methods": methods, "num_tests": len(methods)})
                group_tests += [{**t, "family": family} for t in _family_tests(results, methods, key)]
        tests += group_tests
        verdicts += _group_verdicts(results, group_tests, methods, {"dataset": dataset, "train_subset_size": size})
    return {
        "schema_version": 1,
        "definitions": {
            "copies": f"{COPIES}: share of generated samples whose nearest/second-nearest training distance ratio "
            "is below 1/3",
            "quality": f"{QUALITY}: Frechet distance of generated samples to held-out data (lower is better)",
            "uniform_arms": list(UNIFORM_ARMS),
            "frontier": "lower-left Pareto set of all uniform states of one pretraining, joined linearly",
            "read_offs": READ_OFFS,
            "state": "final = each method's last step (matched compute; the verdict); step N = its state after N "
            "fine-tuning steps; p: two-sided one-sample t test of the per-pretraining differences; p_holm: Holm "
            "within the family (one dataset, size, read-off and state, over the methods)",
            "dominated_in": "pretrainings in which some uniform state has both better-or-equal quality and "
            "fewer-or-equal copies than the method's final state",
            "beyond_uniform_quality_in": "pretrainings in which the method's final state has a lower held-out "
            "Frechet than every uniform state (read-off a undefined there)",
        },
        "families": families,
        "tests": tests,
        "verdicts": verdicts,
        "per_pretraining": per_pretraining,
        "num_rows": len(rows),
    }


# --------------------------------------------------------------------------------------------------------------
# Report and figure
# --------------------------------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3, signed: bool = True) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _p(value: Any) -> str:
    return "–" if value is None else f"{value:.3g}"


def _test_table(tests: list[dict[str, Any]], *, with_state: bool) -> list[str]:
    head = (
        "| dataset | size | method |" + (" state |" if with_state else "") + " n | mean [95% interval] | p | p_holm |"
    )
    lines = [head, "|---|---:|---|" + ("---|" if with_state else "") + "---:|---|---:|---:|"]
    for t in tests:
        if t["n"] >= 2:
            interval = f"{_fmt(t['mean'])} [{_fmt(t['ci_low'])}, {_fmt(t['ci_high'])}]"
        else:
            interval = f"{_fmt(t['mean'])} (one pretraining or none: no interval)"
        state = f" {t['state']} |" if with_state else ""
        lines.append(
            f"| {t['dataset']} | {t['train_subset_size']} | `{t['method']}` |{state} {t['n']} | {interval} | "
            f"{_p(t['p'])} | {_p(t.get('p_holm'))} |"
        )
    return lines


def render_frontier_report(analysis: dict[str, Any], figures: list[str]) -> str:
    """``REPORT.md``: verdicts first, then the read-off tables with every p beside its Holm-adjusted p."""
    lines = ["# Matched quality: does a method beat training uniform less?", ""]
    lines += [
        "Per independent pretraining, uniform's frontier is the lower-left Pareto set of every uniform state "
        "evaluated (the pretraining along its steps, uniform fine-tunes at 1, 1/2 and 1/4 of the learning rate at "
        "every evaluated step). Each method state is read against it: (a) copies minus uniform's copies at the "
        "method's held-out Frechet, (b) held-out Frechet minus uniform's at the method's copies. Negative = below "
        "the frontier (better than training less); positive = training uniform less does better. Mean over "
        "pretrainings [95% t interval]; p: one-sample t test; p_holm: Holm within the family (one dataset, size, "
        "read-off and state, over the methods). '–': uniform never reached that quality (a) or that few copies (b) "
        "in a pretraining, so that pretraining has no read-off (n counts those that have one).",
        "",
        "## Verdicts (final state: every arm after the same number of steps)",
        "",
        "| dataset | size | method | verdict | final state dominated by a uniform state | better quality than "
        "every uniform state | steps resolved below |",
        "|---|---:|---|---|---:|---:|---|",
    ]
    for v in analysis["verdicts"]:
        below = ", ".join(v["steps_resolved_below"]) or "none"
        lines.append(
            f"| {v['dataset']} | {v['train_subset_size']} | `{v['method']}` | {v['words']} | "
            f"{v['dominated_in']} of {v['num_pretrainings']} | {v['beyond_uniform_quality_in']} of "
            f"{v['num_pretrainings']} | {below} |"
        )
    for read_off, meaning in READ_OFFS.items():
        final = [t for t in analysis["tests"] if t["read_off"] == read_off and t["state"] == "final"]
        lines += ["", f"## Final state, {read_off}: {meaning}", "", *_test_table(final, with_state=False)]
    for read_off in READ_OFFS:
        along = [t for t in analysis["tests"] if t["read_off"] == read_off and t["state"] != "final"]
        along.sort(key=lambda t: (t["dataset"], t["train_subset_size"], t["method"], int(t["state"].split()[1])))
        lines += ["", f"## Along training, {read_off}", "", *_test_table(along, with_state=True)]
    if figures:
        lines += ["", "## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


ARM_STYLE = {
    "pretraining": ("#444444", "--"),
    "uniform": ("#7f7f7f", "-"),
    "uniform_lr0.5": ("#a6a6a6", "-"),
    "uniform_lr0.25": ("#c8c8c8", "-"),
    "ci_late": ("#d62728", "-"),
    "ci_mid": ("#ff7f0e", "-"),
    "logit_normal_matched": ("#9467bd", "-"),
    "importance_ci_late": ("#2ca02c", "-"),
    "min_snr": ("#1f77b4", "-"),
    "ci_early": ("#8c564b", "-"),
    "ci_narrow_late": ("#e377c2", "-"),
    "logit_normal_late": ("#bcbd22", "-"),
    "p2": ("#17becf", "-"),
}


def plot_frontier(rows: list[dict[str, Any]], analysis: dict[str, Any], dataset: str) -> Any:
    """Copies vs held-out Frechet: one thin line per pretraining and arm (dots = evaluated steps, a ring = the
    final step), each pretraining's uniform frontier shaded (darker where more pretrainings agree)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["train_subset_size"] for r in rows if r["dataset"] == dataset})
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.2 * len(sizes) + 2.4, 4.6), squeeze=False)
    arms_seen: list[str] = []
    for ax, size in zip(axes[0], sizes):
        mine = [r for r in rows if r["dataset"] == dataset and r["train_subset_size"] == size]
        seeds = sorted({r["pretrain_seed"] for r in mine})
        q_all = [r[QUALITY] for r in mine if r.get(QUALITY) is not None]
        q_max = max(q_all) * 1.05 if q_all else 1.0
        for entry in analysis["per_pretraining"]:
            if entry["dataset"] != dataset or entry["train_subset_size"] != size:
                continue
            fq, fc = entry["frontier"]["heldout_frechet"], entry["frontier"]["copies"]
            if fq:
                xs = [*fq, q_max]
                ys = [100 * c for c in [*fc, fc[-1]]]
                ax.fill_between(xs, ys, 100, color="0.5", alpha=0.07, linewidth=0)
                ax.plot(xs, ys, color="0.35", linewidth=2.5, alpha=0.25, solid_capstyle="butt")
        for seed in seeds:
            for arm in sorted(
                {r["arm"] for r in mine}, key=lambda a: list(ARM_STYLE).index(a) if a in ARM_STYLE else 99
            ):
                path = sorted(
                    (r for r in mine if r["pretrain_seed"] == seed and r["arm"] == arm), key=lambda r: r["step"]
                )
                path = [r for r in path if r.get(QUALITY) is not None]
                if not path:
                    continue
                color, style = ARM_STYLE.get(arm, ("black", "-"))
                xs = [r[QUALITY] for r in path]
                ys = [100 * r[COPIES] for r in path]
                label = arm if arm not in arms_seen else None
                if label:
                    arms_seen.append(arm)
                ax.plot(xs, ys, style, color=color, linewidth=0.8, alpha=0.8, marker="o", markersize=2.2, label=label)
                ax.plot(xs[-1:], ys[-1:], "o", color=color, markersize=5, markerfacecolor="none", linewidth=0.8)
        y_all = [100 * r[COPIES] for r in mine if r.get(COPIES) is not None]
        top = max(max(y_all, default=0) * 1.08, 5.0)  # 0-5% when nothing copies: no negative axis
        ax.set_ylim(-0.02 * top, top)
        ax.set_xlim(min(q_all, default=0) * 0.95, q_max)
        count = f"{len(seeds)} pretraining{'s' if len(seeds) != 1 else ''}"
        ax.set_title(f"{dataset}, {size} training images ({count})", fontsize=10)
        ax.set_xlabel("held-out Frechet distance (lower = better quality)")
        ax.set_ylabel("copied samples (%) (lower = fewer copies)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        h, lab = ax.get_legend_handles_labels()
        handles += h
        labels += lab
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles += [
        Line2D([], [], color="0.35", linewidth=2.5, alpha=0.25),
        Patch(color="0.5", alpha=0.15, linewidth=0),
        Line2D([], [], marker="o", color="0.3", markerfacecolor="none", linestyle="none", markersize=5),
    ]
    labels += ["uniform's frontier (one\nper pretraining)", "reached by uniform\ntrained less", "final step"]
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(0.995, 0.5), fontsize=8, frameon=False,
               title="arm (dots = evaluated steps;\ndashed = the pretraining\nalong its own steps)",
               title_fontsize=8)  # fmt: skip
    fig.tight_layout()
    return fig


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


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _one_pretraining_answer(size: int, method: str, state: dict[str, Any], words: str) -> str:
    q, c = state["heldout_frechet"], state["copies"]
    a, b = state["uniform_copies_at_quality"], state["uniform_quality_at_copies"]
    at_quality = (
        "uniform sampling trained less never reached that quality (no read-off)"
        if not math.isfinite(a)
        else f"uniform sampling trained less (the pretraining stopped earlier, or uniform fine-tuning stopped "
        f"earlier) reaches that quality with {_pct(a)} copies"
    )
    at_copies = (
        "uniform never copied that little"
        if not math.isfinite(b)
        else f"at {_pct(c)} copies uniform reaches held-out Frechet {b:.2f}"
    )
    if math.isfinite(a) and math.isfinite(b) and c - a < 0 and q - b < 0:
        answer = f"`{method}` **beats training less** here: fewer copies at equal quality (below uniform's frontier)"
    elif (math.isfinite(a) and c - a > 0) or (math.isfinite(b) and q - b > 0):
        answer = (
            f"`{method}` **does not beat training less** here: stopping uniform earlier gives "
            f"{'fewer copies at equal quality' if math.isfinite(a) and c - a > 0 else 'better quality at equal copies'}"
        )
    else:
        answer = f"`{method}` sits on uniform's frontier here: it moves along it, as training less does"
    return (
        f"- **{size} training samples**: after {state['step']} fine-tuning steps `{method}` ({words}) copies "
        f"{_pct(c)} of its samples at held-out Frechet {q:.2f} (lower = better quality); {at_quality}, and "
        f"{at_copies}. So {answer}. This is one pretraining: a single measurement with no interval; the replicated "
        "answer (5 pretrainings per size, Holm-corrected) is the frontier study in docs/REPRODUCTION.md."
    )


def matched_quality_answer(analysis: dict[str, Any], method: str = "ci_late") -> list[str]:
    """Plain-words lines: does `method` beat training uniform less at matched quality? One per (dataset, size)."""
    try:
        words = resolve_method(method).description
    except ValueError:
        words = method
    lines = []
    for v in (v for v in analysis["verdicts"] if v["method"] == method):
        entries = [
            e for e in analysis["per_pretraining"]
            if (e["dataset"], e["train_subset_size"]) == (v["dataset"], v["train_subset_size"])
            and method in e["methods"]
        ]  # fmt: skip
        if len(entries) == 1:
            lines.append(_one_pretraining_answer(v["train_subset_size"], method, entries[0]["methods"][method]["final"],
                                                 words))  # fmt: skip
            continue
        tests = {t["read_off"]: t for t in analysis["tests"] if t["state"] == "final" and t["method"] == method
                 and (t["dataset"], t["train_subset_size"]) == (v["dataset"], v["train_subset_size"])}  # fmt: skip
        a, b = tests["copies_at_matched_quality"], tests["quality_at_matched_copies"]
        lines.append(
            f"- **{v['dataset']}, {v['train_subset_size']} training samples, {len(entries)} pretrainings**: `{method}` "
            f"minus uniform trained less at equal quality: {_fmt(a['mean'])} copies [{_fmt(a['ci_low'])}, "
            f"{_fmt(a['ci_high'])}] (p {_p(a['p'])}, Holm {_p(a.get('p_holm'))}); at equal copies: "
            f"{_fmt(b['mean'])} Frechet [{_fmt(b['ci_low'])}, {_fmt(b['ci_high'])}] (p {_p(b['p'])}, Holm "
            f"{_p(b.get('p_holm'))}): {v['words']}; its final state is dominated by a uniform state in "
            f"{v['dominated_in']} of {v['num_pretrainings']} pretrainings and has better quality than every uniform "
            f"state in {v['beyond_uniform_quality_in']}."
        )
    return lines


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
    """``python -m diffusers_memctl.frontier FOLDER [--export STUDY_DIR]``: (collect and) rebuild the analysis."""
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
