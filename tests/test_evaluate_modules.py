"""The `evaluate` modules load offline from their folders and return exactly the library functions' values."""

import os
from pathlib import Path

import numpy as np
import pytest

from diffusers_memctl.metrics import (
    EVALUATE_MODULES,
    compute_metrics,
    evaluate_module_path,
    mean_l2,
    memorized_fraction,
    nn_l2,
    pca_distribution_distances,
    signal_js,
)

evaluate = pytest.importorskip("evaluate")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")


def _load(name, **kwargs):
    return evaluate.load(evaluate_module_path(name), keep_in_memory=True, **kwargs)


def _data(n_gen=9, n_train=14, dim=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (n_gen, dim)), rng.uniform(-1, 1, (n_train, dim))


@pytest.mark.parametrize("name", EVALUATE_MODULES)
def test_module_folder_is_installed_and_loads_offline(name):
    path = Path(evaluate_module_path(name))
    assert path.is_dir() and (path / f"{name}.py").is_file()
    source = (path / f"{name}.py").read_text()
    assert "from diffusers_memctl.metrics import" in source  # no second copy of the math
    module = _load(name)
    assert isinstance(module, evaluate.Metric)
    assert module.name == name
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_nn_l2_module_equals_library():
    gen, train = _data()
    out = _load("memctl_nn_l2").compute(predictions=gen.tolist(), references=train.tolist())
    expected = {f"nn_l2_{k}": v for k, v in nn_l2(gen, train).items()}
    expected["mean_l2"] = mean_l2(gen, train)
    assert out == pytest.approx(expected, rel=1e-12)
    assert set(out) == set(expected)


@pytest.mark.parametrize("threshold", [1 / 3, 0.9])
def test_memorization_module_equals_library(threshold):
    gen, train = _data(seed=1)
    gen[:3] = train[:3] + 1e-3  # near-copies
    out = _load("memctl_memorization").compute(predictions=gen, references=train, threshold=threshold)
    assert out == {"memorized_fraction": memorized_fraction(gen, train, threshold)}
    assert out["memorized_fraction"] >= 3 / 9


def test_pca_module_equals_library():
    gen, train = _data(seed=2)
    out = _load("memctl_pca_distances").compute(predictions=gen, references=train, n_components=3, bins=7)
    expected = pca_distribution_distances(gen, train, n_components=3, bins=7)
    assert out == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert set(out) == set(expected)


def test_signal_js_module_equals_library():
    gen, train = _data(seed=3, dim=30)
    out = _load("memctl_signal_js").compute(predictions=gen, references=train, bins=9)
    expected = signal_js(gen, train, bins=9)
    assert out == {"signal_js_mean": expected["mean"], "signal_js_median": expected["median"]}


def test_metrics_module_equals_compute_metrics_with_batches():
    gen, train = _data(n_gen=11, n_train=6, seed=4)
    module = _load("memctl_metrics")
    # Streaming in batches of unequal sizes (the shorter side is padded internally per batch).
    module.add_batch(predictions=gen[:8], references=train[:2])
    module.add_batch(predictions=gen[8:], references=train[2:])
    out = module.compute(modality="signal")
    expected = compute_metrics(gen, train, modality="signal")
    assert set(out) == set(expected)
    assert out == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_module_with_disk_cache(tmp_path):
    gen, train = _data(seed=5)
    module = evaluate.load(evaluate_module_path("memctl_nn_l2"), cache_dir=str(tmp_path))
    out = module.compute(predictions=gen, references=train)
    assert out["nn_l2_mean"] == pytest.approx(nn_l2(gen, train)["mean"], rel=1e-12)


def test_module_rejects_ragged_rows():
    module = _load("memctl_nn_l2")
    with pytest.raises(ValueError, match="same length"):
        module.compute(predictions=[[0.0, 1.0], [2.0]], references=[[0.0, 1.0], [1.0, 1.0]])
