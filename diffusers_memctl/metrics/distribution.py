"""Distribution metrics: PCA projections and the per-component 1-Wasserstein and base-2 Jensen-Shannon distances
plus a Frechet distance between the PCA projections of generated and training samples (arXiv 2601.21348, Sec. 5),
and `signal_js`: the base-2 Jensen-Shannon distance between each generated signal's amplitude histogram and the
pooled training amplitude histogram.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import scipy.linalg
import scipy.sparse.linalg
import scipy.stats
import torch

from .arrays import _as_pair, _check_int, _to_numpy64

__all__ = [
    "frechet_distance",
    "js_distance",
    "pca_distribution_distances",
    "pca_project",
    "signal_js",
    "wasserstein_1",
]

#: Samples of shape `(N, ...)`: torch tensors or numpy arrays.
ArrayLike = torch.Tensor | np.ndarray

# Above this size of the smaller Gram/covariance matrix, PCA uses Lanczos (ARPACK) instead of a dense eigensolver.
_PCA_DENSE_MAX = 2048


def _as_1d(x: Any, name: str) -> np.ndarray:
    arr = x.detach().to("cpu", torch.float64).numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"`{name}` must be a non-empty 1D array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"`{name}` contains NaN or inf; all values must be finite")
    return arr


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
