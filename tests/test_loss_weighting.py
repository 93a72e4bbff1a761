import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from diffusers_memctl.loss_weighting import (
    compute_loss_weights,
    compute_snr,
    importance_weights,
    min_snr_weights,
    p2_weights,
)
from diffusers_memctl.timestep_sampling import CINormalTimestepSampler

ABAR = DDPMScheduler().alphas_cumprod
T_BATCH = torch.tensor([0, 10, 250, 500, 999])


def _snr_numpy(t):
    betas = np.linspace(1e-4, 0.02, 1000)
    abar = np.cumprod(1 - betas)[t]
    return abar / (1 - abar)


def test_snr_matches_independent_schedule():
    # diffusers keeps alphas_cumprod in float32, so 1 - abar near t=0 carries ~1e-4 relative rounding.
    np.testing.assert_allclose(compute_snr(ABAR, T_BATCH).numpy(), _snr_numpy(T_BATCH.numpy()), rtol=1e-3)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_min_snr_formula(prediction_type):
    snr = _snr_numpy(T_BATCH.numpy())
    gamma = 5.0
    expected = {
        "epsilon": np.minimum(snr, gamma) / snr,
        "v_prediction": np.minimum(snr, gamma) / (snr + 1),
        "sample": np.minimum(snr, gamma),
    }[prediction_type]
    got = min_snr_weights(torch.tensor(snr), gamma, prediction_type).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    if prediction_type == "epsilon":
        assert got[-1] == pytest.approx(1.0), "low-SNR steps keep weight 1 under epsilon prediction"
        assert got[0] < 0.01


def test_p2_formula():
    snr = torch.tensor(_snr_numpy(T_BATCH.numpy()))
    np.testing.assert_allclose(p2_weights(snr, k=1.0, gamma=0.5).numpy(), (1 + snr.numpy()) ** -0.5, rtol=1e-12)
    assert torch.allclose(p2_weights(snr, gamma=0.0), torch.ones_like(snr, dtype=torch.float64))


def test_importance_weights_give_same_expected_loss_under_uniform():
    sampler = CINormalTimestepSampler(1000, 600, 1000)
    probs = sampler.probs().numpy()
    per_step_loss = np.linspace(2.0, 0.1, 1000)
    all_t = torch.arange(1000)
    w = importance_weights(sampler, all_t).double().numpy()
    np.testing.assert_allclose(w, 1000 * probs, rtol=1e-6)
    # E_uniform[w(k) L(k)] == E_P[L(k)]
    assert np.mean(w * per_step_loss) == pytest.approx(np.sum(probs * per_step_loss), rel=1e-6)
    inverse = importance_weights(sampler, all_t, inverse=True).double().numpy()
    assert np.sum(probs * inverse * per_step_loss) == pytest.approx(per_step_loss.mean(), rel=1e-5)


def test_compute_loss_weights_dispatch_and_errors():
    assert compute_loss_weights("none", T_BATCH, alphas_cumprod=ABAR) is None
    assert compute_loss_weights("min_snr", T_BATCH, alphas_cumprod=ABAR).shape == T_BATCH.shape
    with pytest.raises(ValueError, match="unknown loss weighting 'snr'"):
        compute_loss_weights("snr", T_BATCH, alphas_cumprod=ABAR)
    with pytest.raises(ValueError, match="needs the target distribution"):
        compute_loss_weights("importance", T_BATCH, alphas_cumprod=ABAR)
    with pytest.raises(ValueError, match="gamma must be > 0, got -1"):
        min_snr_weights(torch.ones(2), -1)
    with pytest.raises(ValueError, match="prediction_type"):
        min_snr_weights(torch.ones(2), 5, "flow")
    with pytest.raises(ValueError, match="P2 k must be > 0, got 0"):
        p2_weights(torch.ones(2), k=0)
