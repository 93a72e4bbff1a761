"""Figures of a gradient profile (:mod:`diffusers_memctl.diagnostics`): gradient norm by timestep and each
sampler's contribution."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .figures import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "plot_gradient_contribution",
    "plot_gradient_profile",
]


def _profile_column(bins: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    return np.array([np.nan if row.get(key) is None else float(row[key]) for row in bins])


def plot_gradient_profile(profile: Mapping[str, Any]) -> Figure:
    """Gradient norms, coherence and alignment against the timestep, with one-standard-error bars.

    Args:
        profile (`Mapping`): The content of ``gradient_profile.json`` (see `diffusers_memctl.diagnostics`).

    Returns:
        `matplotlib.figure.Figure`
    """
    bins = profile.get("bins") or []
    if not bins:
        raise ValueError("the gradient profile has no bins")
    t = _profile_column(bins, "timestep")
    fig = new_figure(13.0, 3.8)
    axes = fig.subplots(1, 3)
    for key, label in (("mean_batch_grad_norm", "E||g|| (per batch)"), ("mean_grad_norm", "||E g|| (U-statistic)")):
        axes[0].errorbar(t, _profile_column(bins, key), yerr=_profile_column(bins, f"{key}_se"), marker="o",
                         ms=3, capsize=2, label=label)  # fmt: skip
    axes[0].set_yscale("log")
    axes[0].set_ylabel("gradient norm")
    axes[0].legend(fontsize=8)
    axes[1].errorbar(t, _profile_column(bins, "coherence"), yerr=_profile_column(bins, "coherence_se"), marker="o",
                     ms=3, capsize=2, color="C2")  # fmt: skip
    axes[1].set_ylabel("coherence ||E g|| / E||g||")
    axes[1].set_ylim(bottom=0)
    axes[2].errorbar(t, _profile_column(bins, "alignment"), yerr=_profile_column(bins, "alignment_se"), marker="o",
                     ms=3, capsize=2, color="C3", label="batch gradients")  # fmt: skip
    if "per_sample_alignment" in bins[0]:
        axes[2].errorbar(t, _profile_column(bins, "per_sample_alignment"),
                         yerr=_profile_column(bins, "per_sample_alignment_se"), marker="s", ms=3, capsize=2,
                         color="C4", label="per-sample gradients")  # fmt: skip
    axes[2].set_ylabel("alignment (Chatterjee alpha)")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("timestep t")
        ax.grid(alpha=0.3)
    settings = profile.get("settings", {})
    fig.suptitle(
        f"gradient profile: {settings.get('num_batches', '?')} batches of {settings.get('batch_size', '?')} per bin "
        "(error bars: 1 jackknife SE)"
    )
    return fig


def plot_gradient_contribution(profile: Mapping[str, Any], specs: Sequence[str] | None = None) -> Figure:
    """Contribution share of every timestep bin under each sampler, with a one-standard-error band.

    Args:
        profile (`Mapping`): The content of ``gradient_profile.json`` with its ``contribution`` entries.
        specs (`Sequence[str]`, *optional*): Which samplers to draw (default: all in the file).

    Returns:
        `matplotlib.figure.Figure`
    """
    contribution = profile.get("contribution") or {}
    specs = list(contribution) if specs is None else list(specs)
    missing = [spec for spec in specs if spec not in contribution]
    if not specs or missing:
        raise ValueError(f"no contribution shares for {missing or 'any sampler'}; the file has {list(contribution)}")
    t = _profile_column(profile["bins"], "timestep")
    fig = new_figure(7.5, 4.2)
    ax = fig.subplots()
    for i, spec in enumerate(specs):
        shares = np.asarray(contribution[spec]["shares"])
        se = np.asarray(contribution[spec]["shares_se"])
        ax.plot(t, shares, marker="o", ms=3, color=f"C{i % 10}", label=spec)
        ax.fill_between(t, shares - se, shares + se, color=f"C{i % 10}", alpha=0.2, linewidth=0)
    ax.set_xlabel("timestep t (bin midpoint)")
    ax.set_ylabel("share of the expected gradient")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("contribution share per bin: P(bin) w(bin) ||E g_bin||, normalised (band: 1 SE)")
    return fig
