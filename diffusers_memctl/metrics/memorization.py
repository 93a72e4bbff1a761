"""Memorization metrics: distances from generated to training samples, the nearest/second-nearest ratio, the
training set's own leave-one-out values and the held-out quality, plus [`compute_metrics`] (everything of one run).

- `nn_l2`: L2 distance from each generated sample to its nearest training sample.
- `mean_l2`: mean L2 distance from each generated sample to all training samples (the paper's wording).
- `memorized_fraction`: share of generated samples whose nearest / second-nearest training distance ratio is below
  1/3 (Yoon et al. 2023, https://openreview.net/forum?id=shciCbSk9h; Gu et al. 2023, https://arxiv.org/abs/2310.02664).
- `nn_ratio`: that ratio itself, summarised (mean, median): a continuous memorization signal that moves before any
  sample crosses the 1/3 threshold.
- `reference_metrics`: the training set's own (leave-one-out) values of these distances, the yardstick to read the
  generated values against.

The nearest neighbours are exact ([`~diffusers_memctl.metrics.nearest_neighbors`]).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch

from .arrays import _as_pair, _check_chunk, _check_int
from .brute_force import _GATHER_BLOCK_ELEMENTS, _squared_norms
from .distribution import frechet_distance, pca_distribution_distances, pca_project, signal_js
from .neighbors import _nearest_neighbors

__all__ = [
    "compute_metrics",
    "heldout_metrics",
    "mean_l2",
    "memorized_fraction",
    "nn_l2",
    "nn_ratio",
    "reference_metrics",
]

#: Samples of shape `(N, ...)`: torch tensors or numpy arrays.
ArrayLike = torch.Tensor | np.ndarray


def _nn_summary(nearest: np.ndarray, dim: int) -> dict[str, float]:
    mean, median = float(np.mean(nearest)), float(np.median(nearest))
    root = math.sqrt(dim)
    return {"mean": mean, "median": median, "mean_per_dim": mean / root, "median_per_dim": median / root}


def _nn_ratios(d1: np.ndarray, d2: np.ndarray) -> np.ndarray:
    # d1 == d2 == 0 (a copy of a duplicated training sample) is a copy: the ratio is taken as 0.
    return np.divide(d1, d2, out=np.zeros_like(d1), where=d2 > 0)


def _check_threshold(threshold: float) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating, np.integer)):
        raise ValueError(f"`threshold` must be a number in (0, 1], got {threshold!r}")
    if not 0.0 < float(threshold) <= 1.0:
        raise ValueError(f"`threshold` must be in (0, 1], got {threshold}")
    return float(threshold)


def nn_l2(generated: ArrayLike, training: ArrayLike, **kwargs: Any) -> dict[str, float]:
    """Nearest-neighbour L2 distance from generated to training samples (DESIGN.md, "Metric definitions").

    Args:
        generated (`torch.Tensor` or `np.ndarray` of shape `(N, ...)`):
            Generated samples in the model's value range.
        training (`torch.Tensor` or `np.ndarray` of shape `(M, ...)`):
            Training samples with the same per-sample shape.
        **kwargs:
            `chunk_size` and `device`, forwarded to [`nearest_neighbors`].

    Returns:
        `dict[str, float]`: `mean` and `median` over generated samples of `min_j ||x_gen - x_train_j||_2`, and
        `mean_per_dim`, `median_per_dim`: the same divided by `sqrt(D)`.
    """
    gen, train = _as_pair(generated, training, device=kwargs.pop("device", None))
    chunk_size = kwargs.pop("chunk_size", None)
    if kwargs:
        raise ValueError(f"unexpected keyword arguments {sorted(kwargs)}; valid are 'chunk_size' and 'device'")
    distances, _ = _nearest_neighbors(gen, train, 1, _check_chunk(chunk_size))
    return _nn_summary(distances[:, 0].cpu().numpy(), gen.shape[1])


def mean_l2(
    generated: ArrayLike,
    training: ArrayLike,
    *,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
) -> float:
    """Mean over generated samples of the mean L2 distance to all training samples.

    The paper's image metric (arXiv 2601.21348, Sec. 5: "the L2 distance between each generated image and the full
    training set ... then the mean over training images"). Computed in float64 blocks with the matmul expansion.

    Args:
        generated (`torch.Tensor` or `np.ndarray` of shape `(N, ...)`):
            Generated samples.
        training (`torch.Tensor` or `np.ndarray` of shape `(M, ...)`):
            Training samples with the same per-sample shape.
        chunk_size (`int`, *optional*):
            Rows per block of either set; defaults to about 4M float64 values per block.
        device (`str` or `torch.device`, *optional*):
            Device to compute on; defaults to the device of the input tensors.

    Returns:
        `float`: `mean_i mean_j ||x_gen_i - x_train_j||_2`.
    """
    gen, train = _as_pair(generated, training, device=device)
    return _mean_l2(gen, train, _check_chunk(chunk_size))


def _mean_l2(gen: torch.Tensor, train: torch.Tensor, chunk_size: int | None) -> float:
    """[`mean_l2`] on validated `(N, D)` and `(M, D)` tensors on one device."""
    if chunk_size is None:
        chunk_size = max(1, _GATHER_BLOCK_ELEMENTS // gen.shape[1])
    gen_sq = _squared_norms(gen)
    train_sq = _squared_norms(train)
    total = torch.zeros((), dtype=torch.float64, device=gen.device)
    for t_start in range(0, train.shape[0], chunk_size):
        t_block = train[t_start : t_start + chunk_size].to(torch.float64)
        t_sq = train_sq[t_start : t_start + chunk_size]
        for g_start in range(0, gen.shape[0], chunk_size):
            g_block = gen[g_start : g_start + chunk_size].to(torch.float64)
            sq = torch.addmm(t_sq[None, :], g_block, t_block.T, beta=1.0, alpha=-2.0)
            sq += gen_sq[g_start : g_start + chunk_size, None]
            total += sq.clamp_(min=0.0).sqrt_().sum()
    return float(total) / (gen.shape[0] * train.shape[0])


def memorized_fraction(
    generated: ArrayLike,
    training: ArrayLike,
    threshold: float = 1 / 3,
    *,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
) -> float:
    """Share of generated samples whose nearest / second-nearest training distance ratio is below `threshold`.

    The memorization criterion of Yoon et al. (2023), "Diffusion probabilistic models generalize when they fail to
    memorize", and Gu et al. (2023), "On memorization in diffusion models" (https://arxiv.org/abs/2310.02664):
    `d(x, NN_1(x)) / d(x, NN_2(x)) < 1/3`. A sample at distance 0 from its nearest neighbour counts as memorized
    (ratio 0), also when the second neighbour is a duplicate at distance 0.

    Args:
        generated (`torch.Tensor` or `np.ndarray` of shape `(N, ...)`):
            Generated samples.
        training (`torch.Tensor` or `np.ndarray` of shape `(M, ...)`):
            Training samples with the same per-sample shape, `M >= 2`.
        threshold (`float`, defaults to `1/3`):
            Ratio threshold in `(0, 1]`.
        chunk_size (`int`, *optional*):
            Forwarded to [`nearest_neighbors`].
        device (`str` or `torch.device`, *optional*):
            Forwarded to [`nearest_neighbors`].

    Returns:
        `float`: fraction in `[0, 1]`.
    """
    threshold = _check_threshold(threshold)
    gen, train = _as_pair(generated, training, device=device)
    if train.shape[0] < 2:
        raise ValueError(f"`training` must hold at least 2 samples for a distance ratio, got {train.shape[0]}")
    distances, _ = _nearest_neighbors(gen, train, 2, _check_chunk(chunk_size))
    d = distances.cpu().numpy()
    return float(np.mean(_nn_ratios(d[:, 0], d[:, 1]) < threshold))


def nn_ratio(
    generated: ArrayLike,
    training: ArrayLike,
    *,
    exclude_self: bool = False,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Nearest / second-nearest training distance ratio of each generated sample, summarised.

    The quantity that [`memorized_fraction`] thresholds at 1/3 (Yoon et al. 2023; Gu et al. 2023,
    https://arxiv.org/abs/2310.02664), kept continuous: 0 for a copy of a training sample, close to 1 for a sample
    about as far from its nearest training sample as from the next one. Its mean falls as a model drifts toward its
    training set, long before any sample counts as memorized. With `exclude_self=True` and the training set passed as
    `generated`, each sample's own copy is skipped (leave-one-out): the value that fresh draws of the data
    distribution would reach, a reference for the generated value.

    Args:
        generated (`torch.Tensor` or `np.ndarray` of shape `(N, ...)`):
            Generated samples (the training samples themselves with `exclude_self=True`).
        training (`torch.Tensor` or `np.ndarray` of shape `(M, ...)`):
            Training samples with the same per-sample shape, `M >= 2` (`M >= 3` with `exclude_self`).
        exclude_self (`bool`, defaults to `False`):
            Drop each query's nearest neighbour first (its own copy when `generated` is `training`).
        chunk_size (`int`, *optional*):
            Forwarded to [`nearest_neighbors`].
        device (`str` or `torch.device`, *optional*):
            Forwarded to [`nearest_neighbors`].

    Returns:
        `dict[str, float]`: `mean` and `median` of the per-sample ratios, each in `[0, 1]`.
    """
    gen, train = _as_pair(generated, training, device=device)
    skip = 1 if exclude_self else 0
    if exclude_self and gen.shape[0] != train.shape[0]:
        raise ValueError(
            f"`exclude_self` compares a set with itself: `generated` has {gen.shape[0]} samples, "
            f"`training` {train.shape[0]}"
        )
    if train.shape[0] < 2 + skip:
        raise ValueError(
            f"`training` must hold at least {2 + skip} samples for a distance ratio, got {train.shape[0]}"
        )
    distances, _ = _nearest_neighbors(gen, train, 2 + skip, _check_chunk(chunk_size))
    d = distances.cpu().numpy()
    ratios = _nn_ratios(d[:, skip], d[:, skip + 1])
    return {"mean": float(np.mean(ratios)), "median": float(np.median(ratios))}


def reference_metrics(
    training: ArrayLike,
    *,
    memorization_threshold: float = 1 / 3,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """The training set's own values of the distance metrics, each sample left out of its own comparison.

    What a perfect generator would score: fresh draws of the data distribution sit about as far from the training set
    as a left-out training sample sits from the rest. Generated values read against these: `mean_l2` well below the
    reference means samples bunched toward the data's centre (less diverse than the data), not "closer to the data";
    `nn_l2_mean` or `nn_ratio_mean` well below it means samples closer to individual training points than real data
    is, the start of memorization. `memorized_fraction` here counts near-duplicates inside the training set.

    Args:
        training (`torch.Tensor` or `np.ndarray` of shape `(M, ...)`):
            Training samples, `M >= 3`.
        memorization_threshold (`float`, defaults to `1/3`):
            Distance-ratio threshold of `memorized_fraction`, in `(0, 1]`.
        chunk_size (`int`, *optional*):
            Chunk size of the distance computations.
        device (`str` or `torch.device`, *optional*):
            Device to compute on; defaults to the device of the input tensor.

    Returns:
        `dict[str, float]`: `mean_l2` (mean over pairs `i != j`), `nn_l2_mean`, `nn_l2_median`, `nn_ratio_mean`,
        `nn_ratio_median` and `memorized_fraction`, under the names of [`compute_metrics`].
    """
    threshold = _check_threshold(memorization_threshold)
    train, _ = _as_pair(training, training, device=device)
    m = train.shape[0]
    if m < 3:
        raise ValueError(f"`training` needs at least 3 samples for a leave-one-out distance ratio, got {m}")
    chunk = _check_chunk(chunk_size)
    distances, _ = _nearest_neighbors(train, train, 3, chunk)
    d = distances.cpu().numpy()[:, 1:]  # column 0 is each sample itself (or a duplicate: distance 0 either way)
    ratios = _nn_ratios(d[:, 0], d[:, 1])
    # The M self-distances in the all-pairs mean are 0: rescale to the mean over the M (M - 1) other pairs.
    return {
        "mean_l2": _mean_l2(train, train, chunk) * m / (m - 1),
        "nn_l2_mean": float(np.mean(d[:, 0])),
        "nn_l2_median": float(np.median(d[:, 0])),
        "nn_ratio_mean": float(np.mean(ratios)),
        "nn_ratio_median": float(np.median(ratios)),
        "memorized_fraction": float(np.mean(ratios < threshold)),
    }


def heldout_metrics(
    generated: ArrayLike,
    training: ArrayLike,
    heldout: ArrayLike,
    *,
    n_components: int = 8,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Quality against data the model never saw: a Frechet distance that does not reward copying.

    Every distance to the *training* set rewards a model that reproduces it. With a training subset (the study's
    training-set-size axis), the rest of the data is a held-out sample of the same distribution. PCA with
    `n_components` is fitted on the held-out samples and three Frechet distances (FID convention) are taken in that
    space against them:

    - `heldout_frechet_distance`: the generated samples;
    - `heldout_frechet_copier`: as many samples drawn with replacement from the training set, i.e. what a model
      that only replays its training data would score;
    - `heldout_frechet_fresh`: as many other held-out samples (when there are enough), i.e. what fresh draws of the
      data distribution score — the floor set by the sample size.

    A generated value between `fresh` and `copier` means better-than-replay generalisation; at or above `copier`, no
    more than a copy of the training set. The comparison sets have the size of `generated`, because Frechet distances
    are biased by the number of samples.

    Args:
        generated (`torch.Tensor` or `np.ndarray` of shape `(N, ...)`): Generated samples, `N >= 2`.
        training (`torch.Tensor` or `np.ndarray` of shape `(M, ...)`): The training samples.
        heldout (`torch.Tensor` or `np.ndarray` of shape `(H, ...)`): Samples of the same data left out of training,
            `H > n_components`.
        n_components (`int`, defaults to 8): PCA components (capped at `H - 1` and the sample dimension).
        generator (`torch.Generator`, *optional*): Source of the resampling draws.

    Returns:
        `dict[str, float]`: `heldout_frechet_distance`, `heldout_frechet_copier`, `heldout_frechet_fresh` (`nan`
        when `H < 2 N`), and `heldout_frechet_gap_ratio` = (generated - fresh) / (copier - fresh) when both exist.
    """
    gen, train = _as_pair(generated, training)
    held, _ = _as_pair(heldout, heldout)
    gen, train, held = gen.cpu(), train.cpu(), held.cpu()
    n = gen.shape[0]
    k = min(int(n_components), held.shape[0] - 1, held.shape[1])
    if n < 2 or k < 1:
        raise ValueError(
            f"held-out metrics need >= 2 generated and >= 2 held-out samples, got {n} and {held.shape[0]}"
        )
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    # pca_project fits on its second argument: the held-out samples.
    gen_proj, held_proj, _ = pca_project(gen, held, n_components=k, fit_on="train")
    train_proj, _, _ = pca_project(train, held, n_components=k, fit_on="train")
    copies = train_proj[torch.randint(train_proj.shape[0], (n,), generator=generator).numpy()]
    out = {
        "heldout_frechet_distance": frechet_distance(gen_proj, held_proj),
        "heldout_frechet_copier": frechet_distance(copies, held_proj),
        "heldout_frechet_fresh": float("nan"),
        "heldout_frechet_gap_ratio": float("nan"),
    }
    if held.shape[0] >= 2 * n:
        order = torch.randperm(held.shape[0], generator=generator).numpy()
        fresh, rest = held_proj[order[:n]], held_proj[order[n:]]
        out["heldout_frechet_fresh"] = frechet_distance(fresh, rest)
        span = out["heldout_frechet_copier"] - out["heldout_frechet_fresh"]
        if span > 0:
            out["heldout_frechet_gap_ratio"] = (out["heldout_frechet_distance"] - out["heldout_frechet_fresh"]) / span
    return out


# --------------------------------------------------------------------------------------------------------------------
# Everything at once
# --------------------------------------------------------------------------------------------------------------------


def compute_metrics(
    generated: ArrayLike,
    training: ArrayLike,
    *,
    modality: Literal["image", "signal"] = "image",
    n_components: int = 2,
    bins: int = 50,
    memorization_threshold: float = 1 / 3,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """All evaluation metrics of one run under the flat names of `metrics.json`.

    One nearest-neighbour pass (k = 2) serves `nn_l2_*`, `memorized_fraction` and `nn_ratio_*`; see the individual
    functions for definitions and sources. PCA is fitted on the training samples.

    Args:
        generated (`torch.Tensor` or `np.ndarray` of shape `(N, ...)`):
            Generated samples in the model's value range, `N >= 2`.
        training (`torch.Tensor` or `np.ndarray` of shape `(M, ...)`):
            Training samples with the same per-sample shape, `M >= 2`.
        modality (`str`, defaults to `"image"`):
            `"image"` or `"signal"`; signals also get `signal_js_mean` and `signal_js_median`.
        n_components (`int`, defaults to `2`):
            Number of principal components K.
        bins (`int`, defaults to `50`):
            Histogram bins of the JS distances.
        memorization_threshold (`float`, defaults to `1/3`):
            Distance-ratio threshold of `memorized_fraction`, in `(0, 1]`.
        chunk_size (`int`, *optional*):
            Chunk size of the distance computations.

    Returns:
        `dict[str, float]`: `nn_l2_mean`, `nn_l2_median`, `nn_l2_mean_per_dim`, `nn_l2_median_per_dim`, `mean_l2`,
        `memorized_fraction`, `nn_ratio_mean`, `nn_ratio_median`, `pca_pc{k}_wasserstein_1`,
        `pca_pc{k}_js_distance` (k = 1..K), `pca_frechet_distance`, and for signals `signal_js_mean`,
        `signal_js_median`.
    """
    if modality not in ("image", "signal"):
        raise ValueError(f"`modality` must be 'image' or 'signal', got {modality!r}")
    threshold = _check_threshold(memorization_threshold)
    bins = _check_int(bins, "bins", low=1)  # the check of the distribution metrics, before any distance
    gen, train = _as_pair(generated, training)
    for name, x in (("generated", gen), ("training", train)):
        if x.shape[0] < 2:
            raise ValueError(f"`{name}` needs at least 2 samples (PCA and the distance ratio), got {x.shape[0]}")
    _check_int(n_components, "n_components", low=1, high=min(train.shape[0] - 1, train.shape[1]))

    distances, _ = _nearest_neighbors(gen, train, 2, _check_chunk(chunk_size))
    d = distances.cpu().numpy()
    metrics = {f"nn_l2_{key}": value for key, value in _nn_summary(d[:, 0], gen.shape[1]).items()}
    metrics["mean_l2"] = _mean_l2(gen, train, chunk_size)
    ratios = _nn_ratios(d[:, 0], d[:, 1])
    metrics["memorized_fraction"] = float(np.mean(ratios < threshold))
    metrics["nn_ratio_mean"], metrics["nn_ratio_median"] = float(np.mean(ratios)), float(np.median(ratios))
    metrics.update(pca_distribution_distances(gen, train, n_components=n_components, bins=bins))
    if modality == "signal":
        metrics.update({f"signal_js_{key}": value for key, value in signal_js(gen, train, bins=bins).items()})
    return metrics
