"""Statistics at the level of the independent replicate.

Fine-tunes of one pretrained model share its initialisation, its training subset and its quirks: they are not
independent. In a study the *pretraining* is the replicate, so every comparison here is made on replicate values
(per pretraining, the mean over its fine-tune seeds) and every interval reflects the variation between pretrainings:

- :func:`replicate_values`: the replicate-level table (one row per size, method and pretraining).
- :func:`method_contrasts`: each method minus the baseline, paired within a pretraining; mean difference with a
  Student-t 95% interval over the replicates (n - 1 degrees of freedom), a percentile cluster bootstrap over
  replicates, and a linear mixed model on the individual runs with a random intercept per pretraining
  (statsmodels ``MixedLM``) as a check that uses every run.
- :func:`replicate_correlations`: a metric against the CI mean / width over the CI methods, per replicate (Pearson r
  on that replicate's method means), summarised as the mean Fisher z with a t interval over replicates, plus the
  mixed-model slope.

With three replicates a t interval has 2 degrees of freedom (t = 4.30) and a cluster bootstrap has only ten distinct
resamples: the bootstrap interval is reported for completeness and marked as unreliable below five replicates.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats
from statsmodels.regression.mixed_linear_model import MixedLM
from statsmodels.tools.sm_exceptions import ConvergenceWarning

from .analysis import finite_or_none, pearson_with_ci
from .multiple_testing import annotate_holm

__all__ = [
    "holm_contrasts",
    "holm_correlations",
    "method_contrasts",
    "mixed_model_effect",
    "replicate_correlations",
    "replicate_values",
    "t_interval",
]

#: A random-intercept variance at most this fraction of the residual variance counts as zero (a boundary fit).
BOUNDARY_VARIANCE_RATIO = 1e-6

#: Fewer replicates than this make a percentile bootstrap over replicates unreliable (too few distinct resamples).
MIN_BOOTSTRAP_REPLICATES = 5


def _method_of(row: Mapping[str, Any]) -> Any:
    """A result row's method (study rows) or cell name (plain sweep rows)."""
    return row.get("method") or row.get("cell")


def t_interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean of independent values with a Student-t interval and the two-sided p-value of "mean = 0".

    Returns:
        `dict`: `mean`, `ci_low`, `ci_high`, `p_value`, `n`, `sd` (`None` where undefined: n < 2 or zero spread).
    """
    x = np.asarray([v for v in values if finite_or_none(v) is not None], dtype=np.float64)
    n = int(x.size)
    out: dict[str, Any] = {"mean": float(x.mean()) if n else None, "n": n, "ci_low": None, "ci_high": None}
    out.update(p_value=None, sd=None)
    if n < 2:
        return out
    sd = float(x.std(ddof=1))
    out["sd"] = sd
    if sd == 0.0:
        out["ci_low"] = out["ci_high"] = out["mean"]
        out["p_value"] = 1.0 if out["mean"] == 0.0 else 0.0
        return out
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)
    out["ci_low"], out["ci_high"] = out["mean"] - half, out["mean"] + half
    out["p_value"] = float(stats.ttest_1samp(x, 0.0).pvalue)
    return out


def _bootstrap_mean(values: Sequence[float], confidence: float, n_boot: int, seed: int) -> dict[str, Any]:
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return {"ci_low": None, "ci_high": None, "reliable": False}
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return {
        "ci_low": float(np.quantile(means, alpha)),
        "ci_high": float(np.quantile(means, 1 - alpha)),
        "reliable": bool(x.size >= MIN_BOOTSTRAP_REPLICATES),
    }


def replicate_values(
    rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], *, replicate_key: str = "pretrain_seed"
) -> list[dict[str, Any]]:
    """One row per (train_subset_size, method, replicate): each metric averaged over that replicate's fine-tunes."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        key = (row.get("train_subset_size"), _method_of(row), row.get(replicate_key))
        groups.setdefault(key, []).append(row)
    out = []
    for (size, method, replicate), members in groups.items():
        entry: dict[str, Any] = {
            "train_subset_size": size,
            "method": method,
            replicate_key: replicate,
            "n_runs": len(members),
            "ci_mean": finite_or_none(members[0].get("ci_mean")),
            "ci_width": finite_or_none(members[0].get("ci_width")),
        }
        for metric in metrics:
            values = [v for m in members if (v := finite_or_none(m.get(metric))) is not None]
            entry[metric] = float(np.mean(values)) if values else None
        out.append(entry)
    return out


def mixed_model_effect(
    rows: Sequence[Mapping[str, Any]],
    metric: str,
    term: str,
    *,
    group_key: str = "pretrain_seed",
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Fixed effect of `term` on `metric` in ``metric ~ term + (1 | replicate)`` fitted on individual runs.

    `term` is either a numeric column (a slope, e.g. ``ci_mean``) or ``"is:<method>"`` (a 0/1 indicator of one
    method, for a two-method subset of rows). Fitted by REML with statsmodels ``MixedLM``; a fit that fails is
    reported in ``note`` instead of raising. Whether the fit can be quoted is recorded, not hidden: ``converged``
    (the optimizer's own flag, after statsmodels' retries with other optimizers), ``convergence_warnings`` (the
    text of every statsmodels ``ConvergenceWarning`` raised while fitting), ``hessian_positive_definite`` (false
    when statsmodels warns that it is not: the standard errors, interval and p are unreliable) and ``boundary``
    (the random-intercept variance is zero, to within :data:`BOUNDARY_VARIANCE_RATIO` of the residual variance: the
    model has collapsed to ordinary least squares). ``quotable`` is true only for a converged fit with a positive
    definite Hessian that is not on the boundary. statsmodels' own "MLE may be on the boundary" warning compares the
    variance with an absolute 0.01, so it fires on any metric measured in small units (copies are fractions): it is
    recorded among the warnings but the boundary flag uses the relative test.

    Returns:
        `dict`: `estimate`, `ci_low`, `ci_high`, `p_value`, `n_runs`, `n_groups`, `converged`,
        `convergence_warnings`, `random_intercept_variance`, `residual_variance`, `hessian_positive_definite`,
        `boundary`, `quotable`, `note` (`None` for a quotable fit, else why not).
    """
    data: dict[str, list] = {"y": [], "x": [], "g": []}
    for row in rows:
        y = finite_or_none(row.get(metric))
        if term.startswith("is:"):
            x = 1.0 if _method_of(row) == term[3:] else 0.0
        else:
            x = finite_or_none(row.get(term))
        if y is None or x is None or row.get(group_key) is None:
            continue
        data["y"].append(y)
        data["x"].append(x)
        data["g"].append(str(row.get(group_key)))
    n_groups = len(set(data["g"]))
    out: dict[str, Any] = {"estimate": None, "ci_low": None, "ci_high": None, "p_value": None}
    out.update(n_runs=len(data["y"]), n_groups=n_groups, converged=None, convergence_warnings=[])
    out.update(random_intercept_variance=None, residual_variance=None, hessian_positive_definite=None)
    out.update(boundary=None, quotable=False, note=None)
    if n_groups < 2 or len(set(data["x"])) < 2 or len(data["y"]) < n_groups + 2:
        out["note"] = "too few runs or groups, or a constant term"
        return out
    if float(np.std(data["y"])) == 0.0:
        out["note"] = "constant metric"
        return out
    exog = np.column_stack([np.ones(len(data["x"])), np.asarray(data["x"], dtype=np.float64)])
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit = MixedLM(np.asarray(data["y"], dtype=np.float64), exog, groups=np.asarray(data["g"])).fit(reml=True)
            low, high = np.asarray(fit.conf_int(alpha=1 - confidence))[1]
            estimate, p_value = float(np.asarray(fit.params)[1]), float(np.asarray(fit.pvalues)[1])
    except (ValueError, np.linalg.LinAlgError) as err:
        out["note"] = f"fit failed: {err}"
        return out
    out.update(estimate=estimate, ci_low=float(low), ci_high=float(high), p_value=p_value)
    variance = float(np.asarray(fit.cov_re).ravel()[0])
    messages = sorted({str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)})
    hessian_ok = not any("Hessian" in m for m in messages)
    boundary = variance <= BOUNDARY_VARIANCE_RATIO * max(float(fit.scale), np.finfo(np.float64).tiny)
    out.update(converged=bool(fit.converged), convergence_warnings=messages, random_intercept_variance=variance)
    out.update(residual_variance=float(fit.scale), hessian_positive_definite=hessian_ok, boundary=bool(boundary))
    out["quotable"] = bool(fit.converged and hessian_ok and not boundary)
    problems = ["did not converge"] if not fit.converged else []
    problems += [] if hessian_ok else ["Hessian not positive definite (standard errors unreliable)"]
    problems += ["random-intercept variance on the boundary (0)"] if boundary else []
    out["note"] = "; ".join(problems) or None
    return out


def method_contrasts(
    rows: Sequence[Mapping[str, Any]],
    metric: str,
    *,
    baseline: str = "uniform",
    replicate_key: str = "pretrain_seed",
    confidence: float = 0.95,
    n_boot: int = 4000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Every method minus the baseline on `metric`, per training-set size, at the replicate level.

    Differences are paired within a replicate (same pretrained model, same subset), so the pretraining's own level
    cancels. Returns one entry per (size, method) with the baseline's and the method's replicate means, the mean
    difference with its t interval and p-value (`replicate_level`), the bootstrap interval over replicates, the
    mixed-model estimate on individual runs (`mixed_model`), and the run-level difference of means (`run_level`,
    treating every run as independent: pseudo-replicated, for comparison only).
    """
    table = replicate_values(rows, [metric], replicate_key=replicate_key)
    out = []
    for size in sorted({r["train_subset_size"] for r in table if r["train_subset_size"] is not None}):
        at_size = [r for r in table if r["train_subset_size"] == size]
        base = {r[replicate_key]: r[metric] for r in at_size if r["method"] == baseline and r[metric] is not None}
        for method in dict.fromkeys(r["method"] for r in at_size):
            if method == baseline:
                continue
            values = {r[replicate_key]: r[metric] for r in at_size if r["method"] == method and r[metric] is not None}
            shared = sorted(set(values) & set(base), key=str)
            diffs = [values[k] - base[k] for k in shared]
            run_rows = [r for r in rows if r.get("train_subset_size") == size and _method_of(r) in (method, baseline)]
            out.append(
                {
                    "metric": metric,
                    "train_subset_size": size,
                    "method": method,
                    "baseline": baseline,
                    "replicates": [str(k) for k in shared],
                    "baseline_values": [base[k] for k in shared],
                    "method_values": [values[k] for k in shared],
                    "method_mean": float(np.mean([values[k] for k in shared])) if shared else None,
                    "baseline_mean": float(np.mean([base[k] for k in shared])) if shared else None,
                    "replicate_level": t_interval(diffs, confidence),
                    "bootstrap": _bootstrap_mean(diffs, confidence, n_boot, seed),
                    "mixed_model": mixed_model_effect(
                        run_rows, metric, f"is:{method}", group_key=replicate_key, confidence=confidence
                    ),
                    "run_level": _run_level_difference(run_rows, metric, method, baseline),
                }
            )
    return out


def _run_level_difference(
    run_rows: Sequence[Mapping[str, Any]], metric: str, method: str, baseline: str
) -> dict[str, Any]:
    """Difference of run means with Welch's p, every run counted as independent (pseudo-replicated)."""

    def values(name: str) -> list[float]:
        return [v for r in run_rows if _method_of(r) == name and (v := finite_or_none(r.get(metric))) is not None]

    a, b = values(method), values(baseline)
    welch = None
    if len(a) >= 2 and len(b) >= 2 and not (np.std(a) == 0 and np.std(b) == 0):
        welch = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    difference = float(np.mean(a)) - float(np.mean(b)) if a and b else None
    return {"difference": difference, "n_runs": len(a) + len(b), "welch_p_value": welch}


def replicate_correlations(
    rows: Sequence[Mapping[str, Any]],
    metric: str,
    variable: str = "ci_mean",
    *,
    replicate_key: str = "pretrain_seed",
    confidence: float = 0.95,
) -> list[dict[str, Any]]:
    """Correlation of `metric` with `variable` over the CI-normal methods, per size, at the replicate level.

    Per replicate: Pearson r over that replicate's method means (needs >= 3 distinct values of `variable` and a
    metric that varies). Summary: mean of Fisher z = atanh(r) over replicates with a t interval, transformed back to
    r. Beside it the mixed-model slope on every run and the pooled run-level Pearson r (pseudo-replicated, for
    comparison).

    What the number rests on is recorded with it: `n_points_per_replicate` and `variable_values` (each r is over
    that few points), `n_replicates_total` and `excluded_replicates` (a replicate left out and why: its r is
    undefined), and `per_replicate_r_without_lowest` (r with the method at the lowest value of `variable` left
    out: an r near -1 or +1 that vanishes without it is one point against the rest, not a dose-response).
    """

    table = [r for r in replicate_values(rows, [metric], replicate_key=replicate_key) if r[variable] is not None]
    out = []
    for size in sorted({r["train_subset_size"] for r in table if r["train_subset_size"] is not None}):
        at_size = [r for r in table if r["train_subset_size"] == size and r[metric] is not None]
        per_replicate, excluded, without_lowest = {}, {}, {}
        for replicate in dict.fromkeys(r[replicate_key] for r in at_size):
            points = sorted((r[variable], r[metric]) for r in at_size if r[replicate_key] == replicate)
            xs, ys = zip(*points) if points else ((), ())
            if len(set(xs)) < 3:
                excluded[str(replicate)] = f"fewer than 3 distinct {variable} values"
            elif np.std(ys) == 0:
                excluded[str(replicate)] = f"{metric} is the same for every CI method (r undefined)"
            else:
                per_replicate[str(replicate)] = float(stats.pearsonr(xs, ys)[0])
                # Is the correlation carried by the lowest point alone? r over the others, when 3 values remain.
                rest = [(x, y) for x, y in points if x != xs[0]]
                if len({x for x, _ in rest}) >= 3 and np.std([y for _, y in rest]) > 0:
                    without_lowest[str(replicate)] = float(stats.pearsonr(*zip(*rest))[0])
        values = sorted({r[variable] for r in at_size})
        zs = [math.atanh(max(-0.999999, min(0.999999, r))) for r in per_replicate.values()]
        z_summary = t_interval(zs, confidence)
        back = {
            k: (math.tanh(v) if v is not None else None)
            for k, v in z_summary.items()
            if k in ("mean", "ci_low", "ci_high")
        }
        run_rows = [
            r for r in rows if r.get("train_subset_size") == size and finite_or_none(r.get(variable)) is not None
        ]
        out.append(
            {
                "metric": metric,
                "variable": variable,
                "train_subset_size": size,
                "per_replicate_r": per_replicate,
                # What each per-replicate r rests on: this many CI methods, at these values of the variable.
                "n_points_per_replicate": len(values),
                "variable_values": values,
                "n_replicates_total": len({r[replicate_key] for r in at_size}),
                "excluded_replicates": excluded,
                "per_replicate_r_without_lowest": without_lowest,
                "replicate_level": {
                    "r": back["mean"],
                    "ci_low": back["ci_low"],
                    "ci_high": back["ci_high"],
                    "p_value": z_summary["p_value"],
                    "n_replicates": z_summary["n"],
                },
                "mixed_model_slope": mixed_model_effect(
                    run_rows, metric, variable, group_key=replicate_key, confidence=confidence
                ),
                "run_level": pearson_with_ci(
                    [finite_or_none(r.get(variable)) for r in run_rows],
                    [finite_or_none(r.get(metric)) for r in run_rows],
                    confidence=confidence,
                ),
            }
        )
    return out


#: The p-values of one contrast or correlation entry: (where in the entry, which key).
_P_VALUES = (
    ("replicate_level", "p_value", "p_holm"),
    ("mixed_model", "p_value", "p_holm"),
    ("mixed_model_slope", "p_value", "p_holm"),
    ("run_level", "welch_p_value", "welch_p_holm"),
    ("run_level", "p_value", "p_holm"),
)


def _annotate_family(entries: Sequence[dict[str, Any]], family: str) -> None:
    for part, p_key, out_key in _P_VALUES:
        members = [e[part] for e in entries if isinstance(e.get(part), dict) and p_key in e[part]]
        if members:
            annotate_holm(members, family, p_key=p_key, out_key=out_key)


def holm_contrasts(contrasts: Mapping[str, Sequence[dict[str, Any]]], label: str = "") -> dict[str, str]:
    """Holm-adjust, in place, the contrasts of :func:`method_contrasts` per metric (`contrasts` maps metric -> list).

    Family: one metric at one training-set size, every method against the same baseline (e.g. the 8 methods minus
    uniform on copies at 16 images). Each kind of p-value (replicate-level t test, mixed model, run-level Welch) is
    adjusted within its own family; the adjusted value sits beside the raw one (`p_holm`, `welch_p_holm`).

    Returns:
        `dict`: the family definition, for ``analysis.json``.
    """
    baseline = None
    for metric, entries in contrasts.items():
        for size in dict.fromkeys(e["train_subset_size"] for e in entries):
            family = [e for e in entries if e["train_subset_size"] == size]
            baseline = family[0]["baseline"]
            _annotate_family(family, f"{label}{metric} at {size} training samples: every method - {baseline}")
    return {
        "family": "one metric at one training-set size: every method minus the same baseline"
        + (f" ({baseline})" if baseline else ""),
        "method": "Holm (statsmodels multipletests, method='holm')",
    }


def holm_correlations(correlations: Mapping[str, Sequence[dict[str, Any]]], label: str = "") -> dict[str, str]:
    """Holm-adjust, in place, :func:`replicate_correlations` results keyed ``"<metric>_vs_<variable>"``.

    Family: one training-set size and one variable (CI mean or CI width), every metric correlated with it.
    """
    families: dict[tuple, list[dict[str, Any]]] = {}
    for entries in correlations.values():
        if not isinstance(entries, list):
            continue
        for e in entries:
            families.setdefault((e["train_subset_size"], e["variable"]), []).append(e)
    for (size, variable), entries in families.items():
        _annotate_family(entries, f"{label}every metric vs {variable} at {size} training samples")
    return {
        "family": "one training-set size and one variable (ci_mean or ci_width): every metric correlated with it",
        "method": "Holm (statsmodels multipletests, method='holm')",
    }
