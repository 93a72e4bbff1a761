"""The matched-quality frontier's numbers: uniform's Pareto frontier of (held-out Frechet, copies), the read-offs of a
method against it, paired replicate-level summaries with Holm families, and the verdicts
(:mod:`diffusers_memctl.experiments.frontier` collects the rows and writes the report)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

from . import multiple_testing

__all__ = [
    "ALPHA",
    "READ_OFFS",
    "UNIFORM_ARMS",
    "VERDICT_WORDS",
    "analyze_frontier",
    "copies_at_quality",
    "holm_adjust",
    "paired_summary",
    "pareto_frontier",
    "quality_at_copies",
]

#: Arms that are uniform sampling "trained less": they make up uniform's frontier.
UNIFORM_ARMS = ("pretraining", "uniform", "uniform_lr0.5", "uniform_lr0.25")
COPIES, QUALITY = "memorized_fraction", "heldout_frechet_distance"
#: Read-offs: (a) copies at the method's quality, (b) quality at the method's copies.
READ_OFFS = {
    "copies_at_matched_quality": "copies - uniform's copies at the method's held-out Frechet (negative = fewer copies)",
    "quality_at_matched_copies": "Frechet - uniform's Frechet at the method's copies (negative = better quality)",
}
ALPHA = 0.05


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
