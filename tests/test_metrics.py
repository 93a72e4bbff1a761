"""Tests of diffusers_memctl.metrics against independent computations (scipy, scikit-learn, closed forms)."""

import math
import types

import numpy as np
import pytest
import scipy.spatial.distance
import torch
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from diffusers_memctl.metrics import (
    brute_force,
    compute_metrics,
    distribution,
    evaluate_module_path,
    frechet_distance,
    js_distance,
    mean_l2,
    memorized_fraction,
    nearest_neighbors,
    nn_l2,
    nn_ratio,
    pca_distribution_distances,
    pca_project,
    reference_metrics,
    signal_js,
    wasserstein_1,
)

SCHEMA_IMAGE = {
    "nn_l2_mean",
    "nn_l2_median",
    "nn_l2_mean_per_dim",
    "nn_l2_median_per_dim",
    "mean_l2",
    "memorized_fraction",
    "nn_ratio_mean",
    "nn_ratio_median",
    "pca_pc1_wasserstein_1",
    "pca_pc1_js_distance",
    "pca_pc2_wasserstein_1",
    "pca_pc2_js_distance",
    "pca_frechet_distance",
}


def _random(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=shape).astype(dtype)


def _direct_distances(a, b):
    """Float64 distances from explicit differences (no matmul expansion)."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))


# ---------------------------------------------------------------------------------------------- nearest neighbours


@pytest.mark.parametrize("candidates", ["float32", "bfloat16"])
@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("shape", [(3, 8, 8), (140,), (1, 40)])
def test_nearest_neighbors_match_sklearn_and_float64(k, shape, candidates):
    gen, train = _random((60, *shape), seed=1), _random((300, *shape), seed=2)
    distances, indices = nearest_neighbors(torch.from_numpy(gen), torch.from_numpy(train), k=k, candidates=candidates)
    assert distances.dtype == torch.float64 and indices.dtype == torch.int64
    assert distances.shape == indices.shape == (60, k)

    flat_gen, flat_train = gen.reshape(60, -1).astype(np.float64), train.reshape(300, -1).astype(np.float64)
    _, sk_idx = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(flat_train).kneighbors(flat_gen)
    np.testing.assert_array_equal(indices.numpy(), sk_idx)
    direct = np.take_along_axis(_direct_distances(gen, train), sk_idx, axis=1)
    np.testing.assert_allclose(distances.numpy(), direct, rtol=1e-12, atol=0)


def test_nearest_neighbors_numpy_float64_and_torch_agree():
    gen, train = _random((30, 50), seed=3, dtype=np.float64), _random((80, 50), seed=4, dtype=np.float64)
    d_np, i_np = nearest_neighbors(gen, train, k=3)
    d_t, i_t = nearest_neighbors(torch.from_numpy(gen), torch.from_numpy(train), k=3)
    assert torch.equal(i_np, i_t) and torch.equal(d_np, d_t)
    order = np.argsort(_direct_distances(gen, train), axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(i_np.numpy(), order)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_nearest_neighbors_chunked_equals_unchunked(chunk_size):
    gen, train = _random((50, 3, 4, 4), seed=5), _random((120, 3, 4, 4), seed=6)
    d_ref, i_ref = nearest_neighbors(gen, train, k=4)
    d, i = nearest_neighbors(gen, train, k=4, chunk_size=chunk_size)
    assert torch.equal(i, i_ref)
    assert torch.equal(d, d_ref)


def test_nearest_neighbors_resolves_near_ties_beyond_float32():
    # 40 training points whose distances to the query differ by 1e-9 (relative): far below float32 resolution, so
    # the candidate margin is exceeded and the exact fallback must order them. The order is known by construction.
    rng = np.random.default_rng(7)
    dim, n_close = 256, 40
    directions = rng.standard_normal((n_close, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    radii = 1.0 + 1e-9 * rng.permutation(n_close)
    far = rng.standard_normal((25, dim)) * 0.01 + 5.0
    train = np.concatenate([far[:10], directions * radii[:, None], far[10:]])
    query = np.zeros((1, dim))
    distances, indices = nearest_neighbors(query, train, k=5)
    expected = 10 + np.argsort(radii)[:5]
    np.testing.assert_array_equal(indices.numpy()[0], expected)
    np.testing.assert_allclose(distances.numpy()[0], np.sort(radii)[:5], rtol=1e-13)


def test_nearest_neighbors_exact_ties_take_lower_index():
    train = _random((12, 6), seed=8)
    train[9] = train[3]  # duplicate
    gen = train[[3]] + 1e-3
    _, indices = nearest_neighbors(gen, train, k=2)
    assert indices.tolist() == [[3, 9]]


@pytest.mark.parametrize("setting", ["legacy_high", "mkldnn_bf16"])
def test_nearest_neighbors_reduced_matmul_precision_still_exact(monkeypatch, setting):
    gen, train = _random((20, 64), seed=9), _random((90, 64), seed=10)
    expected = nearest_neighbors(gen, train, k=3)
    assert brute_force._candidate_precision(torch.device("cpu"))[0] == torch.float32
    if setting == "legacy_high":
        monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high")
    else:
        monkeypatch.setattr(torch.backends.mkldnn, "matmul", types.SimpleNamespace(fp32_precision="bf16"))
    assert brute_force._candidate_precision(torch.device("cpu"))[0] == torch.float64
    d, i = nearest_neighbors(gen, train, k=3)
    assert torch.equal(i, expected[1])
    np.testing.assert_allclose(d.numpy(), expected[0].numpy(), rtol=1e-14)


# ---------------------------------------------------------------------------------------------- memorization metrics


def test_set_against_itself_is_fully_memorized():
    x = _random((25, 3, 4, 4), seed=11)
    summary = nn_l2(x, x)
    assert summary == {"mean": 0.0, "median": 0.0, "mean_per_dim": 0.0, "median_per_dim": 0.0}
    # Nearest distance 0, second > 0: ratio 0 < 1/3 for every sample.
    assert memorized_fraction(x, x) == 1.0


@pytest.mark.parametrize("shift", [0.05, 0.2])
def test_shifted_copies_have_known_distances(shift):
    # Well-separated training points (pairwise distance >= ~1), each generated point = a training point + a shift of
    # norm `shift` spread equally over all D coordinates, so its nearest neighbour is its source at distance `shift`.
    rng = np.random.default_rng(12)
    train = rng.standard_normal((30, 48)) * 3.0
    assert _direct_distances(train, train)[~np.eye(30, dtype=bool)].min() > 4 * shift
    offset = np.full(48, shift / math.sqrt(48))
    gen = train[:20] + offset
    summary = nn_l2(gen, train)
    assert summary["mean"] == pytest.approx(shift, rel=1e-9)
    assert summary["median"] == pytest.approx(shift, rel=1e-9)
    assert summary["mean_per_dim"] == pytest.approx(shift / math.sqrt(48), rel=1e-9)
    assert summary["median_per_dim"] == pytest.approx(shift / math.sqrt(48), rel=1e-9)
    _, idx = nearest_neighbors(gen, train, k=1)
    assert idx[:, 0].tolist() == list(range(20))


def test_nn_l2_median_of_even_count_averages_middle_values():
    train = np.zeros((2, 1))
    train[1] = 100.0
    gen = np.array([[1.0], [2.0], [4.0], [8.0]])
    summary = nn_l2(gen, train)
    assert summary["mean"] == pytest.approx(15 / 4)
    assert summary["median"] == pytest.approx(3.0)


def test_mean_l2_matches_cdist():
    gen, train = _random((17, 3, 5), seed=13), _random((41, 3, 5), seed=14)
    expected = scipy.spatial.distance.cdist(
        gen.reshape(17, -1).astype(np.float64), train.reshape(41, -1).astype(np.float64)
    ).mean()
    assert mean_l2(gen, train) == pytest.approx(expected, rel=1e-12)
    assert mean_l2(gen, train, chunk_size=4) == pytest.approx(expected, rel=1e-12)


def test_mean_l2_of_a_point_to_a_square():
    gen = np.array([[0.0, 0.0]])
    train = np.array([[3.0, 4.0], [0.0, 1.0], [-6.0, 8.0]])
    assert mean_l2(gen, train) == pytest.approx((5.0 + 1.0 + 10.0) / 3)


def test_memorized_fraction_hand_made():
    train = np.array([[0.0], [1.0], [10.0]])
    gen = np.array([[0.2], [5.0], [9.9]])
    # Ratios d1/d2: 0.2/0.8 = 0.25, 4/5 = 0.8, 0.1/8.9 ~= 0.011.
    assert memorized_fraction(gen, train) == pytest.approx(2 / 3)
    assert memorized_fraction(gen, train, threshold=0.2) == pytest.approx(1 / 3)
    assert memorized_fraction(gen, train, threshold=1.0) == pytest.approx(1.0)


def test_memorized_fraction_copy_of_duplicated_training_sample():
    train = np.array([[1.0, 2.0], [1.0, 2.0], [5.0, 5.0]])
    assert memorized_fraction(np.array([[1.0, 2.0]]), train) == 1.0


# ---------------------------------------------------------------------------------------------- 1D distances


def test_wasserstein_1_hand_made():
    assert wasserstein_1([0.0, 1.0, 3.0], [5.0, 6.0, 8.0]) == pytest.approx(5.0)
    rng = np.random.default_rng(15)
    a, b = rng.normal(size=200), rng.normal(1.0, 2.0, size=200)
    # Equal sizes: W1 is the mean absolute difference of the sorted samples.
    assert wasserstein_1(a, b) == pytest.approx(np.mean(np.abs(np.sort(a) - np.sort(b))), rel=1e-12)


def test_wasserstein_1_unequal_sizes_is_cdf_area():
    a, b = np.array([0.0, 2.0]), np.array([1.0, 1.0, 4.0])
    # CDF difference: [0,1): 1/2; [1,2): |1/2 - 2/3| = 1/6; [2,4): |1 - 2/3| = 1/3  ->  1/2 + 1/6 + 2/3 = 4/3.
    assert wasserstein_1(a, b) == pytest.approx(4 / 3)
    assert wasserstein_1(torch.tensor(a), b) == pytest.approx(4 / 3)


def test_js_distance_matches_scipy_on_shared_bins():
    rng = np.random.default_rng(16)
    a, b = rng.normal(size=300), rng.normal(0.5, 1.5, size=200)
    edges = np.linspace(min(a.min(), b.min()), max(a.max(), b.max()), 21)
    p, q = np.histogram(a, edges)[0], np.histogram(b, edges)[0]
    expected = scipy.spatial.distance.jensenshannon(p, q, base=2)
    assert js_distance(a, b, bins=20) == pytest.approx(expected, rel=1e-12)


def test_js_distance_hand_made_histograms():
    # range (0, 2) with 2 bins: a -> [2, 0], b -> [1, 1]; JS = 1 - 0.75*log2(4/3)... computed explicitly below.
    a, b = [0.1, 0.2], [0.5, 1.5]
    p, q, m = np.array([1.0, 0.0]), np.array([0.5, 0.5]), np.array([0.75, 0.25])
    js = 0.5 * (p[0] * np.log2(p[0] / m[0])) + 0.5 * (q * np.log2(q / m)).sum()
    assert js_distance(a, b, bins=2, range=(0.0, 2.0)) == pytest.approx(math.sqrt(js), rel=1e-12)


def test_js_distance_symmetric_and_bounded():
    rng = np.random.default_rng(17)
    for _ in range(5):
        a, b = rng.normal(size=50), rng.exponential(size=80)
        value = js_distance(a, b, bins=15)
        assert 0.0 <= value <= 1.0
        assert value == pytest.approx(js_distance(b, a, bins=15), abs=1e-15)
    assert js_distance([0.0, 0.1], [10.0, 10.1], bins=10) == pytest.approx(1.0)
    assert js_distance(np.arange(10.0), np.arange(10.0)) == 0.0
    assert js_distance([3.0, 3.0], [3.0]) == 0.0  # degenerate pooled range


# ---------------------------------------------------------------------------------------------- Frechet, PCA


def test_frechet_distance_diagonal_closed_form():
    # Hand-made sets whose sample covariances (ddof=1) are exactly diagonal.
    base = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    a = base * [1.0, 1.0] + [0.5, -1.0]  # var = (2/3, 8/3)
    b = base * [3.0, 0.5] + [2.0, 1.0]  # var = (6, 2/3)
    var_a, var_b = np.array([2 / 3, 8 / 3]), np.array([6.0, 2 / 3])
    expected = (1.5**2 + 2.0**2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-12)


def test_frechet_distance_general_covariances_via_eigenvalues():
    rng = np.random.default_rng(18)
    a = rng.standard_normal((200, 3)) @ rng.standard_normal((3, 3))
    b = rng.standard_normal((150, 3)) @ rng.standard_normal((3, 3)) + 1.0
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Eigenvalues of Ca Cb are real and non-negative; Tr sqrt(Ca Cb) is the sum of their square roots.
    tr_root = np.sum(np.sqrt(np.clip(np.linalg.eigvals(ca @ cb).real, 0, None)))
    expected = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(ca) + np.trace(cb) - 2 * tr_root
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    one_dim = frechet_distance(a[:, :1], b[:, :1])
    assert one_dim == pytest.approx(
        (a[:, 0].mean() - b[:, 0].mean()) ** 2 + (a[:, 0].std(ddof=1) - b[:, 0].std(ddof=1)) ** 2
    )


@pytest.mark.parametrize("n_train,dim", [(80, 20), (15, 40)])  # covariance path and Gram path
@pytest.mark.parametrize("fit_on", ["train", "both"])
def test_pca_project_matches_sklearn(n_train, dim, fit_on):
    rng = np.random.default_rng(19)
    scales = np.linspace(3.0, 0.1, dim)
    train = rng.standard_normal((n_train, dim)) * scales
    gen = rng.standard_normal((12, dim)) * scales + 0.3
    train_before, gen_before = train.copy(), gen.copy()
    gen_proj, train_proj, ratio = pca_project(gen, train, n_components=3, fit_on=fit_on)
    np.testing.assert_array_equal(train, train_before)  # inputs are never centred in place
    np.testing.assert_array_equal(gen, gen_before)
    fit = train if fit_on == "train" else np.concatenate([train, gen])
    reference = PCA(n_components=3, svd_solver="full").fit(fit)
    np.testing.assert_allclose(ratio, reference.explained_variance_ratio_, rtol=1e-10)
    components = reference.components_.copy()
    # Our sign convention: the largest-magnitude loading of each component is positive.
    components *= np.sign(components[np.arange(3), np.argmax(np.abs(components), axis=1)])[:, None]
    np.testing.assert_allclose(gen_proj, (gen - reference.mean_) @ components.T, atol=1e-9)
    np.testing.assert_allclose(train_proj, (train - reference.mean_) @ components.T, atol=1e-9)


@pytest.mark.parametrize("n_train,dim", [(60, 30), (20, 50)])
def test_pca_lanczos_path_equals_dense_path(monkeypatch, n_train, dim):
    rng = np.random.default_rng(20)
    train = rng.standard_normal((n_train, dim)) * np.linspace(4.0, 0.1, dim)
    gen = rng.standard_normal((10, dim))
    dense = pca_project(gen, train, n_components=2)
    monkeypatch.setattr(distribution, "_PCA_DENSE_MAX", 4)
    lanczos = pca_project(gen, train, n_components=2)
    for ours, ref in zip(lanczos, dense):
        np.testing.assert_allclose(ours, ref, atol=1e-9)


def test_pca_distribution_distances_consistent_with_parts():
    gen, train = _random((40, 2, 3, 3), seed=21), _random((70, 2, 3, 3), seed=22)
    out = pca_distribution_distances(gen, train, n_components=3, bins=12)
    assert set(out) == {f"pca_pc{k}_{m}" for k in (1, 2, 3) for m in ("wasserstein_1", "js_distance")} | {
        "pca_frechet_distance"
    }
    gen_proj, train_proj, _ = pca_project(gen, train, n_components=3)
    for k in range(3):
        assert out[f"pca_pc{k + 1}_wasserstein_1"] == wasserstein_1(gen_proj[:, k], train_proj[:, k])
        assert out[f"pca_pc{k + 1}_js_distance"] == js_distance(gen_proj[:, k], train_proj[:, k], bins=12)
    assert out["pca_frechet_distance"] == frechet_distance(gen_proj, train_proj)
    same = pca_distribution_distances(train, train)
    assert max(same.values()) == pytest.approx(0.0, abs=1e-9)


# ---------------------------------------------------------------------------------------------- signals, everything


def test_signal_js_matches_per_signal_scipy():
    rng = np.random.default_rng(23)
    train = rng.standard_normal((30, 1, 40))
    gen = rng.standard_normal((9, 1, 40)) * 1.5 + 0.2
    out = signal_js(gen, train, bins=10)
    lo, hi = min(gen.min(), train.min()), max(gen.max(), train.max())
    edges = np.linspace(lo, hi, 11)
    ref = np.histogram(train.ravel(), edges)[0]
    per = [scipy.spatial.distance.jensenshannon(np.histogram(g.ravel(), edges)[0], ref, base=2) for g in gen]
    assert out["mean"] == pytest.approx(np.mean(per), rel=1e-12)
    assert out["median"] == pytest.approx(np.median(per), rel=1e-12)
    assert 0.0 <= out["median"] <= 1.0


def test_compute_metrics_image_keys_and_values():
    gen, train = _random((20, 3, 4, 4), seed=24), _random((30, 3, 4, 4), seed=25)
    out = compute_metrics(torch.from_numpy(gen), torch.from_numpy(train), chunk_size=7)
    assert set(out) == SCHEMA_IMAGE
    assert all(isinstance(v, float) for v in out.values())
    summary = nn_l2(gen, train)
    assert out["nn_l2_mean"] == summary["mean"] and out["nn_l2_median_per_dim"] == summary["median_per_dim"]
    assert out["mean_l2"] == pytest.approx(mean_l2(gen, train), rel=1e-12)
    assert out["memorized_fraction"] == memorized_fraction(gen, train)
    ratio = nn_ratio(gen, train)
    assert out["nn_ratio_mean"] == ratio["mean"] and out["nn_ratio_median"] == ratio["median"]
    pca = pca_distribution_distances(gen, train)
    assert all(out[key] == value for key, value in pca.items())


def test_compute_metrics_signal_keys_and_self_comparison():
    x = _random((16, 1, 24), seed=26)
    out = compute_metrics(x, x, modality="signal", n_components=3, bins=8)
    expected = SCHEMA_IMAGE | {"pca_pc3_wasserstein_1", "pca_pc3_js_distance", "signal_js_mean", "signal_js_median"}
    assert set(out) == expected
    assert out["nn_l2_mean"] == 0.0 and out["memorized_fraction"] == 1.0
    assert out["pca_pc1_wasserstein_1"] == pytest.approx(0.0, abs=1e-12)
    assert out["signal_js_mean"] == pytest.approx(np.mean([signal_js(x[[i]], x, bins=8)["mean"] for i in range(16)]))


# ---------------------------------------------------------------------------------------------- bad inputs

_GOOD = np.zeros((4, 3)) + np.arange(12.0).reshape(4, 3) ** 1.5


def _with(value, index=(1, 2)):
    x = _GOOD.copy()
    x[index] = value
    return x


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: nearest_neighbors(_GOOD.tolist(), np.zeros((5, 4)).tolist()), "dimensions differ"),
        (lambda: nearest_neighbors(np.zeros((4, 2, 3)), np.zeros((5, 3, 2))), "per-sample shapes differ"),
        (lambda: nearest_neighbors(_with(np.nan), _GOOD), "NaN or inf in 1 sample.*index 1"),
        (lambda: nearest_neighbors(_GOOD, _with(np.inf)), "`training` contains NaN or inf"),
        (lambda: nearest_neighbors(np.zeros((0, 3)), _GOOD), "empty"),
        (lambda: nearest_neighbors(np.zeros((4, 0)), _GOOD), "empty"),
        (lambda: nearest_neighbors(np.zeros(3), _GOOD), "at least 2 dimensions"),
        (lambda: nearest_neighbors(np.array([["a", "b"]]), _GOOD), "real numbers"),
        (lambda: nearest_neighbors(_GOOD, _GOOD, k=0), "`k` must be in \\[1, 4\\]"),
        (lambda: nearest_neighbors(_GOOD, _GOOD, k=5), "`k` must be in \\[1, 4\\]"),
        (lambda: nearest_neighbors(_GOOD, _GOOD, k=1.5), "`k` must be an integer"),
        (lambda: nearest_neighbors(_GOOD, _GOOD, chunk_size=0), "`chunk_size` must be >= 1"),
        (lambda: nn_l2(_GOOD, _GOOD, metric="cosine"), "unexpected keyword"),
        (lambda: memorized_fraction(_GOOD, _GOOD, threshold=0.0), "`threshold` must be in \\(0, 1\\]"),
        (lambda: memorized_fraction(_GOOD, _GOOD, threshold=1.5), "`threshold` must be in \\(0, 1\\]"),
        (lambda: memorized_fraction(_GOOD, _GOOD[:1]), "at least 2 samples"),
        (lambda: mean_l2(_GOOD, _with(-np.inf)), "NaN or inf"),
        (lambda: wasserstein_1([], [1.0]), "non-empty 1D"),
        (lambda: wasserstein_1([np.nan], [1.0]), "NaN or inf"),
        (lambda: js_distance([1.0], [2.0], bins=0), "`bins` must be >= 1"),
        (lambda: js_distance([1.0], [2.0], range=(1.0, 1.0)), "low < high"),
        (lambda: js_distance([1.0], [2.0], range="ab"), "`range` must be a pair"),
        (lambda: js_distance([1.0], [5.0], range=(3.0, 4.0)), "no value of `a`"),
        (lambda: frechet_distance(_GOOD[:1], _GOOD), "at least 2 points"),
        (lambda: pca_project(_GOOD, _GOOD, fit_on="generated"), "`fit_on` must be"),
        (lambda: pca_project(_GOOD, _GOOD, n_components=0), "`n_components` must be in \\[1, 3\\]"),
        (lambda: pca_project(_GOOD, _GOOD, n_components=4), "`n_components` must be in \\[1, 3\\]"),
        (lambda: pca_project(_GOOD, _GOOD[:1]), "at least 2 fitted samples"),
        (lambda: pca_project(_GOOD, np.ones((5, 3))), "non-zero variance"),
        (lambda: pca_distribution_distances(_GOOD[:1], _GOOD), "`generated` needs at least 2"),
        (lambda: signal_js(_GOOD, _GOOD, bins=-1), "`bins` must be >= 1"),
        (lambda: compute_metrics(_GOOD, _GOOD, modality="audio"), "`modality` must be"),
        (lambda: compute_metrics(_GOOD[:1], _GOOD), "`generated` needs at least 2"),
        (lambda: compute_metrics(_GOOD, _GOOD[:1]), "`training` needs at least 2"),
        (lambda: compute_metrics(_GOOD, _with(np.nan)), "NaN or inf"),
        (lambda: compute_metrics(_GOOD, np.zeros((4, 2, 2))), "per-sample shapes differ"),
        (lambda: compute_metrics(_GOOD, _GOOD, memorization_threshold=-1), "`threshold`"),
        (lambda: compute_metrics(_GOOD, _GOOD, n_components=9), "`n_components`"),
        (lambda: compute_metrics(np.zeros((0, 3)), _GOOD), "empty"),
        (lambda: evaluate_module_path("memctl_fid"), "valid names are"),
    ],
)
def test_bad_inputs_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_nn_ratio_hand_made_and_against_direct_distances():
    train = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 4.0]])
    gen = np.array([[1.0, 0.0], [5.0, 0.0], [0.0, 0.0]])
    # (1, 0): nearest 1 (origin), second sqrt(17) (0, 4); (5, 0): 5 and 5; a copy of the origin: 0.
    expected = np.array([1 / np.sqrt(17), 1.0, 0.0])
    out = nn_ratio(gen, train)
    assert out["mean"] == pytest.approx(expected.mean(), rel=1e-12)
    assert out["median"] == pytest.approx(np.median(expected), rel=1e-12)

    gen, train = _random((40, 3, 5), seed=31), _random((60, 3, 5), seed=32)
    direct = np.sort(_direct_distances(gen, train), axis=1)
    ratios = direct[:, 0] / direct[:, 1]
    out = nn_ratio(torch.from_numpy(gen), torch.from_numpy(train), chunk_size=9)
    assert out["mean"] == pytest.approx(ratios.mean(), rel=1e-9)
    assert out["median"] == pytest.approx(np.median(ratios), rel=1e-9)
    # The threshold of memorized_fraction applied to the same ratios.
    assert memorized_fraction(gen, train, threshold=0.9) == pytest.approx(np.mean(ratios < 0.9))


def test_nn_ratio_leave_one_out_skips_each_sample_itself():
    train = _random((50, 8), seed=33)
    direct = np.sort(_direct_distances(train, train), axis=1)  # column 0 is each sample itself
    expected = direct[:, 1] / direct[:, 2]
    out = nn_ratio(train, train, exclude_self=True)
    assert out["mean"] == pytest.approx(expected.mean(), rel=1e-9)
    assert nn_ratio(train, train)["mean"] == 0.0  # without it every sample is its own copy
    with pytest.raises(ValueError, match="`generated` has 10 samples, `training` 50"):
        nn_ratio(train[:10], train, exclude_self=True)
    with pytest.raises(ValueError, match="at least 3 samples"):
        nn_ratio(train[:2], train[:2], exclude_self=True)


def test_reference_metrics_leave_each_training_sample_out():
    train = _random((40, 2, 3), seed=34)
    train[7] = train[3]  # one duplicated pair: each is the other's copy
    direct = _direct_distances(train, train)
    m = len(train)
    others = direct[~np.eye(m, dtype=bool)].reshape(m, m - 1)
    nearest = np.sort(others, axis=1)
    ratios = np.divide(nearest[:, 0], nearest[:, 1], out=np.zeros(m), where=nearest[:, 1] > 0)
    out = reference_metrics(torch.from_numpy(train), chunk_size=6)
    assert out["mean_l2"] == pytest.approx(others.mean(), rel=1e-9)
    assert out["nn_l2_mean"] == pytest.approx(nearest[:, 0].mean(), abs=1e-6)
    assert out["nn_l2_median"] == pytest.approx(np.median(nearest[:, 0]), abs=1e-6)
    assert out["nn_ratio_mean"] == pytest.approx(ratios.mean(), abs=1e-6)
    assert ratios[3] == ratios[7] == 0.0  # the duplicated pair counts as copies of each other
    assert out["memorized_fraction"] == pytest.approx(np.mean(ratios < 1 / 3)) and out["memorized_fraction"] >= 2 / m
    with pytest.raises(ValueError, match="at least 3 samples.*got 2"):
        reference_metrics(train[:2])


# ---------------------------------------------------------------------------------------------- bf16 candidates


def _near_tie_set(rel_gap, n_close=40, dim=256, seed=7):
    """A query at the origin and `n_close` training points on spheres whose radii differ by `rel_gap` (relative)."""
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((n_close, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    radii = 1.0 + rel_gap * rng.permutation(n_close)
    far = rng.standard_normal((60, dim)) * 0.01 + 5.0
    train = np.concatenate([far[:10], directions * radii[:, None], far[10:]])
    return np.zeros((3, dim)), train, 10 + np.argsort(radii, kind="stable")


@pytest.mark.parametrize("rel_gap", [1e-3, 1e-5, 1e-9])
@pytest.mark.parametrize("candidates", ["bfloat16", "float32"])
def test_nearest_neighbors_adversarial_near_ties_match_float64(rel_gap, candidates):
    # Gaps of 1e-3 sit below bf16's resolution (2^-8) but above float32's, 1e-5 and 1e-9 below both: the bf16 bound
    # must keep every tied point, the float32 filter must keep or drop them rightly, and float64 decides the order.
    query, train, expected = _near_tie_set(rel_gap)
    distances, indices = nearest_neighbors(query, train.astype(np.float64), k=5, candidates=candidates)
    np.testing.assert_array_equal(indices.numpy(), np.tile(expected[:5], (3, 1)))
    reference = np.sort(_direct_distances(query, train), axis=1, kind="stable")[:, :5]
    np.testing.assert_allclose(distances.numpy(), reference, rtol=1e-13)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nearest_neighbors_bf16_equals_float64_brute_force_on_clustered_data(seed):
    # Clustered data with tiny within-cluster offsets: many candidates per row inside the bf16 bound, so the float32
    # filter, the float64 re-ranking and the fallback for wide rows all run. Compared with a float64 brute force.
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-1, 1, size=(6, 300))
    train = (centres[rng.integers(0, 6, 400)] + 1e-3 * rng.standard_normal((400, 300))).astype(np.float32)
    gen = (centres[rng.integers(0, 6, 50)] + 1e-3 * rng.standard_normal((50, 300))).astype(np.float32)
    d, i = nearest_neighbors(gen, train, k=3, candidates="bfloat16")
    direct = _direct_distances(gen, train)
    expected = np.argsort(direct, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(i.numpy(), expected)
    np.testing.assert_allclose(d.numpy(), np.take_along_axis(direct, expected, axis=1), rtol=1e-12)
    d32, i32 = nearest_neighbors(gen, train, k=3, candidates="float32")
    assert torch.equal(i, i32) and torch.equal(d, d32)


def test_bf16_bound_holds_for_correlated_data():
    # The premise of the bf16 path (float32 accumulation, one rounding of the result) checked on data whose dot
    # products are large (all-positive, correlated): every approximate squared distance lies within its bound.
    rng = np.random.default_rng(3)
    a = torch.from_numpy(rng.uniform(0.5, 1.0, (40, 3000)).astype(np.float32))
    b = torch.from_numpy(rng.uniform(0.5, 1.0, (70, 3000)).astype(np.float32))
    a_sq, b_sq = brute_force._squared_norms(a), brute_force._squared_norms(b)
    a_low, a_low_n, a_res = brute_force._bf16_split(a, a_sq.sqrt())
    b_low, b_low_n, b_res = brute_force._bf16_split(b, b_sq.sqrt())
    sq, bound = brute_force._bf16_bounds(a_low @ b_low.T, (a_sq, a_low_n, a_res), (b_sq, b_low_n, b_res), 3000)
    true = torch.from_numpy(_direct_distances(a.numpy(), b.numpy()) ** 2)
    assert bool(((sq - true).abs() <= bound).all())
    assert float((sq - true).abs().max()) > 0  # the bf16 path is approximate: the bound is doing work


def test_nearest_neighbors_rejects_unknown_candidates():
    with pytest.raises(ValueError, match="candidates"):
        nearest_neighbors(np.zeros((2, 3)), np.zeros((4, 3)), candidates="int8")


def test_nearest_neighbors_mixed_float32_and_float64_inputs_stay_exact():
    # float32 queries against float64 training samples that differ from their float32 roundings: the filter must not
    # round the training samples to float32. Point 1 is nearer than point 0 by less than float32 can represent.
    query = np.array([[0.5, 0.25, 0, 0]], np.float32)
    train = np.array([[1.0, 0, 0, 0], [1.0 - 1e-12, 0, 0, 0], [3.0, 0, 0, 0], [4.0, 0, 0, 0]], np.float64)
    for candidates in ("bfloat16", "float32"):
        _, indices = nearest_neighbors(torch.from_numpy(query), torch.from_numpy(train), k=2, candidates=candidates)
        assert indices.tolist() == [[1, 0]]
