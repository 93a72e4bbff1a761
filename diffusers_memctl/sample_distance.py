"""One line per evaluation: are the generated samples far from the data, near it, or closer than the data itself?

The yardstick is the training set's own leave-one-out spacing (`reference["nn_l2_mean"]` of ``metrics.json``): the
mean distance from each training sample to its nearest other training sample, i.e. what fresh draws of the data
would score. Generated samples much farther than that have not learned the data (noise scores ~3x on the digits);
samples much closer sit on top of training samples (copies).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["FAR_RATIO", "CLOSE_RATIO", "sample_distance_summary"]

#: Generated nearest-neighbour distance above this multiple of the training set's own spacing: "far from the data".
FAR_RATIO = 1.5
#: Below this multiple: "closer to the training samples than they are to each other" (copies).
CLOSE_RATIO = 0.5


def sample_distance_summary(metrics: Mapping[str, Any], reference: Mapping[str, Any] | None) -> dict[str, Any]:
    """Compare the samples' mean nearest-neighbour L2 distance with the training set's leave-one-out spacing.

    Args:
        metrics (`Mapping`): The evaluation's metrics (`nn_l2_mean`).
        reference (`Mapping`, *optional*): The training set's leave-one-out metrics (`nn_l2_mean`); empty when the
            training set was too small or too large for one.

    Returns:
        `dict`: `verdict` (`"far"`, `"near"`, `"closer_than_data"` or `"unknown"`), `generated_nn_l2_mean`,
        `training_loo_nn_l2_mean`, `ratio` and `line` (one sentence for logs, reports and the card).
    """
    generated = metrics.get("nn_l2_mean")
    spacing = (reference or {}).get("nn_l2_mean")
    summary: dict[str, Any] = {
        "generated_nn_l2_mean": generated,
        "training_loo_nn_l2_mean": spacing,
        "ratio": None,
        "far_ratio": FAR_RATIO,
        "close_ratio": CLOSE_RATIO,
    }
    if generated is None or not spacing:
        summary["verdict"] = "unknown"
        summary["line"] = "sample distance: no leave-one-out reference of the training set, no verdict"
        return summary
    ratio = float(generated) / float(spacing)
    summary["ratio"] = ratio
    measured = (
        f"nearest-neighbour distance {generated:.3g} vs the training set's own leave-one-out spacing {spacing:.3g} "
        f"(ratio {ratio:.2f})"
    )
    if ratio > FAR_RATIO:
        summary["verdict"] = "far"
        summary["line"] = (
            f"samples are FAR from the data: {measured} > {FAR_RATIO}; the model has not learned the data "
            "(train longer or check the learning rate); copy metrics mean little here"
        )
    elif ratio < CLOSE_RATIO:
        summary["verdict"] = "closer_than_data"
        summary["line"] = (
            f"samples are closer to the training samples than those are to each other: {measured} < {CLOSE_RATIO}; "
            "look for copies"
        )
    else:
        summary["verdict"] = "near"
        summary["line"] = f"samples are near the data, as far as fresh draws would be: {measured}"
    return summary
