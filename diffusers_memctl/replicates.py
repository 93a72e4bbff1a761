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

from .analysis import _num

__all__ = ["method_contrasts", "mixed_model_effect", "replicate_correlations", "replicate_values", "t_interval"]

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
    x = np.asarray([v for v in values if _num(v) is not None], dtype=np.float64)
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
            "ci_mean": _num(members[0].get("ci_mean")),
            "ci_width": _num(members[0].get("ci_width")),
        }
        for metric in metrics:
            values = [v for m in members if (v := _num(m.get(metric))) is not None]
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
    method, for a two-method subset of rows). Fitted by REML with statsmodels ``MixedLM``; a fit that fails or does
    not converge is reported in ``note`` instead of raising.

    Returns:
        `dict`: `estimate`, `ci_low`, `ci_high`, `p_value`, `n_runs`, `n_groups`, `note`.
    """
    import statsmodels.formula.api as smf

    data: dict[str, list] = {"y": [], "x": [], "g": []}
    for row in rows:
        y = _num(row.get(metric))
        if term.startswith("is:"):
            x = 1.0 if _method_of(row) == term[3:] else 0.0
        else:
            x = _num(row.get(term))
        if y is None or x is None or row.get(group_key) is None:
            continue
        data["y"].append(y)
        data["x"].append(x)
        data["g"].append(str(row.get(group_key)))
    n_groups = len(set(data["g"]))
    out: dict[str, Any] = {"estimate": None, "ci_low": None, "ci_high": None, "p_value": None}
    out.update(n_runs=len(data["y"]), n_groups=n_groups, note=None)
    if n_groups < 2 or len(set(data["x"])) < 2 or len(data["y"]) < n_groups + 2:
        out["note"] = "too few runs or groups, or a constant term"
        return out
    if float(np.std(data["y"])) == 0.0:
        out["note"] = "constant metric"
        return out
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit = smf.mixedlm("y ~ x", data, groups=data["g"]).fit(reml=True)
        low, high = fit.conf_int(alpha=1 - confidence).loc["x"]
        out.update(estimate=float(fit.params["x"]), ci_low=float(low), ci_high=float(high))
        out["p_value"] = float(fit.pvalues["x"])
        notes = sorted({type(w.message).__name__ for w in caught})
        if not fit.converged or notes:
            out["note"] = "; ".join((["did not converge"] if not fit.converged else []) + notes)
    except (ValueError, np.linalg.LinAlgError) as err:
        out["note"] = f"fit failed: {err}"
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
        return [v for r in run_rows if _method_of(r) == name and (v := _num(r.get(metric))) is not None]

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

    Per replicate: Pearson r over that replicate's method means (needs >= 3 distinct values of `variable`). Summary:
    mean of Fisher z = atanh(r) over replicates with a t interval, transformed back to r. Beside it the mixed-model
    slope on every run and the pooled run-level Pearson r (pseudo-replicated, for comparison).
    """
    from .analysis import pearson_with_ci

    table = [r for r in replicate_values(rows, [metric], replicate_key=replicate_key) if r[variable] is not None]
    out = []
    for size in sorted({r["train_subset_size"] for r in table if r["train_subset_size"] is not None}):
        at_size = [r for r in table if r["train_subset_size"] == size and r[metric] is not None]
        per_replicate = {}
        for replicate in dict.fromkeys(r[replicate_key] for r in at_size):
            points = [(r[variable], r[metric]) for r in at_size if r[replicate_key] == replicate]
            xs, ys = zip(*points) if points else ((), ())
            if len(set(xs)) >= 3 and np.std(ys) > 0:
                per_replicate[str(replicate)] = float(stats.pearsonr(xs, ys)[0])
        zs = [math.atanh(max(-0.999999, min(0.999999, r))) for r in per_replicate.values()]
        z_summary = t_interval(zs, confidence)
        back = {
            k: (math.tanh(v) if v is not None else None)
            for k, v in z_summary.items()
            if k in ("mean", "ci_low", "ci_high")
        }
        run_rows = [r for r in rows if r.get("train_subset_size") == size and _num(r.get(variable)) is not None]
        out.append(
            {
                "metric": metric,
                "variable": variable,
                "train_subset_size": size,
                "per_replicate_r": per_replicate,
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
                    [_num(r.get(variable)) for r in run_rows],
                    [_num(r.get(metric)) for r in run_rows],
                    confidence=confidence,
                ),
            }
        )
    return out
