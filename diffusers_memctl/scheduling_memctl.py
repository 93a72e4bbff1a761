"""Schedulers that know how to sample their own training timesteps.

`MemorizationControlMixin` reads the sampler settings from a scheduler's config, so the settings are saved and
loaded with the scheduler (`save_pretrained` / `from_pretrained`) instead of living only in a training script's
argparse, as SD3's do in diffusers' examples. The concrete classes repeat their parent's whole `__init__` signature
(diffusers' config round trip needs every argument spelled out) and only add scalar keys; inference (`step`,
`add_noise`, `set_timesteps`) is inherited unchanged.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.configuration_utils import register_to_config

from .timestep_sampling import TIMESTEP_SAMPLERS, TimestepSampler, create_timestep_sampler

__all__ = ["MEMCTL_CONFIG_DEFAULTS", "MemCtlDDIMScheduler", "MemCtlDDPMScheduler", "MemorizationControlMixin"]

#: Config keys this plugin adds to a scheduler, with their defaults (`None`: the sampler's own default).
#: The same names are used by the argument dataclasses, `training_config.json` and model-card metadata.
MEMCTL_CONFIG_DEFAULTS: dict[str, Any] = {
    "timestep_sampling": "uniform",
    "ci_lower": None,
    "ci_upper": None,
    "ci_coverage": 0.95,
    "ci_tail": "uniform",
    "logit_mean": None,
    "logit_std": None,
    "mode_scale": None,
    "edm_p_mean": None,
    "edm_p_std": None,
    "window_min": None,
    "window_max": None,
    "beta_alpha": None,
    "beta_beta": None,
    "loss_aware_history": None,
    "loss_aware_uniform_prob": None,
}


class MemorizationControlMixin:
    """Gives a diffusers scheduler `timestep_probs()` and `sample_timesteps()` driven by its config.

    Works with any scheduler that has `config.num_train_timesteps` (and `alphas_cumprod` for noise-level based
    samplers). Keys missing from the config take the defaults of :data:`MEMCTL_CONFIG_DEFAULTS`, so mixing it into a
    scheduler class without the extra keys yields vanilla uniform sampling.
    """

    def memctl_config(self) -> dict[str, Any]:
        """The plugin's settings of this scheduler (every key of :data:`MEMCTL_CONFIG_DEFAULTS`)."""
        return {key: self.config.get(key, default) for key, default in MEMCTL_CONFIG_DEFAULTS.items()}

    @property
    def timestep_sampler(self) -> TimestepSampler:
        """The sampler described by the config, built once (loss-aware samplers keep state between calls)."""
        sampler = getattr(self, "_memctl_sampler", None)
        if sampler is None:
            settings = self.memctl_config()
            name = settings.pop("timestep_sampling")
            if name not in TIMESTEP_SAMPLERS:
                raise ValueError(f"unknown timestep_sampling {name!r}; choose one of {sorted(TIMESTEP_SAMPLERS)}")
            cls = TIMESTEP_SAMPLERS[name]
            params = {key: value for key, value in settings.items() if key in cls.config_keys}
            alphas_cumprod = getattr(self, "alphas_cumprod", None)
            if isinstance(alphas_cumprod, torch.Tensor):
                alphas_cumprod = alphas_cumprod.double().cpu().numpy()
            sampler = create_timestep_sampler(
                name, self.config.num_train_timesteps, alphas_cumprod=alphas_cumprod, **params
            )
            self._memctl_sampler = sampler
        return sampler

    def timestep_probs(self) -> torch.Tensor | None:
        """Float64 probability of every training timestep, or `None` where the sampler has no closed form."""
        return self.timestep_sampler.probs()

    def sample_timesteps(
        self,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        device: str | torch.device | None = None,
    ) -> torch.Tensor:
        """Draw training timesteps from the configured sampler.

        Args:
            batch_size (`int`): Number of timesteps.
            generator (`torch.Generator`, *optional*): Source of randomness for a reproducible draw.
            device (`str` or `torch.device`, *optional*): Device of the result.

        Returns:
            `torch.LongTensor` of shape ``(batch_size,)`` with values in ``[0, num_train_timesteps)``.
        """
        return self.timestep_sampler.sample(batch_size, generator=generator, device=device)


def _check_sampler_settings(scheduler: MemorizationControlMixin) -> None:
    """Build a chosen sampler at construction, so bad settings fail there and not at the first training step.

    The default (uniform) sampler is built on first use instead: it has no settings to check, and a scheduler that
    never trains (e.g. ``num_train_timesteps=1``, which the parent schedulers accept for inference) must not fail.
    """
    if scheduler.config.get("timestep_sampling", "uniform") != "uniform":
        scheduler.timestep_sampler  # noqa: B018


class MemCtlDDPMScheduler(DDPMScheduler, MemorizationControlMixin):
    """`DDPMScheduler` whose config also selects how training timesteps are sampled.

    The first arguments are exactly those of diffusers' `DDPMScheduler` (see its documentation); inference is
    identical. The added arguments:

    Args:
        timestep_sampling (`str`, defaults to `"uniform"`): Registry name of the training-timestep sampler:
            `"uniform"` (vanilla DDPM), `"ci_normal"` (arXiv 2601.21348), or a peer (`"logit_normal"`, `"mode"`,
            `"cosmap"`, `"edm_lognormal"`, `"window"`, `"beta"`, `"loss_aware"`).
        ci_lower (`float`, *optional*): Lower end of the confidence interval for `"ci_normal"`.
        ci_upper (`float`, *optional*): Upper end of the confidence interval for `"ci_normal"`.
        ci_coverage (`float`, defaults to 0.95): Normal mass inside the interval.
        ci_tail (`str`, defaults to `"uniform"`): Tail handling, `"uniform"` (paper) or `"renormalize"` (ablation).
        logit_mean, logit_std, mode_scale, edm_p_mean, edm_p_std, window_min, window_max, beta_alpha, beta_beta,
        loss_aware_history, loss_aware_uniform_prob: The peers' own parameters (`None`: the sampler's default).
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"] = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        variance_type: Literal[
            "fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range"
        ] = "fixed_small",
        clip_sample: bool = True,
        prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: Literal["linspace", "leading", "trailing"] = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        timestep_sampling: str = "uniform",
        ci_lower: float | None = None,
        ci_upper: float | None = None,
        ci_coverage: float = 0.95,
        ci_tail: Literal["uniform", "renormalize"] = "uniform",
        logit_mean: float | None = None,
        logit_std: float | None = None,
        mode_scale: float | None = None,
        edm_p_mean: float | None = None,
        edm_p_std: float | None = None,
        window_min: int | None = None,
        window_max: int | None = None,
        beta_alpha: float | None = None,
        beta_beta: float | None = None,
        loss_aware_history: int | None = None,
        loss_aware_uniform_prob: float | None = None,
    ):
        super().__init__(
            num_train_timesteps=num_train_timesteps,
            beta_start=beta_start,
            beta_end=beta_end,
            beta_schedule=beta_schedule,
            trained_betas=trained_betas,
            variance_type=variance_type,
            clip_sample=clip_sample,
            prediction_type=prediction_type,
            thresholding=thresholding,
            dynamic_thresholding_ratio=dynamic_thresholding_ratio,
            clip_sample_range=clip_sample_range,
            sample_max_value=sample_max_value,
            timestep_spacing=timestep_spacing,
            steps_offset=steps_offset,
            rescale_betas_zero_snr=rescale_betas_zero_snr,
        )
        _check_sampler_settings(self)


class MemCtlDDIMScheduler(DDIMScheduler, MemorizationControlMixin):
    """`DDIMScheduler` whose config also selects how training timesteps are sampled.

    The first arguments are exactly those of diffusers' `DDIMScheduler`; the added ones are documented in
    [`MemCtlDDPMScheduler`].
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: Literal["leading", "trailing", "linspace"] = "leading",
        rescale_betas_zero_snr: bool = False,
        timestep_sampling: str = "uniform",
        ci_lower: float | None = None,
        ci_upper: float | None = None,
        ci_coverage: float = 0.95,
        ci_tail: Literal["uniform", "renormalize"] = "uniform",
        logit_mean: float | None = None,
        logit_std: float | None = None,
        mode_scale: float | None = None,
        edm_p_mean: float | None = None,
        edm_p_std: float | None = None,
        window_min: int | None = None,
        window_max: int | None = None,
        beta_alpha: float | None = None,
        beta_beta: float | None = None,
        loss_aware_history: int | None = None,
        loss_aware_uniform_prob: float | None = None,
    ):
        super().__init__(
            num_train_timesteps=num_train_timesteps,
            beta_start=beta_start,
            beta_end=beta_end,
            beta_schedule=beta_schedule,
            trained_betas=trained_betas,
            clip_sample=clip_sample,
            set_alpha_to_one=set_alpha_to_one,
            steps_offset=steps_offset,
            prediction_type=prediction_type,
            thresholding=thresholding,
            dynamic_thresholding_ratio=dynamic_thresholding_ratio,
            clip_sample_range=clip_sample_range,
            sample_max_value=sample_max_value,
            timestep_spacing=timestep_spacing,
            rescale_betas_zero_snr=rescale_betas_zero_snr,
        )
        _check_sampler_settings(self)
