"""The one training loop of diffusers-memctl (images and signals, pretraining and CI fine-tuning).

Written after diffusers' ``examples/unconditional_image_generation/train_unconditional.py`` (accelerate, EMA,
AdamW with warm-up, checkpoints) with three differences that matter for the paper (arXiv 2601.21348):

- timesteps come only from the scheduler's configured sampler (uniform draws re-weighted by it for ``importance``), and the sampler
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file as load_safetensors

from .args import TrainingOptions
from .data import TrainingData, load_training_data, random_flip
from .distributed import check_launch, process_layout, use_cpu
from .eval_history import (
    BUDGET_KEY,
    BUDGET_STATE_DIR,
    HISTORY_NAME,
    BudgetOutcome,
    record_history_row,
    truncate_history,
)
from .evaluation import evaluate_model
from .loss_weighting import compute_loss_weights, training_timestep_sampler
from .pipelines import REMOTE_PIPELINE_FILE, write_remote_code
from .run_folder import (
    CARD_NAME,
    CHECKPOINTS_DIR,
    EMA_STATE_NAME,
    LOGS_DIR,
    LOSS_HISTORY_NAME,
    METRICS_NAME,
    MODEL_CONFIG_NAME,
    MODEL_INDEX_NAME,
    MODEL_WEIGHTS_NAME,
    PLOTS_DIR,
    SAMPLER_STATE_NAME,
    SAMPLES_NAME,
    SCHEDULER_DIR,
    TRAIN_COMPLETE_NAME,
    TRAINING_CONFIG_NAME,
    UNET_DIR,
    UNET_EMA_DIR,
    CheckpointError,
    DiskFullError,
    RunFolder,
    apply_umask,
    check_checkpoint_pickles,
    disk_full_guard,
    find_unreadable_file,
    latest_checkpoint,
    launch_lock,
    list_checkpoints,
    load_state_file,
    new_run_id,
    partial_folder,
    publishable_args,
    publishable_path,
    read_jsonl,
    recover_interrupted_swaps,
    replace_folder,
    save_state_file,
    staging_folder,
    stamp_weights_run_id,
    swap_in,
    write_json_atomic,
    write_jsonl_atomic,
)
from .scheduling_memctl import MEMCTL_CONFIG_DEFAULTS, MemCtlDDPMScheduler
from .tracking import log_sample_grid, sample_grid, tracker_init_kwargs
from .validation import validate_options

__all__ = [
    "NonFiniteLossError",
    "RunPlan",
    "TrainResult",
    "build_model",
    "build_scheduler",
    "epoch_batches",
    "plan_run",
    "save_pipeline",
    "step_generator",
    "train",
]

logger = logging.getLogger(__name__)

#: A checkpoint holds the model as diffusers folders, as diffusers' train_unconditional.py writes them:
#: ``unet/`` (the trained weights) and, with EMA, ``unet_ema/`` (the averaged weights, the EMA state in its config).
CHECKPOINT_UNET_DIR = UNET_DIR
CHECKPOINT_EMA_DIR = UNET_EMA_DIR
#: `EMAModel.state_dict` entries kept in ``unet_ema/config.json`` (`EMAModel.save_pretrained`'s format).
EMA_CONFIG_KEYS = (
    "decay",
    "min_decay",
    "optimization_step",
    "update_after_step",
    "use_ema_warmup",
    "inv_gamma",
    "power",
)
NUM_LOSS_BINS = 10
SCHEMA_VERSION = 1


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss or the weights become NaN or infinite; the message says which checkpoint is kept."""


@dataclass
class TrainResult:
    """What :func:`train` returns: the run folder, the number of optimizer steps and the last logged loss."""

    output_dir: Path
    global_step: int
    final_loss: float | None
    train_seconds: float
    already_finished: bool = False


# --------------------------------------------------------------------------------------------------------------
# Small building blocks (tested on their own)
# --------------------------------------------------------------------------------------------------------------


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


def _find_unet_folder(path: Path) -> Path:
    if RunFolder(path).has_pipeline:
        return path / UNET_DIR
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
        if model_args.model_config_name_or_path:
            return _model_from_config(UNet1DMemCtlModel, options, data)
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
    if model_args.model_config_name_or_path:
        return _model_from_config(UNet2DModel, options, data)
    with _seeded_init(options.training.seed):
        return create_unet_2d(
            model_args.model_preset, resolution=data.samples.shape[-1], in_channels=data.samples.shape[1]
        )


def _model_from_config(model_cls: Any, options: TrainingOptions, data: TrainingData) -> torch.nn.Module:
    """A fresh model from ``--model_config_name_or_path`` (as diffusers' train_unconditional.py builds one)."""
    source = options.model.model_config_name_or_path
    path = Path(source).expanduser()
    if path.is_dir():
        path = _find_unet_folder(path)
    try:
        if path.exists():
            config = model_cls.load_config(str(path))
        else:
            try:  # a pipeline repository keeps its UNet config in the "unet" subfolder
                config = model_cls.load_config(source, subfolder=UNET_DIR, cache_dir=options.data.cache_dir)
            except OSError:
                config = model_cls.load_config(source, cache_dir=options.data.cache_dir)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"--model_config_name_or_path {source}: no {model_cls.__name__} config there "
            f"({str(error).splitlines()[0] if str(error) else type(error).__name__})"
        ) from None
    with _seeded_init(options.training.seed):
        model = model_cls.from_config(config)
    size = model.config.sample_size
    expected = list(data.samples.shape[2:])
    sizes = list(size) if isinstance(size, (list, tuple)) else [size] * len(expected)
    if sizes != expected or model.config.in_channels != data.samples.shape[1]:
        raise ValueError(
            f"--model_config_name_or_path {source} describes {model.config.in_channels} channels at {size} but the "
            f"data is {tuple(data.samples.shape[1:])}; set --resolution (or edit sample_size/in_channels) to match"
        )
    return model


def _load_pretrained(model_cls: Any, source: str, options: TrainingOptions) -> torch.nn.Module:
    path = Path(source).expanduser()
    if path.exists():
        model = model_cls.from_pretrained(_find_unet_folder(path))
        # diffusers records the local folder in `_name_or_path`; every config saved from here on (checkpoints'
        # `unet/`, `unet_ema/` included) names it relative to the run's `unet/`, as `save_pipeline` does.
        unet_dir = Path(options.training.output_dir) / UNET_DIR
        model.register_to_config(_name_or_path=publishable_path(str(_find_unet_folder(path)), unet_dir))
        return model
    # A Hub id: a pipeline repository keeps its UNet in the "unet" subfolder.
    try:
        return model_cls.from_pretrained(source, subfolder=UNET_DIR, cache_dir=options.data.cache_dir)
    except OSError:
        return model_cls.from_pretrained(source, cache_dir=options.data.cache_dir)


def _pretrained_scheduler_config(source: str | None) -> dict[str, Any]:
    if not source:
        return {}
    path = Path(source).expanduser()
    candidates = [RunFolder(path).scheduler_config, RunFolder(path.parent).scheduler_config]
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


def save_pipeline(
    model: torch.nn.Module,
    scheduler: MemCtlDDPMScheduler,
    output_dir: Path,
    modality: str,
    published_dir: Path | None = None,
) -> None:
    """Save a pipeline that plain diffusers loads: `DDPMPipeline` (images) or `DDPM1DPipeline` (signals).

    The scheduler is written as a plain `DDPMScheduler` (so `model_index.json` names only diffusers classes); the
    memctl keys stay in `scheduler_config.json`, where plain diffusers ignores them and `MemCtlDDPMScheduler`
    restores them. `published_dir` is the run folder the files end up in when `output_dir` is a staging folder
    inside it (local paths in configs are relative to it).
    """
    from diffusers import DDPMPipeline, DDPMScheduler

    plain = DDPMScheduler.from_config({k: v for k, v in scheduler.config.items() if k not in MEMCTL_CONFIG_DEFAULTS})
    if modality == "signal":
        from .pipelines import DDPM1DPipeline

        pipeline = DDPM1DPipeline(unet=model, scheduler=plain)
    else:
        pipeline = DDPMPipeline(unet=model, scheduler=plain)
    # from_pretrained records where the weights came from; a local source must not reach a published config as an
    # absolute path (a Hub id stays as it is).
    source = model.config.get("_name_or_path")
    if source:
        model.register_to_config(_name_or_path=publishable_path(str(source), (published_dir or output_dir) / UNET_DIR))
    pipeline.save_pretrained(output_dir, safe_serialization=True)
    if modality == "signal":
        write_remote_code(output_dir)
    config_path = RunFolder(output_dir).scheduler_config
    config = json.loads(config_path.read_text())
    config.update(scheduler.memctl_config())
    write_json_atomic(config_path, config)
    # safetensors writes 0600 files whatever the umask; a published model must be readable like any other file.
    apply_umask(output_dir / MODEL_INDEX_NAME, output_dir / UNET_DIR, output_dir / SCHEDULER_DIR)


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


def build_training_config(
    options: TrainingOptions,
    data: TrainingData,
    scheduler: MemCtlDDPMScheduler,
    layout: dict[str, Any] | None = None,
    run_id: str | None = None,
) -> dict:
    """The content of ``training_config.json``: every resolved setting, versions, sampler summary, data summary, the
    process layout (`layout`: processes, per-process and global batch, device, precision, steps) and the run id that
    the weights, ``metrics.json`` and the card of this run carry too."""
    config = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id or new_run_id(),
        "modality": data.modality,
        "versions": _versions(),
        # Local paths relative to the run folder (`--config` resolves them back): no absolute path is published.
        "args": publishable_args(options.to_dict(), options.training.output_dir),
        "sampler": scheduler.timestep_sampler.summary(),
        "data": {"num_samples": int(data.samples.shape[0]), "sample_shape": data.sample_shape, **data.info},
    }
    if layout is not None:
        config["process_layout"] = layout
    return config


#: Kept for callers of the former private name; use `run_folder.latest_checkpoint`.
_latest_checkpoint = latest_checkpoint


def _prune_checkpoints(output_dir: Path, limit: int | None) -> None:
    if not limit:
        return
    found = list_checkpoints(output_dir)
    for path in found[: max(0, len(found) - limit)]:
        shutil.rmtree(path, ignore_errors=True)


class _SamplerState:
    """Checkpoint adapter of accelerate for the sampler state, only to read trusted checkpoints of version 0.1."""

    def __init__(self, scheduler: MemCtlDDPMScheduler):
        self.scheduler = scheduler

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.timestep_sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.timestep_sampler.load_state_dict(state)


def _truncate_loss_history(path: Path, last_step: int) -> None:
    if not path.is_file():
        return
    # A partial last line (an append cut by a kill or a full disk) is dropped, not a reason to refuse the resume.
    kept = [record for record in read_jsonl(path) if record["step"] <= last_step]
    write_jsonl_atomic(path, kept)


def regression_target(
    scheduler: Any, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the model regresses on for the scheduler's ``prediction_type``: the noise, the velocity or the sample."""
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(clean, noise, timesteps)
    if prediction_type == "sample":
        return clean
    raise ValueError(f"unsupported prediction_type {prediction_type!r}")


# --------------------------------------------------------------------------------------------------------------
# Where a run starts: a new run, over an old one, from a checkpoint, or not at all (finished)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunPlan:
    """What :func:`train` does with its `output_dir`, decided under the folder's lock before anything is written.

    `action` is ``"new"`` (empty or missing folder), ``"overwrite"`` (the folder held a run and
    ``--overwrite_output_dir`` was given), ``"resume"`` (from `checkpoint`), ``"extend"`` (a finished run of
    `finished_step` steps trains on from `checkpoint` to a larger ``--max_train_steps``) or ``"finished"`` (the folder
    holds a finished run and resuming it has nothing to do).
    """

    action: str
    checkpoint: Path | None = None
    finished_step: int | None = None


def _run_markers(output_dir: Path) -> list[str]:
    names = (TRAINING_CONFIG_NAME, MODEL_INDEX_NAME, CHECKPOINTS_DIR, LOSS_HISTORY_NAME, TRAIN_COMPLETE_NAME)
    return [name for name in names if (output_dir / name).exists()]


def plan_run(
    output_dir: Path,
    *,
    overwrite: bool,
    resume: str | None,
    max_train_steps: int | None = None,
    num_epochs: int | None = None,
) -> RunPlan:
    """Decide how a run uses `output_dir`, refusing anything that would silently lose a previous run.

    - a folder holding a run is reused only with ``--overwrite_output_dir`` or a checkpoint to resume from;
    - ``--resume_from_checkpoint`` of a finished run extends it when the requested length (``--max_train_steps``, or
      ``--num_epochs`` times the run's recorded steps per epoch) exceeds the steps it trained, and otherwise does
      nothing (it says so) unless overwriting;
    - ``--resume_from_checkpoint latest`` without a checkpoint starts a new run only in a folder without a run.

    Args:
        output_dir (`Path`): The run folder.
        overwrite (`bool`): ``--overwrite_output_dir``.
        resume (`str`, *optional*): ``--resume_from_checkpoint`` (``"latest"`` or a checkpoint folder).
        max_train_steps (`int`, *optional*): ``--max_train_steps`` of this launch.
        num_epochs (`int`, *optional*): ``--num_epochs`` of this launch (used when `max_train_steps` is not given).

    Returns:
        [`RunPlan`]
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"--output_dir {output_dir} exists and is not a directory")
    markers = _run_markers(output_dir)
    if resume:
        if (output_dir / TRAIN_COMPLETE_NAME).is_file() and not overwrite:
            return _plan_finished_run(output_dir, resume, max_train_steps, num_epochs)
        checkpoint = latest_checkpoint(output_dir) if resume == "latest" else Path(resume)
        if checkpoint is not None and not checkpoint.is_dir():
            raise FileNotFoundError(f"--resume_from_checkpoint {resume}: no such checkpoint folder")
        if checkpoint is not None:
            return RunPlan("resume", checkpoint)
        if markers and not overwrite:
            raise ValueError(
                f"--resume_from_checkpoint {resume}: no checkpoint in {output_dir / CHECKPOINTS_DIR}, but --output_dir "
                f"{output_dir} holds a run ({', '.join(markers)}); pass --overwrite_output_dir to start over there"
            )
        return RunPlan("overwrite" if markers else "new")
    if markers and not overwrite:
        raise ValueError(
            f"--output_dir {output_dir} already holds a run ({', '.join(markers)}); pass --overwrite_output_dir to "
            "replace it or --resume_from_checkpoint latest to continue it"
        )
    return RunPlan("overwrite" if markers else "new")


def _plan_finished_run(output_dir: Path, resume: str, max_train_steps: int | None, num_epochs: int | None) -> RunPlan:
    """A finished run: ``"extend"`` when more steps are asked for than it trained, else ``"finished"``."""
    finished = int(RunFolder(output_dir).read_train_complete().get("global_step", 0))
    requested = max_train_steps
    if requested is None and num_epochs:
        layout = RunFolder(output_dir).read_training_config(missing_ok=True).get("process_layout", {})
        if layout.get("steps_per_epoch"):
            requested = num_epochs * int(layout["steps_per_epoch"])
    if requested is None or requested <= finished:
        return RunPlan("finished")
    checkpoint = latest_checkpoint(output_dir) if resume == "latest" else Path(resume)
    if checkpoint is None:
        raise ValueError(
            f"cannot extend {output_dir} from {finished} to {requested} steps: it holds no checkpoint (it was trained "
            "with --checkpointing_steps 0); pass --overwrite_output_dir to train it again from the start"
        )
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {resume}: no such checkpoint folder")
    return RunPlan("extend", checkpoint, finished_step=finished)


def finished_run_result(output_dir: Path) -> TrainResult:
    """The [`TrainResult`] recorded in ``train_complete.json`` of a finished run (resuming it is a no-op)."""
    record = RunFolder(output_dir).read_train_complete()
    logger.warning(
        "%s holds a finished run (%s steps, %s): nothing to resume. Pass --overwrite_output_dir to train it again.",
        output_dir,
        record.get("global_step"),
        TRAIN_COMPLETE_NAME,
    )
    return TrainResult(
        Path(output_dir),
        int(record.get("global_step", 0)),
        record.get("final_loss"),
        float(record.get("train_seconds", 0.0)),
        already_finished=True,
    )


@contextlib.contextmanager
def _locked_plan(accelerator: Any, options: TrainingOptions, plan: RunPlan | None = None):
    """Hold the run folder's lock (main process) for the whole run and yield the [`RunPlan`] every process follows.

    Every process plans from the folder as it is before anything is written (the lock keeps other launches out, and
    this launch writes only after the plan), so all processes reach the same plan, or raise the same error. A `plan`
    given by the caller was made that way under the lock the caller still holds: it is only waited on.
    """
    if plan is not None:
        accelerator.wait_for_everyone()  # every process has its plan before the main process writes
        yield plan
        return
    t_args = options.training
    output_dir = Path(t_args.output_dir)
    with launch_lock(output_dir, is_main_process=accelerator.is_main_process, num_processes=accelerator.num_processes):
        plan = plan_run(
            output_dir,
            overwrite=t_args.overwrite_output_dir,
            resume=t_args.resume_from_checkpoint,
            max_train_steps=t_args.max_train_steps,
            num_epochs=t_args.num_epochs,
        )
        accelerator.wait_for_everyone()
        yield plan


# --------------------------------------------------------------------------------------------------------------
# The stages of a run
# --------------------------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """Everything the stages of one training run share (built by :func:`_setup`)."""

    options: TrainingOptions
    output_dir: Path
    accelerator: Any
    data: TrainingData
    model: torch.nn.Module
    scheduler: MemCtlDDPMScheduler
    ema: Any
    optimizer: Any
    lr_scheduler: Any
    steps_per_epoch: int
    max_steps: int
    num_epochs: int
    alphas_cumprod: torch.Tensor
    # Draws the training timesteps: the scheduler's sampler, or uniform for `importance` re-weighting.
    timestep_draw: Any = None
    # Written into training_config.json and the saved weights' metadata (evaluation puts it into metrics.json).
    run_id: str | None = None
    global_step: int = 0
    micro_step: int = 0
    last_loss: float | None = None
    loss_sum: float = 0.0
    loss_count: int = 0
    bin_sums: torch.Tensor = field(default_factory=lambda: torch.zeros(NUM_LOSS_BINS, dtype=torch.float64))
    bin_counts: torch.Tensor = field(default_factory=lambda: torch.zeros(NUM_LOSS_BINS, dtype=torch.long))
    # --max_memorized_fraction: where the run stands with its budget; `stopped` ends training early.
    budget: BudgetOutcome | None = None
    stopped: bool = False


def _create_accelerator(options: TrainingOptions) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    t_args = options.training
    output_dir = Path(t_args.output_dir)
    return Accelerator(
        cpu=use_cpu(),
        gradient_accumulation_steps=t_args.gradient_accumulation_steps,
        mixed_precision=t_args.mixed_precision,
        log_with=None if t_args.logger == "none" else t_args.logger,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / t_args.logging_dir)
        ),
    )


#: Everything a run and its evaluation leave in its folder. The config goes first, so that a kill part-way leaves a
#: folder that is no run at all rather than one whose config belongs to one run and its weights to another.
RUN_ARTEFACTS = (
    TRAINING_CONFIG_NAME,
    TRAIN_COMPLETE_NAME,
    CHECKPOINTS_DIR,  # early: a resume must never continue the old run's checkpoints under a new config
    METRICS_NAME,
    CARD_NAME,
    MODEL_INDEX_NAME,
    UNET_DIR,
    SCHEDULER_DIR,
    REMOTE_PIPELINE_FILE,
    LOSS_HISTORY_NAME,
    HISTORY_NAME,
    BUDGET_STATE_DIR,
    SAMPLES_NAME,
    PLOTS_DIR,
    LOGS_DIR,
)


def _remove_run_artefacts(output_dir: Path) -> None:
    """Remove the previous run of `output_dir` (every file of :data:`RUN_ARTEFACTS` and staging folders)."""
    for stale in output_dir.glob(".staging-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for name in RUN_ARTEFACTS:
        target = output_dir / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)


def _run_id_for(output_dir: Path, plan: RunPlan) -> str:
    """A resumed run keeps its run id (the one in its config); a new run, or one started over, gets a new one."""
    if plan.action in ("resume", "extend"):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            run_id = RunFolder(output_dir).read_training_config().get("run_id")
            if run_id:
                return run_id
    return new_run_id()


def _prepare_output_dir(accelerator: Any, output_dir: Path, plan: RunPlan, training_config: dict) -> None:
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        if plan.action == "overwrite":
            # Everything of the old run goes before the new config is written: nothing of it (weights, card, plots)
            # may pass for the new run's, even when this process is killed part-way.
            _remove_run_artefacts(output_dir)
        if plan.action in ("resume", "extend"):
            # A report or a pipeline whose swap a kill interrupted is completed before anything else is written.
            recover_interrupted_swaps(output_dir)
        if plan.action in ("resume", "extend") and (output_dir / TRAIN_COMPLETE_NAME).is_file():
            # Resuming a finished run with --overwrite_output_dir trains its last steps again, and an extension
            # trains more: its report is stale.
            for name in (TRAIN_COMPLETE_NAME, METRICS_NAME):
                (output_dir / name).unlink(missing_ok=True)
        if plan.action in ("resume", "extend"):
            training_config = _with_extensions(output_dir, plan, training_config)
        RunFolder(output_dir).write_training_config(training_config)
    accelerator.wait_for_everyone()


def _with_extensions(output_dir: Path, plan: RunPlan, training_config: dict) -> dict:
    """`training_config` with the run's ``extensions`` (kept across resumes), plus this one when it extends."""
    previous = RunFolder(output_dir).read_training_config(missing_ok=True)
    extensions = list(previous.get("extensions", []))
    if plan.action == "extend":
        extensions.append(
            {
                "from_step": plan.finished_step,
                "to_step": training_config.get("process_layout", {}).get("max_train_steps"),
                "resumed_from": os.path.relpath(plan.checkpoint.resolve(), output_dir.resolve()),
                "previous_args": {
                    key: previous.get("args", {}).get(key) for key in ("max_train_steps", "num_epochs", "lr_scheduler")
                },
            }
        )
    return {**training_config, "extensions": extensions} if extensions else training_config


def _step_schedule(t_args: Any, num_samples: int, num_processes: int) -> tuple[int, int, int]:
    """``(steps_per_epoch, max_steps, num_epochs)`` of a run."""
    batches_per_epoch = len(
        epoch_batches(
            num_samples,
            t_args.train_batch_size,
            seed=t_args.seed,
            epoch=0,
            process_index=0,
            num_processes=num_processes,
        )
    )
    steps_per_epoch = math.ceil(batches_per_epoch / t_args.gradient_accumulation_steps)
    max_steps = t_args.max_train_steps or t_args.num_epochs * steps_per_epoch
    return steps_per_epoch, max_steps, math.ceil(max_steps / steps_per_epoch)


def _setup(options: TrainingOptions, data: TrainingData | None, accelerator: Any, plan: RunPlan) -> _Run:
    """Stage 1: data, model, scheduler, the run folder, EMA, optimizer and learning-rate schedule."""
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    t_args = options.training
    output_dir = Path(t_args.output_dir)
    device = accelerator.device
    data = data if data is not None else load_training_data(options.data)
    model = build_model(options, data)
    scheduler = build_scheduler(options, data.modality, data.samples)
    if t_args.channels_last and data.modality == "image":
        model = model.to(memory_format=torch.channels_last)
    num_processes = accelerator.num_processes
    steps_per_epoch, max_steps, num_epochs = _step_schedule(t_args, len(data.samples), num_processes)
    layout = process_layout(
        accelerator,
        train_batch_size=t_args.train_batch_size,
        gradient_accumulation_steps=t_args.gradient_accumulation_steps,
    )
    layout.update(steps_per_epoch=steps_per_epoch, max_train_steps=max_steps, num_epochs=num_epochs)
    run_id = _run_id_for(output_dir, plan)
    config = build_training_config(options, data, scheduler, layout, run_id)
    _prepare_output_dir(accelerator, output_dir, plan, config)

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
    lr_scheduler = get_scheduler(
        t_args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=t_args.lr_warmup_steps * num_processes,
        num_training_steps=max_steps * num_processes,
    )
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    if ema is not None:
        ema.to(device)
    run = _Run(
        options, output_dir, accelerator, data, model, scheduler, ema, optimizer, lr_scheduler,
        steps_per_epoch, max_steps, num_epochs, scheduler.alphas_cumprod.to(device),
        training_timestep_sampler(scheduler.timestep_sampler, options.sampling.loss_weighting), run_id,
    )  # fmt: skip
    if options.evaluation.max_memorized_fraction is not None:
        run.budget = BudgetOutcome(float(options.evaluation.max_memorized_fraction))
    return run


def _resume(run: _Run, checkpoint: Path) -> None:
    """Stage 2: load a checkpoint (no pickle unless trusted) and drop the loss records logged after it."""
    trusted = run.options.training.trust_checkpoint_pickles
    pickles = check_checkpoint_pickles(checkpoint, trusted=trusted)
    try:
        if pickles:
            _load_legacy_checkpoint(run, checkpoint)
        else:
            run.accelerator.load_state(str(checkpoint))
            _load_extra_state(run, checkpoint)
    except Exception as error:
        raise CheckpointError(_unreadable_checkpoint_message(run.output_dir, checkpoint, error)) from error
    run.global_step = int(checkpoint.name.split("-")[1])
    if run.accelerator.is_main_process:
        _truncate_loss_history(run.output_dir / LOSS_HISTORY_NAME, run.global_step)
        # Evaluations after the checkpoint are run again with the steps they followed (no duplicate, no gap).
        rows = truncate_history(run.output_dir, run.global_step)
        if run.budget is not None:
            run.budget = BudgetOutcome.from_history(rows, run.budget.max_memorized_fraction)


def _averaged_parameters(model: torch.nn.Module, folder: Path, device: torch.device) -> list[torch.Tensor]:
    """The EMA's shadow parameters from ``unet_ema/``, in ``model.parameters()`` order.

    Read as a plain state dict: ``from_pretrained`` would warn that the EMA keys of the config are no model settings.
    """
    weights = folder / MODEL_WEIGHTS_NAME
    if weights.is_file():
        state = load_safetensors(weights)
        return [state[name].to(device) for name, _ in model.named_parameters()]
    return [p.detach().clone().to(device) for p in type(model).from_pretrained(folder).parameters()]


def _load_extra_state(run: _Run, checkpoint: Path) -> None:
    """Model, EMA and sampler state written by `_save_extra_state` (or, before ``unet/``, EMA in ema.safetensors)."""
    unwrapped = run.accelerator.unwrap_model(run.model)
    if (checkpoint / CHECKPOINT_UNET_DIR).is_dir():
        loaded = type(unwrapped).from_pretrained(checkpoint / CHECKPOINT_UNET_DIR)
        unwrapped.load_state_dict(loaded.state_dict())
    if run.ema is not None:
        ema_dir, legacy = checkpoint / CHECKPOINT_EMA_DIR, checkpoint / EMA_STATE_NAME
        if ema_dir.is_dir():
            config = json.loads((ema_dir / MODEL_CONFIG_NAME).read_text())
            state = {key: config[key] for key in EMA_CONFIG_KEYS}
            state["shadow_params"] = _averaged_parameters(unwrapped, ema_dir, run.accelerator.device)
        elif legacy.is_file():
            state = load_state_file(legacy, device=run.accelerator.device)
        else:
            raise FileNotFoundError(f"{ema_dir} is missing (was the checkpoint saved with --use_ema false?)")
        run.ema.load_state_dict(state)
    run.scheduler.timestep_sampler.load_state_dict(load_state_file(checkpoint / SAMPLER_STATE_NAME))


def _load_legacy_checkpoint(run: _Run, checkpoint: Path) -> None:
    """A trusted checkpoint of diffusers-memctl 0.1, whose EMA and sampler state accelerate pickled."""
    logger.warning("loading the pickle files of %s (--trust_checkpoint_pickles)", checkpoint)
    objects = ([run.ema] if run.ema is not None else []) + [_SamplerState(run.scheduler)]
    for obj in objects:
        run.accelerator.register_for_checkpointing(obj)
    try:
        run.accelerator.load_state(str(checkpoint))
    finally:
        # New checkpoints save this state without pickle (`_save_extra_state`).
        del run.accelerator._custom_objects[-len(objects) :]
    if run.ema is not None:
        run.ema.to(run.accelerator.device)


def _unreadable_checkpoint_message(output_dir: Path, checkpoint: Path, error: BaseException) -> str:
    earlier = [
        p for p in list_checkpoints(output_dir) if int(p.name.split("-")[1]) < int(checkpoint.name.split("-")[1])
    ]
    fallback = (
        f"the previous checkpoint is {earlier[-1]}: resume from it with --resume_from_checkpoint {earlier[-1]}"
        if earlier
        else "there is no earlier checkpoint; pass --overwrite_output_dir to start over"
    )
    bad = find_unreadable_file(checkpoint)
    if bad is not None:
        return f"cannot resume from {checkpoint}: {bad[0]} is unreadable, truncated or corrupt ({bad[1]}); {fallback}"
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return f"cannot resume from {checkpoint}: {reason}; {fallback}"


def _init_trackers(run: _Run) -> None:
    t_args = run.options.training
    if run.accelerator.is_main_process and t_args.logger != "none":
        init_kwargs = tracker_init_kwargs(t_args.logger, run.output_dir / t_args.logging_dir, run.output_dir.name)
        run.accelerator.init_trackers("memctl", config=_tracker_config(run.options), init_kwargs=init_kwargs)


def _train_step(run: _Run, index: torch.Tensor, epoch: int, progress: Any) -> None:
    """Stage 3: one micro-batch (forward, backward, optimizer when gradients sync), then its bookkeeping."""
    options, accelerator, scheduler, model = run.options, run.accelerator, run.scheduler, run.model
    t_args, s_args, device = options.training, options.sampling, accelerator.device
    generator = step_generator(
        t_args.seed, accelerator.process_index, run.micro_step, device=device if device.type == "cuda" else "cpu"
    )
    run.micro_step += 1
    clean = run.data.samples[index].to(device, non_blocking=True)
    if run.data.modality == "image" and options.data.random_flip:
        clean = random_flip(clean, generator=generator)
    if t_args.channels_last and clean.ndim == 4:
        clean = clean.contiguous(memory_format=torch.channels_last)
    noise = torch.randn(clean.shape, generator=generator, device=generator.device).to(device)
    timesteps = run.timestep_draw.sample(clean.shape[0], generator=generator, device=device)
    noisy = scheduler.add_noise(clean, noise, timesteps)
    with accelerator.accumulate(model):
        with accelerator.autocast():
            prediction = model(noisy, timesteps).sample
        target = regression_target(scheduler, clean, noise, timesteps)
        per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").flatten(1).mean(1)
        weights = compute_loss_weights(
            s_args.loss_weighting,
            timesteps,
            alphas_cumprod=run.alphas_cumprod,
            prediction_type=scheduler.config.prediction_type,
            snr_gamma=s_args.snr_gamma,
            p2_k=s_args.p2_k,
            p2_gamma=s_args.p2_gamma,
            importance_probs=scheduler.timestep_sampler if s_args.loss_weighting == "importance" else None,
        )
        loss = (per_sample * weights).mean() if weights is not None else per_sample.mean()
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"loss became {loss.item()} at step {run.global_step + 1} (epoch {epoch}); "
                f"{_kept_checkpoint_note(run)}. Lower --learning_rate or use --mixed_precision no."
            )
        accelerator.backward(loss)
        if accelerator.sync_gradients and t_args.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), t_args.max_grad_norm)
        run.optimizer.step()
        run.lr_scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
    _accumulate_losses(run, timesteps, per_sample)
    if accelerator.sync_gradients:
        _end_of_step(run, epoch, progress)


def _accumulate_losses(run: _Run, timesteps: torch.Tensor, per_sample: torch.Tensor) -> None:
    all_t = run.accelerator.gather(timesteps.detach())
    all_loss = run.accelerator.gather(per_sample.detach().float())
    run.scheduler.timestep_sampler.update_with_losses(timesteps, per_sample)
    T = run.scheduler.config.num_train_timesteps
    bins = (all_t.cpu() * NUM_LOSS_BINS // T).clamp_(max=NUM_LOSS_BINS - 1)
    run.bin_sums.index_add_(0, bins, all_loss.cpu().double())
    run.bin_counts.index_add_(0, bins, torch.ones_like(bins))
    run.loss_sum += float(all_loss.sum())
    run.loss_count += all_loss.numel()


def _end_of_step(run: _Run, epoch: int, progress: Any) -> None:
    """After an optimizer step: EMA, the loss record, tracker logs, and a checkpoint when one is due."""
    t_args, accelerator = run.options.training, run.accelerator
    if run.ema is not None:
        run.ema.step(run.model.parameters())
    run.global_step += 1
    progress.update(1)
    run.last_loss = run.loss_sum / max(run.loss_count, 1)
    if accelerator.is_main_process:
        record = {
            "step": run.global_step,
            "epoch": epoch,
            "loss": run.last_loss,
            "lr": run.lr_scheduler.get_last_lr()[0],
            "bin_losses": [
                (float(s / c) if c else None) for s, c in zip(run.bin_sums.tolist(), run.bin_counts.tolist())
            ],
            "bin_counts": run.bin_counts.tolist(),
        }
        RunFolder(run.output_dir).append_loss_record(record)
        progress.set_postfix(loss=f"{run.last_loss:.4f}", step=run.global_step)
        if t_args.logger != "none" and run.global_step % max(t_args.logging_steps, 1) == 0:
            logs = {"loss": run.last_loss, "lr": record["lr"]}
            if run.ema is not None:
                logs["ema_decay"] = run.ema.cur_decay_value
            accelerator.log(logs, step=run.global_step)
    run.bin_sums.zero_()
    run.bin_counts.zero_()
    run.loss_sum, run.loss_count = 0.0, 0
    if _evaluation_due(run):
        # Before the checkpoint of this step: a run killed in between resumes before this step and evaluates again.
        _evaluate_along(run)
        if run.stopped:
            return
    if t_args.checkpointing_steps and run.global_step % t_args.checkpointing_steps == 0:
        _save_checkpoint(run)


def _evaluation_due(run: _Run) -> bool:
    """An along-training evaluation every --eval_every_steps; the last step only under a budget (it is checked
    there too), else the run's final evaluation is the last row."""
    every = run.options.evaluation.eval_every_steps
    if not every:
        return False
    if run.global_step >= run.max_steps:
        return run.budget is not None
    return run.global_step % every == 0


def _evaluate_along(run: _Run) -> None:
    """Evaluate the (EMA) model as it is now into ``metrics_history.jsonl``; apply the memorization budget."""
    e, accelerator = run.options.evaluation, run.accelerator
    stop = False
    if accelerator.is_main_process:
        num_samples = e.eval_history_num_samples or e.eval_num_samples
        unwrapped = _unwrapped_with_ema(accelerator, run.model, run.ema)
        was_training = unwrapped.training
        try:
            unwrapped.eval()
            metrics, seconds = evaluate_model(
                unwrapped,
                run.scheduler,
                run.data,
                e,
                num_samples=num_samples,
                mixed_precision=run.options.training.mixed_precision,
                device=accelerator.device,
            )
            if run.budget is not None and _keep_for_budget(run, metrics["memorized_fraction"]):
                _save_budget_state(run, unwrapped)
        finally:
            unwrapped.train(was_training)
            if run.ema is not None:
                run.ema.restore(unwrapped.parameters())
        row = {"step": run.global_step, "final": False, "num_samples": num_samples, "eval_seconds": round(seconds, 3)}
        record_history_row(run.output_dir, {**row, **metrics})
        logger.info(
            "step %d: copies %.1f%%%s (%d samples, evaluated in %.1f s)",
            run.global_step,
            100 * metrics["memorized_fraction"],
            f", held-out Frechet {metrics['heldout_frechet']:.3f}" if "heldout_frechet" in metrics else "",
            num_samples,
            seconds,
        )
        if run.options.training.logger != "none":
            accelerator.log(
                {f"eval/{k}": v for k, v in metrics.items()} | {"eval/seconds": seconds}, step=run.global_step
            )
        stop = run.budget is not None and run.budget.stopped
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        stop = broadcast_object_list([stop])[0]
    run.stopped = bool(stop)


def _keep_for_budget(run: _Run, fraction: float) -> bool:
    """Record an evaluation with the budget; whether its state must be kept (within budget, or the starting model
    when even that exceeds it: something has to be saved)."""
    within = run.budget.update(run.global_step, fraction)
    if not within and run.budget.saved_step is None:
        run.budget.saved_step, run.budget.saved_fraction = run.global_step, fraction
        return True
    return within


def _save_budget_state(run: _Run, unwrapped: torch.nn.Module) -> None:
    """The pipeline as evaluated now, into ``budget_state/`` (written under a hidden name, then renamed)."""
    target = run.output_dir / BUDGET_STATE_DIR
    partial = partial_folder(target)
    shutil.rmtree(partial, ignore_errors=True)
    with disk_full_guard(partial, "memorization-budget state", kept="the previous state is kept"):
        save_pipeline(unwrapped, run.scheduler, partial, run.data.modality, published_dir=run.output_dir)
        if run.run_id:
            # Restored as the run's pipeline when the budget stops training: it must carry this run's id.
            stamp_weights_run_id(partial / UNET_DIR, run.run_id)
    replace_folder(partial, target)


def _restore_budget_state(run: _Run) -> None:
    """Make the kept state the run's pipeline (a budget stop saves it instead of the last step's weights)."""
    source = run.output_dir / BUDGET_STATE_DIR
    for name in (MODEL_INDEX_NAME, UNET_DIR, SCHEDULER_DIR):
        target = run.output_dir / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        (shutil.copytree if (source / name).is_dir() else shutil.copy2)(source / name, target)


def _record_budget(run: _Run) -> dict[str, Any]:
    """The budget's outcome into ``training_config.json`` (read by the evaluation, the card and the history)."""
    outcome = run.budget.to_dict()
    folder = RunFolder(run.output_dir)
    config = folder.read_training_config()
    config[BUDGET_KEY] = outcome
    folder.write_training_config(config)
    logger.info("memorization budget: %s", outcome["message"])
    return outcome


def _end_of_epoch(run: _Run, epoch: int) -> None:
    """Previews and intermediate pipeline saves at the end of an epoch."""
    t_args = run.options.training
    if run.accelerator.is_main_process and run.global_step > 0:
        is_last = epoch == run.num_epochs - 1 or run.global_step >= run.max_steps
        if t_args.save_images_epochs and ((epoch + 1) % t_args.save_images_epochs == 0 or is_last):
            try:
                _save_preview(
                    run.accelerator,
                    run.model,
                    run.ema,
                    run.scheduler,
                    run.data,
                    run.output_dir,
                    epoch,
                    run.options,
                    step=run.global_step,
                )
            except Exception as error:  # a preview is a by-product: it must never cost the training
                logger.warning("preview of epoch %d skipped (%s: %s)", epoch + 1, type(error).__name__, error)
        if not is_last and t_args.save_model_epochs and (epoch + 1) % t_args.save_model_epochs == 0:
            _save_final(
                run.accelerator, run.model, run.ema, run.scheduler, run.output_dir, run.data.modality, run.run_id
            )


def _run_epochs(run: _Run) -> float:
    """Every remaining epoch from the run's current step; returns the seconds spent."""
    from tqdm.auto import tqdm

    t_args, accelerator = run.options.training, run.accelerator
    progress = tqdm(
        total=run.max_steps, initial=run.global_step, disable=not accelerator.is_local_main_process, desc="train"
    )
    start_time = time.perf_counter()
    run.micro_step = run.global_step * t_args.gradient_accumulation_steps
    run.model.train()
    first_epoch = run.global_step // run.steps_per_epoch
    skip_batches = (run.global_step % run.steps_per_epoch) * t_args.gradient_accumulation_steps
    for epoch in range(first_epoch, run.num_epochs):
        batches = epoch_batches(
            len(run.data.samples),
            t_args.train_batch_size,
            seed=t_args.seed,
            epoch=epoch,
            process_index=accelerator.process_index,
            num_processes=accelerator.num_processes,
        )
        if epoch == first_epoch and skip_batches:
            batches = batches[skip_batches:]
        for index in batches:
            if run.global_step >= run.max_steps or run.stopped:
                break
            _train_step(run, index, epoch, progress)
        _end_of_epoch(run, epoch)
        if run.global_step >= run.max_steps or run.stopped:
            break
    progress.close()
    accelerator.wait_for_everyone()
    return time.perf_counter() - start_time


def _finish(run: _Run, train_seconds: float) -> TrainResult:
    """Stage 5: save the pipeline, then ``train_complete.json`` (last: it marks the run finished)."""
    accelerator = run.accelerator
    result = TrainResult(run.output_dir, run.global_step, run.last_loss, train_seconds)
    every = run.options.training.checkpointing_steps
    last = RunFolder(run.output_dir).checkpoint(run.global_step)
    if every and run.global_step % every and not last.is_dir():
        # The state at the last step, so that a larger --max_train_steps extends the run exactly from there.
        _save_checkpoint(run)
    if accelerator.is_main_process:
        complete = {"global_step": run.global_step, "final_loss": run.last_loss, "train_seconds": result.train_seconds}
        if run.budget is not None and run.budget.stopped:
            _restore_budget_state(run)
        else:
            _save_final(accelerator, run.model, run.ema, run.scheduler, run.output_dir, run.data.modality, run.run_id)
        if run.budget is not None:
            if not run.budget.stopped:
                run.budget.saved_step = run.global_step
            complete[BUDGET_KEY] = _record_budget(run)
        # Written last: its presence tells sweeps that this run finished training.
        RunFolder(run.output_dir).write_train_complete(complete)
        shutil.rmtree(run.output_dir / BUDGET_STATE_DIR, ignore_errors=True)
    accelerator.wait_for_everyone()
    # Trackers are closed, but the process group is left alive: `end_training()` would destroy it, which breaks the
    # next cell of a sweep run in the same launch and, on gloo, sometimes left one rank hanging on its way out.
    # Processes release the group when they exit.
    for tracker in accelerator.trackers:
        tracker.finish()
    return result


# --------------------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------------------


def train(
    options: TrainingOptions,
    *,
    data: TrainingData | None = None,
    accelerator: Any = None,
    plan: RunPlan | None = None,
) -> TrainResult:
    """Train (or fine-tune) a diffusion model with the configured timestep sampler.

    The run folder is locked for the whole run (a second writer fails at once with [`RunFolderBusyError`]); what
    happens to a folder that already holds a run is decided by [`plan_run`]: resuming a finished run does nothing.

    Args:
        options ([`TrainingOptions`]): Every setting of the run (see `diffusers_memctl.args`).
        data ([`TrainingData`], *optional*): Preloaded data (default: loaded from ``options.data``).
        accelerator (`accelerate.Accelerator`, *optional*): An existing accelerator (default: created here).
        plan ([`RunPlan`], *optional*): The plan of a caller that validated `options` and planned the folder under
            its launch lock, which it still holds ([`~diffusers_memctl.runner.run_training_job`]): neither is done
            again. Default: `options` are validated and the folder is locked and planned here.

    Returns:
        [`TrainResult`]
    """
    if plan is None:
        validate_options(options)
    if accelerator is None:
        accelerator = _create_accelerator(options)
    check_launch(accelerator.num_processes)
    with _locked_plan(accelerator, options, plan) as plan:
        if plan.action == "finished":
            return finished_run_result(Path(options.training.output_dir))
        if plan.action == "new" and options.training.resume_from_checkpoint:
            logger.warning(
                "no checkpoint in %s: starting a new run", Path(options.training.output_dir) / CHECKPOINTS_DIR
            )
        run = _setup(options, data, accelerator, plan)
        hooks = _register_checkpoint_hooks(accelerator)
        try:
            return _train_stages(run, plan)
        finally:
            for handle in hooks:
                handle.remove()


def _train_stages(run: _Run, plan: RunPlan) -> TrainResult:
    """Stages 2-5 of :func:`train`: resume or extend, trackers, the epochs, the final saves."""
    if plan.action == "extend":
        logger.info(
            "extending the finished run %s from %s to %s steps (from %s)",
            run.output_dir,
            plan.finished_step,
            run.max_steps,
            plan.checkpoint.name,
        )
    if plan.action in ("resume", "extend"):
        _resume(run, plan.checkpoint)
    _init_trackers(run)
    fine_tuning = bool(run.options.model.pretrained_model_name_or_path)
    if plan.action not in ("resume", "extend") and fine_tuning and _evaluates_along(run.options):
        _evaluate_along(run)  # step 0: the pretrained model as it is
    train_seconds = 0.0 if run.stopped else _run_epochs(run)
    return _finish(run, train_seconds)


def _evaluates_along(options: TrainingOptions) -> bool:
    return bool(options.evaluation.eval_every_steps)


def _tracker_config(options: TrainingOptions) -> dict[str, Any]:
    # TensorBoard's hparams accept only scalars and strings.
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in options.to_dict().items()}


def _skip_accelerate_weights(models: list, weights: list, output_dir: str) -> None:
    """accelerate's save hook: the model goes into ``unet/`` (`_save_extra_state`), not ``model.safetensors``."""
    weights.clear()


def _load_weights_from_unet_folder(models: list, input_dir: str) -> None:
    """accelerate's load hook: a checkpoint with ``unet/`` is read by `_load_extra_state`; older ones by accelerate."""
    if (Path(input_dir) / CHECKPOINT_UNET_DIR).is_dir():
        models.clear()


def _register_checkpoint_hooks(accelerator: Any) -> list[Any]:
    """Hook the model's checkpoint layout into accelerate's save/load; returns the handles to remove."""
    return [
        accelerator.register_save_state_pre_hook(_skip_accelerate_weights),
        accelerator.register_load_state_pre_hook(_load_weights_from_unet_folder),
    ]


def _save_extra_state(run: _Run, folder: Path) -> None:
    """``unet/``, ``unet_ema/`` (diffusers folders) and the sampler state (safetensors + JSON): nothing pickled.

    Both model folders load with ``from_pretrained(checkpoint, subfolder="unet")`` (``"unet_ema"``), and
    ``EMAModel.from_pretrained(checkpoint / "unet_ema", model_cls)`` restores the EMA, as for diffusers' examples.
    """
    unwrapped = run.accelerator.unwrap_model(run.model)
    unwrapped.save_pretrained(folder / CHECKPOINT_UNET_DIR, safe_serialization=True)
    if run.ema is not None:
        _unwrapped_with_ema(run.accelerator, run.model, run.ema)
        try:
            unwrapped.save_pretrained(folder / CHECKPOINT_EMA_DIR, safe_serialization=True)
        finally:
            run.ema.restore(unwrapped.parameters())
        config_path = folder / CHECKPOINT_EMA_DIR / MODEL_CONFIG_NAME
        state = run.ema.state_dict()
        config = json.loads(config_path.read_text())
        write_json_atomic(config_path, {**config, **{key: state[key] for key in EMA_CONFIG_KEYS}})
    save_state_file(folder / SAMPLER_STATE_NAME, run.scheduler.timestep_sampler.state_dict())


def _kept_checkpoint_note(run: _Run) -> str:
    """What a diverged run leaves to resume from, said truthfully (there may be no checkpoint at all)."""
    latest = latest_checkpoint(run.output_dir)
    if latest is None:
        return f"no checkpoint was written (none in {run.output_dir / CHECKPOINTS_DIR})"
    step = int(latest.name.split("-")[1])
    if step == run.global_step:
        # Its weights are those this loss was computed with: if they diverged, resuming from it fails the same way.
        earlier = list_checkpoints(run.output_dir)[:-1]
        before = f"the one before is {earlier[-1]}" if earlier else "there is no earlier checkpoint"
        return (
            f"{latest} is kept but holds the weights this loss was computed with (if they diverged, resuming from "
            f"it diverges again); {before}"
        )
    return f"the last checkpoint {latest} (step {step}) is kept"


def _non_finite_weights(run: _Run) -> str | None:
    """The first parameter (model or EMA) holding NaN or inf, or ``None`` when all are finite."""
    model = run.accelerator.unwrap_model(run.model)
    for name, parameter in model.named_parameters():
        if not torch.isfinite(parameter).all():
            return name
    if run.ema is not None:
        for index, shadow in enumerate(run.ema.shadow_params):
            if not torch.isfinite(shadow).all():
                return f"EMA parameter {index}"
    return None


def _save_checkpoint(run: _Run) -> None:
    """Stage 4: ``checkpoints/checkpoint-N``, written under a hidden name and renamed once complete."""
    accelerator, output_dir = run.accelerator, run.output_dir
    bad = _non_finite_weights(run)
    if bad is not None:
        # A checkpoint of non-finite weights would be "latest" and make every resume fail.
        raise NonFiniteLossError(
            f"the weights became non-finite at step {run.global_step} ({bad}), so checkpoint-{run.global_step} was "
            f"not written; {_kept_checkpoint_note(run)}. Lower --learning_rate or use --mixed_precision no."
        )
    path = RunFolder(output_dir).checkpoint(run.global_step)
    # A run killed while saving must not leave a half-written checkpoint-N that --resume_from_checkpoint latest (or a
    # sweep, or a Hub push) would pick up.
    partial = partial_folder(path)
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    previous = latest_checkpoint(output_dir)
    kept = f"the previous checkpoint {previous} is kept" if previous else "no earlier checkpoint exists"
    try:
        with disk_full_guard(partial, "checkpoint", kept=kept):
            accelerator.save_state(str(partial))
            if accelerator.is_main_process:
                _save_extra_state(run, partial)
    except DiskFullError:
        shutil.rmtree(partial, ignore_errors=True)  # frees the space the partial checkpoint took
        raise
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        apply_umask(partial)
        replace_folder(partial, path)
        _prune_checkpoints(output_dir, run.options.training.checkpoints_total_limit)


def _unwrapped_with_ema(accelerator: Any, model: torch.nn.Module, ema: Any):
    unwrapped = accelerator.unwrap_model(model)
    if ema is not None:
        ema.store(unwrapped.parameters())
        ema.copy_to(unwrapped.parameters())
    return unwrapped


#: The files of a saved pipeline, replaced as one group (model_index.json last: loaders look for it first).
PIPELINE_FILES = (UNET_DIR, SCHEDULER_DIR, REMOTE_PIPELINE_FILE, MODEL_INDEX_NAME)


def _save_final(
    accelerator, model, ema, scheduler, output_dir: Path, modality: str, run_id: str | None = None
) -> None:
    """Save the pipeline into a staging folder, stamp the run id into the weights, then swap it in as one group.

    A kill or a full disk part-way leaves the previous weights (or none) and no partial file.
    """
    unwrapped = _unwrapped_with_ema(accelerator, model, ema)
    staging = staging_folder(output_dir, "pipeline")
    kept = "the previous weights are kept" if (output_dir / UNET_DIR).is_dir() else "no weights were saved"
    try:
        if next(unwrapped.parameters()).is_contiguous(memory_format=torch.contiguous_format) is False:
            unwrapped = unwrapped.to(memory_format=torch.contiguous_format)
        with disk_full_guard(output_dir / UNET_DIR, "pipeline (model_index.json, unet/, scheduler/)", kept=kept):
            save_pipeline(unwrapped, scheduler, staging, modality, published_dir=output_dir)
            if run_id:
                stamp_weights_run_id(staging / UNET_DIR, run_id)
        swap_in(staging, output_dir, PIPELINE_FILES, last=MODEL_INDEX_NAME)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if ema is not None:
            ema.restore(unwrapped.parameters())


@torch.no_grad()
def _save_preview(
    accelerator, model, ema, scheduler, data: TrainingData, output_dir: Path, epoch: int, options, *, step: int = 0
) -> None:
    """A small sample grid (images) or overlay (signals) with the EMA weights, into ``plots/`` and the tracker."""
    from .generation import generate_samples
    from .metrics import nearest_neighbors
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
            # The bottom row is each sample's nearest training sample, as the grid's title says (not the first 16).
            distances, indices = nearest_neighbors(generated, data.samples, k=1)
            nearest = data.samples[indices[:, 0].cpu()].numpy()
            figure = plot_image_nn_grid(
                generated.numpy(), nearest, max_items=16, distances=distances[:, 0].cpu().numpy()
            )
        else:
            figure = plot_signal_overlay(generated.numpy(), data.samples[:200].numpy())
        path = save_figure(figure, output_dir / PLOTS_DIR / f"samples_epoch_{epoch + 1:04d}.png")
        if accelerator.trackers:
            # Images: the generated samples alone, as diffusers' train_unconditional.py logs them; signals: the plot.
            grid = sample_grid(generated) if data.modality == "image" else np.asarray(Image.open(path).convert("RGB"))
            log_sample_grid(accelerator, grid, step)
    finally:
        unwrapped.train(was_training)
        if ema is not None:
            ema.restore(unwrapped.parameters())
