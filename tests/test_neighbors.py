"""Tests of the pruned exact nearest-neighbour search against scikit-learn, a float64 brute force and faiss."""

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.neighbors import NearestNeighbors

from diffusers_memctl import metrics
from diffusers_memctl.metrics import neighbors
from diffusers_memctl.metrics.brute_force import brute_force_neighbors
from diffusers_memctl.metrics.neighbors import NeighborIndex, clear_neighbor_cache, nearest_neighbors

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _empty_cache():
    clear_neighbor_cache()
    yield
    clear_neighbor_cache()


def _direct(gen, train):
    """Float64 distances from explicit differences, and their stable order (ties: lower index first)."""
    gen = np.asarray(gen, np.float64).reshape(len(gen), -1)
    train = np.asarray(train, np.float64).reshape(len(train), -1)
    dist = np.sqrt(((gen[:, None, :] - train[None, :, :]) ** 2).sum(-1))
    return dist, np.argsort(dist, axis=1, kind="stable")


def _random(n, m, dim, seed):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (n, dim)).astype(np.float32), rng.uniform(-1, 1, (m, dim)).astype(np.float32)


def _low_rank(n, m, dim, seed, rank=6, noise=0.02):
    """Samples near a rank-`rank` subspace; queries are noisy copies of training samples and blends of two."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((rank, dim))
    train = rng.standard_normal((m, rank)) @ basis + noise * rng.standard_normal((m, dim))
    pick = rng.integers(0, m, (n, 2))
    weight = rng.uniform(0.2, 0.8, (n, 1))
    gen = np.where(
        np.arange(n)[:, None] % 2 == 0,
        train[pick[:, 0]] + 0.5 * noise * rng.standard_normal((n, dim)),
        weight * train[pick[:, 0]] + (1 - weight) * train[pick[:, 1]],
    )
    return gen.astype(np.float32), train.astype(np.float32)


@functools.lru_cache(maxsize=1)
def _artworks(count=60, size=16):
    """Pokemon artworks at `size` px with flips and 1 px shifts; queries: noisy copies and blends (as the benchmark)."""
    files = sorted((SHARED_DATA / "pokemon-artwork").glob("*.jpg"))[:count]
    if not files:
        pytest.skip(f"real image data absent: no artworks in {SHARED_DATA / 'pokemon-artwork'}")
    images = np.stack([np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)) for f in files])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    train = torch.cat([x, x.flip(-1), torch.roll(x, 1, dims=-1), torch.roll(x, 1, dims=-2)])
    generator = torch.Generator().manual_seed(0)
    noisy = train[torch.randint(0, len(train), (40,), generator=generator)]
    noisy = noisy + 0.1 * torch.randn(noisy.shape, generator=generator)
    a, b = torch.randint(0, count, (2, 40), generator=generator)
    blends = 0.5 * x[a] + 0.5 * x[b]
    return torch.cat([noisy, blends]), train


def _check_exact(gen, train, distances, indices, k):
    dist, order = _direct(gen, train)
    np.testing.assert_array_equal(indices.numpy(), order[:, :k])
    np.testing.assert_allclose(distances.numpy(), np.take_along_axis(dist, order[:, :k], 1), rtol=1e-12, atol=0)
    expected = brute_force_neighbors(
        torch.as_tensor(gen).reshape(len(gen), -1), torch.as_tensor(train).reshape(len(train), -1), k, None, "auto"
    )
    assert torch.equal(indices, expected[1]) and torch.equal(distances, expected[0])  # bit for bit


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("kind", ["random", "low_rank", "images"])
def test_pruned_search_matches_sklearn_and_float64_brute_force(kind, k):
    if kind == "random":
        gen, train = _random(40, 300, 96, seed=k)
    elif kind == "low_rank":
        gen, train = _low_rank(40, 300, 96, seed=k)
    else:
        gen, train = (t.numpy() for t in _artworks())
    index = NeighborIndex(train, n_components=8, fallback=False)
    assert index.pruning
    distances, indices = index.search(gen, k)
    _check_exact(gen, train, distances, indices, k)
    flat_train = train.reshape(len(train), -1).astype(np.float64)
    _, sk_idx = (
        NearestNeighbors(n_neighbors=k, algorithm="brute").fit(flat_train).kneighbors(gen.reshape(len(gen), -1))
    )
    np.testing.assert_array_equal(indices.numpy(), sk_idx)


@pytest.mark.parametrize("fallback", [True, False])
def test_duplicates_and_exact_ties_take_the_lower_index(fallback):
    gen, train = _low_rank(30, 200, 64, seed=7)
    train[150:180] = train[10:40]  # 30 duplicated training samples
    gen[:10] = train[[10, 12, 14, 16, 18, 150, 152, 154, 156, 158]]  # queries equal to duplicated samples
    index = NeighborIndex(train, n_components=8, fallback=fallback)
    distances, indices = index.search(gen, 3)
    _check_exact(gen, train, distances, indices, 3)
    assert indices[0, 0] == 10 and indices[0, 1] == 150 and distances[0, 0] == 0 == distances[0, 1]


@pytest.mark.parametrize("fallback", [True, False])
def test_all_equal_distances_return_the_lowest_indices(fallback):
    dim = 48
    train = np.concatenate([np.eye(dim), -np.eye(dim)]).astype(np.float32) * 3.0  # all at distance 3 from 0
    gen = np.zeros((4, dim), np.float32)
    distances, indices = NeighborIndex(train, n_components=8, fallback=fallback).search(gen, 5)
    assert indices.tolist() == [[0, 1, 2, 3, 4]] * 4
    assert torch.equal(distances, torch.full((4, 5), 3.0, dtype=torch.float64))


def test_single_training_sample_and_float64_input():
    train = np.random.default_rng(0).standard_normal((1, 3, 4, 4))
    gen = np.random.default_rng(1).standard_normal((5, 3, 4, 4))
    index = NeighborIndex(train)
    assert not index.pruning  # nothing to prune: brute force
    distances, indices = index.search(gen, 1)
    assert indices.tolist() == [[0]] * 5
    _check_exact(gen, train, distances, indices, 1)
    gen64, train64 = _low_rank(20, 150, 80, seed=3)
    index = NeighborIndex(train64.astype(np.float64), n_components=8, fallback=False)
    _check_exact(gen64.astype(np.float64), train64.astype(np.float64), *index.search(gen64.astype(np.float64), 2), 2)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: NeighborIndex(np.array([[0.0, 1.0], [np.nan, 2.0]])), "`training` contains NaN or inf in 1 sample"),
        (lambda: NeighborIndex(np.ones((4, 2))).search(np.array([[np.inf, 0.0]])), "`generated` contains NaN or inf"),
        (lambda: NeighborIndex(np.ones((4, 2))).search(np.ones((3, 2)), k=5), "`k` must be in \\[1, 4\\]"),
        (lambda: NeighborIndex(np.ones((4, 2)), n_components=3), "`n_components` must be in \\[1, 2\\]"),
        (lambda: NeighborIndex(np.ones((4, 2))).search(np.ones((3, 3))), "per-sample shapes differ"),
        (lambda: nearest_neighbors(np.ones((3, 2)), np.ones((4, 2)), pruning="yes"), "`pruning` must be"),
    ],
)
def test_bad_input_is_refused_with_one_line(call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert "\n" not in str(info.value)


def test_faiss_agrees_where_installed():
    faiss = pytest.importorskip("faiss", reason="faiss-cpu is an optional extra oracle")
    gen, train = _low_rank(50, 400, 128, seed=11, noise=0.2)
    distances, indices = NeighborIndex(train, n_components=16, fallback=False).search(gen, 3)
    flat = faiss.IndexFlatL2(train.shape[1])
    flat.add(np.ascontiguousarray(train))
    faiss_sq, faiss_idx = flat.search(np.ascontiguousarray(gen), 3)
    np.testing.assert_array_equal(indices.numpy(), faiss_idx)
    np.testing.assert_allclose(distances.numpy() ** 2, faiss_sq, rtol=1e-4)


def test_default_path_prunes_low_rank_data_and_rebuilds_when_training_data_changes():
    gen, train = _low_rank(300, 1030, 4096, seed=5, rank=8, noise=0.01)
    train_t = torch.from_numpy(train)
    d, i = nearest_neighbors(gen, train_t, k=2)
    assert len(neighbors._CACHE) == 1 and next(iter(neighbors._CACHE.values())) is not None  # pruned
    expected = brute_force_neighbors(torch.from_numpy(gen), train_t, 2, None, "auto")
    assert torch.equal(i, expected[1]) and torch.equal(d, expected[0])
    # Same data again: the cached index serves (no new entry); small calls use it too.
    nearest_neighbors(gen[:5], train_t, k=2)
    assert len(neighbors._CACHE) == 1
    # Changed in place: a new fingerprint, a new index, and results of the new data.
    train_t[::7] += 0.5
    d, i = nearest_neighbors(gen, train_t, k=2)
    assert len(neighbors._CACHE) == 2
    expected = brute_force_neighbors(torch.from_numpy(gen), train_t, 2, None, "auto")
    assert torch.equal(i, expected[1]) and torch.equal(d, expected[0])
    # The metrics use the same path and the same numbers.
    ratio = metrics.nn_ratio(gen, train_t)
    d2 = expected[0].numpy()
    assert ratio["mean"] == pytest.approx(float(np.mean(d2[:, 0] / d2[:, 1])), rel=1e-15)


def test_default_path_skips_the_index_on_uniform_noise():
    gen, train = _random(300, 1030, 4096, seed=6)
    d, i = nearest_neighbors(gen, train, k=2)
    assert list(neighbors._CACHE.values()) == [None]  # checked once, no basis built
    _, sk_idx = NearestNeighbors(n_neighbors=2, algorithm="brute").fit(train).kneighbors(gen[:50])
    np.testing.assert_array_equal(i.numpy()[:50], sk_idx)


def test_explicit_index_rebuilds_after_in_place_change():
    gen, train = _low_rank(40, 300, 96, seed=9)
    train_t = torch.from_numpy(train.copy())
    index = NeighborIndex(train_t, n_components=8, fallback=False)
    train_t[3] = torch.from_numpy(gen[0])  # the first query is now a training sample
    distances, indices = index.search(gen, 2)
    assert indices[0, 0] == 3 and distances[0, 0] == 0
    _check_exact(gen, train_t.numpy(), distances, indices, 2)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_block_seeds_and_ragged_survivors_with_ties_across_blocks(k):
    # 900 training samples: seeds come from 64-column blocks; duplicates sit in other blocks than their originals.
    gen, train = _low_rank(60, 900, 64, seed=20 + k)
    train[700:760] = train[0:60]
    gen[:6] = train[[0, 3, 5, 700, 703, 705]]  # queries equal to duplicated samples: exact ties, lower index first
    index = NeighborIndex(train, n_components=8, fallback=False)
    distances, indices = index.search(gen, k)
    _check_exact(gen, train, distances, indices, k)
    if k >= 2:
        assert indices[:6, :2].tolist() == [[0, 700], [3, 703], [5, 705], [0, 700], [3, 703], [5, 705]]


def test_seed_columns_are_minima_of_the_best_blocks():
    bound = torch.from_numpy(np.random.default_rng(3).standard_normal((7, 1000)).astype(np.float32))
    seeds = neighbors._seed_columns(bound, 4)
    values = bound.numpy()
    # An independent computation: 64-column blocks (the last one shorter), their minima, the 4 smallest per row.
    blocks = [values[:, start : start + 64] for start in range(0, 1000, 64)]
    minima = np.stack([b.min(axis=1) for b in blocks], axis=1)
    for r in range(7):
        best = np.argsort(minima[r], kind="stable")[:4]
        expected = sorted(64 * b + int(np.argmin(blocks[b][r])) for b in best)
        assert sorted(seeds[r].tolist()) == expected


def test_queries_far_from_the_data_go_to_brute_force_and_stay_exact(monkeypatch):
    gen, train = _low_rank(300, 1000, 256, seed=4, rank=8, noise=0.01)
    gen[-2:] = 30.0 * np.random.default_rng(5).standard_normal((2, 256)).astype(np.float32)  # far, high rank
    handed = []

    def brute_force(queries, *args):
        handed.append(len(queries))
        return brute_force_neighbors(queries, *args)

    monkeypatch.setattr(neighbors, "brute_force_neighbors", brute_force)
    distances, indices = NeighborIndex(train, n_components=16).search(gen, 2)
    _check_exact(gen, train, distances, indices, 2)
    assert handed == [2]  # the two far queries, after the probe chunk found that pruning pays


def test_reduced_float32_matmul_precision_searches_in_float64():
    gen, train = _low_rank(50, 700, 96, seed=8)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32/bf16 allowed: the float32 error bounds would not hold
    try:
        index = NeighborIndex(train, n_components=8, fallback=False)
        assert index._index.work == torch.float64
        distances, indices = index.search(gen, 3)
    finally:
        torch.set_float32_matmul_precision(previous)
    _check_exact(gen, train, distances, indices, 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_projection_and_exact_distances_in_many_small_blocks_keep_the_bits(monkeypatch, dtype):
    # Blocks of one to three rows: every row block of the projection and every block of exact differences is
    # exercised at its edges (the last block shorter), in float32 and float64.
    gen, train = _low_rank(70, 600, 96, seed=31)
    gen, train = gen.astype(dtype), train.astype(dtype)
    monkeypatch.setattr(neighbors, "_PROJECT_ELEMENTS", 96 * 3)
    monkeypatch.setattr(neighbors, "_EXACT_ELEMENTS", 96 * 2)
    index = NeighborIndex(train, n_components=8, fallback=False)
    distances, indices = index.search(gen, 3)
    _check_exact(gen, train, distances, indices, 3)
    coords, norms, errors, squared = index._index._project(torch.from_numpy(gen))
    expected = (torch.from_numpy(gen).to(torch.float64) ** 2).sum(dim=1)
    torch.testing.assert_close(squared, expected, rtol=1e-12, atol=0)
