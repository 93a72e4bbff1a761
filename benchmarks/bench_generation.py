"""Benchmark: `diffusers_memctl.generation.generate_samples` against diffusers' own `DDIMPipeline`.

Same model (`create_unet_2d(--model_preset)`, fresh weights from seed 0: the cost of a model call does not depend on
the weights), same scheduler config, same number of DDIM steps, same batch. Timed, alternating in one run so that load
from other processes hits all alike, best of `--repeats`:

- `DDIMPipeline` (diffusers, float32, `@torch.no_grad`, output_type="pt"),
- ours in float32 (`torch.inference_mode`, float32 state, no NumPy round trip),
- ours with `mixed_precision="bf16"` (the model under `torch.autocast(dtype=torch.bfloat16)`, state in float32).

Also prints the mean absolute difference of our float32 samples from the pipeline's (equal by construction) and of the
bf16 samples from the float32 ones.

    python benchmarks/bench_generation.py                       # small preset, 32x32, batch 64, 50 DDIM steps
    python benchmarks/bench_generation.py --model_preset paper --resolution 64 --batch_size 8 --steps 10
"""

from __future__ import annotations

import argparse
import os
import time

import diffusers
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMScheduler

from diffusers_memctl.generation import _batch_generator, generate_samples
from diffusers_memctl.models.unet_2d_presets import UNET_2D_PRESETS, create_unet_2d


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_preset", default="small", choices=sorted(UNET_2D_PRESETS))
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--repeats", type=int, default=2, help="alternating timed runs per side; best is reported")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    diffusers.utils.logging.set_verbosity_error()

    torch.manual_seed(0)
    unet = create_unet_2d(args.model_preset, resolution=args.resolution, in_channels=3).to(args.device).eval()
    config = dict(DDPMScheduler(num_train_timesteps=1000).config)
    pipeline = DDIMPipeline(unet=unet, scheduler=DDIMScheduler.from_config(config))
    pipeline.set_progress_bar_config(disable=True)

    def theirs(steps: int = args.steps) -> torch.Tensor:
        generator = _batch_generator(0, 0)
        out = pipeline(batch_size=args.batch_size, generator=generator, num_inference_steps=steps, output_type="pt")
        return out.images * 2.0 - 1.0

    def ours(precision: str, steps: int = args.steps) -> torch.Tensor:
        return generate_samples(
            unet,
            config,
            "image",
            num_samples=args.batch_size,
            batch_size=args.batch_size,
            num_inference_steps=steps,
            progress=False,
            device=args.device,
            mixed_precision=precision,
        )

    sides = {
        "DDIMPipeline (float32)": theirs,
        "ours float32": lambda steps=args.steps: ours("no", steps),
        "ours bf16": lambda steps=args.steps: ours("bf16", steps),
    }
    times: dict[str, list[float]] = {name: [] for name in sides}
    outputs: dict[str, torch.Tensor] = {}
    for run in sides.values():  # untimed warm-up (2 steps): oneDNN primitives, allocator, thread pool
        run(2)
    for _ in range(args.repeats):
        for name, run in sides.items():
            start = time.perf_counter()
            outputs[name] = run().cpu()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    best = {name: min(values) for name, values in times.items()}
    base = best["DDIMPipeline (float32)"]
    print(
        f"- {args.model_preset} preset ({sum(p.numel() for p in unet.parameters()) / 1e6:.1f} M), "
        f"{args.resolution}x{args.resolution}, batch {args.batch_size}, DDIM {args.steps} steps, device {args.device}, "
        f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}"
    )
    print("| generator | s (best) | all runs | speed ratio vs DDIMPipeline |")
    print("| --- | ---: | --- | ---: |")
    for name, seconds in best.items():
        runs = ", ".join(f"{t:.2f}" for t in times[name])
        print(f"| {name} | {seconds:.2f} | {runs} | {base / seconds:.2f}x |")
    same = float((outputs["ours float32"] - outputs["DDIMPipeline (float32)"]).abs().mean())
    drift = float((outputs["ours bf16"] - outputs["ours float32"]).abs().mean())
    print(f"- mean |ours float32 - DDIMPipeline| = {same:.2e}; mean |ours bf16 - ours float32| = {drift:.2e}")
    return {name: base / seconds for name, seconds in best.items()}


if __name__ == "__main__":
    main()
