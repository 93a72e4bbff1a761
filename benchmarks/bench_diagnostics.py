"""Benchmark: cost of a gradient profile (`diffusers_memctl.diagnostics`) against training steps, measured in one run.

A profile costs ``num_bins * num_batches`` batch gradients (plus ``per_sample_batches`` per-sample batches per bin).
This prints the seconds of one batch gradient of the profile and of one full training step (forward, backward,
AdamW) at the same batch size, their ratio, and the cost of one per-sample batch through ``torch.func.vmap``
against a loop of single-sample backward passes. Default: the tiny 2D preset at 16x16 (the digits model of
docs/REPRODUCTION.md), batch 64, random data in [-1, 1].

    OMP_NUM_THREADS=1 python benchmarks/bench_diagnostics.py [--preset tiny] [--batch_size 64] [--repeats 8]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from diffusers_memctl.diagnostics import _batch_gradient, _per_sample_gradients, estimate_gradient_profile
from diffusers_memctl.models import create_unet_2d


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--resolution", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_unet_2d(args.preset, resolution=args.resolution, in_channels=1)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    shape = (args.batch_size, 1, args.resolution, args.resolution)
    samples = torch.rand((4 * args.batch_size, *shape[1:]), generator=generator) * 2 - 1
    clean, noise = samples[: args.batch_size], torch.randn(shape, generator=generator)
    timesteps = torch.randint(0, 1000, (args.batch_size,), generator=generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step():
        loss = F.mse_loss(model(scheduler.add_noise(clean, noise, timesteps), timesteps).sample, noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    parameters = list(model.parameters())
    step_s = _timed(train_step, args.repeats)
    gradient_s = _timed(lambda: _batch_gradient(model, parameters, scheduler, clean, noise, timesteps), args.repeats)
    bins, batches = 4, max(3, args.repeats // 2)
    start = time.perf_counter()
    estimate_gradient_profile(model, scheduler, samples, num_bins=bins, num_batches=batches,
                              batch_size=args.batch_size, progress=False)  # fmt: skip
    profile_s = (time.perf_counter() - start) / (bins * batches)
    vmap_s = _timed(lambda: _per_sample_gradients(model, scheduler, clean, noise, timesteps), 1)
    start = time.perf_counter()
    for i in range(args.batch_size):
        _batch_gradient(model, parameters, scheduler, clean[i : i + 1], noise[i : i + 1], timesteps[i : i + 1])
    loop_s = time.perf_counter() - start
    n_params = sum(p.numel() for p in parameters)
    print(f"model {args.preset} {args.resolution}px ({n_params:,} parameters), batch {args.batch_size}, "
          f"{torch.get_num_threads()} thread(s)")  # fmt: skip
    print(f"training step (fwd+bwd+AdamW)       {step_s * 1e3:8.1f} ms")
    print(
        f"batch gradient (diagnostics)        {gradient_s * 1e3:8.1f} ms   ratio to a step {gradient_s / step_s:.2f}"
    )
    print(f"per batch inside a profile          {profile_s * 1e3:8.1f} ms   ratio to a step {profile_s / step_s:.2f}")
    print(f"per-sample batch, torch.func.vmap   {vmap_s * 1e3:8.1f} ms   ratio to a step {vmap_s / step_s:.2f}")
    print(f"per-sample batch, loop of backward  {loop_s * 1e3:8.1f} ms   vmap speed-up {loop_s / vmap_s:.2f}x")
    print(f"default profile (20 bins x 16 batches) ~ {20 * 16 * profile_s:.0f} s; with 1 per-sample batch per bin "
          f"~ {20 * (16 * profile_s + vmap_s):.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
