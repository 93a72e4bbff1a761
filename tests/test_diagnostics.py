"""Tests of the per-timestep gradient profile (`diffusers_memctl.diagnostics`, `memctl-diagnose`)."""

from __future__ import annotations

import json
import runpy
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from scipy.stats import norm

from diffusers_memctl.cli import diagnose as diagnose_cli
from diffusers_memctl.cli import train as train_cli
from diffusers_memctl.diagnostics import (
    GRADIENT_PROFILE_SCHEMA_VERSION,
    GradientProfile,
    bin_edges,
    contribution_shares,
    estimate_gradient_profile,
    gram_statistics,
    resolve_sampler_spec,
)
from diffusers_memctl.loss_weighting import compute_snr, min_snr_weights

# Tiny models run fastest on one thread; two spinning threads on a busy 2-core machine cost seconds.
pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO_ROOT = Path(__file__).resolve().parents[1]
diagnose_script = runpy.run_path(str(REPO_ROOT / "training_scripts" / "diagnose_memctl.py"))["main"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class LinearDenoiser(torch.nn.Module):
    """eps_hat = W x_t, independent of t: the model whose expected gradient has a closed form."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = torch.nn.Parameter(weight.clone())

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T


def _gaussian_setup(dim: int = 4, num_samples: int = 4096, T: int = 100):
    generator = torch.Generator().manual_seed(123)
    root = torch.randn(dim, dim, generator=generator, dtype=torch.float64) / dim**0.5
    covariance = root @ root.T + 0.5 * torch.eye(dim, dtype=torch.float64)
    samples = (torch.randn(num_samples, dim, generator=generator, dtype=torch.float64) @ torch.linalg.cholesky(
        covariance
    ).T).float()  # fmt: skip
    weight = 0.3 * torch.randn(dim, dim, generator=generator)
    return samples, LinearDenoiser(weight), DDPMScheduler(num_train_timesteps=T)


def _closed_form_gradient(weight: torch.Tensor, samples: torch.Tensor, abar: float) -> torch.Tensor:
    """E grad of mean_{batch, dims} (W x_t - eps)^2 = (2/D) (W (abar S + (1 - abar) I) - sqrt(1 - abar) I).

    S is the second moment of the finite training set the batches are drawn from (of N(0, S) in the limit); the
    noise is independent of x_0 with zero mean, so every cross term vanishes in expectation.
    """
    x = samples.double()
    dim = x.shape[1]
    second_moment = x.T @ x / x.shape[0]
    eye = torch.eye(dim, dtype=torch.float64)
    w = weight.detach().double()
    return 2.0 / dim * (w @ (abar * second_moment + (1 - abar) * eye) - (1 - abar) ** 0.5 * eye)


@pytest.mark.parametrize("timestep_mode", ["midpoint", "stratified"])
def test_linear_denoiser_matches_closed_form_within_standard_error(timestep_mode):
    samples, model, scheduler = _gaussian_setup()
    profile = estimate_gradient_profile(
        model, scheduler, samples, num_bins=4, num_batches=64, batch_size=16, seed=0, keep_mean_gradients=True,
        timestep_mode=timestep_mode, progress=False,
    )  # fmt: skip
    stats = profile.bin_statistics()
    for k, t in enumerate(profile.timesteps):
        # Stratified: every t of the bin equally likely, and the closed form is linear in (abar, sqrt(1 - abar)).
        bin_t = [t] if timestep_mode == "midpoint" else range(profile.edges[k], profile.edges[k + 1])
        expected = (
            torch.stack(
                [_closed_form_gradient(model.weight, samples, float(scheduler.alphas_cumprod[s])) for s in bin_t]
            )
            .mean(0)
            .reshape(-1)
        )
        row = stats[k]
        # ||E g|| (U-statistic) within 3 jackknife standard errors of the closed form.
        assert abs(row["mean_grad_norm"] - float(expected.norm())) < 3 * row["mean_grad_norm_se"] + 1e-12
        # The mean gradient vector: ||g_bar - E g||^2 has expectation tr(Cov) / B; a wrong expectation (a bias as
        # large as the noise) would push the ratio far above 1.
        trace_cov_over_b = (np.trace(profile.grams[k]) / 64 - row["mean_grad_sq"]) / 64
        ratio = float((profile.mean_gradients[k] - expected).norm() ** 2) / trace_cov_over_b
        assert 0.2 < ratio < 3.0, (t, ratio)
    # Coherence must rise toward low t for this model? Not a claim: only its range is certain.
    assert all(0.0 <= row["coherence"] <= 1.0 for row in stats)


def test_expected_gradient_vanishes_at_the_wiener_solution():
    """At W* = sqrt(1 - abar) (abar S + (1 - abar) I)^-1 the closed form is zero: ||E g||^2 must be 0 within 3 SE,
    while the per-batch gradients themselves are not."""
    samples, model, _ = _gaussian_setup()
    scheduler = DDPMScheduler(num_train_timesteps=101)  # one bin over [0, 101): midpoint 50
    abar = float(scheduler.alphas_cumprod[50])
    x = samples.double()
    moment = abar * (x.T @ x / x.shape[0]) + (1 - abar) * torch.eye(x.shape[1], dtype=torch.float64)
    model.weight.data = ((1 - abar) ** 0.5 * torch.linalg.inv(moment)).float()
    profile = estimate_gradient_profile(model, scheduler, samples, num_bins=1, num_batches=32, batch_size=16,
                                        timestep_mode="midpoint", progress=False)  # fmt: skip
    assert profile.timesteps == [50]
    row = profile.bin_statistics()[0]
    assert abs(row["mean_grad_sq"]) < 3 * row["mean_grad_sq_se"]
    assert row["mean_batch_grad_norm"] > 10 * row["mean_batch_grad_norm_se"]


def test_per_sample_gradients_average_to_the_batch_gradient():
    """The batch loss is the mean of the per-sample losses, so torch.func's per-sample gradients must average to the
    batch gradient of an ordinary backward pass (tiny 2D U-Net with attention and a 1D U-Net)."""
    from diffusers_memctl.diagnostics import _batch_gradient, _per_sample_gradients
    from diffusers_memctl.models import create_unet_1d, create_unet_2d

    scheduler = DDPMScheduler(num_train_timesteps=100)
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        models = [(create_unet_2d("tiny", resolution=8, in_channels=1), (4, 1, 8, 8)),
                  (create_unet_1d("tiny", in_channels=1, out_channels=1, sample_size=32), (4, 1, 32))]  # fmt: skip
    for model, shape in models:
        model.eval()
        clean = torch.randn(shape, generator=generator)
        noise = torch.randn(shape, generator=generator)
        timesteps = torch.tensor([3, 30, 60, 90])
        per_sample, method = _per_sample_gradients(model, scheduler, clean, noise, timesteps)
        batch = _batch_gradient(model, [p for p in model.parameters()], scheduler, clean, noise, timesteps)
        assert per_sample.shape == (4, batch.numel())
        torch.testing.assert_close(per_sample.double().mean(0), batch.double(), rtol=1e-4, atol=1e-6)
        assert method == "vmap"


def test_profile_is_deterministic_given_the_seed():
    samples, model, scheduler = _gaussian_setup(num_samples=256)
    kwargs = {"num_bins": 3, "num_batches": 4, "batch_size": 8, "progress": False}
    first = estimate_gradient_profile(model, scheduler, samples, seed=5, **kwargs)
    second = estimate_gradient_profile(model, scheduler, samples, seed=5, **kwargs)
    other = estimate_gradient_profile(model, scheduler, samples, seed=6, **kwargs)
    np.testing.assert_array_equal(first.grams, second.grams)
    assert not np.allclose(first.grams, other.grams)


def test_gram_statistics_against_direct_computation():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(7, 50)) + 0.4
    stats = gram_statistics(vectors @ vectors.T)
    n = len(vectors)
    mean = vectors.mean(0)
    # ||mean||^2 minus the noise term tr(Cov)/n is the unbiased estimate of ||E g||^2.
    unbiased = mean @ mean - np.trace(np.cov(vectors.T)) / n
    assert stats["mean_grad_sq"] == pytest.approx(unbiased, rel=1e-10)
    assert stats["mean_batch_grad_norm"] == pytest.approx(np.linalg.norm(vectors, axis=1).mean())
    leave_out = np.array([np.linalg.norm(np.delete(vectors, i, 0), axis=1).mean() for i in range(n)])
    jackknife = np.sqrt((n - 1) / n * ((leave_out - leave_out.mean()) ** 2).sum())
    assert stats["mean_batch_grad_norm_se"] == pytest.approx(jackknife, rel=1e-10)
    # The jackknife SE of a mean equals the usual standard error of the mean.
    assert jackknife == pytest.approx(np.linalg.norm(vectors, axis=1).std(ddof=1) / np.sqrt(n), rel=1e-10)


def test_coherence_is_one_for_identical_gradients_and_small_for_random_ones():
    rng = np.random.default_rng(1)
    same = np.tile(rng.normal(size=(1, 30)), (5, 1))
    assert gram_statistics(same @ same.T)["coherence"] == pytest.approx(1.0)
    noise = rng.normal(size=(40, 2000))
    assert gram_statistics(noise @ noise.T)["coherence"] < 0.2


def test_contribution_shares_two_bin_toy_by_hand():
    # Bins [0, 2) and [2, 4); P = (0.1, 0.2, 0.3, 0.4): bin masses 0.3 and 0.7; norms 3 and 1 -> 0.9 : 0.7.
    shares = contribution_shares([3.0, 1.0], [0, 2, 4], [0.1, 0.2, 0.3, 0.4])
    np.testing.assert_allclose(shares, [0.9 / 1.6, 0.7 / 1.6])
    # Weights (1, 1, 2, 2): masses 0.3 and 1.4 -> 0.9 : 1.4.
    weighted = contribution_shares([3.0, 1.0], [0, 2, 4], [0.1, 0.2, 0.3, 0.4], [1, 1, 2, 2])
    np.testing.assert_allclose(weighted, [0.9 / 2.3, 1.4 / 2.3])
    assert weighted.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("edges", [[0, 2], [1, 2, 4], [0, 2, 5]])
def test_contribution_shares_reject_bad_edges(edges):
    with pytest.raises(ValueError, match="edges"):
        contribution_shares([1.0, 1.0], edges, [0.25] * 4)


def test_sampler_specs():
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    abar = scheduler.alphas_cumprod
    probs, weights = resolve_sampler_spec("ci:750-1000", abar)
    # The DESIGN formula, computed here with scipy: mu = 875, sigma = 125 / z, tail mass spread uniformly.
    mu, sigma = 875.0, 125.0 / norm.ppf(0.975)
    k = np.arange(1000)
    tail = norm.cdf(-mu / sigma) + norm.sf((1000 - mu) / sigma)
    expected = norm.cdf((k + 1 - mu) / sigma) - norm.cdf((k - mu) / sigma) + tail / 1000
    np.testing.assert_allclose(probs, expected, atol=1e-12)
    assert weights is None
    probs, weights = resolve_sampler_spec("uniform+min_snr", abar)
    np.testing.assert_allclose(probs, np.full(1000, 1e-3))
    np.testing.assert_allclose(weights, min_snr_weights(compute_snr(abar, torch.arange(1000))).numpy(), rtol=1e-6)
    # Uniform sampling with importance weights T P(k) has the expected gradient of sampling from P.
    norms = np.linspace(3.0, 0.5, 20)
    edges = bin_edges(1000, 20)
    direct = contribution_shares(norms, edges, *resolve_sampler_spec("ci:750-1000", abar))
    importance = contribution_shares(norms, edges, *resolve_sampler_spec("importance:ci:750-1000", abar))
    np.testing.assert_allclose(direct, importance, rtol=1e-10)
    for bad in ("ci:750", "nosuch", "uniform+focal", "loss_aware"):
        with pytest.raises(ValueError, match="spec|unknown|closed-form"):
            resolve_sampler_spec(bad, abar)


def test_profile_round_trips_through_json(tmp_path):
    samples, model, scheduler = _gaussian_setup(num_samples=128)
    profile = estimate_gradient_profile(model, scheduler, samples, num_bins=5, num_batches=4, batch_size=8,
                                        per_sample_batches=1, progress=False)  # fmt: skip
    content = profile.to_dict(["uniform", "ci:50-100"])
    assert content["schema_version"] == GRADIENT_PROFILE_SCHEMA_VERSION
    assert sum(content["contribution"]["uniform"]["shares"]) == pytest.approx(1.0)
    path = tmp_path / "gradient_profile.json"
    path.write_text(json.dumps(content))
    again = GradientProfile.load(tmp_path)
    assert again.shares("ci:50-100")["shares"] == pytest.approx(content["contribution"]["ci:50-100"]["shares"])
    assert again.bin_statistics()[2]["per_sample_alignment"] == pytest.approx(
        content["bins"][2]["per_sample_alignment"]
    )
    with pytest.raises(ValueError, match="schema_version"):
        GradientProfile.from_dict({**content, "schema_version": 99})


# ---- through the CLI on tiny trained runs -------------------------------------------------------------------------

TRAIN_FLAGS = [
    "--model_preset", "tiny", "--max_train_samples", "48", "--max_train_steps", "3", "--train_batch_size", "16",
    "--num_train_timesteps", "100", "--eval_num_samples", "0", "--logger", "none", "--checkpointing_steps", "0",
    "--save_images_epochs", "0", "--save_model_epochs", "0",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory, shared_data) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("diag-runs")
    data = {
        "image": ["--dataset_name", "digits"],
        "signal": ["--dataset_name", "ecg5000", "--data_dir", str(shared_data / "ecg5000")],
    }
    for modality, flags in data.items():
        train_cli.main([*flags, *TRAIN_FLAGS, "--output_dir", str(root / modality)])
    return {modality: root / modality for modality in data}


@pytest.mark.parametrize("modality", ["image", "signal"])
def test_cli_writes_profile_and_figures(tiny_runs, tmp_path, modality):
    run = Path(shutil.copytree(tiny_runs[modality], tmp_path / modality))
    argv = [str(run), "--num_bins", "4", "--num_batches", "3", "--diagnose_batch_size", "8",
            "--per_sample_batches", "1", "--samplers", "uniform,ci:75-100,uniform+p2", "--device", "cpu"]  # fmt: skip
    entry = diagnose_script if modality == "signal" else diagnose_cli.main
    content = entry(argv)
    written = json.loads((run / "gradient_profile.json").read_text())
    assert written["schema_version"] == GRADIENT_PROFILE_SCHEMA_VERSION
    assert written["bin_edges"] == [0, 25, 50, 75, 100] and written["timesteps"] == [12, 37, 62, 87]
    assert written["settings"]["source"]["modality"] == modality
    assert written["settings"]["batch_size"] == 8 and written["settings"]["per_sample_method"] in ("vmap", "loop")
    for spec in ("uniform", "ci:75-100", "uniform+p2"):
        assert sum(written["contribution"][spec]["shares"]) == pytest.approx(1.0)
    # An interval at the end of the schedule moves the contribution toward the last bin.
    assert written["contribution"]["ci:75-100"]["shares"][-1] > written["contribution"]["uniform"]["shares"][-1]
    assert content["bins"] == written["bins"]
    for name in ("gradient_profile.png", "gradient_contribution.png"):
        assert (run / "plots" / name).read_bytes()[:8] == PNG_MAGIC


def test_cli_rejects_bad_input(tiny_runs, tmp_path):
    run = tiny_runs["image"]
    with pytest.raises(ValueError, match="timestep_mode"):
        diagnose_cli.main([str(run), "--timestep_mode", "middle", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="num_batches"):
        diagnose_cli.main([str(run), "--num_batches", "2", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="ci:LOWER-UPPER"):
        diagnose_cli.main([str(run), "--num_bins", "2", "--num_batches", "3", "--diagnose_batch_size", "4",
                           "--samplers", "ci:90", "--output_dir", str(tmp_path), "--no_plots"])  # fmt: skip
    assert not (tmp_path / "gradient_profile.json").exists()
    with pytest.raises(FileNotFoundError, match="not found"):
        diagnose_cli.main([str(tmp_path / "missing"), "--output_dir", str(tmp_path)])


def test_window_shares_sum_bins_and_carry_their_own_error():
    samples, model, scheduler = _gaussian_setup(num_samples=128)
    profile = estimate_gradient_profile(model, scheduler, samples, num_bins=8, num_batches=5, batch_size=8,
                                        progress=False)  # fmt: skip
    entry = profile.shares("uniform", windows=4)
    shares = np.asarray(entry["shares"])
    assert [w["t_start"] for w in entry["window_shares"]] == [0, 25, 50, 75]
    np.testing.assert_allclose([w["share"] for w in entry["window_shares"]], shares.reshape(4, 2).sum(1))
    assert sum(w["share"] for w in entry["window_shares"]) == pytest.approx(1.0)
    assert all(w["share_se"] >= 0 for w in entry["window_shares"])


def test_window_statistic_averages_bins():
    samples, model, scheduler = _gaussian_setup(num_samples=128)
    profile = estimate_gradient_profile(model, scheduler, samples, num_bins=4, num_batches=5, batch_size=8,
                                        progress=False)  # fmt: skip
    rows = profile.window_statistic("coherence", windows=2)
    coherence = [row["coherence"] for row in profile.bin_statistics()]
    assert [r["value"] for r in rows] == pytest.approx([np.mean(coherence[:2]), np.mean(coherence[2:])])
    # One bin per window: the window's error is the bin's own jackknife error.
    single = profile.window_statistic("coherence", windows=4)
    assert [r["se"] for r in single] == pytest.approx([row["coherence_se"] for row in profile.bin_statistics()])


def test_cli_on_a_plain_pipeline_folder_takes_data_flags_and_the_unet_size(tiny_runs, tmp_path):
    pipeline = Path(shutil.copytree(tiny_runs["image"], tmp_path / "pipeline"))
    (pipeline / "training_config.json").unlink()
    out = tmp_path / "out"
    content = diagnose_cli.main([str(pipeline), "--dataset_name", "digits", "--max_train_samples", "20",
                                 "--num_bins", "2", "--num_batches", "3", "--samplers", "uniform",
                                 "--output_dir", str(out), "--no_plots"])  # fmt: skip
    assert content["settings"]["source"]["data"]["resolution"] == 16
    assert content["settings"]["batch_size"] == 20  # no run config: 32, capped at the 20 samples
    assert (out / "gradient_profile.json").is_file() and not (out / "plots").exists()


def test_cli_profiles_every_run_of_a_sweep_folder(tiny_runs, tmp_path):
    import csv

    sweep = tmp_path / "sweep"
    shutil.copytree(tiny_runs["image"], sweep / "pretrained")
    shutil.copytree(tiny_runs["image"], sweep / "cells" / "ci-0075-0100-seed0")
    result = diagnose_cli.main([str(sweep), "--num_bins", "4", "--num_batches", "3", "--diagnose_batch_size", "8",
                                "--samplers", "uniform,ci:75-100", "--no_plots"])  # fmt: skip
    for run in ("pretrained", "cells/ci-0075-0100-seed0"):
        assert (sweep / run / "gradient_profile.json").is_file()
    with open(sweep / "gradient_profiles.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["run"] for row in rows] == ["cells/ci-0075-0100-seed0", "pretrained"]
    assert sum(float(rows[0][f"share_{lo}_{lo + 25}"]) for lo in (0, 25, 50, 75)) == pytest.approx(1.0)
    # The same model, data and seeds: the two profiles agree exactly.
    assert rows[0]["coherence_0_25"] == rows[1]["coherence_0_25"]
    assert len(result["runs"]) == 2
    with pytest.raises(ValueError, match="--output_dir"):
        diagnose_cli.main([str(sweep), "--output_dir", str(tmp_path / "x")])


def test_cli_resolves_the_runs_data_against_the_run_folder_not_the_cwd(tiny_runs, tmp_path, monkeypatch):
    # training_config.json stores data_dir relative to the run folder. From a working directory deeper than the run,
    # resolving that path against the cwd names a folder that does not exist.
    run = Path(shutil.copytree(tiny_runs["signal"], tmp_path / "signal"))
    stored = json.loads((run / "training_config.json").read_text())["args"]["data_dir"]
    assert not Path(stored).is_absolute()
    deep = tmp_path.joinpath(*"abcdefghijklmnop")
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert not Path(stored).exists()
    argv = [str(run), "--num_bins", "2", "--num_batches", "3", "--diagnose_batch_size", "4",
            "--per_sample_batches", "1", "--samplers", "uniform", "--device", "cpu", "--no_plots"]  # fmt: skip
    content = diagnose_cli.main(argv)
    assert content["settings"]["source"]["modality"] == "signal"
