"""The matched-quality frontier rendered: its ``REPORT.md`` text, its figure (uniform's frontier and each method's
points per pretraining) and the plain answer a study's ``REPORT.md`` opens with."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..experiments.methods import resolve_method
from ..experiments.statistics.frontier import COPIES, QUALITY, READ_OFFS

__all__ = [
    "ARM_STYLE",
    "matched_quality_answer",
    "plot_frontier",
    "render_frontier_report",
]

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
