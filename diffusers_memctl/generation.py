"""Batched sample generation for images and signals: DDPM or DDIM, under `torch.inference_mode`, optionally in bf16.

The denoising loop is the one of diffusers' `DDPMPipeline` / `DDIMPipeline` (Ho et al. 2020,
https://arxiv.org/abs/2006.11239, Algorithm 2; Song et al. 2021, https://arxiv.org/abs/2010.02502): the same initial
noise from `randn_tensor`, the same scheduler `step` calls, so in float32 the samples equal the pipelines' (tested).
What it adds: one loop for `(B, C, H, W)` images and `(B, C, L)` signals, one labelled progress bar over all batches
and steps, no autograd bookkeeping (`torch.inference_mode`), the model under `torch.autocast` when asked
(`mixed_precision="bf16"`, on CPU as on GPU) while the sample and the scheduler arithmetic stay float32, and no
round trip through NumPy in [0, 1].
"""

from __future__ import annotations

import contextlib
import inspect
import time
from typing import Any, Literal

import numpy as np
import torch

from .scheduling_memctl import MEMCTL_CONFIG_DEFAULTS

__all__ = ["DEFAULT_DDIM_STEPS", "autocast_context", "estimate_generation_seconds", "generate_samples", "make_sampler"]

#: DDIM steps of the evaluation by default: 20x cheaper than the paper's 1000-step DDPM (``--eval_sampler ddpm``).
DEFAULT_DDIM_STEPS = 50


def autocast_context(device: torch.device, mixed_precision: str):
    """`torch.autocast` for `mixed_precision` ``"bf16"`` / ``"fp16"`` on `device`, or a no-op for ``"no"``."""
    if mixed_precision not in ("no", "bf16", "fp16"):
        raise ValueError(f"mixed_precision must be 'no', 'bf16' or 'fp16', got {mixed_precision!r}")
    if mixed_precision == "no":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def precision_label(mixed_precision: str) -> str:
    return "float32" if mixed_precision == "no" else f"{mixed_precision} autocast"


def make_sampler(
    scheduler_config: Any, sampler: Literal["ddpm", "ddim"] = "ddim", num_inference_steps: int | None = None
) -> tuple[Any, int]:
    """The inference scheduler and its number of steps.

    Args:
        scheduler_config: The training scheduler (or its config); our sampler keys are dropped.
        sampler (`str`, defaults to `"ddim"`): ``"ddim"`` (deterministic DDIM, eta = 0) or ``"ddpm"`` (ancestral).
        num_inference_steps (`int`, *optional*): Steps; defaults to 50 for DDIM and the training T for DDPM (the
            paper's setting).

    Returns:
        `tuple`: a `DDIMScheduler` or `DDPMScheduler`, and the number of steps.
    """
    from diffusers import DDIMScheduler, DDPMScheduler

    config = scheduler_config.config if hasattr(scheduler_config, "config") else scheduler_config
    config = {k: v for k, v in dict(config).items() if k not in MEMCTL_CONFIG_DEFAULTS}
    if sampler not in ("ddpm", "ddim"):
        raise ValueError(f"eval_sampler must be 'ddpm' or 'ddim', got {sampler!r}")
    total = int(config.get("num_train_timesteps", 1000))
    if num_inference_steps is None:
        num_inference_steps = DEFAULT_DDIM_STEPS if sampler == "ddim" else total
    if isinstance(num_inference_steps, bool) or not 1 <= int(num_inference_steps) <= total:
        raise ValueError(f"num_inference_steps must be in [1, {total}] (the training T), got {num_inference_steps}")
    scheduler_cls = DDIMScheduler if sampler == "ddim" else DDPMScheduler
    return scheduler_cls.from_config(config), int(num_inference_steps)


def _sample_shape(unet: torch.nn.Module, modality: str, sample_shape: list[int] | None) -> tuple[int, ...]:
    channels = unet.config.in_channels
    if modality == "signal":
        return (channels, int(sample_shape[-1] if sample_shape else unet.config.sample_size))
    if modality != "image":
        raise ValueError(f"modality must be 'image' or 'signal', got {modality!r}")
    size = unet.config.sample_size
    return (channels, *(size if isinstance(size, (list, tuple)) else (size, size)))


def _batch_generator(seed: int, index: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device="cpu").manual_seed(int(state) & ((1 << 63) - 1))


def _step_kwargs(scheduler: Any, generator: torch.Generator) -> dict[str, Any]:
    accepted = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict[str, Any] = {"generator": generator} if "generator" in accepted else {}
    if "eta" in accepted:
        kwargs["eta"] = 0.0  # DDIMPipeline's default: deterministic DDIM
    return kwargs


def _denoise(
    unet: torch.nn.Module,
    scheduler: Any,
    shape: tuple[int, ...],
    generator: torch.Generator,
    device: torch.device,
    mixed_precision: str,
    on_step: Any,
) -> torch.Tensor:
    """One batch from noise to sample, as the diffusers pipelines do it; float32 state, model under autocast."""
    from diffusers.utils.torch_utils import randn_tensor

    sample = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
    sample = sample * scheduler.init_noise_sigma
    step_kwargs = _step_kwargs(scheduler, generator)
    for t in scheduler.timesteps:
        # 1. predict the noise (or x0, or v) of x_t
        with autocast_context(device, mixed_precision):
            prediction = unet(scheduler.scale_model_input(sample, t), t).sample
        # 2. compute x_{t-1} in float32
        sample = scheduler.step(prediction.float(), t, sample, **step_kwargs).prev_sample
        on_step()
    return sample


@torch.inference_mode()
def generate_samples(
    unet: torch.nn.Module,
    scheduler_config: Any,
    modality: str,
    *,
    num_samples: int,
    batch_size: int = 250,
    sampler: Literal["ddpm", "ddim"] = "ddim",
    num_inference_steps: int | None = None,
    seed: int = 0,
    sample_shape: list[int] | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    mixed_precision: Literal["no", "bf16", "fp16"] = "no",
) -> torch.Tensor:
    """Generate samples in the model's value range, batch by batch.

    Images come back as ``(N, C, H, W)`` clipped to [-1, 1] (as `DDPMPipeline` clips to [0, 1]); signals as
    ``(N, C, L)``, unclipped. Batch ``i`` uses a generator seeded with ``(seed, i)``, so N samples are reproducible.

    Args:
        unet (`torch.nn.Module`): The denoiser (weights stay as they are; float32 is expected).
        scheduler_config: The training scheduler (or its config).
        modality (`str`): ``"image"`` or ``"signal"``.
        num_samples (`int`): Number of samples.
        batch_size (`int`, defaults to 250): Samples per batch.
        sampler (`str`, defaults to `"ddim"`): ``"ddim"`` or ``"ddpm"`` (see [`make_sampler`]).
        num_inference_steps (`int`, *optional*): Steps (default 50 for DDIM, the training T for DDPM).
        seed (`int`, defaults to 0): Seed of the generation.
        sample_shape (`list[int]`, *optional*): ``[C, L]`` of signals (defaults to the model's config).
        progress (`bool`, defaults to `True`): One progress bar over all batches and steps.
        device (`str` or `torch.device`, *optional*): Device (defaults to the model's).
        mixed_precision (`str`, defaults to `"no"`): ``"bf16"`` (or ``"fp16"``) runs the model under `torch.autocast`.

    Returns:
        `torch.Tensor`: float32 samples on the CPU.
    """
    from tqdm.auto import tqdm

    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples} and {batch_size}")
    scheduler, steps = make_sampler(scheduler_config, sampler, num_inference_steps)
    device = torch.device(device) if device is not None else next(unet.parameters()).device
    autocast_context(device, mixed_precision)  # validates the setting before any work
    unet.to(device)
    shape = _sample_shape(unet, modality, sample_shape)
    scheduler.set_timesteps(steps, device=device)
    num_batches = -(-num_samples // batch_size)
    bar = tqdm(
        total=num_batches * steps,
        desc=f"generate {num_samples} {modality}s ({sampler} {steps} steps, {precision_label(mixed_precision)})",
        disable=not progress,
        leave=False,
    )
    outputs = []
    with bar:
        for index, start in enumerate(range(0, num_samples, batch_size)):
            count = min(batch_size, num_samples - start)
            batch = _denoise(
                unet, scheduler, (count, *shape), _batch_generator(seed, index), device, mixed_precision, bar.update
            )
            outputs.append((batch.clamp(-1.0, 1.0) if modality == "image" else batch).float().cpu())
    return torch.cat(outputs)


@torch.inference_mode()
def estimate_generation_seconds(
    unet: torch.nn.Module,
    modality: str,
    *,
    num_samples: int,
    batch_size: int,
    steps: int,
    sample_shape: list[int] | None = None,
    device: str | torch.device | None = None,
    mixed_precision: str = "no",
) -> float:
    """Seconds that [`generate_samples`] will take, from timing two model calls on one full batch.

    The second call is timed (the first pays one-time costs), and the model call is almost all of a step.
    """
    device = torch.device(device) if device is not None else next(unet.parameters()).device
    count = min(batch_size, num_samples)
    x = torch.zeros((count, *_sample_shape(unet, modality, sample_shape)), device=device)
    t = torch.full((count,), 500, device=device, dtype=torch.long)
    seconds = 0.0
    for _ in range(2):
        start = time.perf_counter()
        with autocast_context(device, mixed_precision):
            unet(x, t)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    full_batches, rest = divmod(num_samples, batch_size)
    return seconds * steps * (full_batches + (rest / batch_size if rest else 0.0))
