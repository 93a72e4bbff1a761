"""The one training loop of diffusers-memctl (images and signals, pretraining and CI fine-tuning).

Written after diffusers' ``examples/unconditional_image_generation/train_unconditional.py`` (accelerate, EMA,
AdamW with warm-up, checkpoints) with three differences that matter for the paper (arXiv 2601.21348):

- timesteps come only from the scheduler's configured sampler (``scheduler.sample_timesteps``), and the sampler
  settings are saved with the scheduler, in ``training_config.json`` and in the model card;
- every random draw of a micro-batch (data order, flips, noise, timesteps) uses a ``torch.Generator`` seeded from
  ``(seed, process index, micro-step)``, so a resumed run reproduces an uninterrupted one and every process draws
  different timesteps;
- the per-step loss is also recorded per timestep bin (``loss_history.jsonl``), for the paper's loss-curve figure.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .args import TrainingOptions
from .data import TrainingData, load_training_data, random_flip
from .loss_weighting import compute_loss_weights
from .scheduling_memctl import MEMCTL_CONFIG_DEFAULTS, MemCtlDDPMScheduler

__all__ = [
    "NonFiniteLossError",
    "TrainResult",
    "build_model",
    "build_scheduler",
    "check_output_dir",
    "epoch_batches",
    "save_pipeline",
    "step_generator",
    "train",
    "write_json_atomic",
]

logger = logging.getLogger(__name__)

TRAINING_CONFIG_NAME = "training_config.json"
LOSS_HISTORY_NAME = "loss_history.jsonl"
TRAIN_COMPLETE_NAME = "train_complete.json"
CHECKPOINTS_DIR = "checkpoints"
NUM_LOSS_BINS = 10
SCHEMA_VERSION = 1


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss becomes NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    """What :func:`train` returns: the run folder, the number of optimizer steps and the last logged loss."""

    output_dir: Path
    global_step: int
    final_loss: float | None
    train_seconds: float


# --------------------------------------------------------------------------------------------------------------
# Small building blocks (tested on their own)
# --------------------------------------------------------------------------------------------------------------


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON to a temporary file and rename it, so a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")
    os.replace(tmp, path)
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (Path, torch.device, torch.dtype)):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def step_generator(
    seed: int, process_index: int, micro_step: int, device: torch.device | str = "cpu"
) -> torch.Generator:
    """A generator for one micro-batch, seeded from ``(seed, process, micro-step)`` through numpy's SeedSequence.

    Re-deriving the generator at every step (instead of carrying one along) makes resuming exact without saving RNG
    state, and gives each process its own stream.
    """
    state = np.random.SeedSequence([seed, process_index, micro_step]).generate_state(1, dtype=np.uint64)[0]
    generator = torch.Generator(device=device)
    generator.manual_seed(int(state) & ((1 << 63) - 1))
    return generator


def epoch_batches(
    num_samples: int, batch_size: int, *, seed: int, epoch: int, process_index: int = 0, num_processes: int = 1
) -> list[torch.Tensor]:
    """Index batches of one epoch for one process: a seeded permutation shared by all processes, split by rank.

    Every process gets ``num_samples // num_processes`` samples (the remainder is dropped, as a distributed sampler
    with ``drop_last`` does), so all processes run the same number of steps.
    """
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch, 7]).generate_state(1)[0]))
    permutation = torch.randperm(num_samples, generator=generator)
    per_process = num_samples // num_processes
    if per_process == 0:
        raise ValueError(f"{num_samples} training samples cannot be split over {num_processes} processes")
    mine = permutation[process_index::num_processes][:per_process]
    return list(torch.split(mine, batch_size))


def check_output_dir(output_dir: Path, *, overwrite: bool, resuming: bool) -> None:
    """Refuse to train into a folder that already holds another run, unless overwriting or resuming."""
    if not output_dir.exists() or resuming:
        return
    if not output_dir.is_dir():
        raise ValueError(f"output_dir {output_dir} exists and is not a directory")
    markers = [
        name for name in (TRAINING_CONFIG_NAME, "model_index.json", CHECKPOINTS_DIR) if (output_dir / name).exists()
    ]
    if markers and not overwrite:
        raise ValueError(
            f"output_dir {output_dir} already holds a run ({', '.join(markers)}); pass --overwrite_output_dir to "
            "replace it or --resume_from_checkpoint latest to continue it"
        )


def _find_unet_folder(path: Path) -> Path:
    if (path / "model_index.json").is_file() and (path / "unet").is_dir():
        return path / "unet"
    return path


@contextlib.contextmanager
def _seeded_init(seed: int):
    """Draw fresh weights from `seed`: module initialisers use the global generator, whose state is restored after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_model(options: TrainingOptions, data: TrainingData) -> torch.nn.Module:
    """A fresh model from `model_preset` (initialised from `seed`), or weights from `pretrained_model_name_or_path`."""
    model_args = options.model
    source = model_args.pretrained_model_name_or_path
    if data.modality == "signal":
        from .models.unet_1d_memctl import UNet1DMemCtlModel, create_unet_1d

        if source:
            return _load_pretrained(UNet1DMemCtlModel, source, options)
        channels, length = data.samples.shape[1], data.samples.shape[2]
        with _seeded_init(options.training.seed):
            return create_unet_1d(
                model_args.model_preset, in_channels=channels, out_channels=channels, sample_size=length
            )
    from diffusers import UNet2DModel

    from .models.unet_2d_presets import create_unet_2d

    if source:
        model = _load_pretrained(UNet2DModel, source, options)
        if (
            list(
                model.config.sample_size
                if isinstance(model.config.sample_size, list)
                else [model.config.sample_size] * 2
            )
            != list(data.samples.shape[2:])
            or model.config.in_channels != data.samples.shape[1]
        ):
            raise ValueError(
                f"pretrained model {source} expects {model.config.in_channels} channels at {model.config.sample_size}px "
                f"but the data is {tuple(data.samples.shape[1:])}; set --resolution to match"
            )
        return model
    with _seeded_init(options.training.seed):
        return create_unet_2d(
            model_args.model_preset, resolution=data.samples.shape[-1], in_channels=data.samples.shape[1]
        )


def _load_pretrained(model_cls: Any, source: str, options: TrainingOptions) -> torch.nn.Module:
    path = Path(source).expanduser()
    if path.exists():
        return model_cls.from_pretrained(_find_unet_folder(path))
    # A Hub id: a pipeline repository keeps its UNet in the "unet" subfolder.
    try:
        return model_cls.from_pretrained(source, subfolder="unet", cache_dir=options.data.cache_dir)
    except OSError:
        return model_cls.from_pretrained(source, cache_dir=options.data.cache_dir)


def _pretrained_scheduler_config(source: str | None) -> dict[str, Any]:
    if not source:
        return {}
    path = Path(source).expanduser()
    candidates = [path / "scheduler" / "scheduler_config.json", path.parent / "scheduler" / "scheduler_config.json"]
    for candidate in candidates:
        if candidate.is_file():
            return json.loads(candidate.read_text())
    return {}


def signal_clip_range(samples: torch.Tensor) -> float:
    """Clipping range for predicted clean signals: the largest training amplitude, rounded up to 0.1.

    Signals are used as given (ECG5000 rows are z-normalised, with peaks near 5), not scaled to [-1, 1]. Clipping the
    predicted ``x0`` to the data's own range plays the role that ``clip_sample`` to [-1, 1] plays for images: it
    keeps early, noise-dominated denoising steps from amplifying prediction errors far outside the data range.
    """
    return math.ceil(float(samples.abs().max()) * 10.0 + 1e-9) / 10.0


def build_scheduler(
    options: TrainingOptions, modality: str, samples: torch.Tensor | None = None
) -> MemCtlDDPMScheduler:
    """The training scheduler: the pretrained run's noise schedule (when there is one) plus this run's sampler.

    Images clip the predicted clean sample to [-1, 1] (diffusers' default); signals to their own amplitude range
    (:func:`signal_clip_range` of `samples`), stored as `clip_sample_range` in the saved scheduler config.
    """
    base = _pretrained_scheduler_config(options.model.pretrained_model_name_or_path)
    sampling = {key: getattr(options.sampling, key) for key in MEMCTL_CONFIG_DEFAULTS}
    settings = {
        "num_train_timesteps": base.get("num_train_timesteps", options.model.num_train_timesteps),
        "beta_schedule": base.get("beta_schedule", options.model.beta_schedule),
        "beta_start": base.get("beta_start", 0.0001),
        "beta_end": base.get("beta_end", 0.02),
        "prediction_type": base.get("prediction_type", options.model.prediction_type),
        "variance_type": base.get("variance_type", "fixed_small"),
        "clip_sample": True,
        "clip_sample_range": 1.0,
    }
    if modality == "signal":
        if samples is not None:
            settings["clip_sample_range"] = signal_clip_range(samples)
        else:
            settings["clip_sample"] = False
    if base and (
        settings["num_train_timesteps"] != options.model.num_train_timesteps
        or settings["prediction_type"] != options.model.prediction_type
    ):
        logger.info("using the pretrained model's noise schedule: %s", {k: settings[k] for k in settings})
        options.model.num_train_timesteps = settings["num_train_timesteps"]
        options.model.prediction_type = settings["prediction_type"]
    return MemCtlDDPMScheduler(**settings, **sampling)


def save_pipeline(model: torch.nn.Module, scheduler: MemCtlDDPMScheduler, output_dir: Path, modality: str) -> None:
    """Save a pipeline that plain diffusers loads: `DDPMPipeline` (images) or `DDPM1DPipeline` (signals).

    The scheduler is written as a plain `DDPMScheduler` (so `model_index.json` names only diffusers classes); the
    memctl keys stay in `scheduler_config.json`, where plain diffusers ignores them and `MemCtlDDPMScheduler`
    restores them.
    """
    from diffusers import DDPMPipeline, DDPMScheduler

    plain = DDPMScheduler.from_config({k: v for k, v in scheduler.config.items() if k not in MEMCTL_CONFIG_DEFAULTS})
    if modality == "signal":
        from .pipelines.pipeline_ddpm_1d import DDPM1DPipeline

        pipeline = DDPM1DPipeline(unet=model, scheduler=plain)
    else:
        pipeline = DDPMPipeline(unet=model, scheduler=plain)
    pipeline.save_pretrained(output_dir, safe_serialization=True)
    config_path = output_dir / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config.update(scheduler.memctl_config())
    write_json_atomic(config_path, config)


def _versions() -> dict[str, str]:
    import accelerate
    import diffusers

    from . import __version__

    return {
        "diffusers_memctl": __version__,
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "accelerate": accelerate.__version__,
    }


def build_training_config(options: TrainingOptions, data: TrainingData, scheduler: MemCtlDDPMScheduler) -> dict:
    """The content of ``training_config.json``: every resolved setting, versions, sampler summary, data summary."""
    return {
        "schema_version": SCHEMA_VERSION,
        "modality": data.modality,
        "versions": _versions(),
        "args": options.to_dict(),
        "sampler": scheduler.timestep_sampler.summary(),
        "data": {"num_samples": int(data.samples.shape[0]), "sample_shape": data.sample_shape, **data.info},
    }


def _latest_checkpoint(output_dir: Path) -> Path | None:
    folder = output_dir / CHECKPOINTS_DIR
    if not folder.is_dir():
        return None
    found = [(int(p.name.split("-")[1]), p) for p in folder.glob("checkpoint-*") if p.name.split("-")[1].isdigit()]
    return max(found)[1] if found else None


def _prune_checkpoints(output_dir: Path, limit: int | None) -> None:
    if not limit:
        return
    folder = output_dir / CHECKPOINTS_DIR
    found = sorted(
        (int(p.name.split("-")[1]), p) for p in folder.glob("checkpoint-*") if p.name.split("-")[1].isdigit()
    )
    for _, path in found[: max(0, len(found) - limit)]:
        shutil.rmtree(path, ignore_errors=True)


class _SamplerState:
    """Checkpoint adapter for stateful samplers (loss-aware history) registered with accelerate."""

    def __init__(self, scheduler: MemCtlDDPMScheduler):
        self.scheduler = scheduler

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.timestep_sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.timestep_sampler.load_state_dict(state)


def _truncate_loss_history(path: Path, last_step: int) -> None:
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= last_step]
    path.write_text("".join(f"{line}\n" for line in kept))


def _target(scheduler: MemCtlDDPMScheduler, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor):
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(clean, noise, timesteps)
    if prediction_type == "sample":
        return clean
    raise ValueError(f"unsupported prediction_type {prediction_type!r}")


# --------------------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------------------


def train(options: TrainingOptions, *, data: TrainingData | None = None, accelerator: Any = None) -> TrainResult:
    """Train (or fine-tune) a diffusion model with the configured timestep sampler.

    Args:
        options ([`TrainingOptions`]): Every setting of the run (see `diffusers_memctl.args`).
        data ([`TrainingData`], *optional*): Preloaded data (default: loaded from ``options.data``).
        accelerator (`accelerate.Accelerator`, *optional*): An existing accelerator (default: created here).

    Returns:
        [`TrainResult`]
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    t_args, s_args = options.training, options.sampling
    output_dir = Path(t_args.output_dir)
    resume = t_args.resume_from_checkpoint
    _validate(options)
    check_output_dir(output_dir, overwrite=t_args.overwrite_output_dir, resuming=bool(resume))

    if accelerator is None:
        accelerator = Accelerator(
            gradient_accumulation_steps=t_args.gradient_accumulation_steps,
            mixed_precision=t_args.mixed_precision,
            log_with=None if t_args.logger == "none" else t_args.logger,
            project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        )
    world_size = int(os.environ.get("WORLD_SIZE") or 1)
    if accelerator.num_processes != world_size:
        # accelerate ignores torchrun's WORLD_SIZE on a machine without GPUs unless told to use the CPU: every
        # process would then train alone, with the same draws, into the same output_dir.
        raise RuntimeError(
            f"launched as {world_size} processes (WORLD_SIZE) but accelerate runs {accelerator.num_processes}; "
            "without GPUs use `accelerate launch --cpu` or set ACCELERATE_USE_CPU=1 for torchrun"
        )
    device = accelerator.device

    data = data if data is not None else load_training_data(options.data)
    model = build_model(options, data)
    scheduler = build_scheduler(options, data.modality, data.samples)
    if t_args.channels_last and data.modality == "image":
        model = model.to(memory_format=torch.channels_last)

    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        if t_args.overwrite_output_dir and not resume:
            # Everything a run and its evaluation leave behind, so nothing of the old run (plots included) passes
            # for the new one's.
            for name in (
                LOSS_HISTORY_NAME,
                "metrics.json",
                "samples.npz",
                "plots",
                TRAIN_COMPLETE_NAME,
                CHECKPOINTS_DIR,
            ):
                target = output_dir / name
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        write_json_atomic(output_dir / TRAINING_CONFIG_NAME, build_training_config(options, data, scheduler))
    accelerator.wait_for_everyone()

    ema = None
    if t_args.use_ema:
        ema = EMAModel(
            model.parameters(),
            decay=t_args.ema_max_decay,
            use_ema_warmup=True,
            inv_gamma=t_args.ema_inv_gamma,
            power=t_args.ema_power,
            model_cls=type(model),
            model_config=model.config,
            foreach=True,
        )
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=t_args.learning_rate,
        betas=(t_args.adam_beta1, t_args.adam_beta2),
        weight_decay=t_args.adam_weight_decay,
        eps=t_args.adam_epsilon,
        # torch >= 2.4 has fused AdamW on CPU and CUDA: ~4x faster optimizer steps than the per-tensor default.
        fused=device.type in ("cuda", "cpu"),
    )
    num_processes, rank = accelerator.num_processes, accelerator.process_index
    batches_per_epoch = len(
        epoch_batches(
            len(data.samples),
            t_args.train_batch_size,
            seed=t_args.seed,
            epoch=0,
            process_index=0,
            num_processes=num_processes,
        )
    )
    steps_per_epoch = math.ceil(batches_per_epoch / t_args.gradient_accumulation_steps)
    max_steps = t_args.max_train_steps or t_args.num_epochs * steps_per_epoch
    num_epochs = math.ceil(max_steps / steps_per_epoch)
    lr_scheduler = get_scheduler(
        t_args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=t_args.lr_warmup_steps * num_processes,
        num_training_steps=max_steps * num_processes,
    )
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    if ema is not None:
        ema.to(device)
        accelerator.register_for_checkpointing(ema)
    accelerator.register_for_checkpointing(_SamplerState(scheduler))

    global_step = 0
    if resume:
        checkpoint = _latest_checkpoint(output_dir) if resume == "latest" else Path(resume)
        if checkpoint is None:
            logger.warning("no checkpoint in %s: starting a new run", output_dir / CHECKPOINTS_DIR)
        elif not checkpoint.is_dir():
            raise FileNotFoundError(f"--resume_from_checkpoint {resume}: no such checkpoint folder")
        else:
            accelerator.load_state(str(checkpoint))
            global_step = int(checkpoint.name.split("-")[1])
            if accelerator.is_main_process:
                _truncate_loss_history(output_dir / LOSS_HISTORY_NAME, global_step)
    if accelerator.is_main_process and t_args.logger != "none":
        accelerator.init_trackers("memctl", config=_tracker_config(options))

    samples = data.samples
    alphas_cumprod = scheduler.alphas_cumprod.to(device)
    sampler = scheduler.timestep_sampler
    T = scheduler.config.num_train_timesteps
    progress = tqdm(total=max_steps, initial=global_step, disable=not accelerator.is_local_main_process, desc="train")
    start_time = time.perf_counter()
    last_loss: float | None = None
    micro_step = global_step * t_args.gradient_accumulation_steps
    bin_sums = torch.zeros(NUM_LOSS_BINS, dtype=torch.float64)
    bin_counts = torch.zeros(NUM_LOSS_BINS, dtype=torch.long)
    loss_sum, loss_count = 0.0, 0
    model.train()
    first_epoch = global_step // steps_per_epoch
    skip_batches = (global_step % steps_per_epoch) * t_args.gradient_accumulation_steps
    for epoch in range(first_epoch, num_epochs):
        batches = epoch_batches(
            len(samples),
            t_args.train_batch_size,
            seed=t_args.seed,
            epoch=epoch,
            process_index=rank,
            num_processes=num_processes,
        )
        if epoch == first_epoch and skip_batches:
            batches = batches[skip_batches:]
        for index in batches:
            if global_step >= max_steps:
                break
            generator = step_generator(
                t_args.seed, rank, micro_step, device=device if device.type == "cuda" else "cpu"
            )
            micro_step += 1
            clean = samples[index].to(device, non_blocking=True)
            if data.modality == "image" and options.data.random_flip:
                clean = random_flip(clean, generator=generator)
            if t_args.channels_last and clean.ndim == 4:
                clean = clean.contiguous(memory_format=torch.channels_last)
            noise = torch.randn(clean.shape, generator=generator, device=generator.device).to(device)
            timesteps = scheduler.sample_timesteps(clean.shape[0], generator=generator, device=device)
            noisy = scheduler.add_noise(clean, noise, timesteps)
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    prediction = model(noisy, timesteps).sample
                target = _target(scheduler, clean, noise, timesteps)
                per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").flatten(1).mean(1)
                weights = compute_loss_weights(
                    s_args.loss_weighting,
                    timesteps,
                    alphas_cumprod=alphas_cumprod,
                    prediction_type=scheduler.config.prediction_type,
                    snr_gamma=s_args.snr_gamma,
                    p2_k=s_args.p2_k,
                    p2_gamma=s_args.p2_gamma,
                    importance_probs=sampler if s_args.loss_weighting == "importance" else None,
                )
                loss = (per_sample * weights).mean() if weights is not None else per_sample.mean()
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(
                        f"loss became {loss.item()} at step {global_step} (epoch {epoch}); the last good checkpoint "
                        f"is kept in {output_dir / CHECKPOINTS_DIR}. Lower --learning_rate or use --mixed_precision no."
                    )
                accelerator.backward(loss)
                if accelerator.sync_gradients and t_args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), t_args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)

            all_t = accelerator.gather(timesteps.detach())
            all_loss = accelerator.gather(per_sample.detach().float())
            sampler.update_with_losses(timesteps, per_sample)
            bins = (all_t.cpu() * NUM_LOSS_BINS // T).clamp_(max=NUM_LOSS_BINS - 1)
            bin_sums.index_add_(0, bins, all_loss.cpu().double())
            bin_counts.index_add_(0, bins, torch.ones_like(bins))
            loss_sum += float(all_loss.sum())
            loss_count += all_loss.numel()

            if accelerator.sync_gradients:
                if ema is not None:
                    ema.step(model.parameters())
                global_step += 1
                progress.update(1)
                last_loss = loss_sum / max(loss_count, 1)
                if accelerator.is_main_process:
                    record = {
                        "step": global_step,
                        "epoch": epoch,
                        "loss": last_loss,
                        "lr": lr_scheduler.get_last_lr()[0],
                        "bin_losses": [
                            (float(s / c) if c else None) for s, c in zip(bin_sums.tolist(), bin_counts.tolist())
                        ],
                        "bin_counts": bin_counts.tolist(),
                    }
                    with open(output_dir / LOSS_HISTORY_NAME, "a") as handle:
                        handle.write(json.dumps(record) + "\n")
                    progress.set_postfix(loss=f"{last_loss:.4f}", step=global_step)
                    if t_args.logger != "none" and global_step % max(t_args.logging_steps, 1) == 0:
                        logs = {"loss": last_loss, "lr": record["lr"]}
                        if ema is not None:
                            logs["ema_decay"] = ema.cur_decay_value
                        accelerator.log(logs, step=global_step)
                bin_sums.zero_()
                bin_counts.zero_()
                loss_sum, loss_count = 0.0, 0
                if t_args.checkpointing_steps and global_step % t_args.checkpointing_steps == 0:
                    _save_checkpoint(accelerator, output_dir, global_step, t_args.checkpoints_total_limit)
        if accelerator.is_main_process and global_step > 0:
            is_last = epoch == num_epochs - 1 or global_step >= max_steps
            if t_args.save_images_epochs and ((epoch + 1) % t_args.save_images_epochs == 0 or is_last):
                _save_preview(accelerator, model, ema, scheduler, data, output_dir, epoch, options)
            if not is_last and t_args.save_model_epochs and (epoch + 1) % t_args.save_model_epochs == 0:
                _save_final(accelerator, model, ema, scheduler, output_dir, data.modality)
        if global_step >= max_steps:
            break
    progress.close()
    accelerator.wait_for_everyone()
    result = TrainResult(output_dir, global_step, last_loss, time.perf_counter() - start_time)
    if accelerator.is_main_process:
        _save_final(accelerator, model, ema, scheduler, output_dir, data.modality)
        # Written last: its presence tells sweeps that this run finished training.
        write_json_atomic(
            output_dir / TRAIN_COMPLETE_NAME,
            {"global_step": global_step, "final_loss": last_loss, "train_seconds": result.train_seconds},
        )
    accelerator.wait_for_everyone()
    # Trackers are closed, but the process group is left alive: `end_training()` would destroy it, which breaks the
    # next cell of a sweep run in the same launch and, on gloo, sometimes left one rank hanging on its way out.
    # Processes release the group when they exit.
    for tracker in accelerator.trackers:
        tracker.finish()
    return result


def _validate(options: TrainingOptions) -> None:
    t = options.training
    for name in ("train_batch_size", "gradient_accumulation_steps"):
        if getattr(t, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(t, name)}")
    if t.max_train_steps is not None and t.max_train_steps < 1:
        raise ValueError(f"max_train_steps must be >= 1, got {t.max_train_steps}")
    if t.max_train_steps is None and t.num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1, got {t.num_epochs}")
    if not t.learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {t.learning_rate}")
    if options.sampling.loss_weighting not in ("none", "min_snr", "p2", "importance"):
        raise ValueError(f"unknown loss_weighting {options.sampling.loss_weighting!r}")


def _tracker_config(options: TrainingOptions) -> dict[str, Any]:
    # TensorBoard's hparams accept only scalars and strings.
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in options.to_dict().items()}


def _save_checkpoint(accelerator: Any, output_dir: Path, step: int, limit: int | None) -> None:
    path = output_dir / CHECKPOINTS_DIR / f"checkpoint-{step}"
    # Written under a hidden name and renamed once complete: a run killed while saving must not leave a half-written
    # checkpoint-N that --resume_from_checkpoint latest (or a sweep, or a Hub push) would pick up.
    partial = path.with_name(f".{path.name}.partial")
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(path, ignore_errors=True)
        os.replace(partial, path)
        _prune_checkpoints(output_dir, limit)


def _unwrapped_with_ema(accelerator: Any, model: torch.nn.Module, ema: Any):
    unwrapped = accelerator.unwrap_model(model)
    if ema is not None:
        ema.store(unwrapped.parameters())
        ema.copy_to(unwrapped.parameters())
    return unwrapped


def _save_final(accelerator, model, ema, scheduler, output_dir: Path, modality: str) -> None:
    unwrapped = _unwrapped_with_ema(accelerator, model, ema)
    try:
        if next(unwrapped.parameters()).is_contiguous(memory_format=torch.contiguous_format) is False:
            unwrapped = unwrapped.to(memory_format=torch.contiguous_format)
        save_pipeline(unwrapped, scheduler, output_dir, modality)
    finally:
        if ema is not None:
            ema.restore(unwrapped.parameters())


@torch.no_grad()
def _save_preview(
    accelerator, model, ema, scheduler, data: TrainingData, output_dir: Path, epoch: int, options
) -> None:
    """A small sample grid (images) or overlay (signals) with the EMA weights, into ``plots/``."""
    from .generation import generate_samples
    from .plotting import plot_image_nn_grid, plot_signal_overlay, save_figure

    unwrapped = _unwrapped_with_ema(accelerator, model, ema)
    was_training = unwrapped.training
    try:
        unwrapped.eval()
        generated = generate_samples(
            unwrapped,
            scheduler,
            data.modality,
            num_samples=16,
            batch_size=16,
            num_inference_steps=options.evaluation.num_inference_steps or 50,
            seed=options.evaluation.eval_seed,
            sample_shape=data.sample_shape,
            progress=False,
            mixed_precision=options.training.mixed_precision,
        )
        if data.modality == "image":
            figure = plot_image_nn_grid(generated.numpy(), data.samples[:16].numpy(), max_items=16)
        else:
            figure = plot_signal_overlay(generated.numpy(), data.samples[:200].numpy())
        save_figure(figure, output_dir / "plots" / f"samples_epoch_{epoch + 1:04d}.png")
    finally:
        unwrapped.train(was_training)
        if ema is not None:
            ema.restore(unwrapped.parameters())
