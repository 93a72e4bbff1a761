"""Unconditional generation of 1D signals (B, C, L) with a DDPM or DDIM scheduler.

The signal counterpart of diffusers' `DDPMPipeline`: ancestral sampling (Ho et al. 2020,
https://arxiv.org/abs/2006.11239, Algorithm 2) or DDIM sampling (Song et al. 2021, https://arxiv.org/abs/2010.02502),
used for the ECG5000 experiments of "Memorization Control in Diffusion Models from Denoising-centric Perspective"
(https://arxiv.org/abs/2601.21348). Signals are returned in the model's value range, unclipped and unscaled. The
call runs under `torch.inference_mode`; wrap it in `torch.autocast(device_type, dtype=torch.bfloat16)` to run the model
in bf16 (the signals and the scheduler arithmetic stay in the model's dtype).

This file imports nothing of diffusers-memctl: run folders carry a verbatim copy of it (and of the UNet's module) as
diffusers remote code, so that `DiffusionPipeline.from_pretrained(run, trust_remote_code=True)` works where
diffusers-memctl is not installed (see `diffusers_memctl.pipelines.remote_code`). Importing
`diffusers_memctl.pipelines` also imports `diffusers_memctl.models.unet_1d_memctl`, the module that `save_pretrained`
records for the `unet` component when a pipeline object is saved; diffusers resolves that entry from `sys.modules`.
A run folder instead names the folder's own copy (`unet/unet_1d_memctl.py`), so loading one needs
`trust_remote_code=True`, with this class as with `DiffusionPipeline`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from diffusers.models.modeling_utils import ModelMixin
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

__all__ = ["DDPM1DPipeline", "SignalPipelineOutput"]


@dataclass
class SignalPipelineOutput(BaseOutput):
    """
    Output of [`DDPM1DPipeline`].

    Args:
        signals (`np.ndarray` or `torch.Tensor`):
            Generated signals of shape `(batch_size, channels, length)`; float32 NumPy array for `output_type="np"`,
            a tensor for `output_type="pt"`.
    """

    signals: np.ndarray | torch.Tensor


class DDPM1DPipeline(DiffusionPipeline):
    r"""
    Pipeline for unconditional 1D signal generation (e.g. ECG heartbeats).

    This model inherits from [`DiffusionPipeline`]; see the superclass for the generic methods (saving, loading,
    moving to a device).

    Args:
        unet ([`UNet1DMemCtlModel`]):
            A 1D denoiser taking `(sample, timestep)` with `sample` of shape `(batch_size, channels, length)`.
        scheduler ([`SchedulerMixin`]):
            A scheduler such as [`DDPMScheduler`] or [`DDIMScheduler`]. For signals in their raw value range, configure
            it with `clip_sample=False`.
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: ModelMixin, scheduler: SchedulerMixin):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.inference_mode()
    def __call__(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int = 1000,
        length: int | None = None,
        output_type: Literal["np", "pt"] = "np",
        return_dict: bool = True,
        eta: float = 0.0,
    ) -> SignalPipelineOutput | tuple:
        r"""
        Generate signals by iterative denoising from Gaussian noise.

        Args:
            batch_size (`int`, *optional*, defaults to 1):
                Number of signals to generate.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*):
                Source of every random draw (initial noise and the scheduler's noise); one generator, or one per
                signal. Generation is reproducible given the generator's seed.
            num_inference_steps (`int`, *optional*, defaults to 1000):
                Number of denoising steps; at most the scheduler's `num_train_timesteps`.
            length (`int`, *optional*):
                Length of the generated signals; defaults to `unet.config.sample_size`.
            output_type (`str`, *optional*, defaults to `"np"`):
                `"np"` for a float32 `np.ndarray`, `"pt"` for a `torch.Tensor`.
            return_dict (`bool`, *optional*, defaults to `True`):
                Whether to return a [`SignalPipelineOutput`] instead of a plain tuple.
            eta (`float`, *optional*, defaults to 0.0):
                DDIM's eta (0 = deterministic DDIM, 1 = DDPM-like); ignored by schedulers whose `step` has no `eta`.

        Returns:
            [`SignalPipelineOutput`] or `tuple`: the signals, of shape `(batch_size, unet.config.in_channels, length)`.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
        if (
            isinstance(num_inference_steps, bool)
            or not isinstance(num_inference_steps, int)
            or num_inference_steps < 1
        ):
            raise ValueError(f"num_inference_steps must be a positive integer; got {num_inference_steps!r}")
        if output_type not in ("np", "pt"):
            raise ValueError(f"output_type must be 'np' or 'pt'; got {output_type!r}")
        length = self.unet.config.sample_size if length is None else length
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be a positive integer; got {length!r}")
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"a list of generators must hold one per signal (batch_size={batch_size}); got {len(generator)}"
            )

        device = self._execution_device
        shape = (batch_size, self.unet.config.in_channels, length)
        signals = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        signals = signals * self.scheduler.init_noise_sigma

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        step_kwargs = self._step_kwargs(generator=generator, eta=eta)

        for t in self.progress_bar(self.scheduler.timesteps):
            # 1. predict the noise of x_t
            model_input = self.scheduler.scale_model_input(signals, t)
            # float32 state even when the caller runs the model under torch.autocast (bf16 on CPU or GPU)
            noise_pred = self.unet(model_input, t).sample.to(signals.dtype)
            # 2. compute x_{t-1}
            signals = self.scheduler.step(noise_pred, t, signals, **step_kwargs).prev_sample

        self.maybe_free_model_hooks()

        if output_type == "np":
            signals = signals.cpu().float().numpy()
        if not return_dict:
            return (signals,)
        return SignalPipelineOutput(signals=signals)

    def _step_kwargs(self, generator, eta: float) -> dict:
        """Keyword arguments for `scheduler.step`: pass `generator` and `eta` only where the scheduler accepts them."""
        accepted = set(inspect.signature(self.scheduler.step).parameters)
        kwargs = {}
        if "generator" in accepted:
            kwargs["generator"] = generator
        if "eta" in accepted:
            kwargs["eta"] = eta
        return kwargs
