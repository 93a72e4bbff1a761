"""Images per second of `diffusers_memctl.training.train` against a plain diffusers-style reference loop.

Both loops run in one process on the same model (`create_unet_2d(--model_preset)`), data (`--dataset`), batch size
and number of optimizer steps, with the same optimizer settings (AdamW, lr 1e-4, betas (0.95, 0.999), weight decay
1e-6, eps 1e-8), gradient clipping at 1.0, cosine learning rate with warm-up and an EMA of the weights
(`diffusers.training_utils.EMAModel`, warm-up on, as `--use_ema` does in the reference script):

- **reference**: written like diffusers' `examples/unconditional_image_generation/train_unconditional.py`: an
  `accelerate.Accelerator`, a `datasets.Dataset` with `set_transform` (resize of the short side, center crop,
  to-tensor, normalise to [-1, 1]; applied per item, every epoch, so PNG decoding and resizing repeat each epoch),
  a `torch.utils.data.DataLoader` (`shuffle=True`, `num_workers=0`, the script's defaults), uniform
  `torch.randint` timesteps, `DDPMScheduler.add_noise`, MSE on the noise, per-step `loss.item()` and progress-bar
  postfix, and at the end the EMA weights saved as a `DDPMPipeline`. Two deliberate differences from the script:
  images keep the color mode our preprocessing resolves (1 channel for the grayscale digits instead of the script's
  `convert("RGB")`) so that both loops train the identical model, and the loop stops after `--steps` steps.
- **ours**: `load_training_data` (decode + resize once, into one tensor; timed separately as "preprocessing"),
  then `train(options, data=...)` with `timestep_sampling="ci_normal", ci_lower=600, ci_upper=1000` (the CI
  sampler on), `use_ema=True`, `logger="none"`, no checkpoints or previews, `max_train_steps=--steps`; `train`
  also writes `training_config.json`, the per-step `loss_history.jsonl` and the final pipeline.

Measured figures (best of `--repeats`; runs alternate reference, ours, reference, ours, ... so that a slow period
of a shared machine hits both):

- *end-to-end* images/s: all images of the `--steps` steps divided by the whole wall time of the run: data loading
  and preprocessing, model/optimizer/EMA construction, the loop and the final save;
- *steady-state* images/s: with steps counted from 0, the images of steps `--warmup_steps + 1 .. --steps - 1`
  divided by the time between the `accelerator.backward` calls of step `--warmup_steps` and of the last step (the
  first `--warmup_steps` steps, model construction and the final save are left out). Both loops are handed an `Accelerator`
  subclass that only records a timestamp in `backward` (after a `torch.cuda.synchronize()` on CUDA), so the same
  probe times both; for the reference this includes the per-epoch transforms of its data loader.

The ratio is ours / reference (above 1.0: ours is faster). Output: a Markdown table and the machine info, on stdout
(progress bars go to stderr).

Run (from the repository root; `--threads 1` is the default so that results are comparable between machines and
quiet on shared ones; about 2 minutes on one CPU core at the defaults):

    python benchmarks/bench_training.py
    python benchmarks/bench_training.py --channels_last
    python benchmarks/bench_training.py --resolution 32 --steps 40 --warmup_steps 5 --repeats 3 --threads 2
    python benchmarks/bench_training.py --device cuda --batch_size 128

**bf16 rows** (`--precision`): seconds per training step (forward + MSE + backward + gradient clipping + fused
AdamW + EMA update, the steps of `train`) in float32 and under `torch.autocast(dtype=torch.bfloat16)` (what
`--mixed_precision bf16` does through accelerate, on CPU as on GPU), for the `small` preset (32x32, batch 64) and
the `paper` preset (113.7 M parameters, 64x64, batch 8). The two precisions alternate step by step on one model
(weights, AdamW state and EMA stay float32), after one untimed warm-up step each; the minimum over `--precision_steps`
steps per precision is reported with the ratio float32 / bf16. `--profile` adds the top operators by self CPU time of
one bf16 and one float32 step of each model (torch.profiler), to show where the time goes:

    python benchmarks/bench_training.py --precision --threads 2
    python benchmarks/bench_training.py --precision --threads 2 --profile
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import accelerate
import datasets
import diffusers
import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from diffusers import DDPMPipeline, DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from PIL import Image as PILImage
from tqdm.auto import tqdm

from diffusers_memctl.args import TrainingArguments, TrainingOptions
from diffusers_memctl.data import load_image_dataset, load_training_data
from diffusers_memctl.models.unet_2d_presets import UNET_2D_PRESETS, create_unet_2d
from diffusers_memctl.training import epoch_batches, train

SEED = 0
CI_LOWER, CI_UPPER = 600, 1000
DEFAULTS = TrainingArguments()  # the shared optimizer / EMA / schedule settings (those of the reference script)
_GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


@dataclass
class RunResult:
    loop: str
    images: int
    wall_s: float
    preprocess_s: float
    steady_images: int
    steady_s: float
    final_loss: float

    @property
    def end_to_end(self) -> float:
        return self.images / self.wall_s

    @property
    def steady_state(self) -> float:
        return self.steady_images / self.steady_s


class TimedAccelerator(Accelerator):
    """An `Accelerator` that records when each `backward` starts; nothing else changes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.backward_times: list[float] = []

    def backward(self, loss, **kwargs):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.backward_times.append(time.perf_counter())
        return super().backward(loss, **kwargs)


def make_accelerator(device: str, output_dir: Path) -> TimedAccelerator:
    return TimedAccelerator(
        gradient_accumulation_steps=1,
        mixed_precision="no",
        cpu=device == "cpu",
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )


def steady_window(times: list[float], batch_sizes: list[int], warmup: int) -> tuple[int, float]:
    """Images and seconds between the backward of step `warmup` (0-based) and that of the last step."""
    if len(times) != len(batch_sizes):
        raise RuntimeError(f"recorded {len(times)} backward calls for {len(batch_sizes)} steps")
    return sum(batch_sizes[warmup + 1 :]), times[-1] - times[warmup]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# --------------------------------------------------------------------------------------------------------------
# The reference loop (train_unconditional.py style)
# --------------------------------------------------------------------------------------------------------------


def _reference_augmentations(resolution: int, mode: str):
    """torchvision's Resize(resolution, BILINEAR) + CenterCrop + ToTensor + Normalize([0.5], [0.5]), on PIL images."""

    def augment(image: PILImage.Image) -> torch.Tensor:
        image = image.convert(mode)
        width, height = image.size
        if width <= height:
            size = (resolution, int(resolution * height / width))
        else:
            size = (int(resolution * width / height), resolution)
        if size != (width, height):
            image = image.resize(size, resample=PILImage.Resampling.BILINEAR)
        width, height = image.size
        left, top = int(round((width - resolution) / 2.0)), int(round((height - resolution) / 2.0))
        image = image.crop((left, top, left + resolution, top + resolution))
        array = np.array(image, dtype=np.uint8, copy=True)
        tensor = torch.from_numpy(array).view(resolution, resolution, -1).permute(2, 0, 1).contiguous()
        return tensor.float().div(255).sub_(0.5).div_(0.5)

    return augment


def run_reference(args: argparse.Namespace) -> RunResult:
    with tempfile.TemporaryDirectory(prefix="bench_ref_") as tmp:
        output_dir = Path(tmp)
        _sync(args.device)
        start = time.perf_counter()
        accelerator = make_accelerator(args.device, output_dir)
        dataset, column = load_image_dataset(args.dataset, split="train")
        first = dataset[0][column]
        mode = "L" if first.mode in _GRAYSCALE_MODES else "RGB"
        augment = _reference_augmentations(args.resolution, mode)

        def transform_images(examples):
            return {"input": [augment(image) for image in examples[column]]}

        dataset.set_transform(transform_images)
        torch.manual_seed(SEED)
        model = create_unet_2d(args.model_preset, resolution=args.resolution, in_channels=1 if mode == "L" else 3)
        ema_model = EMAModel(
            model.parameters(),
            decay=DEFAULTS.ema_max_decay,
            use_ema_warmup=True,
            inv_gamma=DEFAULTS.ema_inv_gamma,
            power=DEFAULTS.ema_power,
            model_cls=type(model),
            model_config=model.config,
        )
        noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
        optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=DEFAULTS.learning_rate,
            betas=(DEFAULTS.adam_beta1, DEFAULTS.adam_beta2),
            weight_decay=DEFAULTS.adam_weight_decay,
            eps=DEFAULTS.adam_epsilon,
        )
        train_dataloader = torch.utils.data.DataLoader(
            dataset, batch_size=args.batch_size, shuffle=True, num_workers=0
        )
        lr_scheduler = get_scheduler(
            DEFAULTS.lr_scheduler,
            optimizer=optimizer,
            num_warmup_steps=DEFAULTS.lr_warmup_steps * accelerator.num_processes,
            num_training_steps=args.steps,
        )
        model, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
            model, optimizer, train_dataloader, lr_scheduler
        )
        ema_model.to(accelerator.device)

        global_step, batch_sizes, loss_value = 0, [], float("nan")
        num_epochs = -(-args.steps // len(train_dataloader))
        for epoch in range(num_epochs):
            model.train()
            progress_bar = tqdm(total=len(train_dataloader), disable=not accelerator.is_local_main_process)
            progress_bar.set_description(f"reference epoch {epoch}")
            for batch in train_dataloader:
                clean_images = batch["input"]
                noise = torch.randn(clean_images.shape, device=clean_images.device)
                bsz = clean_images.shape[0]
                timesteps = torch.randint(
                    0, noise_scheduler.config.num_train_timesteps, (bsz,), device=clean_images.device
                ).long()
                noisy_images = noise_scheduler.add_noise(clean_images, noise, timesteps)
                with accelerator.accumulate(model):
                    model_output = model(noisy_images, timesteps).sample
                    loss = F.mse_loss(model_output.float(), noise.float())
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(model.parameters(), DEFAULTS.max_grad_norm)
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad()
                if accelerator.sync_gradients:
                    ema_model.step(model.parameters())
                    progress_bar.update(1)
                    global_step += 1
                    batch_sizes.append(bsz)
                loss_value = loss.detach().item()
                logs = {"loss": loss_value, "lr": lr_scheduler.get_last_lr()[0], "step": global_step}
                logs["ema_decay"] = ema_model.cur_decay_value
                progress_bar.set_postfix(**logs)
                if global_step >= args.steps:
                    break
            progress_bar.close()
            if global_step >= args.steps:
                break
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:  # the script's save at its last epoch, with the EMA weights
            unet = accelerator.unwrap_model(model)
            ema_model.store(unet.parameters())
            ema_model.copy_to(unet.parameters())
            DDPMPipeline(unet=unet, scheduler=noise_scheduler).save_pretrained(output_dir)
            ema_model.restore(unet.parameters())
        accelerator.end_training()
        _sync(args.device)
        wall = time.perf_counter() - start
    steady_images, steady_s = steady_window(accelerator.backward_times, batch_sizes, args.warmup_steps)
    return RunResult("reference", sum(batch_sizes), wall, 0.0, steady_images, steady_s, loss_value)


# --------------------------------------------------------------------------------------------------------------
# Ours
# --------------------------------------------------------------------------------------------------------------


def ours_options(args: argparse.Namespace, output_dir: Path) -> TrainingOptions:
    options = TrainingOptions()
    options.data.dataset_name = args.dataset
    options.data.resolution = args.resolution
    options.model.model_preset = args.model_preset
    options.sampling.timestep_sampling = "ci_normal"
    options.sampling.ci_lower, options.sampling.ci_upper = CI_LOWER, CI_UPPER
    t = options.training
    t.output_dir = str(output_dir)
    t.overwrite_output_dir = True
    t.seed = SEED
    t.train_batch_size = args.batch_size
    t.max_train_steps = args.steps
    t.use_ema = True
    t.logger = "none"
    t.checkpointing_steps = 0
    t.save_images_epochs = 0
    t.save_model_epochs = 0
    t.mixed_precision = "no"
    t.channels_last = args.channels_last
    return options


def ours_batch_sizes(num_samples: int, batch_size: int, steps: int) -> list[int]:
    sizes: list[int] = []
    epoch = 0
    while len(sizes) < steps:
        sizes += [len(b) for b in epoch_batches(num_samples, batch_size, seed=SEED, epoch=epoch)]
        epoch += 1
    return sizes[:steps]


def run_ours(args: argparse.Namespace) -> RunResult:
    with tempfile.TemporaryDirectory(prefix="bench_ours_") as tmp:
        output_dir = Path(tmp) / "run"
        options = ours_options(args, output_dir)
        _sync(args.device)
        start = time.perf_counter()
        accelerator = make_accelerator(args.device, output_dir)
        data = load_training_data(options.data)
        preprocess = time.perf_counter() - start
        torch.manual_seed(SEED)
        result = train(options, data=data, accelerator=accelerator)
        _sync(args.device)
        wall = time.perf_counter() - start
    if result.global_step != args.steps:
        raise RuntimeError(f"ours ran {result.global_step} steps, expected {args.steps}")
    sizes = ours_batch_sizes(len(data.samples), args.batch_size, args.steps)
    steady_images, steady_s = steady_window(accelerator.backward_times, sizes, args.warmup_steps)
    return RunResult("ours", sum(sizes), wall, preprocess, steady_images, steady_s, float(result.final_loss))


# --------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------


def machine_info(args: argparse.Namespace) -> list[str]:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
    except OSError:
        flags = []
    bf16_flags = sorted(f for f in flags if "bf16" in f or f.startswith("amx"))
    lines = [
        f"- machine: {platform.platform()}, {cpu}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}",
        f"- CPU bf16/AMX flags: {', '.join(bf16_flags) or 'none'}; load average {os.getloadavg()[0]:.1f}",
        f"- device: {args.device}" + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""),
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"accelerate {accelerate.__version__}, datasets {datasets.__version__}",
    ]
    return lines


def report(args: argparse.Namespace, results: list[RunResult]) -> str:
    def best(loop: str) -> tuple[RunResult, float, float]:
        runs = [r for r in results if r.loop == loop]
        return runs[0], max(r.end_to_end for r in runs), max(r.steady_state for r in runs)

    ref, ref_e2e, ref_steady = best("reference")
    ours, ours_e2e, ours_steady = best("ours")
    ours_pre = min(r.preprocess_s for r in results if r.loop == "ours")
    ref_wall = min(r.wall_s for r in results if r.loop == "reference")
    ours_wall = min(r.wall_s for r in results if r.loop == "ours")
    sampling = f"ci_normal [{CI_LOWER}, {CI_UPPER}]"
    lines = [
        f"## Training throughput: {args.dataset} at {args.resolution}px, model `{args.model_preset}`, "
        f"batch {args.batch_size}, {args.steps} steps ({ref.images} images; steady state after "
        f"{args.warmup_steps} steps), best of {args.repeats}",
        "",
        "| loop | timesteps | images/s end-to-end | images/s steady-state | ratio end-to-end | ratio steady-state "
        "| wall s | preprocessing s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| reference (train_unconditional.py style) | uniform randint | {ref_e2e:.1f} | {ref_steady:.1f} | 1.00x "
        f"| 1.00x | {ref_wall:.2f} | per epoch, in the loop |",
        f"| ours (`train`{', channels_last' if args.channels_last else ''}) | {sampling} | {ours_e2e:.1f} "
        f"| {ours_steady:.1f} | {ours_e2e / ref_e2e:.2f}x | {ours_steady / ref_steady:.2f}x | {ours_wall:.2f} "
        f"| {ours_pre:.2f} (once) |",
        "",
        "Per run (in order): "
        + "; ".join(
            f"{r.loop} {r.end_to_end:.1f} / {r.steady_state:.1f} img/s, loss {r.final_loss:.4f}" for r in results
        ),
        "",
        *machine_info(args),
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="digits", help="Image dataset preset, Hub id or local path.")
    parser.add_argument("--resolution", type=int, default=16, help="Image side (16 or 32 for the digits).")
    parser.add_argument("--model_preset", default="small", choices=sorted(UNET_2D_PRESETS))
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60, help="Optimizer steps per run.")
    parser.add_argument("--warmup_steps", type=int, default=10, help="Steps left out of the steady-state figure.")
    parser.add_argument("--repeats", type=int, default=2, help="Runs of each loop (alternating); best is reported.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU).")
    parser.add_argument(
        "--channels_last",
        action="store_true",
        help="Ours with channels_last (the reference script has no such option).",
    )
    parser.add_argument("--precision", action="store_true", help="Only the bf16 rows (float32 vs bf16 steps).")
    parser.add_argument("--precision_steps", type=int, default=2, help="Timed steps per precision and preset.")
    parser.add_argument("--profile", action="store_true", help="With --precision: top operators per step.")
    parser.add_argument("--precision_presets", default="small,paper", help="With --precision: presets to run.")
    args = parser.parse_args(argv)
    if args.steps < args.warmup_steps + 2:
        parser.error("--steps must be at least --warmup_steps + 2")
    if args.repeats < 1 or args.batch_size < 1 or args.warmup_steps < 0:
        parser.error("--repeats and --batch_size must be >= 1 and --warmup_steps >= 0")
    return args


PRECISION_CASES = (("small", 32, 64), ("paper", 64, 8))


def _precision_step(model, ema, optimizer, clean: torch.Tensor, generator: torch.Generator, bf16: bool) -> float:
    """One training step as `train` runs it; returns its wall time in seconds."""
    start = time.perf_counter()
    noise = torch.randn(clean.shape, generator=generator)
    timesteps = torch.randint(0, 1000, (clean.shape[0],), generator=generator)
    with torch.autocast(clean.device.type, dtype=torch.bfloat16, enabled=bf16):
        prediction = model(clean + noise, timesteps).sample
    loss = F.mse_loss(prediction.float(), noise)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    ema.step(model.parameters())
    _sync(str(clean.device))
    return time.perf_counter() - start


def _top_ops(model, ema, optimizer, clean, generator, bf16: bool, rows: int = 8) -> str:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        _precision_step(model, ema, optimizer, clean, generator, bf16)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def run_precision(args: argparse.Namespace) -> None:
    """The bf16 rows: float32 and bf16 steps alternating on one model per preset."""
    from diffusers.training_utils import EMAModel

    print("| preset | resolution, batch | float32 s/step | bf16 s/step | ratio float32 / bf16 |", flush=True)
    print("| --- | --- | ---: | ---: | ---: |", flush=True)
    for preset, resolution, batch in PRECISION_CASES:
        if preset not in args.precision_presets.split(","):
            continue
        model = create_unet_2d(preset, resolution=resolution, in_channels=3).to(args.device).train()
        ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, foreach=True)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        generator = torch.Generator().manual_seed(0)
        clean = torch.rand((batch, 3, resolution, resolution), generator=generator).mul_(2).sub_(1).to(args.device)
        times = {False: [], True: []}
        for step in range(args.precision_steps + 1):
            for bf16 in (False, True):
                seconds = _precision_step(model, ema, optimizer, clean, generator, bf16)
                if step:  # the first step of each precision pays one-time costs
                    times[bf16].append(seconds)
        assert {p.dtype for p in model.parameters()} == {torch.float32}
        full, half = min(times[False]), min(times[True])
        steps = ", ".join(f"{x:.2f}/{y:.2f}" for x, y in zip(times[False], times[True]))
        row = f"| {preset} | {resolution}x{resolution}, {batch} | {full:.3f} | {half:.3f} | {full / half:.2f}x |"
        print(f"{row}  (float32/bf16 per step: {steps})", flush=True)
        if args.profile:
            for bf16 in (True, False):
                table = _top_ops(model, ema, optimizer, clean, generator, bf16)
                print(f"{preset}, {'bf16' if bf16 else 'float32'} step:\n{table}", flush=True)
        del model, ema, optimizer
        gc.collect()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.precision:
        print("\n".join(machine_info(args)), flush=True)
        run_precision(args)
        return
    datasets.disable_progress_bars()
    diffusers.utils.logging.set_verbosity_error()
    results = []
    for _ in range(args.repeats):
        for run in (run_reference, run_ours):
            gc.collect()
            results.append(run(args))
    print(report(args, results))


if __name__ == "__main__":
    main()
