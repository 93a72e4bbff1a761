"""Tests of `diffusers_memctl.generation`: the loop equals diffusers' own pipelines in float32, bf16 tracks float32,
and generation runs without autograd. Tiny randomly initialised models; a short 50-step schedule."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler

from diffusers_memctl.generation import (
    _batch_generator,
    estimate_generation_seconds,
    generate_samples,
    make_sampler,
)
from diffusers_memctl.models.unet_1d_memctl import create_unet_1d
from diffusers_memctl.models.unet_2d_presets import create_unet_2d
from diffusers_memctl.pipelines import DDPM1DPipeline

# Tiny models run fastest on one thread; two spinning threads on a busy 2-core machine cost seconds.
pytestmark = pytest.mark.usefixtures("one_torch_thread")

T = 50


def _image_model():
    torch.manual_seed(0)
    return create_unet_2d("tiny", resolution=16, in_channels=1).eval()


def _signal_model():
    torch.manual_seed(0)
    return create_unet_1d("tiny", in_channels=1, out_channels=1, sample_size=32).eval()


def _config(**extra):
    return dict(DDPMScheduler(num_train_timesteps=T, **extra).config)


@pytest.mark.parametrize("sampler, pipeline_cls, steps", [("ddim", DDIMPipeline, 6), ("ddpm", DDPMPipeline, None)])
def test_float32_images_equal_the_diffusers_pipelines(sampler, pipeline_cls, steps):
    unet, config = _image_model(), _config()
    ours = generate_samples(
        unet, config, "image", num_samples=3, batch_size=3, sampler=sampler, num_inference_steps=steps, progress=False
    )
    scheduler_cls = DDIMScheduler if sampler == "ddim" else DDPMScheduler
    pipeline = pipeline_cls(unet=unet, scheduler=scheduler_cls.from_config(config))
    pipeline.set_progress_bar_config(disable=True)
    theirs = pipeline(
        batch_size=3, generator=_batch_generator(0, 0), num_inference_steps=steps or T, output_type="pt"
    ).images
    torch.testing.assert_close(ours * 0.5 + 0.5, theirs, atol=1e-5, rtol=0)


def test_float32_signals_equal_the_1d_pipeline():
    unet, config = _signal_model(), _config(clip_sample=False)
    ours = generate_samples(unet, config, "signal", num_samples=2, batch_size=2, sampler="ddpm", progress=False)
    pipeline = DDPM1DPipeline(unet=unet, scheduler=DDPMScheduler.from_config(config))
    pipeline.set_progress_bar_config(disable=True)
    theirs = pipeline(batch_size=2, generator=_batch_generator(0, 0), num_inference_steps=T, output_type="pt").signals
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("modality", ["image", "signal"])
def test_bf16_samples_track_float32_and_leave_the_weights_float32(modality):
    # Stated tolerance: bf16 autocast (8-bit mantissa in the model's matmuls and convolutions) moves DDIM samples by
    # < 0.05 on average over 20 steps of a tiny model (values of order 1); a wrong cast would move them by ~1.
    unet = _image_model() if modality == "image" else _signal_model()
    config = _config(clip_sample=modality == "image")
    kwargs = dict(num_samples=4, batch_size=4, num_inference_steps=20, progress=False)
    full = generate_samples(unet, config, modality, **kwargs)
    half = generate_samples(unet, config, modality, mixed_precision="bf16", **kwargs)
    assert half.dtype == torch.float32 and all(p.dtype == torch.float32 for p in unet.parameters())
    difference = float((half - full).abs().mean())
    assert 0.0 < difference < 0.05


def test_1d_pipeline_under_bf16_autocast_returns_float32_signals():
    unet, config = _signal_model(), _config(clip_sample=False)
    pipeline = DDPM1DPipeline(unet=unet, scheduler=DDIMScheduler.from_config(config))
    pipeline.set_progress_bar_config(disable=True)
    full = pipeline(batch_size=2, generator=torch.Generator().manual_seed(1), num_inference_steps=10, output_type="pt")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = pipeline(
            batch_size=2, generator=torch.Generator().manual_seed(1), num_inference_steps=10, output_type="pt"
        )
    assert half.signals.dtype == torch.float32
    assert 0.0 < float((half.signals - full.signals).abs().mean()) < 0.05


def test_generation_runs_without_autograd():
    unet, seen = _image_model(), []
    unet.register_forward_hook(lambda *_: seen.append(torch.is_inference_mode_enabled()))
    generate_samples(unet, _config(), "image", num_samples=2, batch_size=2, num_inference_steps=2, progress=False)
    assert seen == [True, True]


def test_defaults_ddim_50_steps_and_ddpm_the_training_schedule():
    assert make_sampler(_config(), "ddim")[1] == 50 and isinstance(make_sampler(_config(), "ddim")[0], DDIMScheduler)
    assert make_sampler(_config(), "ddpm")[1] == T and isinstance(make_sampler(_config(), "ddpm")[0], DDPMScheduler)


def test_time_estimate_scales_with_steps_and_batches():
    unet = _image_model()
    one = estimate_generation_seconds(unet, "image", num_samples=4, batch_size=4, steps=1)
    assert one > 0
    # 3 batches of 4 (12 samples) at 10 steps: about 30 model calls' worth (timings are noisy: a broad band).
    many = estimate_generation_seconds(unet, "image", num_samples=12, batch_size=4, steps=10)
    assert 5 * one < many < 200 * one


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mixed_precision": "int8"}, "mixed_precision must be"),
        ({"sampler": "euler"}, "eval_sampler must be"),
        ({"num_inference_steps": T + 1}, r"num_inference_steps must be in \[1, 50\]"),
    ],
)
def test_bad_generation_settings_are_one_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_samples(_image_model(), _config(), "image", num_samples=1, progress=False, **kwargs)
