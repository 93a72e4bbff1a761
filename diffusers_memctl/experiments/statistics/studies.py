"""The analysis of a memorization-regime study's result rows: per size and method, replicate-level means and
intervals, contrasts against uniform (Holm within each family), correlations and mixed-model fits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .analysis import finite_or_none
from .replicates import holm_contrasts, holm_correlations, method_contrasts, replicate_correlations, replicate_values

__all__ = [
    "mixed_model_fit_counts",
    "mixed_model_fits",
    "present_metrics",
    "size_references",
    "study_analysis",
    "study_methods",
    "study_sizes",
]

#: Copy measures (lower `memorized_fraction` = fewer copies; higher `nn_ratio_mean` / `nn_l2_mean` = further from them).
MEMORIZATION_METRICS = ("memorized_fraction", "nn_ratio_mean", "nn_l2_mean")


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


def study_methods(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    present = list(dict.fromkeys(str(r.get("method")) for r in rows))
    return [m for m in _METHOD_ORDER if m in present] + [m for m in present if m not in _METHOD_ORDER]


def study_sizes(rows: Sequence[Mapping[str, Any]]) -> list[int]:
    return sorted(
        {int(r["train_subset_size"]) for r in rows if finite_or_none(r.get("train_subset_size")) is not None}
    )


def present_metrics(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> list[str]:
    return [m for m in names if any(finite_or_none(r.get(m)) is not None for r in rows)]


def size_references(rows: Sequence[Mapping[str, Any]]) -> dict[int, dict[str, float]]:
    """Per size, the mean over replicates of the training subsets' own leave-one-out values and the held-out floors."""
    out: dict[int, dict[str, float]] = {}
    for size in study_sizes(rows):
        at_size = [r for r in rows if finite_or_none(r.get("train_subset_size")) == size]
        keys = {k for r in at_size for k in r if k.startswith("ref_")}
        keys |= {"heldout_frechet_copier", "heldout_frechet_fresh"}
        values = {}
        for key in sorted(keys):
            per_rep: dict[Any, float] = {}
            for r in at_size:
                if (v := finite_or_none(r.get(key))) is not None:
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
    metrics = present_metrics(rows, (*MEMORIZATION_METRICS, *QUALITY_METRICS, "final_loss"))
    methods = study_methods(rows)
    ci_methods = sorted({str(r.get("method")) for r in rows if finite_or_none(r.get("ci_mean")) is not None})
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
        "sizes": study_sizes(rows),
        "methods": methods,
        "n_runs": len(rows),
        "n_replicates": {
            str(size): len(
                {r.get("pretrain_seed") for r in rows if finite_or_none(r.get("train_subset_size")) == size}
            )
            for size in study_sizes(rows)
        },
        "references": {str(k): v for k, v in size_references(rows).items()},
        "multiple_testing": multiple_testing,
        "replicate_values": replicate_values(rows, metrics),
        "contrasts_vs_uniform": vs_uniform,
        "contrasts_vs_ci_late": vs_late,
        "ci_correlations": {"methods": ci_methods, **correlations},
    }
    analysis["mixed_model_fits"] = mixed_model_fit_counts(analysis)
    return analysis


def mixed_model_fits(analysis: Mapping[str, Any]) -> list[Mapping[str, Any]]:
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
    fits = mixed_model_fits(analysis)
    return {
        "fitted": len(fits),
        "not_converged": sum(not f["converged"] for f in fits),
        "with_convergence_warning": sum(bool(f["convergence_warnings"]) for f in fits),
        "hessian_not_positive_definite": sum(f["hessian_positive_definite"] is False for f in fits),
        "boundary": sum(bool(f["boundary"]) for f in fits),
        "quotable": sum(bool(f["quotable"]) for f in fits),
    }
