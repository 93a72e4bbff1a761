"""Feature-space metrics on any embedding (backbone features from `features.py`, or pixels / PCA projections):
`replication_score` (max cosine similarity >= 0.5; Somepalli et al. 2023, https://arxiv.org/abs/2212.03860),
`precision_recall` (k = 3; Kynkaanniemi et al. 2019, https://arxiv.org/abs/1904.06991), `density_coverage`
(k = 5; Naeem et al. 2020, https://arxiv.org/abs/2002.09797), the Frechet distance of the embeddings (FD_DINOv2
with DINOv2 features; Stein et al. 2023, https://arxiv.org/abs/2306.04675), `compute_feature_metrics` for all of
them and `feature_reference_metrics` for the training set's own values.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from .arrays import _as_pair, _check_chunk, _check_int
from .brute_force import _DISTANCE_CHUNK_ELEMENTS, _squared_norms
from .distribution import frechet_distance
from .memorization import nn_ratio
from .neighbors import _nearest_neighbors

__all__ = [
    "ReplicationResult",
    "compute_feature_metrics",
    "cosine_nearest_neighbors",
    "density_coverage",
    "feature_reference_metrics",
    "precision_recall",
    "replication_score",
]

#: Samples of shape `(N, ...)`: torch tensors or numpy arrays.
ArrayLike = torch.Tensor | np.ndarray


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
