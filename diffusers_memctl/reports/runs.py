"""Figures of one evaluated run: PCA scatter, nearest-neighbour distances, generated samples beside their nearest
training samples (images, replicated pairs, signals) and the loss history by timestep bin."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..experiments.statistics.analysis import finite_or_none
from .figures import check_window, grid_shape, moving_average, new_figure, to_numpy

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "plot_image_nn_grid",
    "plot_loss_history",
    "plot_nn_distance_histogram",
    "plot_pca_scatter",
    "plot_replicated_pairs",
    "plot_signal_overlay",
]


def plot_pca_scatter(gen_proj: Any, train_proj: Any, *, title: str | None = None, bins: int = 50) -> Figure:
    """Generated vs training samples in the first two PCA components (the paper's Fig. 4), with marginals.

    Args:
        gen_proj (`np.ndarray` or `torch.Tensor`):
            Generated samples projected on the training PCA basis, shape `(N, K)` with `K >= 2`.
        train_proj (`np.ndarray` or `torch.Tensor`):
            Training samples in the same basis, shape `(M, K)`.
        title (`str`, *optional*):
            Figure title.
        bins (`int`, defaults to `50`):
            Histogram bins of the marginals (shared by both sets).

    Returns:
        `matplotlib.figure.Figure`
    """
    gen = to_numpy(gen_proj, "gen_proj")
    train = to_numpy(train_proj, "train_proj")
    for name, arr in (("gen_proj", gen), ("train_proj", train)):
        if arr.ndim != 2 or arr.shape[1] < 2 or arr.shape[0] == 0:
            raise ValueError(f"{name} must have shape (N, K) with N >= 1 and K >= 2; got {arr.shape}")
    fig = new_figure(12.0, 4.0)
    axes = fig.subplots(1, 3)
    axes[0].scatter(train[:, 0], train[:, 1], s=6, alpha=0.4, color="tab:gray", label=f"training (n={len(train)})")
    axes[0].scatter(gen[:, 0], gen[:, 1], s=6, alpha=0.6, color="tab:orange", label=f"generated (n={len(gen)})")
    axes[0].set_xlabel("PC1")
    axes[0].set_ylabel("PC2")
    axes[0].legend(fontsize=8)
    for k in range(2):
        edges = np.histogram_bin_edges(np.concatenate([train[:, k], gen[:, k]]), bins=bins)
        axes[k + 1].hist(train[:, k], bins=edges, density=True, alpha=0.5, color="tab:gray", label="training")
        axes[k + 1].hist(gen[:, k], bins=edges, density=True, alpha=0.5, color="tab:orange", label="generated")
        axes[k + 1].set_xlabel(f"PC{k + 1}")
        axes[k + 1].set_ylabel("density")
        axes[k + 1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def plot_nn_distance_histogram(
    nn_distances: Any,
    *,
    memorization_ratio: Any = None,
    threshold: float = 1.0 / 3.0,
    bins: int = 50,
) -> Figure:
    """Histogram of nearest-training-sample distances of the generated samples.

    Args:
        nn_distances (`np.ndarray` or `torch.Tensor`):
            Distance of each generated sample to its nearest training sample, shape `(N,)`.
        memorization_ratio (`float` or `np.ndarray`, *optional*):
            Either the per-sample nearest / second-nearest distance ratios, shape `(N,)`, drawn in a second panel
            with the memorization threshold, or a scalar memorized fraction, written in the title.
        threshold (`float`, defaults to `1/3`):
            Ratio below which a sample counts as memorized (Yoon et al. 2023).
        bins (`int`, defaults to `50`):
            Histogram bins.

    Returns:
        `matplotlib.figure.Figure`
    """
    distances = to_numpy(nn_distances, "nn_distances").ravel()
    distances = distances[np.isfinite(distances)]
    if distances.size == 0:
        raise ValueError("nn_distances holds no finite value")
    ratios = None if memorization_ratio is None else to_numpy(memorization_ratio, "memorization_ratio")
    two_panels = ratios is not None and ratios.ndim >= 1
    fig = new_figure(10.0 if two_panels else 5.5, 4.0)
    axes = fig.subplots(1, 2 if two_panels else 1, squeeze=False)[0]
    axes[0].hist(distances, bins=bins, color="tab:blue", alpha=0.8)
    axes[0].axvline(
        float(np.median(distances)), color="black", linestyle="--", label=f"median {np.median(distances):.3g}"
    )
    axes[0].set_xlabel("L2 distance to nearest training sample")
    axes[0].set_ylabel("count")
    axes[0].legend(fontsize=8)
    title = f"Nearest-neighbour distances (n={distances.size}, mean {distances.mean():.3g})"
    if ratios is not None and ratios.ndim == 0:
        title += f"\nmemorized fraction: {float(ratios):.3g}"
    elif two_panels:
        finite = ratios.ravel()[np.isfinite(ratios.ravel())]
        axes[1].hist(finite, bins=np.linspace(0.0, max(1.0, float(finite.max(initial=1.0))), bins + 1), alpha=0.8)
        axes[1].axvline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:.3g}")
        axes[1].set_xlabel("nearest / second-nearest distance")
        axes[1].set_ylabel("count")
        axes[1].set_title(f"memorized fraction: {float(np.mean(finite < threshold)) if finite.size else 0.0:.3g}")
        axes[1].legend(fontsize=8)
    axes[0].set_title(title, fontsize=10)
    return fig


def _check_images(name: str, images: np.ndarray) -> None:
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have shape (N, C, H, W) with C = 1 or 3; got {images.shape}")


def plot_image_nn_grid(
    generated: Any,
    nearest: Any,
    *,
    max_items: int = 16,
    ncols: int = 8,
    distances: Any = None,
    ratios: Any = None,
    threshold: float | None = None,
) -> Figure:
    """Generated images, each above its nearest training image; with `ratios` and `threshold`, copies marked.

    A pair counts as a copy when the generated image's nearest training image is less than `threshold` times as far
    as the second nearest (``ratios < threshold``, the test behind ``memorized_fraction``): both images of such a pair
    get a red frame and the title says how many of the pairs shown, and of all `ratios`, are copies.

    Args:
        generated (`np.ndarray` or `torch.Tensor`):
            Generated images, shape `(N, C, H, W)` in `[-1, 1]`, `C` = 1 or 3.
        nearest (`np.ndarray` or `torch.Tensor`):
            Nearest training image of each, same shape.
        max_items (`int`, defaults to `16`):
            Show at most this many pairs (the first ones).
        ncols (`int`, defaults to `8`):
            Pairs per row.
        distances (`np.ndarray`, *optional*):
            Distance of each pair, shape `(N,)`, written above the generated image.
        ratios (`np.ndarray`, *optional*):
            Nearest / second-nearest training distance of every generated sample (all of them, not only those
            shown; the first ones belong to the pairs shown), shape `(M,)` with `M >= N`.
        threshold (`float`, *optional*):
            Ratio under which a pair counts as a copy (the evaluation's ``--memorization_threshold``, 1/3 by
            default). Required with `ratios`.

    Returns:
        `matplotlib.figure.Figure`
    """
    gen = to_numpy(generated, "generated")
    near = to_numpy(nearest, "nearest")
    _check_images("generated", gen)
    _check_images("nearest", near)
    if gen.shape != near.shape:
        raise ValueError(f"generated and nearest must have the same shape; got {gen.shape} and {near.shape}")
    if max_items < 1 or ncols < 1:
        raise ValueError(f"max_items and ncols must be positive; got max_items={max_items}, ncols={ncols}")
    count = min(gen.shape[0], max_items)
    if count == 0:
        raise ValueError("generated holds no image")
    dist = None if distances is None else to_numpy(distances, "distances").ravel()
    ratio = None if ratios is None else to_numpy(ratios, "ratios").ravel()
    if ratio is not None and (threshold is None or ratio.size < count):
        raise ValueError(
            f"ratios needs a threshold and one value per pair shown; got threshold={threshold}, {ratio.size} ratios "
            f"for {count} pairs"
        )
    copy = np.zeros(count, dtype=bool) if ratio is None else ratio[:count] < float(threshold)
    pair_rows, cols = grid_shape(count, ncols)
    fig = new_figure(1.4 * cols, 2.9 * pair_rows + 0.4)
    axes = fig.subplots(2 * pair_rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for index in range(count):
        row, col = divmod(index, cols)
        for offset, images in enumerate((gen, near)):
            image = np.clip((images[index] + 1.0) / 2.0, 0.0, 1.0)
            ax = axes[2 * row + offset, col]
            if image.shape[0] == 1:
                ax.imshow(image[0], cmap="gray", vmin=0.0, vmax=1.0)
            else:
                ax.imshow(np.transpose(image, (1, 2, 0)))
            if copy[index]:
                # A frame needs the axes on; ticks stay hidden.
                ax.set_axis_on()
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_edgecolor("red")
                    spine.set_linewidth(3)
        parts = [] if dist is None or index >= dist.size else [f"d={dist[index]:.3g}"]
        parts += [] if ratio is None else [f"r={ratio[index]:.2f}"]
        if parts:
            color = "red" if copy[index] else "black"
            axes[2 * row, col].set_title(" ".join(parts), fontsize=7, color=color)
    title = "top: generated, bottom: nearest training sample"
    if ratio is not None:
        title += (
            f"\nred frame = copy (r = nearest / second-nearest distance < {float(threshold):.3g}): "
            f"{int(copy.sum())} of the {count} shown, {100 * float(np.mean(ratio < float(threshold))):.1f}% of all "
            f"{ratio.size} samples"
        )
    fig.suptitle(title, fontsize=10)
    return fig


def plot_replicated_pairs(
    generated: Any,
    matched: Any,
    similarity: Any,
    *,
    threshold: float | None = 0.5,
    ncols: int = 4,
    train_indices: Any = None,
) -> Figure:
    """Generated images, each beside its most similar training image in feature space, with their similarity.

    The figure of replication studies (Somepalli et al. 2023, https://arxiv.org/abs/2212.03860): pass the pairs of
    highest cosine similarity first. Similarities at or above `threshold` (replicas) are titled in red.

    Args:
        generated (`np.ndarray` or `torch.Tensor`):
            Generated images, shape `(N, C, H, W)` in `[-1, 1]`, `C` = 1 or 3.
        matched (`np.ndarray` or `torch.Tensor`):
            The most similar training image of each, same shape.
        similarity (`np.ndarray`):
            Cosine similarity of each pair, shape `(N,)`.
        threshold (`float`, *optional*, defaults to `0.5`):
            Replication threshold; `None` colours nothing.
        ncols (`int`, defaults to `4`):
            Pairs per row.
        train_indices (`np.ndarray`, *optional*):
            Index of each matched training image, shown above it.

    Returns:
        `matplotlib.figure.Figure`
    """
    gen = to_numpy(generated, "generated")
    near = to_numpy(matched, "matched")
    idx = None if train_indices is None else np.asarray(train_indices).ravel()
    sim = to_numpy(similarity, "similarity").ravel()
    _check_images("generated", gen)
    _check_images("matched", near)
    if gen.shape != near.shape or sim.size != gen.shape[0]:
        raise ValueError(
            f"generated, matched and similarity must describe the same pairs; got shapes {gen.shape}, {near.shape} "
            f"and {sim.shape}"
        )
    if gen.shape[0] == 0 or ncols < 1:
        raise ValueError(f"need at least one pair and ncols >= 1; got {gen.shape[0]} pairs, ncols={ncols}")
    rows, cols = grid_shape(gen.shape[0], ncols)
    fig = new_figure(2.6 * cols, 1.5 * rows + 0.4)
    axes = fig.subplots(rows, 2 * cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for index in range(gen.shape[0]):
        row, col = divmod(index, cols)
        for offset, images in enumerate((gen, near)):
            image = np.clip((images[index] + 1.0) / 2.0, 0.0, 1.0)
            ax = axes[row, 2 * col + offset]
            if image.shape[0] == 1:
                ax.imshow(image[0], cmap="gray", vmin=0.0, vmax=1.0)
            else:
                ax.imshow(np.transpose(image, (1, 2, 0)))
        replica = threshold is not None and sim[index] >= threshold
        axes[row, 2 * col].set_title(f"sim={sim[index]:.3f}", fontsize=7, color="red" if replica else "black")
        label = "training" if idx is None else f"training #{int(idx[index])}"
        axes[row, 2 * col + 1].set_title(label, fontsize=6, color="gray")
    fig.suptitle("generated (left) beside its most similar training image (right)", fontsize=10)
    return fig


def plot_signal_overlay(generated: Any, training: Any, *, max_items: int = 50) -> Figure:
    """Generated signals drawn over faint training signals, and mean +- std of both (one row per channel).

    Args:
        generated (`np.ndarray` or `torch.Tensor`):
            Generated signals, shape `(N, C, L)`.
        training (`np.ndarray` or `torch.Tensor`):
            Training signals, shape `(M, C, L)`.
        max_items (`int`, defaults to `50`):
            Draw at most this many signals of each set in the overlay (the statistics use all).

    Returns:
        `matplotlib.figure.Figure`
    """
    gen = to_numpy(generated, "generated")
    train = to_numpy(training, "training")
    for name, arr in (("generated", gen), ("training", train)):
        if arr.ndim != 3 or arr.shape[0] == 0:
            raise ValueError(f"{name} must have shape (N, C, L) with N >= 1; got {arr.shape}")
    if gen.shape[1:] != train.shape[1:]:
        raise ValueError(f"generated and training must share (C, L); got {gen.shape[1:]} and {train.shape[1:]}")
    if max_items < 1:
        raise ValueError(f"max_items must be positive; got {max_items}")
    channels, length = gen.shape[1], gen.shape[2]
    t = np.arange(length)
    fig = new_figure(11.0, 3.2 * channels)
    axes = fig.subplots(channels, 2, squeeze=False)
    for c in range(channels):
        overlay, stats_ax = axes[c]
        for signal in train[:max_items, c]:
            overlay.plot(t, signal, color="tab:gray", alpha=0.15, linewidth=0.6)
        for signal in gen[:max_items, c]:
            overlay.plot(t, signal, color="tab:orange", alpha=0.5, linewidth=0.8)
        overlay.set_title(f"channel {c}: generated (orange) over training (gray)", fontsize=9)
        overlay.set_xlabel("t")
        for arr, color, label in ((train, "tab:gray", "training"), (gen, "tab:orange", "generated")):
            mean, std = arr[:, c].mean(axis=0), arr[:, c].std(axis=0)
            stats_ax.plot(t, mean, color=color, label=f"{label} mean (n={arr.shape[0]})")
            stats_ax.fill_between(t, mean - std, mean + std, color=color, alpha=0.25, label=f"{label} +- std")
        stats_ax.set_title(f"channel {c}: mean +- std", fontsize=9)
        stats_ax.set_xlabel("t")
        stats_ax.legend(fontsize=7)
    return fig


def _bin_matrix(records: Sequence[Mapping[str, Any]], num_bins: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-step bin losses and counts, (S, num_bins), merged from finer logged bins with count weights."""
    logged = [r.get("bin_losses") for r in records if r.get("bin_losses") is not None]
    if not logged:
        return None
    width = len(logged[0])
    if width == 0 or width % num_bins:
        raise ValueError(f"records hold {width} bin_losses per step; num_bins={num_bins} must divide it")
    losses = np.full((len(records), width), np.nan)
    counts = np.zeros((len(records), width))
    for i, record in enumerate(records):
        bin_losses = record.get("bin_losses") or [None] * width
        if len(bin_losses) != width:
            raise ValueError(f"step {record.get('step')} has {len(bin_losses)} bin_losses; expected {width}")
        bin_counts = record.get("bin_counts") or [1] * width
        for k, (loss, count) in enumerate(zip(bin_losses, bin_counts)):
            if finite_or_none(loss) is not None and finite_or_none(count) and count > 0:
                losses[i, k], counts[i, k] = float(loss), float(count)
    group = width // num_bins
    weighted = np.nan_to_num(losses) * counts
    merged_counts = counts.reshape(len(records), num_bins, group).sum(axis=2)
    merged_sums = weighted.reshape(len(records), num_bins, group).sum(axis=2)
    return merged_sums, merged_counts


def plot_loss_history(records: Sequence[Mapping[str, Any]], *, num_bins: int = 10, smooth: int = 1) -> Figure:
    """Total training loss and the loss of each timestep bin over optimizer steps.

    Args:
        records (`list[dict]`):
            `loss_history.jsonl` records (`step`, `loss`, optional `bin_losses` / `bin_counts`).
        num_bins (`int`, defaults to `10`):
            Bins to draw; finer logged bins are merged weighted by their counts (must divide the logged number).
        smooth (`int`, defaults to `1`):
            Trailing moving-average window in steps (0 or 1: raw); bin losses are averaged weighted by counts.

    Returns:
        `matplotlib.figure.Figure`
    """
    from matplotlib import colormaps

    smooth = check_window(smooth, "smooth")
    if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive int; got {num_bins!r}")
    records = list(records)
    if not records:
        raise ValueError("records is empty; pass the loss_history.jsonl records of a run")
    missing = [i for i, r in enumerate(records) if "step" not in r or "loss" not in r]
    if missing:
        raise ValueError(f"records {missing[:5]} lack 'step' or 'loss'")
    steps = np.asarray([float(r["step"]) for r in records])
    losses = np.asarray([np.nan if finite_or_none(r["loss"]) is None else float(r["loss"]) for r in records])
    bins = _bin_matrix(records, num_bins)

    fig = new_figure(11.0 if bins is not None else 6.0, 4.0)
    axes = fig.subplots(1, 2 if bins is not None else 1, squeeze=False)[0]
    finite = np.isfinite(losses)
    axes[0].plot(steps[finite], losses[finite], color="tab:gray", alpha=0.4 if smooth > 1 else 1.0, linewidth=0.8)
    if smooth > 1 and finite.sum() > 1:
        axes[0].plot(*moving_average(steps[finite], losses[finite], smooth), color="tab:blue", label=f"avg {smooth}")
        axes[0].legend(fontsize=8)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("loss")
    axes[0].set_title("training loss")
    if bins is not None:
        sums, counts = bins
        window = max(1, min(smooth, len(records)))
        kernel = np.ones(window)
        colormap = colormaps["viridis"]
        positive = True
        for k in range(num_bins):
            numerator = np.convolve(sums[:, k], kernel, mode="valid")
            denominator = np.convolve(counts[:, k], kernel, mode="valid")
            with np.errstate(invalid="ignore", divide="ignore"):
                curve = np.where(denominator > 0, numerator / denominator, np.nan)
            keep = np.isfinite(curve)
            positive &= bool((curve[keep] > 0).all())
            label = f"bin {k}" + (" (least noise)" if k == 0 else " (most noise)" if k == num_bins - 1 else "")
            axes[1].plot(steps[window - 1 :][keep], curve[keep], color=colormap(k / max(1, num_bins - 1)), label=label)
        if positive:
            axes[1].set_yscale("log")
        axes[1].set_xlabel("step")
        axes[1].set_ylabel("loss in timestep bin")
        axes[1].set_title(f"loss by timestep bin ({num_bins} bins of width T/{num_bins})")
        axes[1].legend(fontsize=6, ncol=2)
    return fig
