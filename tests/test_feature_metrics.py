"""Feature-space metrics of diffusers_memctl.metrics against brute-force loops over small made-up embeddings."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from diffusers_memctl.metrics import (
    compute_feature_metrics,
    cosine_nearest_neighbors,
    density_coverage,
    feature_reference_metrics,
    precision_recall,
    replication_score,
)


def _embeddings(n, dim=6, seed=0, shift=0.0):
    return np.random.default_rng(seed).normal(shift, 1.0, size=(n, dim))


def _cosine(a, b):
    return float(np.dot(a, b) / (math.sqrt(np.dot(a, a)) * math.sqrt(np.dot(b, b))))


def _distance(a, b):
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))


def _kth_radius(points, i, k):
    """Distance from points[i] to its k-th nearest other point, by sorting a Python list."""
    return sorted(_distance(points[i], points[j]) for j in range(len(points)) if j != i)[k - 1]


def _brute_replication(gen, train, tau):
    best = [max(range(len(train)), key=lambda j: (_cosine(g, train[j]), -j)) for g in gen]
    sims = [_cosine(g, train[j]) for g, j in zip(gen, best)]
    return sum(s >= tau for s in sims) / len(gen), sims, best


def _brute_prdc(gen, train, k_pr, k_dc):
    """Kynkaanniemi et al. (2019) and Naeem et al. (2020) by their definitions, one pair at a time (open balls)."""
    r_train = [_kth_radius(train, i, k_pr) for i in range(len(train))]
    r_gen = [_kth_radius(gen, j, k_pr) for j in range(len(gen))]
    precision = np.mean([any(_distance(g, t) < r for t, r in zip(train, r_train)) for g in gen])
    recall = np.mean([any(_distance(t, g) < r for g, r in zip(gen, r_gen)) for t in train])
    r_dc = [_kth_radius(train, i, k_dc) for i in range(len(train))]
    inside = [[_distance(g, t) < r for t, r in zip(train, r_dc)] for g in gen]
    density = sum(sum(row) for row in inside) / (k_dc * len(gen))
    coverage = np.mean([any(inside[j][i] for j in range(len(gen))) for i in range(len(train))])
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


def _frechet_by_eigenvalues(a, b):
    """||mu_a - mu_b||^2 + tr(A) + tr(B) - 2 tr((A^1/2 B A^1/2)^1/2), each root from a symmetric eigensolver."""
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = scipy.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = scipy.linalg.eigvalsh(root_a @ cov_b @ root_a)
    diff = a.mean(0) - b.mean(0)
    return diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * np.sqrt(np.clip(inner, 0, None)).sum()


def _brute_nn_ratio(gen, train, skip_self=False):
    unit = lambda x: x / np.linalg.norm(x)  # noqa: E731
    ratios = []
    for i, g in enumerate(gen):
        d = sorted(_distance(unit(g), unit(t)) for j, t in enumerate(train) if not (skip_self and i == j))
        ratios.append(d[0] / d[1] if d[1] > 0 else 0.0)
    return float(np.mean(ratios)), float(np.median(ratios))


# ---- replication ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [0.0, 0.5, 0.8])
def test_replication_score_matches_brute_force(tau):
    gen, train = _embeddings(17, seed=1), _embeddings(23, seed=2)
    train[5] = 3.0 * gen[4] + 0.01  # a scaled near-copy: cosine ~1, far in L2
    result = replication_score(gen, train, tau)
    score, sims, best = _brute_replication(gen, train, tau)
    assert result.score == pytest.approx(score)
    np.testing.assert_allclose(result.similarity, sims, atol=1e-12)
    assert result.index.tolist() == best
    assert result.index[4] == 5 and result.similarity[4] > 0.999


def test_replication_score_is_chunk_and_dtype_independent():
    gen, train = _embeddings(40, seed=3), _embeddings(31, seed=4)
    full = replication_score(torch.tensor(gen, dtype=torch.float32), train)
    chunked = replication_score(gen, train, chunk_size=3)
    np.testing.assert_allclose(full.similarity, chunked.similarity, atol=1e-6)
    assert full.index.tolist() == chunked.index.tolist()


def test_cosine_neighbours_leave_one_out_and_ties_take_the_lower_index():
    train = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    sims, index = cosine_nearest_neighbors(train, train, 2, exclude_self=True)
    assert index[0].tolist() == [1, 3] and index[1].tolist() == [0, 3]
    np.testing.assert_allclose(sims[0].numpy(), [1.0, 1 / math.sqrt(2)])
    sims, index = cosine_nearest_neighbors(np.array([[5.0, 0.0]]), train, 2)
    assert index[0].tolist() == [0, 1]  # equal similarity 1: the lower index first


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: replication_score(np.zeros((2, 3)), np.ones((3, 3))), "all-zero sample"),
        (lambda: replication_score(np.ones((2, 3)), np.ones((3, 3)), 1.5), r"threshold.*\[-1, 1\]"),
        (lambda: cosine_nearest_neighbors(np.ones((2, 3)), np.ones((3, 3)), 4), r"`k` must be in \[1, 3\]"),
        (lambda: precision_recall(np.ones((2, 3)), _embeddings(9, 3), 3), "at least 4 samples"),
        (lambda: density_coverage(_embeddings(4, 3), _embeddings(5, 3), 5), "at least 6 samples"),
    ],
)
def test_bad_input_is_refused_with_the_reason(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---- precision / recall / density / coverage -------------------------------------------------------------------
@pytest.mark.parametrize("shift", [0.0, 0.7, 2.0])
def test_precision_recall_density_coverage_match_brute_force(shift):
    gen, train = _embeddings(19, dim=4, seed=5, shift=shift), _embeddings(26, dim=4, seed=6)
    expected = _brute_prdc(gen.tolist(), train.tolist(), 3, 5)
    got = {**precision_recall(gen, train, 3), **density_coverage(gen, train, 5)}
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
    # chunking and float32 input change nothing
    chunked = {**precision_recall(gen.astype(np.float32), train, chunk_size=2), **density_coverage(gen, train)}
    assert chunked == pytest.approx(got, abs=1e-6)


def test_prdc_hand_made_on_a_line():
    # training points 0, 1, 2, 3, 10 on a line; k = 1 radii: 1, 1, 1, 1, 7. Generated: 0.5 (in balls 0 and 1),
    # 20 (in none).
    train = np.array([[0.0], [1.0], [2.0], [3.0], [10.0]])
    gen = np.array([[0.5], [20.0]])
    dc = density_coverage(gen, train, 1)
    assert dc == {"density": pytest.approx(2 / 2), "coverage": pytest.approx(2 / 5)}
    pr = precision_recall(gen, train, 1)
    # generated radii: 19.5 each, so the ball around 0.5 holds 0..3 and 10 (|10 - 0.5| < 19.5): recall 1.
    assert pr == {"precision": 0.5, "recall": 1.0}


def test_a_perfect_copy_scores_full_precision_recall_coverage_and_replication():
    train = _embeddings(30, seed=7)
    metrics = compute_feature_metrics(train.copy(), train)
    assert metrics["feature_replication_score"] == 1.0
    assert metrics["feature_precision"] == metrics["feature_recall"] == metrics["feature_coverage"] == 1.0
    assert metrics["feature_frechet_distance"] == pytest.approx(0.0, abs=1e-8)
    assert metrics["feature_nn_ratio_mean"] == 0.0


# ---- everything at once, and the training set's own values -------------------------------------------------------
def test_compute_feature_metrics_matches_brute_force():
    gen, train = _embeddings(21, dim=5, seed=8, shift=0.3), _embeddings(27, dim=5, seed=9)
    got = compute_feature_metrics(gen, train, replication_threshold=0.6)
    score, sims, _ = _brute_replication(gen, train, 0.6)
    prdc = _brute_prdc(gen.tolist(), train.tolist(), 3, 5)
    ratio_mean, ratio_median = _brute_nn_ratio(gen, train)
    expected = {
        "feature_replication_score": score,
        "feature_max_similarity_mean": np.mean(sims),
        "feature_nn_ratio_mean": ratio_mean,
        "feature_nn_ratio_median": ratio_median,
        "feature_frechet_distance": _frechet_by_eigenvalues(gen, train),
        **{f"feature_{k}": v for k, v in prdc.items()},
    }
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-7, abs=1e-10), name


def test_reference_values_are_leave_one_out_and_split_half():
    train = _embeddings(24, dim=4, seed=10)
    train[7] = 2.0 * train[3]  # one near-duplicate pair inside the training set
    got = feature_reference_metrics(train, replication_threshold=0.99, seed=3)
    sims = [max(_cosine(train[i], train[j]) for j in range(len(train)) if j != i) for i in range(len(train))]
    assert got["feature_replication_score"] == pytest.approx(2 / 24)
    assert got["feature_max_similarity_mean"] == pytest.approx(np.mean(sims))
    ratio_mean, ratio_median = _brute_nn_ratio(train, train, skip_self=True)
    assert got["feature_nn_ratio_mean"] == pytest.approx(ratio_mean)
    assert got["feature_nn_ratio_median"] == pytest.approx(ratio_median)
    order = np.random.default_rng(3).permutation(24)
    a, b = train[order[:12]], train[order[12:]]
    prdc = _brute_prdc(a.tolist(), b.tolist(), 3, 5)
    assert got["feature_frechet_distance"] == pytest.approx(_frechet_by_eigenvalues(a, b), rel=1e-7)
    for name, value in prdc.items():
        assert got[f"feature_{name}"] == pytest.approx(value), name


def test_reference_values_skip_the_split_half_metrics_on_tiny_sets():
    got = feature_reference_metrics(_embeddings(9, seed=11))
    assert set(got) == {
        "feature_replication_score",
        "feature_max_similarity_mean",
        "feature_nn_ratio_mean",
        "feature_nn_ratio_median",
    }
