import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from diffusers_memctl.timestep_sampling import (
    TIMESTEP_SAMPLERS,
    CINormalTimestepSampler,
    LossAwareTimestepSampler,
    build_alias_table,
    ci_normal_parameters,
    ci_normal_timestep_probs,
    create_timestep_sampler,
)


def _mixture_probs_by_integration(T, lo, hi, coverage):
    """Independent reference: integrate the paper's mixture density bin by bin with scipy.integrate.quad."""
    z = stats.norm.ppf((1 + coverage) / 2)
    mu, sigma = (lo + hi) / 2, (hi - lo) / (2 * z)

    def pdf(s):
        return math.exp(-0.5 * ((s - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))

    inside = sum(integrate.quad(pdf, a, a + 50, epsabs=1e-14, epsrel=1e-12)[0] for a in range(0, T, 50))
    p_tail = 1.0 - inside
    return np.array([integrate.quad(pdf, k, k + 1, epsabs=1e-15, epsrel=1e-12)[0] + p_tail / T for k in range(T)])


@pytest.mark.parametrize(
    "T, lo, hi, coverage",
    [
        (1000, 600, 1000, 0.95),
        (1000, 0, 100, 0.95),
        (1000, 300, 500, 0.8),
        (200, 0, 200, 0.5),
        (1000, 990, 1000, 0.95),
    ],
)
def test_ci_normal_probs_match_numerical_integration(T, lo, hi, coverage):
    probs = ci_normal_timestep_probs(T, lo, hi, coverage)
    reference = _mixture_probs_by_integration(T, lo, hi, coverage)
    assert probs.dtype == np.float64 and probs.shape == (T,)
    np.testing.assert_allclose(probs, reference, rtol=0, atol=1e-9)
    assert probs.sum() == pytest.approx(1.0, abs=1e-12)
    assert (probs > 0).all(), "the uniform tail component keeps every timestep reachable"


def test_ci_parameters_follow_eq9():
    mu, sigma = ci_normal_parameters(600, 1000, 0.95)
    assert mu == 800
    assert sigma == pytest.approx(400 / (2 * 1.959963984540054), rel=1e-12)


def test_tail_mass_of_inside_interval_is_one_minus_inside_mass():
    T, lo, hi = 1000, 400, 600
    sampler = CINormalTimestepSampler(T, lo, hi)
    inside = stats.norm.cdf(T, sampler.mu, sampler.sigma) - stats.norm.cdf(0, sampler.mu, sampler.sigma)
    assert sampler.p_tail == pytest.approx(1 - inside, abs=1e-15)
    # For an interval well inside [0, T), the Gaussian mass outside [0, T) is tiny and P is ~ the plain bin mass.
    probs = sampler.probs().numpy()
    assert probs[500] == pytest.approx(
        stats.norm.cdf(501, 500, sampler.sigma) - stats.norm.cdf(500, 500, sampler.sigma) + sampler.p_tail / T
    )


def test_renormalize_ablation_drops_tail_and_renormalises():
    T = 1000
    probs = ci_normal_timestep_probs(T, 900, 1000, tail="renormalize")
    _, sigma = ci_normal_parameters(900, 1000)
    mass = stats.norm.cdf(np.arange(1, T + 1), 950, sigma) - stats.norm.cdf(np.arange(T), 950, sigma)
    np.testing.assert_allclose(probs, mass / mass.sum(), atol=1e-12)
    assert probs[:500].max() < 1e-30, "the ablation leaves far timesteps unreachable"
    uniform_tail = ci_normal_timestep_probs(T, 900, 1000)
    assert uniform_tail[:500].min() > 1e-6


def _chi_square_pvalue(samples, probs, min_expected=5.0):
    counts = np.bincount(samples, minlength=probs.size).astype(np.float64)
    expected = probs * samples.size
    # Pool the sparse bins so the chi-square approximation holds.
    keep = expected >= min_expected
    obs = np.append(counts[keep], counts[~keep].sum())
    exp = np.append(expected[keep], expected[~keep].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return stats.chisquare(obs, exp).pvalue


@pytest.mark.parametrize(
    "lo, hi, coverage", [(600, 1000, 0.95), (0, 100, 0.95), (0, 1000, 0.2), (990, 1000, 0.95), (0, 5, 0.999)]
)
def test_ci_normal_draws_follow_probs_chi_square(lo, hi, coverage):
    sampler = CINormalTimestepSampler(1000, lo, hi, coverage)
    g = torch.Generator().manual_seed(1234)
    samples = sampler.sample(1_000_000, generator=g).numpy()
    assert samples.min() >= 0 and samples.max() < 1000
    assert _chi_square_pvalue(samples, sampler.probs().numpy()) > 1e-4


@pytest.mark.parametrize("name", sorted(TIMESTEP_SAMPLERS))
def test_every_sampler_draws_from_its_probs(name):
    params = {"ci_lower": 200, "ci_upper": 500} if name == "ci_normal" else {}
    if name == "window":
        params = {"window_min": 100, "window_max": 299}
    sampler = create_timestep_sampler(name, 1000, **params)
    probs = sampler.probs().numpy()
    assert probs.shape == (1000,) and probs.sum() == pytest.approx(1.0, abs=1e-12)
    samples = sampler.sample(200_000, generator=torch.Generator().manual_seed(0)).numpy()
    assert _chi_square_pvalue(samples, probs) > 1e-4
    if name == "window":
        assert samples.min() == 100 and samples.max() == 299


def test_peer_probabilities_against_closed_forms():
    T = 1000
    edges = np.linspace(0, 1, T + 1)
    # Logit-normal: t = sigmoid(n), n ~ N(0.5, 0.8^2) -> P(t < x) = Phi((logit(x) - 0.5) / 0.8).
    logit = create_timestep_sampler("logit_normal", T, logit_mean=0.5, logit_std=0.8).probs().numpy()
    with np.errstate(divide="ignore"):
        ref = np.diff(stats.norm.cdf((np.log(edges) - np.log1p(-edges) - 0.5) / 0.8))
    np.testing.assert_allclose(logit, ref, atol=1e-12)
    # Beta(2, 5).
    beta = create_timestep_sampler("beta", T, beta_alpha=2.0, beta_beta=5.0).probs().numpy()
    np.testing.assert_allclose(beta, np.diff(stats.beta.cdf(edges, 2, 5)), atol=1e-12)
    # CosMap density 2 / (pi (1 - 2t + 2t^2)) integrated numerically over each bin.
    cosmap = create_timestep_sampler("cosmap", T).probs().numpy()
    ref = [
        integrate.quad(lambda t: 2 / (math.pi * (1 - 2 * t + 2 * t * t)), a, b)[0] for a, b in zip(edges, edges[1:])
    ]
    np.testing.assert_allclose(cosmap, ref, atol=1e-10)


def test_mode_sampler_matches_monte_carlo_of_its_map():
    T, s = 1000, 1.29
    probs = create_timestep_sampler("mode", T, mode_scale=s).probs().numpy()
    u = np.random.default_rng(0).random(2_000_000)
    t = 1 - u - s * (np.cos(np.pi * u / 2) ** 2 - 1 + u)
    hist = np.bincount(np.minimum((t * T).astype(int), T - 1), minlength=T) / u.size
    # Compare coarse bins (100 timesteps) against the Monte-Carlo histogram of SD3's formula.
    np.testing.assert_allclose(probs.reshape(10, -1).sum(1), hist.reshape(10, -1).sum(1), atol=2e-3)


def test_edm_lognormal_maps_sigma_to_nearest_timestep_in_log_space():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler()
    abar = sched.alphas_cumprod.double().numpy()
    probs = create_timestep_sampler("edm_lognormal", 1000, alphas_cumprod=abar).probs().numpy()
    log_sigma_k = 0.5 * np.log((1 - abar) / abar)
    draws = np.random.default_rng(1).normal(-1.2, 1.2, 1_000_000)
    mapped = np.searchsorted((log_sigma_k[1:] + log_sigma_k[:-1]) / 2, draws)
    hist = np.bincount(mapped, minlength=1000) / draws.size
    np.testing.assert_allclose(probs, hist, atol=2e-3)
    assert probs[:100].sum() > 0.3, "EDM's default emphasises low noise levels"


def test_alias_table_reproduces_probabilities():
    probs = np.array([0.5, 0.0, 0.25, 0.125, 0.125])
    accept, alias = build_alias_table(probs)
    n = probs.size
    recon = accept / n
    for k in range(n):
        recon[alias[k]] += (1 - accept[k]) / n
    np.testing.assert_allclose(recon, probs, atol=1e-15)


def test_reproducible_with_generator_and_no_global_rng():
    sampler = CINormalTimestepSampler(1000, 100, 400)
    a = sampler.sample(64, generator=torch.Generator().manual_seed(7))
    state = torch.random.get_rng_state()
    b = sampler.sample(64, generator=torch.Generator().manual_seed(7))
    assert torch.equal(state, torch.random.get_rng_state()), "a seeded draw must not touch the global RNG"
    assert torch.equal(a, b)
    assert not torch.equal(a, sampler.sample(64, generator=torch.Generator().manual_seed(8)))
    assert a.dtype == torch.long and a.shape == (64,)


def test_device_argument_and_meta_like_cpu_devices():
    sampler = CINormalTimestepSampler(1000, 100, 400)
    out = sampler.sample(5, device="cpu")
    assert out.device.type == "cpu"
    assert sampler.sample(0).shape == (0,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA path checked only where a GPU exists")
def test_cuda_draws_match_probs():
    sampler = CINormalTimestepSampler(1000, 600, 1000)
    g = torch.Generator(device="cuda").manual_seed(0)
    samples = sampler.sample(500_000, generator=g, device="cuda")
    assert samples.device.type == "cuda"
    assert _chi_square_pvalue(samples.cpu().numpy(), sampler.probs().numpy()) > 1e-4


def test_loss_aware_warms_up_then_follows_second_moments():
    sampler = LossAwareTimestepSampler(10, history_per_term=2, uniform_prob=0.1)
    assert torch.allclose(sampler.probs(), torch.full((10,), 0.1, dtype=torch.float64))
    t = torch.arange(10).repeat(2)
    losses = torch.cat([torch.arange(1.0, 11.0), torch.arange(1.0, 11.0)])
    sampler.update_with_losses(t, losses)
    assert sampler.warmed_up
    expected = np.arange(1.0, 11.0) / np.arange(1.0, 11.0).sum() * 0.9 + 0.01
    np.testing.assert_allclose(sampler.probs().numpy(), expected, atol=1e-12)
    samples = sampler.sample(100_000, generator=torch.Generator().manual_seed(0)).numpy()
    assert _chi_square_pvalue(samples, expected) > 1e-4
    # History keeps only the newest `history_per_term` losses.
    sampler.update_with_losses(torch.tensor([0, 0]), torch.tensor([100.0, 100.0]))
    assert sampler.state_dict()["history"][0].tolist() == [100.0, 100.0]
    clone = LossAwareTimestepSampler(10, history_per_term=2, uniform_prob=0.1)
    clone.load_state_dict(sampler.state_dict())
    assert torch.equal(clone.probs(), sampler.probs())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(t_lower=500, t_upper=500), "t_lower must be smaller than t_upper"),
        (dict(t_lower=600, t_upper=100), "600"),
        (dict(t_lower=-1, t_upper=100), "t_lower must be >= 0, got -1"),
        (dict(t_lower=0, t_upper=1001), "t_upper must be <= num_train_timesteps=1000, got 1001"),
        (dict(t_lower=0, t_upper=100, coverage=1.0), r"coverage must lie in the open interval \(0, 1\), got 1.0"),
        (dict(t_lower=0, t_upper=100, coverage=0.0), "coverage"),
        (dict(t_lower=float("nan"), t_upper=100), "t_lower must be a finite number, got nan"),
        (dict(t_lower=0, t_upper=float("nan")), "t_upper must be a finite number"),
        (dict(t_lower=0, t_upper=100, tail="drop"), "tail must be 'uniform' or 'renormalize', got 'drop'"),
    ],
)
def test_ci_normal_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ci_normal_timestep_probs(1000, **kwargs)


@pytest.mark.parametrize("T", [1, 0, -5, 2.5, True])
def test_bad_num_train_timesteps(T):
    with pytest.raises(ValueError, match="num_train_timesteps must be an integer >= 2"):
        ci_normal_timestep_probs(T, 0, 1)


def test_bad_sampler_name_batch_size_and_peer_params():
    with pytest.raises(ValueError, match="unknown timestep sampler 'gauss'.*ci_normal"):
        create_timestep_sampler("gauss", 1000)
    with pytest.raises(ValueError, match="batch_size must be a non-negative integer, got -1"):
        CINormalTimestepSampler(1000, 0, 100).sample(-1)
    with pytest.raises(ValueError, match="batch_size"):
        create_timestep_sampler("uniform", 1000).sample(-3)
    with pytest.raises(ValueError, match="logit_std must be > 0, got -1.0"):
        create_timestep_sampler("logit_normal", 1000, logit_std=-1.0)
    with pytest.raises(ValueError, match="logit_mean must be a finite number, got nan"):
        create_timestep_sampler("logit_normal", 1000, logit_mean=float("nan"))
    with pytest.raises(ValueError, match="mode_scale must lie in"):
        create_timestep_sampler("mode", 1000, mode_scale=2.0)
    with pytest.raises(ValueError, match="window_min <= window_max"):
        create_timestep_sampler("window", 1000, window_min=500, window_max=100)
    with pytest.raises(ValueError, match="needs ci_lower and ci_upper"):
        create_timestep_sampler("ci_normal", 1000)
    with pytest.raises(ValueError, match="bad parameters"):
        create_timestep_sampler("cosmap", 1000, scale=3)
