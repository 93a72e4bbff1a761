"""Sample generation from a trained denoiser with the diffusers pipeline of its modality.

Used by evaluation (the metric report's N samples) and by training (preview grids); it lives here so that neither of
those two modules imports the other.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .scheduling_memctl import MEMCTL_CONFIG_DEFAULTS

__all__ = ["generate_samples"]


def _inference_scheduler(scheduler_config: Any, num_inference_steps: int | None):
    from diffusers import DDIMScheduler, DDPMScheduler

    config = {k: v for k, v in dict(scheduler_config).items() if k not in MEMCTL_CONFIG_DEFAULTS}
    if num_inference_steps is None:
        return DDPMScheduler.from_config(config), config["num_train_timesteps"]
    return DDIMScheduler.from_config(config), num_inference_steps


@torch.no_grad()
def generate_samples(
    unet: torch.nn.Module,
    scheduler_config: Any,
    modality: str,
    *,
    num_samples: int,
    batch_size: int = 250,
    num_inference_steps: int | None = None,
    seed: int = 0,
    sample_shape: list[int] | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Generate samples in the model's value range with the diffusers pipeline of the modality.

    Images go through `DDPMPipeline` and come back in [-1, 1] as ``(N, C, H, W)``; signals through `DDPM1DPipeline`
    as ``(N, C, L)``. Batch ``i`` uses a generator seeded with ``(seed, i)``, so N samples are reproducible and
    independent of the batch size's effect on other batches.

    Args:
        unet (`torch.nn.Module`): The denoiser.
        scheduler_config: The training scheduler (or its config).
        modality (`str`): ``"image"`` or ``"signal"``.
        num_samples (`int`): Number of samples.
        batch_size (`int`, defaults to 250): Samples per pipeline call.
        num_inference_steps (`int`, *optional*): `None` = DDPM with the training T; otherwise DDIM with this many steps.
        seed (`int`, defaults to 0): Seed of the generation.
        sample_shape (`list[int]`, *optional*): ``[C, L]`` of signals (defaults to the model's config).
        progress (`bool`, defaults to `True`): Show the pipelines' progress bars.
        device (`str` or `torch.device`, *optional*): Device (defaults to the model's).

    Returns:
        `torch.Tensor`: float32 samples on the CPU.
    """
    from diffusers import DDPMPipeline

    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples} and {batch_size}")
    config = scheduler_config.config if hasattr(scheduler_config, "config") else scheduler_config
    scheduler, steps = _inference_scheduler(config, num_inference_steps)
    device = torch.device(device) if device is not None else next(unet.parameters()).device
    if modality == "signal":
        from .pipelines.pipeline_ddpm_1d import DDPM1DPipeline

        pipeline = DDPM1DPipeline(unet=unet, scheduler=scheduler)
    else:
        pipeline = DDPMPipeline(unet=unet, scheduler=scheduler)
    pipeline.to(device)
    pipeline.set_progress_bar_config(disable=not progress, leave=False)
    outputs = []
    for index, start in enumerate(range(0, num_samples, batch_size)):
        count = min(batch_size, num_samples - start)
        state = np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0]
        generator = torch.Generator(device="cpu").manual_seed(int(state) & ((1 << 63) - 1))
        if modality == "signal":
            length = sample_shape[-1] if sample_shape else None
            batch = pipeline(
                batch_size=count, generator=generator, num_inference_steps=steps, length=length, output_type="pt"
            )
            outputs.append(batch.signals.float().cpu())
        else:
            images = pipeline(
                batch_size=count, generator=generator, num_inference_steps=steps, output_type="np"
            ).images
            # DDPMPipeline returns (N, H, W, C) in [0, 1]; back to the training range and layout.
            outputs.append(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float() * 2.0 - 1.0)
    return torch.cat(outputs)
