"""Per-sample loss weights as functions of the timestep, kept separate from timestep sampling.

Sampling changes which timesteps are trained (the paper's method changes the objective on purpose); weighting
changes how much each drawn sample counts. Nothing here is applied implicitly: the training loop multiplies the
per-sample loss by the weights of the scheme the user names (``--loss_weighting``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from .timestep_sampling import TimestepSampler, UniformTimestepSampler

__all__ = [
    "LOSS_WEIGHTINGS",
    "compute_loss_weights",
    "compute_snr",
    "importance_weights",
    "min_snr_weights",
    "training_timestep_sampler",
    "p2_weights",
]

#: Names accepted by :func:`compute_loss_weights` (and the training flag ``--loss_weighting``).
LOSS_WEIGHTINGS = ("none", "min_snr", "p2", "importance")


def compute_snr(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ``abar_t / (1 - abar_t)`` of DDPM timesteps (Kingma et al., 2021).

    Args:
        alphas_cumprod (`torch.Tensor`): The schedule's cumulative alphas, shape ``(T,)``.
        timesteps (`torch.Tensor`): Integer timesteps of any shape.

    Returns:
        `torch.Tensor`: float32 SNR of the same shape as `timesteps`, on its device.
    """
    abar = alphas_cumprod.to(device=timesteps.device, dtype=torch.float64)[timesteps.long()]
    return (abar / (1.0 - abar)).float()


def min_snr_weights(
    snr: torch.Tensor,
    gamma: float = 5.0,
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon",
) -> torch.Tensor:
    """Min-SNR-gamma weights (Hang et al., "Efficient Diffusion Training via Min-SNR Weighting Strategy", ICCV 2023).

    The ``x0``-space weight ``min(SNR, gamma)`` expressed for the model's prediction target:
    ``min(SNR, gamma) / SNR`` for epsilon, ``min(SNR, gamma) / (SNR + 1)`` for v, and ``min(SNR, gamma)`` for sample.

    Args:
        snr (`torch.Tensor`): SNR of each sample's timestep.
        gamma (`float`, defaults to 5.0): Clamp value (> 0; the paper recommends 5).
        prediction_type (`str`, defaults to `"epsilon"`): The scheduler's prediction type.

    Returns:
        `torch.Tensor`: Weights with the shape of `snr`.
    """
    if not gamma > 0:
        raise ValueError(f"min-SNR gamma must be > 0, got {gamma}")
    clamped = torch.clamp(snr, max=gamma)
    if prediction_type == "epsilon":
        return clamped / snr
    if prediction_type == "v_prediction":
        return clamped / (snr + 1.0)
    if prediction_type == "sample":
        return clamped
    raise ValueError(f"prediction_type must be 'epsilon', 'v_prediction' or 'sample', got {prediction_type!r}")


def p2_weights(snr: torch.Tensor, k: float = 1.0, gamma: float = 1.0) -> torch.Tensor:
    """Perception-prioritized weights ``1 / (k + SNR)^gamma`` (Choi et al., "Perception Prioritized Training of
    Diffusion Models", CVPR 2022, Eq. 8).

    Args:
        snr (`torch.Tensor`): SNR of each sample's timestep.
        k (`float`, defaults to 1.0): Offset that keeps the weight finite at high SNR (> 0).
        gamma (`float`, defaults to 1.0): Strength of the down-weighting (>= 0; 0 gives uniform weights).

    Returns:
        `torch.Tensor`: Weights with the shape of `snr`.
    """
    if not k > 0:
        raise ValueError(f"P2 k must be > 0, got {k}")
    if not gamma >= 0:
        raise ValueError(f"P2 gamma must be >= 0, got {gamma}")
    return (k + snr).pow(-gamma)


def importance_weights(
    probs: torch.Tensor | np.ndarray | TimestepSampler,
    timesteps: torch.Tensor,
    *,
    inverse: bool = False,
) -> torch.Tensor:
    """Turn a sampling distribution ``P`` into loss weights.

    ``inverse=False`` gives ``w(k) = T * P(k)``: training with uniform timesteps and these weights has the same
    expected gradient as sampling from ``P`` unweighted (with a different variance), which isolates "what is
    emphasised" from "what is seen". ``inverse=True`` gives ``1 / (T * P(k))``, the unbiasing weight that keeps the
    uniform objective while sampling from ``P`` (improved-diffusion's importance sampling, Nichol & Dhariwal 2021).

    Args:
        probs (`torch.Tensor`, `np.ndarray` or [`TimestepSampler`]): Probability of every timestep, shape ``(T,)``,
            or a sampler with a defined ``probs()``.
        timesteps (`torch.Tensor`): Integer timesteps of the batch.
        inverse (`bool`, defaults to `False`): Return ``1 / (T P(k))`` instead of ``T P(k)``.

    Returns:
        `torch.Tensor`: float32 weights with the shape of `timesteps`.
    """
    if isinstance(probs, TimestepSampler):
        sampler, probs = probs, probs.probs()
        if probs is None:
            raise ValueError(f"sampler {sampler!r} has no closed-form probabilities to turn into weights")
    probs = torch.as_tensor(probs, dtype=torch.float64)
    if probs.ndim != 1 or probs.numel() < 2:
        raise ValueError(f"probs must be a 1D probability vector of length >= 2, got shape {tuple(probs.shape)}")
    scaled = probs.numel() * probs.to(timesteps.device)[timesteps.long()]
    if inverse:
        if bool((scaled <= 0).any()):
            raise ValueError("inverse importance weights need P(k) > 0 for every sampled timestep")
        scaled = 1.0 / scaled
    return scaled.float()


def compute_loss_weights(
    name: str,
    timesteps: torch.Tensor,
    *,
    alphas_cumprod: torch.Tensor,
    prediction_type: str = "epsilon",
    snr_gamma: float = 5.0,
    p2_k: float = 1.0,
    p2_gamma: float = 1.0,
    importance_probs: torch.Tensor | TimestepSampler | None = None,
) -> torch.Tensor | None:
    """Weights of one named scheme for a batch of timesteps, or `None` for ``"none"``.

    Args:
        name (`str`): One of :data:`LOSS_WEIGHTINGS`.
        timesteps (`torch.Tensor`): Integer timesteps of the batch.
        alphas_cumprod (`torch.Tensor`): The scheduler's cumulative alphas.
        prediction_type (`str`, defaults to `"epsilon"`): The scheduler's prediction type (min-SNR).
        snr_gamma (`float`, defaults to 5.0): Min-SNR clamp.
        p2_k (`float`, defaults to 1.0): P2 offset.
        p2_gamma (`float`, defaults to 1.0): P2 exponent.
        importance_probs (`torch.Tensor` or [`TimestepSampler`], *optional*): Target distribution for
            ``"importance"`` (weights ``T * P(k)``).

    Returns:
        `torch.Tensor` or `None`
    """
    if name == "none":
        return None
    if name == "min_snr":
        return min_snr_weights(compute_snr(alphas_cumprod, timesteps), snr_gamma, prediction_type)
    if name == "p2":
        return p2_weights(compute_snr(alphas_cumprod, timesteps), p2_k, p2_gamma)
    if name == "importance":
        if importance_probs is None:
            raise ValueError("loss_weighting='importance' needs the target distribution (importance_probs)")
        return importance_weights(importance_probs, timesteps)
    raise ValueError(f"unknown loss weighting {name!r}; choose one of {list(LOSS_WEIGHTINGS)}")


def training_timestep_sampler(sampler: TimestepSampler, loss_weighting: str) -> TimestepSampler:
    """The sampler that draws a run's training timesteps, given its configured sampler and loss weighting.

    ``"importance"`` turns the configured sampler's ``P`` into weights ``T * P(k)`` applied under *uniform*
    sampling (see [`importance_weights`]); drawing from ``P`` as well would emphasise ``P(k)^2``. Every other
    weighting keeps the configured sampler.
    """
    if loss_weighting == "importance":
        return UniformTimestepSampler(sampler.num_train_timesteps)
    return sampler
