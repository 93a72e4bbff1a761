"""Every setting of a training job checked at once, before any data is loaded or any folder is created.

Messages name the flag as the user typed it (``--ci_lower``, not the sampler's internal ``t_lower``) and the value
given. :func:`validate_options` runs in ``--dry_run`` too, so a dry run answers "would this start?".
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

from .args import TrainingOptions
from .resources import check_fits_in_memory
from .run_folder import MODEL_CONFIG_NAME, UNET_DIR, RunFolder
from .tracking import check_tracker_installed

__all__ = ["validate_options"]

logger = logging.getLogger(__name__)


def _flag(name: str) -> str:
    return f"--{name}"


def _at_least(values: Any, names: tuple[str, ...], minimum: int, *, optional: bool = False) -> None:
    for name in names:
        value = getattr(values, name)
        if value is None and optional:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{_flag(name)} must be an integer >= {minimum}, got {value!r}")


def _in_range(values: Any, name: str, low: float, high: float, *, low_open: bool, high_open: bool) -> None:
    value = getattr(values, name)
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{_flag(name)} must lie in {interval}, got {value!r}")


def _validate_training(options: TrainingOptions) -> None:
    t = options.training
    _at_least(t, ("train_batch_size", "gradient_accumulation_steps", "logging_steps"), 1)
    _at_least(t, ("max_train_steps", "checkpoints_total_limit"), 1, optional=True)
    _at_least(t, ("checkpointing_steps", "save_images_epochs", "save_model_epochs", "lr_warmup_steps"), 0)
    if t.max_train_steps is None:
        _at_least(t, ("num_epochs",), 1)
    _in_range(t, "learning_rate", 0.0, math.inf, low_open=True, high_open=True)
    _in_range(t, "adam_beta1", 0.0, 1.0, low_open=False, high_open=True)
    _in_range(t, "adam_beta2", 0.0, 1.0, low_open=False, high_open=True)
    _in_range(t, "adam_epsilon", 0.0, math.inf, low_open=True, high_open=True)
    _in_range(t, "adam_weight_decay", 0.0, math.inf, low_open=False, high_open=True)
    _in_range(t, "max_grad_norm", 0.0, math.inf, low_open=False, high_open=True)
    _in_range(t, "ema_max_decay", 0.0, 1.0, low_open=False, high_open=False)
    from diffusers.optimization import SchedulerType

    names = [member.value for member in SchedulerType]
    if t.lr_scheduler not in names:
        raise ValueError(f"--lr_scheduler {t.lr_scheduler!r} is not a schedule; choose one of {names}")
    check_tracker_installed(t.logger)
    if Path(t.logging_dir).is_absolute() or ".." in Path(t.logging_dir).parts:
        raise ValueError(
            f"--logging_dir must be a folder inside --output_dir (a relative path), got {t.logging_dir!r}"
        )
    output_dir = Path(t.output_dir).expanduser()
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(
            f"--output_dir {t.output_dir} exists and is a file, not a folder; choose another --output_dir"
        )
    resume = t.resume_from_checkpoint
    if resume and resume != "latest" and not Path(resume).is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {resume}: no such checkpoint folder (or pass 'latest')")


def _validate_data_and_model(options: TrainingOptions) -> None:
    _at_least(options.data, ("resolution", "max_train_samples"), 1, optional=True)
    _at_least(options.data, ("dataloader_num_workers",), 0)
    _at_least(options.model, ("num_train_timesteps",), 2)
    m = options.model
    if m.model_config_name_or_path and m.pretrained_model_name_or_path:
        raise ValueError(
            f"--model_config_name_or_path {m.model_config_name_or_path} builds a fresh model and "
            f"--pretrained_model_name_or_path {m.pretrained_model_name_or_path} loads trained weights; pass one"
        )
    resolution = options.data.resolution
    if resolution is not None:
        # Before any data is read (in a dry run too): one batch of RGB float32 images is the least training holds;
        # the data loader checks the whole data set once it knows its size.
        batch = options.training.train_batch_size
        check_fits_in_memory(
            batch * 3 * resolution * resolution * 4,
            f"--resolution {resolution} with --train_batch_size {batch}: one batch of images",
            "lower --resolution",
        )
    _validate_pretrained_folder(options.model.pretrained_model_name_or_path)


def _validate_pretrained_folder(source: str | None) -> None:
    """A local --pretrained_model_name_or_path must hold a diffusers model (a pipeline with unet/, or a UNet)."""
    if not source:
        return
    path = Path(source).expanduser()
    if not path.exists():
        return  # a Hub id (or a missing folder, which the Hub lookup reports)
    if not path.is_dir():
        raise ValueError(f"--pretrained_model_name_or_path {source} is a file; give a run folder or a UNet folder")
    if not ((path / UNET_DIR / MODEL_CONFIG_NAME).is_file() or (path / MODEL_CONFIG_NAME).is_file()):
        raise FileNotFoundError(
            f"--pretrained_model_name_or_path {source} holds no diffusers model (neither unet/config.json nor "
            "config.json); give the output_dir of a finished run or a UNet folder"
        )


def _validate_evaluation(options: TrainingOptions) -> None:
    e = options.evaluation
    if isinstance(e.eval_num_samples, bool) or not isinstance(e.eval_num_samples, int) or e.eval_num_samples in (1,):
        raise ValueError(
            f"--eval_num_samples must be 0 (no evaluation) or >= 2 (PCA and nearest-neighbour ratios need two), "
            f"got {e.eval_num_samples!r}"
        )
    if e.eval_num_samples < 0:
        raise ValueError(f"--eval_num_samples must be 0 (no evaluation) or >= 2, got {e.eval_num_samples}")
    _at_least(e, ("eval_batch_size", "pca_components", "js_bins"), 1)
    _at_least(e, ("num_inference_steps",), 1, optional=True)
    _in_range(e, "memorization_threshold", 0.0, 1.0, low_open=True, high_open=False)
    _validate_eval_history(e)


def _validate_eval_history(e: Any) -> None:
    """``--eval_every_steps``, ``--eval_history_num_samples`` and the memorization budget."""
    _at_least(e, ("eval_every_steps",), 0)
    _at_least(e, ("eval_history_num_samples",), 2, optional=True)
    if e.eval_every_steps and e.eval_num_samples == 0:
        raise ValueError(
            f"--eval_every_steps {e.eval_every_steps} needs --eval_num_samples >= 2 (the last row of "
            "metrics_history.jsonl is the final evaluation)"
        )
    if e.max_memorized_fraction is not None:
        _in_range(e, "max_memorized_fraction", 0.0, 1.0, low_open=False, high_open=True)
        if not e.eval_every_steps:
            raise ValueError(
                f"--max_memorized_fraction {e.max_memorized_fraction} needs --eval_every_steps N (the budget is "
                "checked at the along-training evaluations)"
            )


def _sampler_flag_names() -> dict[str, str]:
    """Internal parameter names of every sampler -> the flag that sets them."""
    from .timestep_sampling import TIMESTEP_SAMPLERS

    names = {}
    for cls in TIMESTEP_SAMPLERS.values():
        for flag, internal in getattr(cls, "config_keys", {}).items():
            names[internal] = flag
            names[flag] = flag
    names["num_train_timesteps"] = "num_train_timesteps"
    return names


def _in_flag_names(message: str) -> str:
    """Rewrite a sampler's message so that it names flags (``t_lower`` -> ``--ci_lower``)."""
    for internal, flag in sorted(_sampler_flag_names().items(), key=lambda item: -len(item[0])):
        message = re.sub(rf"(?<![-\w]){re.escape(internal)}\b", _flag(flag), message)
    return message


def _num_train_timesteps(options: TrainingOptions) -> int:
    """T of the run: that of the pretrained model's scheduler when it has one (read from its config file only)."""
    source = options.model.pretrained_model_name_or_path
    if source:
        path = Path(source).expanduser()
        for candidate in (RunFolder(path).scheduler_config, RunFolder(path.parent).scheduler_config):
            if candidate.is_file():
                try:
                    return int(json.loads(candidate.read_text())["num_train_timesteps"])
                except (ValueError, KeyError, TypeError):
                    raise ValueError(f"{candidate} is not a scheduler config (num_train_timesteps missing)") from None
    return options.model.num_train_timesteps


def _warn_unused_sampler_settings(settings: dict[str, Any]) -> None:
    """Say so when a sampler setting is given for a sampler that is not chosen (e.g. --ci_lower with uniform sampling).

    A warning, not an error: a run's training_config.json reused as --config with another --timestep_sampling
    carries the old sampler's settings, and flags cannot unset them.
    """
    from .scheduling_memctl import MEMCTL_CONFIG_DEFAULTS
    from .timestep_sampling import TIMESTEP_SAMPLERS

    chosen = TIMESTEP_SAMPLERS.get(settings["timestep_sampling"])
    used = set(getattr(chosen, "config_keys", {}))
    ignored = [
        _flag(key)
        for key, value in settings.items()
        if key != "timestep_sampling" and value != MEMCTL_CONFIG_DEFAULTS[key] and key not in used
    ]
    if chosen is not None and ignored:
        logger.warning(
            "%s %s no effect with --timestep_sampling %s",
            ", ".join(ignored),
            "has" if len(ignored) == 1 else "have",
            settings["timestep_sampling"],
        )


def _validate_sampling(options: TrainingOptions) -> None:
    from .scheduling_memctl import MEMCTL_CONFIG_DEFAULTS, MemCtlDDPMScheduler

    s = options.sampling
    if s.ci_lower is not None and s.ci_upper is not None and s.ci_lower >= s.ci_upper:
        # Refused whatever the sampler: an inverted interval is a typo, not a setting to ignore.
        raise ValueError(
            f"--ci_lower must be smaller than --ci_upper, got --ci_lower={s.ci_lower} >= --ci_upper={s.ci_upper}"
        )
    if s.timestep_sampling == "ci_normal" and (s.ci_lower is None or s.ci_upper is None):
        raise ValueError(
            "--timestep_sampling ci_normal needs --ci_lower and --ci_upper (e.g. --ci_lower 600 --ci_upper 1000)"
        )
    if s.loss_weighting not in ("none", "min_snr", "p2", "importance"):
        raise ValueError(f"--loss_weighting {s.loss_weighting!r} is unknown; choose none, min_snr, p2 or importance")
    settings = {key: getattr(s, key) for key in MEMCTL_CONFIG_DEFAULTS}
    # Once per options object: the script, the job runner and the training loop all validate the same options.
    if not getattr(options, "_sampler_settings_checked", False):
        _warn_unused_sampler_settings(settings)
        object.__setattr__(options, "_sampler_settings_checked", True)
    try:
        MemCtlDDPMScheduler(num_train_timesteps=_num_train_timesteps(options), **settings).timestep_sampler  # noqa: B018
    except ValueError as error:
        raise ValueError(_in_flag_names(str(error))) from None


def validate_options(options: TrainingOptions) -> None:
    """Check every setting of a training job; raise `ValueError` naming the first bad flag and its value.

    Cheap and free of side effects (no data is read, no folder created), so scripts call it before anything else,
    ``--dry_run`` included.

    Args:
        options ([`TrainingOptions`]): The parsed settings.
    """
    _validate_training(options)
    _validate_data_and_model(options)
    _validate_sampling(options)
    _validate_evaluation(options)
    if not isinstance(options.hub.license, str) or not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", options.hub.license):
        raise ValueError(
            f"--license must be a Hub license id such as 'apache-2.0', 'mit' or 'other', got {options.hub.license!r}"
        )
    if options.hub.push_to_hub and not options.hub.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (user/name)")
