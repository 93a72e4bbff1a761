"""Cost of drawing training timesteps with every registered sampler, against `torch.randint` and one training step.

What it measures:

1. For each sampler in `diffusers_memctl.timestep_sampling.TIMESTEP_SAMPLERS` (`ci_normal` with `ci_lower=600,
   ci_upper=1000`; `window` with `window_min=200, window_max=800`; `loss_aware` after its loss history is filled, so
   its weighted path is timed rather than its uniform warm-up) and each batch size, the per-call time of
   `sampler.sample(batch_size, generator=g, device=device)` with a seeded `torch.Generator`, and its ratio to
   `torch.randint(0, T, (batch_size,), generator=g)` timed in the same run. Baseline and sampler blocks are
   interleaved, and each figure is the minimum over `--repeats` blocks of the mean per-call time in a block, which
   discards slow blocks caused by other processes sharing the machine.
2. The median time of one training step (forward + backward + AdamW step, MSE loss on the noise) of the default
   image model, `create_unet_2d("small", resolution=32, in_channels=3)`, at batch 64 on the same device, and
   `ci_normal`'s per-call time at batch 64 as a percentage of it.

The targets checked are those of the issue: `ci_normal` at most 2x `torch.randint` at batch 256, and below 0.1% of
one training step. Results go to stdout as Markdown.

Run (from the repository root; `--threads 1` is the default so that results are comparable between machines):

    python benchmarks/bench_timestep_sampling.py
    python benchmarks/bench_timestep_sampling.py --batch_sizes 64 256 4096 --repeats 7 --threads 1
    python benchmarks/bench_timestep_sampling.py --device cuda
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import diffusers
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from diffusers_memctl.models.unet_2d_presets import create_unet_2d
from diffusers_memctl.timestep_sampling import (
    TIMESTEP_SAMPLERS,
    LossAwareTimestepSampler,
    TimestepSampler,
    create_timestep_sampler,
)

#: Parameters of the samplers that need (or are benchmarked with) non-default settings.
SAMPLER_PARAMS: dict[str, dict[str, Any]] = {
    "ci_normal": {"ci_lower": 600, "ci_upper": 1000},
    "window": {"window_min": 200, "window_max": 800},
}
RATIO_TARGET = 2.0  # ci_normal / randint at batch 256
RATIO_TARGET_BATCH = 256
STEP_FRACTION_TARGET = 0.1  # percent of one training step
STEP_BATCH = 64
SEED = 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[64, 256, 4096], help="Batch sizes to time.")
    parser.add_argument("--repeats", type=int, default=7, help="Timed blocks per measurement; the minimum is kept.")
    parser.add_argument(
        "--block_time", type=float, default=0.01, help="Target seconds per timed block (sets the calls per block)."
    )
    parser.add_argument("--device", type=str, default="cpu", help="'cpu' (default) or 'cuda'.")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads value (default 1).")
    parser.add_argument("--num_train_timesteps", type=int, default=1000, help="Number of DDPM timesteps T.")
    parser.add_argument("--train_steps", type=int, default=5, help="Timed training steps (the median is reported).")
    parser.add_argument("--warmup_steps", type=int, default=2, help="Untimed training steps before timing.")
    args = parser.parse_args()
    if args.repeats < 1 or args.train_steps < 1 or args.warmup_steps < 0 or args.threads < 1:
        parser.error("--repeats, --train_steps and --threads must be >= 1 and --warmup_steps >= 0")
    if any(b < 1 for b in args.batch_sizes):
        parser.error("--batch_sizes must be positive")
    return args


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_sampler(name: str, num_train_timesteps: int) -> TimestepSampler:
    sampler = create_timestep_sampler(name, num_train_timesteps, **SAMPLER_PARAMS.get(name, {}))
    if isinstance(sampler, LossAwareTimestepSampler):
        # Fill the history with deterministic, timestep-dependent losses so sample() takes its weighted path.
        steps = torch.arange(num_train_timesteps).repeat_interleave(sampler.history_per_term)
        losses = 1.0 + steps.to(torch.float64) / num_train_timesteps
        sampler.update_with_all_losses(steps, losses)
        assert sampler.warmed_up
    return sampler


def sampler_label(name: str) -> str:
    """Registry name plus the non-default settings it was benchmarked with."""
    settings = [f"{key}={value}" for key, value in SAMPLER_PARAMS.get(name, {}).items()]
    if name == LossAwareTimestepSampler.name:
        settings.append("warmed up")
    return f"{name} ({', '.join(settings)})" if settings else name


def time_block(fn: Callable[[], Any], calls: int, device: torch.device) -> float:
    """Mean seconds per call of `fn` over `calls` back-to-back calls."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / calls


def time_against_randint(
    sample: Callable[[], Any], randint: Callable[[], Any], repeats: int, block_time: float, device: torch.device
) -> tuple[float, float]:
    """Best per-call seconds of `sample` and of the interleaved `randint` baseline."""
    for _ in range(3):  # warm-up: device tables, allocator, lazy init
        sample()
        randint()
    probe = max(time_block(sample, 10, device), time_block(randint, 10, device))
    calls = max(10, int(block_time / max(probe, 1e-9)))
    best_sample = best_randint = float("inf")
    for _ in range(repeats):
        best_randint = min(best_randint, time_block(randint, calls, device))
        best_sample = min(best_sample, time_block(sample, calls, device))
    return best_sample, best_randint


def benchmark_samplers(args: argparse.Namespace, device: torch.device) -> dict[tuple[str, int], tuple[float, float]]:
    """Per-call seconds of every sampler and its paired randint baseline, by (name, batch size)."""
    T = args.num_train_timesteps
    results: dict[tuple[str, int], tuple[float, float]] = {}
    for name in TIMESTEP_SAMPLERS:
        sampler = build_sampler(name, T)
        for batch_size in args.batch_sizes:
            generator = torch.Generator(device=device).manual_seed(SEED)
            baseline_generator = torch.Generator(device=device).manual_seed(SEED)

            def sample(sampler: TimestepSampler = sampler, b: int = batch_size, g: torch.Generator = generator):
                return sampler.sample(b, generator=g, device=device)

            def randint(b: int = batch_size, g: torch.Generator = baseline_generator):
                return torch.randint(0, T, (b,), generator=g, device=device)

            results[name, batch_size] = time_against_randint(sample, randint, args.repeats, args.block_time, device)
    return results


def benchmark_train_step(args: argparse.Namespace, device: torch.device) -> float:
    """Median seconds of one training step of the default image model at batch `STEP_BATCH`."""
    torch.manual_seed(SEED)
    model = create_unet_2d("small", resolution=32, in_channels=3).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scheduler = DDPMScheduler(num_train_timesteps=args.num_train_timesteps)
    sampler = build_sampler("ci_normal", args.num_train_timesteps)
    generator = torch.Generator(device=device).manual_seed(SEED)
    images = torch.randn(STEP_BATCH, 3, 32, 32, generator=generator, device=device)

    def step() -> None:
        noise = torch.randn(images.shape, generator=generator, device=device)
        timesteps = sampler.sample(STEP_BATCH, generator=generator, device=device)
        noisy = scheduler.add_noise(images, noise, timesteps)
        loss = F.mse_loss(model(noisy, timesteps).sample, noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup_steps):
        step()
    times = []
    for _ in range(args.train_steps):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was given but CUDA is not available")
    torch.set_num_threads(args.threads)

    print("## Timestep sampling benchmark\n")
    print(f"- torch {torch.__version__}, diffusers {diffusers.__version__}, Python {platform.python_version()}")
    print(f"- device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"- CPU: {platform.processor() or platform.machine()}, os.cpu_count()={os.cpu_count()}")
    print(f"- torch threads: {torch.get_num_threads()}, interop threads: {torch.get_num_interop_threads()}")
    print(
        f"- T={args.num_train_timesteps}, repeats={args.repeats}, block_time={args.block_time}s; "
        "us/call is the minimum over repeats of the mean per-call time"
    )
    print(
        "- ratio: sampler time / randint blocks interleaved with that sampler; "
        "the baseline rows show the best randint time of the batch size\n"
    )

    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        results = benchmark_samplers(args, device)
    finally:
        if gc_was_enabled:
            gc.enable()

    print("| sampler | batch | us/call | ratio to randint |")
    print("| --- | ---: | ---: | ---: |")
    for batch_size in args.batch_sizes:
        baseline = min(results[name, batch_size][1] for name in TIMESTEP_SAMPLERS)
        print(f"| torch.randint (baseline) | {batch_size} | {baseline * 1e6:.2f} | 1.00 |")
        for name in TIMESTEP_SAMPLERS:
            sample_s, randint_s = results[name, batch_size]
            print(f"| {sampler_label(name)} | {batch_size} | {sample_s * 1e6:.2f} | {sample_s / randint_s:.2f} |")
    print()

    step_s = benchmark_train_step(args, device)
    print(
        f"Training step of create_unet_2d('small', resolution=32, in_channels=3), batch {STEP_BATCH} "
        f"(forward + backward + AdamW, MSE), median of {args.train_steps} after {args.warmup_steps} warm-up: "
        f"{step_s * 1e3:.1f} ms\n"
    )

    if ("ci_normal", RATIO_TARGET_BATCH) in results:
        sample_s, randint_s = results["ci_normal", RATIO_TARGET_BATCH]
        ratio = sample_s / randint_s
        verdict = "met" if ratio <= RATIO_TARGET else "NOT met"
        print(
            f"- ci_normal vs randint at batch {RATIO_TARGET_BATCH}: {ratio:.2f}x "
            f"(target <= {RATIO_TARGET:.0f}x): {verdict}"
        )
    else:
        print(f"- ci_normal vs randint at batch {RATIO_TARGET_BATCH}: not measured (add it to --batch_sizes)")
    if ("ci_normal", STEP_BATCH) in results:
        percent = 100.0 * results["ci_normal", STEP_BATCH][0] / step_s
        verdict = "met" if percent < STEP_FRACTION_TARGET else "NOT met"
        print(
            f"- ci_normal at batch {STEP_BATCH}: {results['ci_normal', STEP_BATCH][0] * 1e6:.2f} us = "
            f"{percent:.4f}% of one training step (target < {STEP_FRACTION_TARGET}%): {verdict}"
        )
    else:
        print(f"- ci_normal share of a training step: not measured (add {STEP_BATCH} to --batch_sizes)")


if __name__ == "__main__":
    main()
