"""Memorization and distribution metrics for generated samples.

Pure functions over arrays of shape `(N, ...)` (torch tensors or numpy arrays); every sample is flattened to a vector
of dimension `D`. Definitions follow "Memorization Control in Diffusion Models from Denoising-centric Perspective"
(https://arxiv.org/abs/2601.21348, Sec. 5) and the project's DESIGN.md ("Metric definitions"):

- `nn_l2`: L2 distance from each generated sample to its nearest training sample.
- `mean_l2`: mean L2 distance from each generated sample to all training samples (the paper's wording).
- `memorized_fraction`: share of generated samples whose nearest / second-nearest training distance ratio is below
  1/3 (Yoon et al. 2023, https://openreview.net/forum?id=shciCbSk9h; Gu et al. 2023, https://arxiv.org/abs/2310.02664).
- `nn_ratio`: that ratio itself, summarised (mean, median): a continuous memorization signal that moves before any
  sample crosses the 1/3 threshold.
- `reference_metrics`: the training set's own (leave-one-out) values of these distances, the yardstick to read the
  generated values against.
- PCA distances: per-component 1-Wasserstein and base-2 Jensen-Shannon distances plus a Frechet distance between the
  PCA projections of generated and training samples.
- `signal_js`: base-2 Jensen-Shannon distance between each generated signal's amplitude histogram and the pooled
  training amplitude histogram.
- Feature-space metrics on any embedding (backbone features from `features.py`, or pixels / PCA projections):
  `replication_score` (max cosine similarity >= 0.5; Somepalli et al. 2023, https://arxiv.org/abs/2212.03860),
  `precision_recall` (k = 3; Kynkaanniemi et al. 2019, https://arxiv.org/abs/1904.06991), `density_coverage`
  (k = 5; Naeem et al. 2020, https://arxiv.org/abs/2002.09797), the Frechet distance of the embeddings (FD_DINOv2
  with DINOv2 features; Stein et al. 2023, https://arxiv.org/abs/2306.04675), `compute_feature_metrics` for all of
  them and `feature_reference_metrics` for the training set's own values.

No function prints, plots or touches files. Distances are computed in chunks (never an `N x M x D` tensor) and the
nearest neighbours are exact (see `nearest_neighbors`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import scipy.linalg
import scipy.sparse.linalg
import scipy.stats
import torch

from .arrays import _as_pair, _check_chunk, _check_int, _to_numpy64
from .brute_force import _DISTANCE_CHUNK_ELEMENTS, _GATHER_BLOCK_ELEMENTS, _squared_norms
from .neighbors import _nearest_neighbors, nearest_neighbors

__all__ = [
    "ReplicationResult",
    "compute_feature_metrics",
    "compute_metrics",
    "cosine_nearest_neighbors",
    "density_coverage",
    "evaluate_module_path",
    "feature_reference_metrics",
    "frechet_distance",
    "heldout_metrics",
    "js_distance",
    "mean_l2",
    "memorized_fraction",
    "nearest_neighbors",
    "nn_ratio",
    "reference_metrics",
    "nn_l2",
    "pca_distribution_distances",
    "pca_project",
    "precision_recall",
    "replication_score",
    "signal_js",
    "wasserstein_1",
]

ArrayLike = torch.Tensor | np.ndarray

# Above this size of the smaller Gram/covariance matrix, PCA uses Lanczos (ARPACK) instead of a dense eigensolver.
_PCA_DENSE_MAX = 2048

EVALUATE_MODULES = (
    "memctl_memorization",
    "memctl_metrics",
    "memctl_nn_l2",
    "memctl_pca_distances",
    "memctl_signal_js",
)


# --------------------------------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------------------------------


def _as_1d(x: Any, name: str) -> np.ndarray:
    arr = x.detach().to("cpu", torch.float64).numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"`{name}` must be a non-empty 1D array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"`{name}` contains NaN or inf; all values must be finite")
    return arr


# --------------------------------------------------------------------------------------------------------------------
# Memorization metrics
# --------------------------------------------------------------------------------------------------------------------


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
# Distribution metrics
# --------------------------------------------------------------------------------------------------------------------


def _pca_basis(centered: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, components `(K, D)` and explained-variance ratios of the fitted samples, centred in place (float64)."""
    n, dim = centered.shape
    mean = centered.mean(axis=0)
    centered -= mean  # in place: the caller hands over its own copy, which keeps peak memory at one float64 copy
    total_var = float(np.einsum("ij,ij->", centered, centered)) / (n - 1)
    use_gram = n < dim  # eigenvectors of the smaller of X X^T (n x n) and X^T X (D x D)
    size = n if use_gram else dim
    if size <= _PCA_DENSE_MAX or n_components >= size - 1:
        small = centered @ centered.T if use_gram else centered.T @ centered
        evals, evecs = scipy.linalg.eigh(small, subset_by_index=[size - n_components, size - 1])
    else:
        if use_gram:
            matvec = lambda v: centered @ (centered.T @ v)  # noqa: E731
        else:
            matvec = lambda v: centered.T @ (centered @ v)  # noqa: E731
        op = scipy.sparse.linalg.LinearOperator((size, size), matvec=matvec, dtype=np.float64)
        # A fixed start vector makes Lanczos deterministic; all-ones would be orthogonal to the centred Gram's span.
        v0 = np.random.default_rng(0).standard_normal(size)
        # tol=1e-10 (relative residual) leaves eigenvector errors near 1e-12 at a fraction of the cost of tol=0.
        ncv = min(size, max(2 * n_components + 1, 32))
        evals, evecs = scipy.sparse.linalg.eigsh(op, k=n_components, which="LA", v0=v0, tol=1e-10, ncv=ncv)
    order = np.argsort(evals)[::-1]
    evals, evecs = evals[order], evecs[:, order]
    if total_var <= 0.0 or evals[-1] <= 1e-12 * max(float(evals[0]), 0.0) or evals[-1] <= 0.0:
        raise ValueError(
            f"PCA needs {n_components} direction(s) of non-zero variance in the fitted samples, but their variance "
            f"spectrum is {np.maximum(evals, 0.0).tolist()}; use fewer components or more varied samples"
        )
    components = (centered.T @ evecs / np.sqrt(evals)).T if use_gram else evecs.T
    components /= np.linalg.norm(components, axis=1, keepdims=True)
    # Sign convention: the loading with the largest magnitude is positive (first one on ties).
    pivots = np.argmax(np.abs(components), axis=1)
    components *= np.sign(components[np.arange(n_components), pivots])[:, None]
    return mean, components, evals / (n - 1) / total_var


def pca_project(
    generated: ArrayLike,
    training: ArrayLike,
    n_components: int = 2,
    fit_on: Literal["train", "both"] = "train",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Projects generated and training samples on the leading principal components.

    The PCA comparison of arXiv 2601.21348 (Sec. 5.1, Fig. 4). The basis is fitted on the training samples (or on
    training and generated samples together) by an exact symmetric eigensolver on the smaller of the covariance and
    Gram matrices (Lanczos with a fixed start vector for large ones). Each component's sign is fixed so that its
    largest-magnitude loading is positive, which makes projections reproducible.

    Args:
        generated (`torch.Tensor` or `np.ndarray` of shape `(N, ...)`):
            Generated samples.
        training (`torch.Tensor` or `np.ndarray` of shape `(M, ...)`):
            Training samples with the same per-sample shape.
        n_components (`int`, defaults to `2`):
            Number of components K, `1 <= K <= min(number of fitted samples - 1, D)`.
        fit_on (`str`, defaults to `"train"`):
            `"train"` fits on the training samples; `"both"` on training and generated samples together.

    Returns:
        `tuple[np.ndarray, np.ndarray, np.ndarray]`: generated projections `(N, K)`, training projections `(M, K)`
        and the explained-variance ratio of each component `(K,)`, all float64.
    """
    if fit_on not in ("train", "both"):
        raise ValueError(f"`fit_on` must be 'train' or 'both', got {fit_on!r}")
    gen_t, train_t = _as_pair(generated, training)
    n_fit = train_t.shape[0] + (gen_t.shape[0] if fit_on == "both" else 0)
    if n_fit < 2:
        raise ValueError(f"PCA needs at least 2 fitted samples, got {n_fit} (fit_on={fit_on!r})")
    n_components = _check_int(n_components, "n_components", low=1, high=min(n_fit - 1, train_t.shape[1]))
    # One private float64 copy of the fitted samples, centred in place; projections reuse it.
    fit = torch.cat([train_t, gen_t.to(train_t.dtype)]) if fit_on == "both" else train_t
    fit = fit.detach().to("cpu", torch.float64, copy=True).numpy()
    mean, components, ratio = _pca_basis(fit, n_components)
    train_proj = fit[: train_t.shape[0]] @ components.T
    if fit_on == "both":
        gen_proj = fit[train_t.shape[0] :] @ components.T
    else:
        gen_proj = (_to_numpy64(gen_t) - mean) @ components.T
    return gen_proj, train_proj, ratio


def wasserstein_1(a: ArrayLike | Sequence[float], b: ArrayLike | Sequence[float]) -> float:
    """1-Wasserstein distance between two 1D empirical distributions (`scipy.stats.wasserstein_distance`).

    Args:
        a (`np.ndarray`, `torch.Tensor` or sequence of shape `(N,)`):
            First sample.
        b (`np.ndarray`, `torch.Tensor` or sequence of shape `(M,)`):
            Second sample.

    Returns:
        `float`: the distance, in the units of the samples.
    """
    return float(scipy.stats.wasserstein_distance(_as_1d(a, "a"), _as_1d(b, "b")))


def _js_from_counts(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Base-2 Jensen-Shannon distance between histograms along the last axis (counts are normalized here)."""
    p = p / p.sum(axis=-1, keepdims=True)
    q = q / q.sum(axis=-1, keepdims=True)
    mix = 0.5 * (p + q)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log2(p / mix), 0.0).sum(axis=-1)
        kl_q = np.where(q > 0, q * np.log2(q / mix), 0.0).sum(axis=-1)
    return np.sqrt(np.clip(0.5 * (kl_p + kl_q), 0.0, 1.0))


def _check_bins(bins: int) -> int:
    return _check_int(bins, "bins", low=1)


def _check_range(value_range: tuple[float, float] | None) -> tuple[float, float] | None:
    if value_range is None:
        return None
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise ValueError(f"`range` must be a pair (low, high) of finite numbers, got {value_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"`range` must satisfy finite low < high, got {value_range!r}")
    return lo, hi


def _histogram(values: np.ndarray, edges: np.ndarray, name: str) -> np.ndarray:
    counts = np.histogram(values, bins=edges)[0].astype(np.float64)
    if counts.sum() == 0:
        raise ValueError(f"no value of `{name}` falls inside the histogram range [{edges[0]}, {edges[-1]}]")
    return counts


def js_distance(
    a: ArrayLike | Sequence[float],
    b: ArrayLike | Sequence[float],
    bins: int = 50,
    range: tuple[float, float] | None = None,  # noqa: A002 - mirrors numpy.histogram
) -> float:
    """Base-2 Jensen-Shannon distance between the histograms of two 1D samples on shared bins.

    The JS distance of arXiv 2601.21348 (Sec. 5; Lin 1991, https://doi.org/10.1109/18.61115): both samples are
    binned on the same `bins` equal-width bins spanning the pooled range (or `range`), the counts are normalized,
    and the square root of the base-2 Jensen-Shannon divergence is returned. Symmetric and in `[0, 1]`.

    Args:
        a (`np.ndarray`, `torch.Tensor` or sequence of shape `(N,)`):
            First sample.
        b (`np.ndarray`, `torch.Tensor` or sequence of shape `(M,)`):
            Second sample.
        bins (`int`, defaults to `50`):
            Number of equal-width bins.
        range (`tuple[float, float]`, *optional*):
            Histogram range; defaults to `(min, max)` of both samples pooled. Values outside are ignored.

    Returns:
        `float`: the distance in `[0, 1]`.
    """
    a, b = _as_1d(a, "a"), _as_1d(b, "b")
    bins = _check_bins(bins)
    value_range = _check_range(range)
    if value_range is None:
        pooled = np.concatenate([a, b])
        value_range = (float(pooled.min()), float(pooled.max()))
    edges = np.histogram_bin_edges(np.concatenate([a, b]), bins=bins, range=value_range)
    return float(_js_from_counts(_histogram(a, edges, "a"), _histogram(b, edges, "b")))


def frechet_distance(a: ArrayLike, b: ArrayLike) -> float:
    """Frechet distance between Gaussians fitted to two sets of K-dimensional points (FID convention).

    Returns `||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})` as in Heusel et al. (2017),
    https://arxiv.org/abs/1706.08500: like FID, the value is the squared Frechet (2-Wasserstein) distance between the
    two Gaussians. Covariances use `ddof=1`. The matrix square root is `scipy.linalg.sqrtm`; if it is not finite the
    covariances are regularized with `1e-6 * I`, small imaginary parts from round-off are dropped, and the result is
    clipped at 0.

    Args:
        a (`np.ndarray` or `torch.Tensor` of shape `(N, K)`):
            First set, `N >= 2`.
        b (`np.ndarray` or `torch.Tensor` of shape `(M, K)`):
            Second set, `M >= 2`, same K.

    Returns:
        `float`: the (squared) Frechet distance, `>= 0`.
    """
    a_t, b_t = _as_pair(a, b)
    a_np, b_np = _to_numpy64(a_t), _to_numpy64(b_t)
    for name, x in (("a", a_np), ("b", b_np)):
        if x.shape[0] < 2:
            raise ValueError(f"`{name}` needs at least 2 points to estimate a covariance, got {x.shape[0]}")
    mu_a, mu_b = a_np.mean(axis=0), b_np.mean(axis=0)
    cov_a = np.atleast_2d(np.cov(a_np, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b_np, rowvar=False))
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():
        offset = 1e-6 * np.eye(cov_a.shape[0])
        root = scipy.linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    root = np.real(root)
    diff = mu_a - mu_b
    value = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(root))
    return max(value, 0.0)


def pca_distribution_distances(
    generated: ArrayLike,
    training: ArrayLike,
    n_components: int = 2,
    fit_on: Literal["train", "both"] = "train",
    bins: int = 50,
) -> dict[str, float]:
    """Distribution distances between generated and training samples in PCA space (arXiv 2601.21348, Sec. 5.1).

    Args:
        generated (`torch.Tensor` or `np.ndarray` of shape `(N, ...)`):
            Generated samples, `N >= 2`.
        training (`torch.Tensor` or `np.ndarray` of shape `(M, ...)`):
            Training samples with the same per-sample shape, `M >= 2`.
        n_components (`int`, defaults to `2`):
            Number of principal components K.
        fit_on (`str`, defaults to `"train"`):
            Fit PCA on `"train"` or on `"both"` sets, see [`pca_project`].
        bins (`int`, defaults to `50`):
            Histogram bins of the JS distance, see [`js_distance`].

    Returns:
        `dict[str, float]`: `pca_pc{k}_wasserstein_1` and `pca_pc{k}_js_distance` for `k = 1..K`, and
        `pca_frechet_distance` (FID convention, see [`frechet_distance`]) between the K-dimensional projections.
    """
    bins = _check_bins(bins)
    gen, train = _as_pair(generated, training)
    for name, x in (("generated", gen), ("training", train)):
        if x.shape[0] < 2:
            raise ValueError(f"`{name}` needs at least 2 samples for PCA distances, got {x.shape[0]}")
    gen_proj, train_proj, _ = pca_project(gen, train, n_components=n_components, fit_on=fit_on)
    out: dict[str, float] = {}
    for j in range(gen_proj.shape[1]):
        out[f"pca_pc{j + 1}_wasserstein_1"] = wasserstein_1(gen_proj[:, j], train_proj[:, j])
        out[f"pca_pc{j + 1}_js_distance"] = js_distance(gen_proj[:, j], train_proj[:, j], bins=bins)
    out["pca_frechet_distance"] = frechet_distance(gen_proj, train_proj)
    return out


def signal_js(generated: ArrayLike, training: ArrayLike, bins: int = 50) -> dict[str, float]:
    """Amplitude-histogram JS distance of each generated signal to the training set (arXiv 2601.21348, Sec. 5).

    Every generated signal's amplitudes (all values of the flattened sample) are binned on `bins` equal-width bins
    spanning the pooled range of all generated and training values; the training amplitudes are pooled into one
    histogram on the same bins. The base-2 Jensen-Shannon distance (see [`js_distance`]) is computed per generated
    signal.

    Args:
        generated (`torch.Tensor` or `np.ndarray` of shape `(N, ...)`):
            Generated signals.
        training (`torch.Tensor` or `np.ndarray` of shape `(M, ...)`):
            Training signals with the same per-sample shape.
        bins (`int`, defaults to `50`):
            Number of shared bins.

    Returns:
        `dict[str, float]`: `mean` and `median` over generated signals of the JS distance, each in `[0, 1]`.
    """
    bins = _check_bins(bins)
    gen_t, train_t = _as_pair(generated, training)
    gen, train = _to_numpy64(gen_t), _to_numpy64(train_t)
    lo, hi = min(gen.min(), train.min()), max(gen.max(), train.max())
    edges = np.histogram_bin_edges(np.array([lo, hi]), bins=bins, range=(lo, hi))
    reference = np.histogram(train, bins=edges)[0].astype(np.float64)
    per_signal = np.stack([np.histogram(row, bins=edges)[0] for row in gen]).astype(np.float64)
    js = _js_from_counts(per_signal, reference[None, :])
    return {"mean": float(np.mean(js)), "median": float(np.median(js))}


# --------------------------------------------------------------------------------------------------------------------
# Feature-space metrics (on any embedding: backbone features, or pixels / PCA projections offline)
# --------------------------------------------------------------------------------------------------------------------


class ReplicationResult(NamedTuple):
    """Result of [`replication_score`]: the score and, per generated sample, its best match in the training set."""

    score: float
    similarity: np.ndarray
    index: np.ndarray


def _unit_rows(x: torch.Tensor, name: str) -> torch.Tensor:
    """Rows scaled to unit L2 norm in float64 (a zero row has no direction: its cosine similarity is undefined)."""
    x = x.to(torch.float64)
    norms = torch.linalg.vector_norm(x, dim=1)
    zero = torch.nonzero(norms == 0).flatten()
    if zero.numel():
        raise ValueError(
            f"`{name}` has {zero.numel()} all-zero sample(s) (first at index {int(zero[0])}); cosine similarity "
            "needs non-zero vectors"
        )
    return x / norms[:, None]


def cosine_nearest_neighbors(
    generated: ArrayLike,
    training: ArrayLike,
    k: int = 1,
    *,
    exclude_self: bool = False,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The `k` training samples of highest cosine similarity to each generated sample, in float64.

    Args:
        generated (`torch.Tensor` or `np.ndarray` of shape `(N, ...)`):
            Query embeddings (flattened per sample; need not be normalised).
        training (`torch.Tensor` or `np.ndarray` of shape `(M, ...)`):
            Reference embeddings with the same per-sample shape.
        k (`int`, defaults to `1`):
            Number of neighbours, `1 <= k <= M` (`M - 1` with `exclude_self`).
        exclude_self (`bool`, defaults to `False`):
            `generated` is `training` itself: skip each sample's own entry (leave-one-out).
        chunk_size (`int`, *optional*):
            Queries per block of the `N x M` similarity matrix; defaults to about 8M entries per block.
        device (`str` or `torch.device`, *optional*):
            Device to compute on; defaults to the device of the input tensors.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: similarities `(N, k)` (descending per row, in `[-1, 1]`) and indices
        `(N, k)` into `training` (ties go to the lower index).
    """
    gen, train = _as_pair(generated, training, device=device)
    if exclude_self and gen.shape[0] != train.shape[0]:
        raise ValueError(
            f"`exclude_self` compares a set with itself: `generated` has {gen.shape[0]} samples, "
            f"`training` {train.shape[0]}"
        )
    k = _check_int(k, "k", low=1, high=train.shape[0] - int(exclude_self))
    chunk = _check_chunk(chunk_size) or max(1, _DISTANCE_CHUNK_ELEMENTS // train.shape[0])
    gen_u, train_u = _unit_rows(gen, "generated"), _unit_rows(train, "training")
    sims = torch.empty(gen.shape[0], k, dtype=torch.float64, device=gen.device)
    index = torch.empty(gen.shape[0], k, dtype=torch.int64, device=gen.device)
    for start in range(0, gen.shape[0], chunk):
        block = gen_u[start : start + chunk] @ train_u.T
        if exclude_self:
            rows = torch.arange(block.shape[0], device=block.device)
            block[rows, rows + start] = -math.inf
        # A stable descending sort keeps the lower index first among equal similarities.
        order = torch.sort(block, dim=1, descending=True, stable=True).indices[:, :k]
        sims[start : start + chunk] = torch.gather(block, 1, order)
        index[start : start + chunk] = order
    return sims.clamp_(-1.0, 1.0), index


def replication_score(
    generated: ArrayLike,
    training: ArrayLike,
    threshold: float = 0.5,
    *,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
) -> ReplicationResult:
    """Share of generated samples whose most similar training sample has cosine similarity `>= threshold`.

    The replication measure of Somepalli et al. (2023), "Diffusion Art or Digital Forgery? Investigating Data
    Replication in Diffusion Models" (https://arxiv.org/abs/2212.03860), who call a generated image a replica above a
    similarity of 0.5 in the feature space of a copy-detection (SSCD) or self-supervised (DINO) backbone.

    Args:
        generated (`torch.Tensor` or `np.ndarray` of shape `(N, ...)`):
            Embeddings of the generated samples.
        training (`torch.Tensor` or `np.ndarray` of shape `(M, ...)`):
            Embeddings of the training samples.
        threshold (`float`, defaults to `0.5`):
            Similarity threshold tau in `[-1, 1]`.
        chunk_size (`int`, *optional*):
            Forwarded to [`cosine_nearest_neighbors`].
        device (`str` or `torch.device`, *optional*):
            Forwarded to [`cosine_nearest_neighbors`].

    Returns:
        [`ReplicationResult`]: `score` in `[0, 1]`, and per generated sample the maximal `similarity` `(N,)` and the
        matched training `index` `(N,)`.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating, np.integer)):
        raise ValueError(f"`threshold` must be a number in [-1, 1], got {threshold!r}")
    if not -1.0 <= float(threshold) <= 1.0:
        raise ValueError(f"`threshold` must be in [-1, 1] (a cosine similarity), got {threshold}")
    sims, index = cosine_nearest_neighbors(generated, training, 1, chunk_size=chunk_size, device=device)
    sim = sims[:, 0].cpu().numpy()
    return ReplicationResult(float(np.mean(sim >= float(threshold))), sim, index[:, 0].cpu().numpy())


def _kth_neighbor_radii(x: torch.Tensor, k: int, chunk_size: int | None) -> torch.Tensor:
    """Distance of each sample to its k-th nearest other sample (its own zero distance is the first of k + 1)."""
    if x.shape[0] < k + 1:
        raise ValueError(f"a k-nearest-neighbour radius with k={k} needs at least {k + 1} samples, got {x.shape[0]}")
    distances, _ = _nearest_neighbors(x, x, k + 1, chunk_size)
    return distances[:, k]


def _ball_membership(
    queries: torch.Tensor, centers: torch.Tensor, radii: torch.Tensor, chunk_size: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query, the number of balls `B(center_i, radius_i)` (open, as in `prdc`) holding it; per center, whether
    any query lies in its ball."""
    chunk = chunk_size or max(1, _DISTANCE_CHUNK_ELEMENTS // centers.shape[0])
    centers64 = centers.to(torch.float64)
    center_sq = _squared_norms(centers)
    radii_sq = radii.to(torch.float64).square()
    counts = torch.empty(queries.shape[0], dtype=torch.int64, device=queries.device)
    hit = torch.zeros(centers.shape[0], dtype=torch.bool, device=queries.device)
    for start in range(0, queries.shape[0], chunk):
        block = queries[start : start + chunk].to(torch.float64)
        sq = torch.addmm(center_sq[None, :], block, centers64.T, beta=1.0, alpha=-2.0)
        sq += block.square().sum(dim=1, keepdim=True)
        inside = sq.clamp_(min=0.0) < radii_sq[None, :]
        counts[start : start + chunk] = inside.sum(dim=1)
        hit |= inside.any(dim=0)
    return counts, hit


def precision_recall(
    generated: ArrayLike,
    training: ArrayLike,
    k: int = 3,
    *,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Improved precision and recall of Kynkaanniemi et al. (2019), https://arxiv.org/abs/1904.06991.

    Each set's manifold is the union of balls around its samples with radius = distance to the sample's k-th nearest
    neighbour in its own set. Precision is the share of generated samples inside the training manifold (fidelity),
    recall the share of training samples inside the generated manifold (diversity). Balls are open, as in the `prdc`
    reference code of Naeem et al. (2020).

    Args:
        generated (`torch.Tensor` or `np.ndarray` of shape `(N, ...)`):
            Embeddings of the generated samples, `N > k`.
        training (`torch.Tensor` or `np.ndarray` of shape `(M, ...)`):
            Embeddings of the training samples, `M > k`.
        k (`int`, defaults to `3`):
            Neighbour rank of the radii (the paper's default).
        chunk_size (`int`, *optional*):
            Queries per block of the distance matrices.
        device (`str` or `torch.device`, *optional*):
            Device to compute on; defaults to the device of the input tensors.

    Returns:
        `dict[str, float]`: `precision` and `recall`, each in `[0, 1]`.
    """
    gen, train = _as_pair(generated, training, device=device)
    k = _check_int(k, "k", low=1)
    chunk = _check_chunk(chunk_size)
    in_train, _ = _ball_membership(gen, train, _kth_neighbor_radii(train, k, chunk), chunk)
    in_gen, _ = _ball_membership(train, gen, _kth_neighbor_radii(gen, k, chunk), chunk)
    return {"precision": float((in_train > 0).double().mean()), "recall": float((in_gen > 0).double().mean())}


def density_coverage(
    generated: ArrayLike,
    training: ArrayLike,
    k: int = 5,
    *,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Density and coverage of Naeem et al. (2020), "Reliable Fidelity and Diversity Metrics for Generative Models"
    (https://arxiv.org/abs/2002.09797).

    With `B_i` the open ball around training sample `i` of radius = its k-th nearest-neighbour distance among the
    training samples: density = `sum_j #{i : gen_j in B_i} / (k N)` (fidelity that counts how many balls hold a
    sample, unbounded above, 1 on average for samples from the data distribution); coverage = share of training
    samples whose ball holds at least one generated sample (diversity, in `[0, 1]`).

    Args:
        generated (`torch.Tensor` or `np.ndarray` of shape `(N, ...)`):
            Embeddings of the generated samples.
        training (`torch.Tensor` or `np.ndarray` of shape `(M, ...)`):
            Embeddings of the training samples, `M > k`.
        k (`int`, defaults to `5`):
            Neighbour rank of the radii (the paper's default).
        chunk_size (`int`, *optional*):
            Queries per block of the distance matrix.
        device (`str` or `torch.device`, *optional*):
            Device to compute on; defaults to the device of the input tensors.

    Returns:
        `dict[str, float]`: `density` (`>= 0`) and `coverage` (in `[0, 1]`).
    """
    gen, train = _as_pair(generated, training, device=device)
    k = _check_int(k, "k", low=1)
    chunk = _check_chunk(chunk_size)
    counts, hit = _ball_membership(gen, train, _kth_neighbor_radii(train, k, chunk), chunk)
    return {"density": float(counts.sum()) / (k * gen.shape[0]), "coverage": float(hit.double().mean())}


def compute_feature_metrics(
    generated: ArrayLike,
    training: ArrayLike,
    *,
    replication_threshold: float = 0.5,
    precision_k: int = 3,
    density_k: int = 5,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Replication, memorization and quality metrics of generated embeddings against training embeddings.

    Embeddings as a backbone returns them (not L2-normalised), which is what published FD_DINOv2 and
    precision/recall/density/coverage values use (dgm-eval, Stein et al. 2023, https://arxiv.org/abs/2306.04675);
    the cosine and ratio metrics normalise the rows themselves.

    Args:
        generated (`torch.Tensor` or `np.ndarray` of shape `(N, F)`):
            Embeddings of the generated samples, `N > max(precision_k, 1)`.
        training (`torch.Tensor` or `np.ndarray` of shape `(M, F)`):
            Embeddings of the training samples, `M > max(precision_k, density_k, 2)`.
        replication_threshold (`float`, defaults to `0.5`):
            Cosine-similarity threshold of [`replication_score`].
        precision_k (`int`, defaults to `3`):
            k of [`precision_recall`].
        density_k (`int`, defaults to `5`):
            k of [`density_coverage`].
        chunk_size (`int`, *optional*):
            Chunk size of the distance computations.

    Returns:
        `dict[str, float]`: `feature_replication_score`, `feature_max_similarity_mean` (mean over generated samples
        of the highest cosine similarity to a training sample), `feature_nn_ratio_mean`, `feature_nn_ratio_median`
        ([`nn_ratio`] on L2-normalised embeddings), `feature_frechet_distance` ([`frechet_distance`]: FD_DINOv2
        with a DINOv2 backbone), `feature_precision`, `feature_recall`, `feature_density`, `feature_coverage`.
    """
    gen, train = _as_pair(generated, training)
    replication = replication_score(gen, train, replication_threshold, chunk_size=chunk_size)
    ratio = nn_ratio(_unit_rows(gen, "generated"), _unit_rows(train, "training"), chunk_size=chunk_size)
    metrics = {
        "feature_replication_score": replication.score,
        "feature_max_similarity_mean": float(np.mean(replication.similarity)),
        "feature_nn_ratio_mean": ratio["mean"],
        "feature_nn_ratio_median": ratio["median"],
        "feature_frechet_distance": frechet_distance(gen, train),
    }
    pr = precision_recall(gen, train, precision_k, chunk_size=chunk_size)
    dc = density_coverage(gen, train, density_k, chunk_size=chunk_size)
    metrics.update({f"feature_{name}": value for name, value in {**pr, **dc}.items()})
    return metrics


def feature_reference_metrics(
    training: ArrayLike,
    *,
    replication_threshold: float = 0.5,
    precision_k: int = 3,
    density_k: int = 5,
    seed: int = 0,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """The training set's own values of [`compute_feature_metrics`]: what fresh draws of the data would score.

    The nearest-neighbour metrics are leave-one-out (each training sample against the others), as in
    [`reference_metrics`]: `feature_replication_score` here is the share of training samples with a near-duplicate
    in the rest of the set. The distribution metrics compare two random halves of the training set (a seeded
    permutation): the split-half Frechet distance is the small-sample floor that a perfect generator's FD sits near,
    and precision/recall/density/coverage of one half against the other are their values for real data.

    Args:
        training (`torch.Tensor` or `np.ndarray` of shape `(M, F)`):
            Training embeddings, `M >= 3` (`M >= 2 (max(precision_k, density_k) + 1)` for the split-half values,
            which are left out below that).
        replication_threshold (`float`, defaults to `0.5`):
            Cosine-similarity threshold of [`replication_score`].
        precision_k (`int`, defaults to `3`):
            k of [`precision_recall`].
        density_k (`int`, defaults to `5`):
            k of [`density_coverage`].
        seed (`int`, defaults to `0`):
            Seed of the split into halves (`numpy.random.default_rng`).
        chunk_size (`int`, *optional*):
            Chunk size of the distance computations.

    Returns:
        `dict[str, float]`: the keys of [`compute_feature_metrics`] (the split-half ones only when `M` allows).
    """
    train, _ = _as_pair(training, training)
    m = train.shape[0]
    if m < 3:
        raise ValueError(f"`training` needs at least 3 samples for leave-one-out reference values, got {m}")
    sims, _ = cosine_nearest_neighbors(train, train, 1, exclude_self=True, chunk_size=chunk_size)
    sim = sims[:, 0].cpu().numpy()
    unit = _unit_rows(train, "training")
    ratio = nn_ratio(unit, unit, exclude_self=True, chunk_size=chunk_size)
    out = {
        "feature_replication_score": float(np.mean(sim >= float(replication_threshold))),
        "feature_max_similarity_mean": float(np.mean(sim)),
        "feature_nn_ratio_mean": ratio["mean"],
        "feature_nn_ratio_median": ratio["median"],
    }
    if m // 2 <= max(precision_k, density_k):
        return out
    order = torch.from_numpy(np.random.default_rng(seed).permutation(m)).to(train.device)
    half_a, half_b = train[order[: m // 2]], train[order[m // 2 : 2 * (m // 2)]]
    out["feature_frechet_distance"] = frechet_distance(half_a, half_b)
    pr = precision_recall(half_a, half_b, precision_k, chunk_size=chunk_size)
    dc = density_coverage(half_a, half_b, density_k, chunk_size=chunk_size)
    out.update({f"feature_{name}": value for name, value in {**pr, **dc}.items()})
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
    bins = _check_bins(bins)
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


# --------------------------------------------------------------------------------------------------------------------
# `evaluate` integration helpers
# --------------------------------------------------------------------------------------------------------------------


def evaluate_module_path(name: str) -> str:
    """Folder of one of our `evaluate` modules, for `evaluate.load(evaluate_module_path(name))`.

    Args:
        name (`str`):
            One of `memctl_memorization`, `memctl_metrics`, `memctl_nn_l2`, `memctl_pca_distances`,
            `memctl_signal_js`.

    Returns:
        `str`: absolute path of the installed module folder.
    """
    if name not in EVALUATE_MODULES:
        raise ValueError(f"unknown evaluate module {name!r}; valid names are {list(EVALUATE_MODULES)}")
    path = Path(__file__).resolve().parent / "evaluate_modules" / name
    if not (path / f"{name}.py").is_file():
        raise FileNotFoundError(f"evaluate module {name!r} is not installed at {path}")
    return str(path)


def _rows(x: Any) -> list:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return list(x.reshape(x.shape[0], -1)) if x.ndim >= 2 else list(x)
    return list(x)


def pad_evaluate_batch(predictions: Any, references: Any) -> tuple[list, list]:
    """Pads the shorter of two sample sets with `None` rows so `evaluate` can store them as one table.

    `evaluate` keeps predictions and references as rows of one table, but generated and training sets have
    different sizes; padded rows are dropped again by [`unpad_evaluate_column`].

    Args:
        predictions (sequence or array of shape `(N, ...)`):
            Generated samples (flattened per row).
        references (sequence or array of shape `(M, ...)`):
            Training samples (flattened per row).

    Returns:
        `tuple[list, list]`: both sets as lists of equal length `max(N, M)`.
    """
    preds, refs = _rows(predictions), _rows(references)
    size = max(len(preds), len(refs))
    return preds + [None] * (size - len(preds)), refs + [None] * (size - len(refs))


def unpad_evaluate_column(column: Sequence[Any], name: str) -> np.ndarray:
    """Drops the `None` rows added by [`pad_evaluate_batch`] and stacks the rest into a float64 `(N, D)` array.

    Args:
        column (sequence of float sequences or `None`):
            One column of an `evaluate` module's stored table.
        name (`str`):
            Column name used in error messages.

    Returns:
        `np.ndarray`: the samples, shape `(N, D)`.
    """
    rows = [row for row in column if row is not None]
    if not rows:
        raise ValueError(f"`{name}` holds no samples; pass at least one flattened sample")
    lengths = {len(row) for row in rows}
    if len(lengths) != 1:
        raise ValueError(
            f"every row of `{name}` must have the same length (a flattened sample), got {sorted(lengths)}"
        )
    return np.asarray(rows, dtype=np.float64)
