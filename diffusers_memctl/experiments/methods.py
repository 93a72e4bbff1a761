"""Named training methods: the alternatives a memorization study compares at matched compute.

A *method* is a named set of sampler and loss-weighting settings (the ``SamplingArguments`` flags): which timesteps a
fine-tune sees and how each one's loss counts. Everything else (pretrained init, steps, learning rate, EMA,
evaluation) is shared by the sweep, so methods differ only in what they are meant to differ in.

:data:`STUDY_METHODS` holds the comparison of the memorization-regime study: the paper's CI-normal sampler at
several intervals (arXiv 2601.21348, Sec. 4), the peers a practitioner would try instead, and a re-weighting that
emphasises the same late timesteps without changing which ones are drawn. ``ci-LO-HI`` names any other interval.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from ..timestep_sampling import create_timestep_sampler

__all__ = [
    "FRONTIER_METHODS",
    "LOGIT_MEAN_MATCHED_CI_LATE",
    "STUDY_METHODS",
    "TrainingMethod",
    "apply_method",
    "mass_matched_logit_mean",
    "parse_methods",
    "resolve_method",
]


@dataclass(frozen=True)
class TrainingMethod:
    """One named method: sampler / weighting flags under the names of ``SamplingArguments``.

    Args:
        name (`str`): Short name used for run folders, tables and figures.
        description (`str`): One line for reports.
        settings (`dict`): ``SamplingArguments`` fields to set; every other sampling field takes its default.
        learning_rate_scale (`float`, defaults to 1.0): Factor on the sweep's ``--learning_rate`` (the "train less"
            arms: the same sampler with a lower learning rate).
    """

    name: str
    description: str
    settings: dict[str, Any] = field(default_factory=dict)
    learning_rate_scale: float = 1.0

    @property
    def ci_interval(self) -> tuple[float, float] | None:
        """``(ci_lower, ci_upper)`` of a CI-normal method, else `None`."""
        if self.settings.get("timestep_sampling") == "ci_normal":
            return float(self.settings["ci_lower"]), float(self.settings["ci_upper"])
        return None


def _ci(name: str, lo: int, hi: int, note: str) -> TrainingMethod:
    return TrainingMethod(
        name, f"CI-normal on [{lo}, {hi}] ({note})", {"timestep_sampling": "ci_normal", "ci_lower": lo, "ci_upper": hi}
    )


#: Mean (before the sigmoid, std 1.0) of the logit-normal with the same probability of t < 750 as CI-normal
#: [750, 1000] (4.375% at T = 1000): solved numerically by :func:`mass_matched_logit_mean` (tests check the match).
LOGIT_MEAN_MATCHED_CI_LATE = 2.807


#: The memorization study's methods, in report order. Parameters of the peers are their papers' defaults where
#: one exists; the logit-normal shift (mean 1.0, std 1.0) puts about as much mass above t = 750 as CI-normal
#: [500, 1000] does.
STUDY_METHODS: dict[str, TrainingMethod] = {
    m.name: m
    for m in (
        TrainingMethod("uniform", "uniform timesteps, unweighted (vanilla DDPM; the baseline)", {}),
        _ci("ci_late", 750, 1000, "the paper's method, late interval"),
        _ci("ci_mid", 500, 1000, "the paper's method, wide late interval"),
        _ci("ci_narrow_late", 900, 1000, "the paper's method, narrow late interval"),
        _ci("ci_early", 0, 250, "control: an early interval, expected to copy more"),
        TrainingMethod(
            "logit_normal_late",
            "SD3 logit-normal shifted toward noise (mean 1.0, std 1.0; Esser et al. 2024)",
            {"timestep_sampling": "logit_normal", "logit_mean": 1.0, "logit_std": 1.0},
        ),
        TrainingMethod(
            "min_snr",
            "uniform timesteps, min-SNR-gamma weighting, gamma 5 (Hang et al. 2023)",
            {"loss_weighting": "min_snr", "snr_gamma": 5.0},
        ),
        TrainingMethod(
            "p2",
            "uniform timesteps, P2 weighting k = 1, gamma = 1 (Choi et al. 2022)",
            {"loss_weighting": "p2", "p2_k": 1.0, "p2_gamma": 1.0},
        ),
        TrainingMethod(
            "importance_ci_late",
            "uniform timesteps weighted by T P(k) of CI-normal [750, 1000]: re-weighting instead of re-sampling",
            {"timestep_sampling": "ci_normal", "ci_lower": 750, "ci_upper": 1000, "loss_weighting": "importance"},
        ),
    )
}

#: The frontier study's extra arms (docs/REPRODUCTION.md, "Matched quality"): "train less" with the uniform sampler
#: at lower learning rates, and a logit-normal that draws as few low-noise steps as ci_late. Resolved by name; not
#: part of ``--methods all`` (which stays the regime study's list).
FRONTIER_METHODS: dict[str, TrainingMethod] = {
    m.name: m
    for m in (
        TrainingMethod(
            "logit_normal_matched",
            "logit-normal mass-matched to ci_late: P(t < 750) = 4.4% (mean 2.807, std 1.0)",
            {"timestep_sampling": "logit_normal", "logit_mean": LOGIT_MEAN_MATCHED_CI_LATE, "logit_std": 1.0},
        ),
        TrainingMethod(
            "uniform_lr0.5",
            "uniform timesteps at half the learning rate (training less)",
            {},
            learning_rate_scale=0.5,
        ),
        TrainingMethod(
            "uniform_lr0.25",
            "uniform timesteps at a quarter of the learning rate (training less)",
            {},
            learning_rate_scale=0.25,
        ),
    )
}

_CI_NAME = re.compile(r"^ci-(\d+)-(\d+)$")


def resolve_method(name: str) -> TrainingMethod:
    """A method of :data:`STUDY_METHODS` by name, or ``ci-LO-HI`` for CI-normal on any interval.

    Raises:
        ValueError: naming the unknown method and the valid names.
    """
    name = name.strip()
    if name in STUDY_METHODS:
        return STUDY_METHODS[name]
    if name in FRONTIER_METHODS:
        return FRONTIER_METHODS[name]
    match = _CI_NAME.match(name)
    if match:
        lo, hi = int(match.group(1)), int(match.group(2))
        return TrainingMethod(
            name, f"CI-normal on [{lo}, {hi}]", {"timestep_sampling": "ci_normal", "ci_lower": lo, "ci_upper": hi}
        )
    raise ValueError(
        f"--methods: unknown method {name!r}; choose from {sorted(STUDY_METHODS) + sorted(FRONTIER_METHODS)} or 'ci-LO-HI'"
    )


def mass_matched_logit_mean(
    t_lower: float = 750, t_upper: float = 1000, *, below: int = 750, logit_std: float = 1.0, T: int = 1000
) -> float:
    """The logit-normal mean whose probability of ``t < below`` equals CI-normal ``[t_lower, t_upper]``'s.

    Both probabilities come from the samplers' own discrete tables, so the match holds for what training draws.
    """
    from scipy.optimize import brentq

    target = float(create_timestep_sampler("ci_normal", T, ci_lower=t_lower, ci_upper=t_upper).probs()[:below].sum())

    def gap(mean: float) -> float:
        probs = create_timestep_sampler("logit_normal", T, logit_mean=mean, logit_std=logit_std).probs()
        return float(probs[:below].sum()) - target

    return float(brentq(gap, -10.0, 10.0, xtol=1e-6))


def parse_methods(text: str) -> list[TrainingMethod]:
    """Parse ``--methods`` (comma-separated names, or ``all`` for :data:`STUDY_METHODS`)."""
    names = [item.strip() for item in str(text).split(",") if item.strip()]
    if names == ["all"]:
        return list(STUDY_METHODS.values())
    if not names:
        raise ValueError(f"--methods holds no method name: {text!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"--methods names a method twice: {text!r}")
    return [resolve_method(name) for name in names]


def apply_method(sampling: Any, method: TrainingMethod) -> Any:
    """A copy of `sampling` (a ``SamplingArguments``) with every field reset to its default, then the method's.

    Resetting first keeps a sweep's shared flags (say ``--snr_gamma``) from leaking into a method that does not name
    them; the method name is recorded in ``method_name``.
    """
    defaults = {f.name: f.default for f in dataclasses.fields(sampling) if f.default is not dataclasses.MISSING}
    unknown = sorted(set(method.settings) - set(defaults))
    if unknown:
        raise ValueError(f"method {method.name!r} sets unknown sampling settings {unknown}")
    return dataclasses.replace(sampling, **{**defaults, **method.settings, "method_name": method.name})
