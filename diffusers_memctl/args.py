"""Argument dataclasses shared by every script, and the parser generated from them.

One field per setting, with its help text next to it (as PEFT/TRL do); the field names are the flag names, the
scheduler config keys and the model-card metadata keys, so a setting has one name everywhere. Any script accepts
``--config FILE`` (JSON, or YAML when PyYAML is installed) whose keys are these names; flags on the command line win.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .run_folder import LOGS_DIR

__all__ = [
    "DataArguments",
    "DiagnosticsArguments",
    "EvaluationArguments",
    "HubArguments",
    "ModelArguments",
    "SamplingArguments",
    "SweepArguments",
    "TrainingArguments",
    "TrainingOptions",
    "flag_aliases",
    "flatten_arguments",
    "parse_arguments",
]


def _help(text: str, *, aliases: tuple[str, ...] = (), **kwargs: Any):
    """A field with its help text and, optionally, other flag names that set it.

    Aliases are the flag names of diffusers' ``examples/unconditional_image_generation/train_unconditional.py`` for
    the same setting (``--ddpm_num_steps`` for ``--num_train_timesteps``): one field, recorded under our name.
    """
    return field(metadata={"help": text, "aliases": aliases}, **kwargs)


@dataclass
class DataArguments:
    dataset_name: str | None = _help(
        "Preset ('digits' embedded default, 'pokemon', 'flowers', 'ecg5000'), a Hub dataset id, or a local path "
        "(imagefolder, parquet/arrow, save_to_disk folder, UCR file or folder).",
        default="digits",
    )
    train_data_dir: str | None = _help("Local image folder / dataset files (instead of dataset_name).", default=None)
    data_dir: str | None = _help(
        "Folder of the UCR files for signal presets (e.g. ../shared/data/ecg5000).", default=None
    )
    dataset_config_name: str | None = _help(
        "Configuration (subset) of a Hub dataset or of a local dataset folder in Hub format, passed to "
        "`datasets.load_dataset(name, dataset_config_name)` (as in diffusers' train_unconditional.py).",
        default=None,
    )
    dataset_split: str = _help("Split to train on ('train'; for UCR data also 'test' or 'all').", default="train")
    image_column: str | None = _help("Image column (auto-detected when omitted).", default=None)
    sequence_column: str | None = _help("Sequence column of a signal dataset (auto-detected).", default=None)
    classes: str | None = _help(
        "Comma-separated class labels to keep for UCR data (e.g. '1' = normal beats).", default=None
    )
    resolution: int | None = _help("Image resolution (default: 16 for digits, 64 otherwise).", default=None)
    center_crop: bool = _help("Center crop after resizing the short side (else resize to a square).", default=True)
    random_flip: bool = _help("Random horizontal flips of training images.", default=False)
    dataloader_num_workers: int = _help(
        "Workers that decode and resize the images (0: in the main process). Images are decoded once into memory "
        "before training, so these workers do all the data loading there is.",
        default=0,
    )
    max_train_samples: int | None = _help("Keep the first N training samples.", default=None)
    train_subset_size: int | None = _help(
        "Train on a seeded random subset of N samples (after max_train_samples); the indices are recorded in "
        "training_config.json and the rest is kept as held-out data for the evaluation.",
        default=None,
    )
    train_subset_seed: int = _help("Seed of the train_subset_size draw.", default=0)
    cache_dir: str | None = _help("Cache folder for Hub datasets and models.", default=None)


@dataclass
class ModelArguments:
    pretrained_model_name_or_path: str | None = _help(
        "Initialise from a diffusers pipeline/UNet folder or Hub id (e.g. anton-l/ddpm-ema-pokemon-64, or the "
        "output_dir of a pretraining run).",
        default=None,
    )
    model_config_name_or_path: str | None = _help(
        "Fresh model from a UNet config instead of --model_preset: a config.json file, a folder holding one (a "
        "pipeline folder's unet/ is found), or a Hub id (as in diffusers' train_unconditional.py).",
        default=None,
    )
    model_preset: str = _help("Fresh model size: 'tiny' (tests), 'small' (CPU), 'paper'.", default="small")
    num_train_timesteps: int = _help("DDPM training timesteps T.", default=1000, aliases=("ddpm_num_steps",))
    beta_schedule: str = _help(
        "Noise schedule (diffusers' DDPMScheduler names).", default="linear", aliases=("ddpm_beta_schedule",)
    )
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = _help("Model target.", default="epsilon")


@dataclass
class SamplingArguments:
    timestep_sampling: str = _help(
        "Training-timestep sampler: 'uniform' (vanilla DDPM), 'ci_normal' (the paper), or a peer: logit_normal, "
        "mode, cosmap, edm_lognormal, window, beta, loss_aware.",
        default="uniform",
    )
    ci_lower: float | None = _help("Lower end of the confidence interval (ci_normal).", default=None)
    ci_upper: float | None = _help("Upper end of the confidence interval (ci_normal).", default=None)
    ci_coverage: float = _help("Normal mass inside [ci_lower, ci_upper].", default=0.95)
    ci_tail: Literal["uniform", "renormalize"] = _help(
        "Tail mass outside [0, T): 'uniform' mixture (paper) or 'renormalize' (ablation).", default="uniform"
    )
    logit_mean: float | None = _help("logit_normal: mean before the sigmoid.", default=None)
    logit_std: float | None = _help("logit_normal: std before the sigmoid.", default=None)
    mode_scale: float | None = _help("mode: SD3 mode scale.", default=None)
    edm_p_mean: float | None = _help("edm_lognormal: mean of ln(sigma).", default=None)
    edm_p_std: float | None = _help("edm_lognormal: std of ln(sigma).", default=None)
    window_min: int | None = _help("window: first timestep.", default=None)
    window_max: int | None = _help("window: last timestep.", default=None)
    beta_alpha: float | None = _help("beta: first shape parameter.", default=None)
    beta_beta: float | None = _help("beta: second shape parameter.", default=None)
    loss_aware_history: int | None = _help("loss_aware: losses kept per timestep.", default=None)
    loss_aware_uniform_prob: float | None = _help("loss_aware: uniform mixing weight.", default=None)
    loss_weighting: Literal["none", "min_snr", "p2", "importance"] = _help(
        "Explicit per-sample loss weighting (independent of the sampler).", default="none"
    )
    snr_gamma: float = _help("min_snr: gamma.", default=5.0)
    p2_k: float = _help("p2: k.", default=1.0)
    p2_gamma: float = _help("p2: gamma.", default=1.0)
    method_name: str | None = _help(
        "Name of the study method these settings implement (set by sweeps with --methods; recorded only).",
        default=None,
    )


@dataclass
class TrainingArguments:
    output_dir: str = _help(
        "Run folder (pipeline, configs, loss history, checkpoints, metrics).", default="runs/memctl"
    )
    overwrite_output_dir: bool = _help("Allow reusing an output_dir that holds another run.", default=False)
    seed: int = _help("Seed of every random draw (weights, data order, noise, timesteps).", default=0)
    train_batch_size: int = _help("Batch size per process.", default=64)
    num_epochs: int = _help("Epochs (ignored when max_train_steps is set).", default=50)
    max_train_steps: int | None = _help("Total optimizer steps (overrides num_epochs).", default=None)
    gradient_accumulation_steps: int = _help("Micro-batches per optimizer step.", default=1)
    learning_rate: float = _help("AdamW learning rate.", default=1e-4)
    lr_scheduler: str = _help("diffusers.optimization schedule name.", default="cosine")
    lr_warmup_steps: int = _help("Linear warm-up steps.", default=500)
    adam_beta1: float = _help("AdamW beta1.", default=0.95)
    adam_beta2: float = _help("AdamW beta2.", default=0.999)
    adam_weight_decay: float = _help("AdamW weight decay.", default=1e-6)
    adam_epsilon: float = _help("AdamW epsilon.", default=1e-8)
    max_grad_norm: float = _help("Gradient clipping norm (0 disables).", default=1.0)
    use_ema: bool = _help("Keep an EMA of the weights and save it as the model.", default=True)
    ema_inv_gamma: float = _help("EMA warm-up inv_gamma.", default=1.0)
    ema_power: float = _help("EMA warm-up power.", default=0.75)
    ema_max_decay: float = _help("EMA maximum decay.", default=0.9999)
    mixed_precision: Literal["no", "fp16", "bf16"] = _help(
        "Mixed precision through accelerate: 'bf16' runs the model under torch.autocast on CPU and GPU (pays on "
        "CPUs with bf16 units for mid-sized and large models); weights, AdamW, EMA and checkpoints stay float32.",
        default="no",
    )
    checkpointing_steps: int = _help("Save an accelerate checkpoint every N steps (0 disables).", default=500)
    checkpoints_total_limit: int | None = _help("Keep at most N checkpoints.", default=None)
    resume_from_checkpoint: str | None = _help("'latest' or a checkpoint folder.", default=None)
    trust_checkpoint_pickles: bool = _help(
        "Load pickle files (custom_checkpoint_*.pkl, as diffusers-memctl 0.1 wrote) of a checkpoint you wrote yourself; "
        "they can run any code, so never for a folder others can write to.",
        default=False,
    )
    save_images_epochs: int = _help("Save a sample grid/overlay every N epochs (0 disables).", default=10)
    save_model_epochs: int = _help("Save the pipeline every N epochs (it is always saved at the end).", default=10)
    logger: Literal["tensorboard", "wandb", "none"] = _help(
        "Experiment tracker: scalars every --logging_steps, the sample grid every --save_images_epochs. 'wandb' "
        "needs the extra: pip install 'diffusers-memctl[wandb]' (WANDB_MODE=offline works without an account).",
        default="tensorboard",
    )
    logging_dir: str = _help(
        "Tracker folder, relative to --output_dir (TensorBoard event files; wandb's run folder under <it>/wandb).",
        default=LOGS_DIR,
    )
    logging_steps: int = _help("Log to the tracker every N steps.", default=10)
    channels_last: bool = _help("Use channels_last memory format for 2D models.", default=False)
    dry_run: bool = _help("Resolve, check and print the settings; write nothing, train nothing.", default=False)


@dataclass
class EvaluationArguments:
    eval_num_samples: int = _help("Samples generated for the metric report after training (0 disables).", default=1000)
    eval_batch_size: int = _help("Generation batch size.", default=250)
    eval_sampler: Literal["ddim", "ddpm"] = _help(
        "Sampler of the evaluation: 'ddim' (deterministic, 50 steps by default) or 'ddpm' (ancestral; with the "
        "default steps this is the paper's 1000-step setting, about 20x slower).",
        default="ddim",
    )
    num_inference_steps: int | None = _help(
        "Denoising steps of the evaluation and of the sample grids made while training; omitted = 50 for ddim, the "
        "training T for ddpm.",
        default=None,
        aliases=("ddpm_num_inference_steps",),
    )
    eval_mixed_precision: Literal["no", "bf16", "fp16"] | None = _help(
        "Precision of the model calls while generating; omitted = the run's --mixed_precision.", default=None
    )
    eval_seed: int = _help("Seed of the generated samples.", default=0)
    pca_components: int = _help("PCA components for the distribution metrics.", default=2)
    pca_fit_on: Literal["train", "both"] = _help(
        "Fit PCA on the training set or on training + generated.", default="train"
    )
    js_bins: int = _help("Histogram bins of the JS distances.", default=50)
    memorization_threshold: float = _help(
        "Nearest/second-nearest ratio below which a sample is memorized.", default=1 / 3
    )
    feature_extractor: str | None = _help(
        "Vision backbone for feature-space metrics (replication, FD, precision/recall, density/coverage): a "
        "transformers Hub id such as facebook/dinov2-small, or a local folder; off when omitted.",
        default=None,
    )
    replication_threshold: float = _help(
        "Cosine similarity at which a generated image counts as a replica of its most similar training image.",
        default=0.5,
    )
    feature_cache_dir: str | None = _help(
        "Folder for the training set's cached embeddings (shared by runs and shards); memory only when omitted.",
        default=None,
    )
    eval_every_steps: int = _help(
        "Evaluate the (EMA) model along training every N optimizer steps (and at step 0 when fine-tuning) into "
        "metrics_history.jsonl, with the evaluation settings above; 0 disables.",
        default=0,
    )
    eval_history_num_samples: int | None = _help(
        "Samples of the along-training evaluations (cheaper than --eval_num_samples); omitted = --eval_num_samples.",
        default=None,
    )
    max_memorized_fraction: float | None = _help(
        "Memorization budget: stop at the first along-training evaluation whose memorized_fraction exceeds F and "
        "save the last evaluated state at or under F (needs --eval_every_steps).",
        default=None,
    )


@dataclass
class HubArguments:
    push_to_hub: bool = _help("Push the run folder to the Hub (token: HF_TOKEN or `hf auth login`).", default=False)
    hub_model_id: str | None = _help("Repository id (user/name).", default=None)
    hub_private_repo: bool = _help("Create the repository as private.", default=False)
    push_checkpoints: bool = _help("Also push every checkpoint save (weights + configs only).", default=False)
    license: str = _help(
        "License of the model, an SPDX-style Hub license id written to the card.", default="apache-2.0"
    )


@dataclass
class SweepArguments:
    sweep_dir: str = _help("Folder of the sweep (one run folder per cell and seed).", default="runs/sweep")
    pretrained_run: str | None = _help(
        "Run folder of the uniform pretraining to fine-tune from (default: <sweep_dir>/pretrained, trained first "
        "with uniform sampling when --pretrain_epochs is given).",
        default=None,
    )
    pretrain_epochs: int | None = _help(
        "Epochs of the uniform pretraining run by the sweep itself (paper: 50).", default=None
    )
    pretrain_learning_rate: float | None = _help(
        "Learning rate of that pretraining (default: learning_rate).", default=None
    )
    pretrain_max_train_steps: int | None = _help(
        "Optimizer steps of that pretraining (instead of --pretrain_epochs: the same compute at every training-set "
        "size).",
        default=None,
    )
    grid_min: int = _help("Smallest interval end of the triangular grid.", default=0)
    grid_max: int | None = _help("Largest interval end (default: num_train_timesteps).", default=None)
    grid_step: int = _help("Grid spacing (paper: 100 -> 55 cells).", default=100)
    cells: str | None = _help("Explicit cells 'lo:hi,lo:hi' instead of the grid.", default=None)
    methods: str | None = _help(
        "Compare named methods instead of CI cells: comma-separated names of diffusers_memctl.methods.STUDY_METHODS "
        "(uniform, ci_late, ci_mid, ci_narrow_late, ci_early, logit_normal_late, min_snr, p2, importance_ci_late), "
        "'ci-LO-HI' for any interval, or 'all'.",
        default=None,
    )
    include_uniform: bool = _help("Add a uniform-sampling baseline cell.", default=True)
    seeds: str = _help("Comma-separated seeds; one run per cell and seed.", default="0")
    num_shards: int | None = _help("Split cells over N machines (default SLURM_ARRAY_TASK_COUNT or 1).", default=None)
    shard_index: int | None = _help("This machine's shard (default SLURM_ARRAY_TASK_ID or 0).", default=None)
    analyze_only: bool = _help("Only aggregate finished cells and write the analysis.", default=False)
    train_subset_sizes: str | None = _help(
        "Memorization study: comma-separated training-set sizes; each size x pretraining seed gets its own seeded "
        "subset, uniform pretraining and fine-tunes in <sweep_dir>/n<size>-p<seed>/.",
        default=None,
    )
    pretrain_eval_every_steps: int | None = _help(
        "--eval_every_steps of the pretraining run (its own trajectory); omitted = --eval_every_steps.", default=None
    )
    pretrain_seeds: str | None = _help(
        "Memorization study: comma-separated seeds of the independent pretrainings (the replicates); each also "
        "draws its own training subset.",
        default=None,
    )


@dataclass
class DiagnosticsArguments:
    """Settings of ``memctl-diagnose`` (per-timestep gradient profile, `diffusers_memctl.diagnostics`)."""

    num_bins: int = _help("Equal timestep bins over [0, T).", default=20)
    num_batches: int = _help("Seeded mini-batches per bin (>= 3; errors shrink as 1/sqrt(N)).", default=16)
    diagnose_batch_size: int | None = _help(
        "Samples per mini-batch (default: the run's train_batch_size, else 32; at most the number of samples).",
        default=None,
    )
    diagnose_seed: int = _help("Seed of the batches' data, noise and timesteps.", default=0)
    timestep_mode: str = _help(
        "'stratified': each sample gets a uniform timestep inside the bin (the bin's average gradient); "
        "'midpoint': every batch sits at the bin's midpoint timestep.",
        default="stratified",
    )
    per_sample_batches: int = _help(
        "Batches per bin whose per-sample gradients (torch.func) give the per-sample alignment (0 disables).",
        default=0,
    )
    samplers: str = _help(
        "Comma-separated samplers for the contribution shares: uniform, ci:LOWER-UPPER, importance:ci:LOWER-UPPER, "
        "a timestep_sampling name (logit_normal, mode, cosmap, edm_lognormal, beta), each optionally +min_snr or +p2.",
        default="uniform,ci:0-250,ci:500-1000,ci:750-1000,logit_normal,uniform+min_snr,uniform+p2",
    )


@dataclass
class TrainingOptions:
    """Every setting of one training run, grouped as the scripts parse them."""

    data: DataArguments = field(default_factory=DataArguments)
    model: ModelArguments = field(default_factory=ModelArguments)
    sampling: SamplingArguments = field(default_factory=SamplingArguments)
    training: TrainingArguments = field(default_factory=TrainingArguments)
    evaluation: EvaluationArguments = field(default_factory=EvaluationArguments)
    hub: HubArguments = field(default_factory=HubArguments)

    def to_dict(self) -> dict[str, Any]:
        """Flat ``{flag name: value}`` of every setting (the ``args`` of ``training_config.json``)."""
        return flatten_arguments(self.data, self.model, self.sampling, self.training, self.evaluation, self.hub)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingOptions:
        """Rebuild from a flat dict (unknown keys raise, missing keys take defaults)."""
        groups = {f.name: f.type for f in dataclasses.fields(cls)}
        known = {name: _GROUP_TYPES[name] for name in groups}
        field_owner = {f.name: group for group, t in known.items() for f in dataclasses.fields(t)}
        unknown = sorted(set(values) - set(field_owner))
        if unknown:
            raise ValueError(f"unknown settings {unknown}; valid names are the script flags (see --help)")
        kwargs = {group: {} for group in known}
        for key, value in values.items():
            kwargs[field_owner[key]][key] = value
        return cls(**{group: known[group](**kw) for group, kw in kwargs.items()})


_GROUP_TYPES = {
    "data": DataArguments,
    "model": ModelArguments,
    "sampling": SamplingArguments,
    "training": TrainingArguments,
    "evaluation": EvaluationArguments,
    "hub": HubArguments,
}


def flatten_arguments(*groups: Any) -> dict[str, Any]:
    """Merge argument dataclasses into one flat dict, refusing duplicate names."""
    flat: dict[str, Any] = {}
    for group in groups:
        for key, value in dataclasses.asdict(group).items():
            if key in flat:
                raise ValueError(f"setting {key!r} is defined twice")
            flat[key] = value
    return flat


# --------------------------------------------------------------------------------------------------------------
# Parser generated from the dataclasses
# --------------------------------------------------------------------------------------------------------------


def _str2bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def flag_aliases(group_types: list[type]) -> dict[str, str]:
    """``{alias: field name}`` of every aliased field of the given argument dataclasses."""
    return {
        alias: f.name
        for group in group_types
        for f in dataclasses.fields(group)
        for alias in f.metadata.get("aliases", ())
    }


def _add_field(parser: argparse.ArgumentParser, f: dataclasses.Field, hints: dict[str, Any]) -> argparse.Action:
    tp, _ = _unwrap_optional(hints[f.name])
    # The default is shown in --help but not set on the namespace (SUPPRESS), so --config values are not overridden.
    default = f.default if f.default is not dataclasses.MISSING else None
    aliases = f.metadata.get("aliases", ())
    also = f" Also --{', --'.join(aliases)} (diffusers' train_unconditional.py name)." if aliases else ""
    kwargs: dict[str, Any] = {
        "help": f"{f.metadata.get('help', '')} (default: {default}){also}",
        "default": argparse.SUPPRESS,
        "dest": f.name,
    }
    if tp is bool:
        kwargs.update(type=_str2bool, nargs="?", const=True)
    elif typing.get_origin(tp) is Literal:
        choices = list(typing.get_args(tp))
        kwargs.update(type=type(choices[0]), choices=choices)
    elif tp in (int, float, str):
        kwargs.update(type=tp)
    else:
        raise TypeError(f"unsupported argument type {tp!r} for {f.name}")
    return parser.add_argument(f"--{f.name}", *(f"--{alias}" for alias in aliases), **kwargs)


def _read_config_file(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--config file not found: {path}")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"--config {path} is not UTF-8 text (byte {err.start}); write it as UTF-8 JSON or YAML"
        ) from None
    if file.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as err:
            raise ValueError(
                f"reading {path} needs PyYAML: pip install 'diffusers-memctl[yaml]', or use a JSON config"
            ) from err
        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"--config {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"--config {path} is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}"
            ) from None
    if not isinstance(values, dict):
        raise ValueError(f"--config {path} must hold a mapping of setting names to values")
    # A training_config.json written by a run can be passed back as --config: its settings live under "args".
    if "args" in values and isinstance(values["args"], dict) and "schema_version" in values:
        from .run_folder import resolve_published_args

        # Its local paths are relative to the run folder, which holds the file.
        values = resolve_published_args(values["args"], file.parent)
    return values


class _ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose errors take at most three lines: a short usage, the error, a "did you mean" hint.

    argparse's own error prints the whole usage (over 70 lines for the training flags) before the one line that
    matters; ``--help`` still prints it all.
    """

    def error(self, message: str) -> typing.NoReturn:
        hint = ""
        if message.startswith("unrecognized arguments:"):
            options = [o for o in self._option_string_actions if o.startswith("--")]
            unknown = [token.split("=")[0] for token in message.split(":", 1)[1].split() if token.startswith("-")]
            hint = "".join(closest_names(token, options) for token in unknown[:1])
        self.exit(2, f"usage: {self.prog} [--help] [--config FILE] [options]\n{self.prog}: error: {message}{hint}\n")


def closest_names(name: str, candidates: typing.Iterable[str]) -> str:
    """`` (did you mean X?)`` for the candidate closest to `name`, or an empty string when none is close."""
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {match[0]}?)" if match else ""


def parse_arguments(
    group_types: list[type],
    argv: list[str] | None = None,
    *,
    description: str | None = None,
    extra: typing.Callable[[argparse.ArgumentParser], None] | None = None,
) -> tuple[list[Any], argparse.Namespace]:
    """Parse `argv` into instances of the given dataclasses (``--config FILE`` supplies defaults).

    Args:
        group_types (`list[type]`): Argument dataclasses, e.g. ``[DataArguments, ModelArguments]``.
        argv (`list[str]`, *optional*): Arguments (default: ``sys.argv[1:]``).
        description (`str`, *optional*): Parser description.
        extra (`Callable`, *optional*): Adds script-specific positional arguments to the parser.

    Returns:
        `tuple[list, argparse.Namespace]`: One instance per dataclass, and the namespace of the extra arguments.
    """
    # No prefix matching: `--num_epoch 5` must not pass for `--num_epochs` (argparse's default allow_abbrev=True).
    parser = _ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--config", default=None, help="JSON/YAML file of settings (flags override it).")
    parser.add_argument(
        "--debug", action="store_true", help="Show the full traceback of an error (or set MEMCTL_DEBUG=1)."
    )
    if extra is not None:
        extra(parser)
    owners: dict[str, type] = {}
    actions: dict[str, argparse.Action] = {}
    for group in group_types:
        hints = typing.get_type_hints(group)
        sub = parser.add_argument_group(group.__name__)
        for f in dataclasses.fields(group):
            if f.name in owners:
                raise ValueError(f"setting {f.name!r} is defined by {owners[f.name].__name__} and {group.__name__}")
            owners[f.name] = group
            actions[f.name] = _add_field(sub, f, hints)
    namespace = parser.parse_args(argv)
    values = _read_config_file(namespace.config) if namespace.config else {}
    values = _resolve_config_aliases(values, flag_aliases(group_types), namespace.config, parser)
    unknown = sorted(set(values) - set(owners))
    if unknown:
        parser.error(f"unknown settings {unknown} in --config {namespace.config}{closest_names(unknown[0], owners)}")
    # File values go through the flags' own conversion and choices: PyYAML reads `1e-4` as the string '1e-4', and a
    # string "false" must not count as true.
    for key, value in values.items():
        action = actions[key]
        if isinstance(value, str) and action.type is not None:
            try:
                value = values[key] = action.type(value)
            except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
                parser.error(f"--config {namespace.config}: invalid value {value!r} for {key}: {err}")
        if action.choices is not None and value is not None and value not in action.choices:
            parser.error(f"--config {namespace.config}: {key}={value!r} is not one of {list(action.choices)}")
    values.update({k: v for k, v in vars(namespace).items() if k in owners})
    instances = [
        group(**{f.name: values[f.name] for f in dataclasses.fields(group) if f.name in values})
        for group in group_types
    ]
    rest = argparse.Namespace(**{k: v for k, v in vars(namespace).items() if k not in owners})
    return instances, rest


def _resolve_config_aliases(
    values: dict[str, Any], aliases: dict[str, str], path: str | None, parser: argparse.ArgumentParser
) -> dict[str, Any]:
    """``--config`` keys under an alias (``ddpm_num_steps``) are the setting of the field they name."""
    resolved: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for key, value in values.items():
        name = aliases.get(key, key)
        if name in resolved:
            parser.error(f"--config {path}: {given_as[name]} and {key} set the same setting; keep one")
        resolved[name], given_as[name] = value, key
    return resolved


def env_int(name: str) -> int | None:
    """An integer environment variable (e.g. SLURM_ARRAY_TASK_ID), or `None` when unset."""
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None
