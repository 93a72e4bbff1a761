"""Evaluate a run folder: generate samples, measure memorization and distribution alignment, write the report.

Follows the paper's protocol (arXiv 2601.21348, Sec. 5: 1,000 generated samples, L2 distance to the training set,
PCA + Wasserstein / Jensen-Shannon distances) and adds explicit memorization metrics (nearest-neighbour ratio,
Yoon et al. 2023; Gu et al. 2023). Everything a reader needs to recompute the numbers is kept beside them:
``samples.npz`` (generated samples in the model's value range) and ``metrics.json`` (settings, seed, N, timings).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import UNet2DModel

from .args import DataArguments, EvaluationArguments
from .data import load_training_data, samples_fingerprint
from .eval_history import BUDGET_KEY, sync_final_row
from .features import default_feature_cache, feature_report, load_feature_extractor, write_replication_figure
from .generation import estimate_generation_seconds, generate_samples, make_sampler, precision_label
from .metrics import (
    compute_metrics,
    heldout_metrics,
    nearest_neighbors,
    pca_distribution_distances,
    pca_project,
    reference_metrics,
)
from .models.unet_1d_memctl import UNet1DMemCtlModel
from .run_folder import (
    LOSS_HISTORY_PLOT,
    METRICS_NAME,
    NEAREST_NEIGHBORS_PLOT,
    NN_DISTANCES_PLOT,
    PCA_SCATTER_PLOT,
    PLOTS_DIR,
    REPLICATED_PAIRS_PLOT,
    SAMPLES_NAME,
    SIGNAL_OVERLAY_PLOT,
    UNET_DIR,
    RunFolder,
    check_run_ids,
    disk_full_guard,
    recover_interrupted_swaps,
    resolve_published_args,
    run_lock,
    staging_folder,
    swap_in,
    write_bytes_atomic,
)

__all__ = [
    "METRICS_SCHEMA_VERSION",
    "evaluate_run",
    "evaluate_model",
    "evaluation_settings",
    "measure_generated",
    "generate_samples",
    "load_run_pipeline",
    "read_training_config",
    "resolve_run_dir",
]

METRICS_SCHEMA_VERSION = 1
#: Plots an evaluation writes into ``plots/`` (training's preview grids there are not part of the report).
EVALUATION_PLOT_NAMES = (
    PCA_SCATTER_PLOT,
    NN_DISTANCES_PLOT,
    NEAREST_NEIGHBORS_PLOT,
    SIGNAL_OVERLAY_PLOT,
    LOSS_HISTORY_PLOT,
    REPLICATED_PAIRS_PLOT,
)

logger = logging.getLogger(__name__)


def read_training_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``training_config.json`` of a run folder (clear error when it is not a run)."""
    path = RunFolder(run_dir).training_config
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a diffusers-memctl run: {path.name} is missing")
    config = RunFolder(run_dir).read_training_config()
    if "args" not in config or "modality" not in config:
        raise ValueError(f"{path} is not a training config of diffusers-memctl (keys 'args' and 'modality' missing)")
    return config


def resolve_run_dir(run_dir: str | os.PathLike, cache_dir: str | None = None) -> Path:
    """A local run folder, or the snapshot of a Hub repository `user/name` holding one (clear error when neither)."""
    path = Path(run_dir).expanduser()
    if path.exists():
        return path
    if str(run_dir).count("/") == 1 and not str(run_dir).startswith((".", "/", "~")):
        # "user/name" may be a Hub repository or a mistyped relative folder: say both when neither exists.
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(str(run_dir), cache_dir=cache_dir))
        except Exception as error:  # offline, missing repository, no access: all mean "not found" here
            raise FileNotFoundError(
                f"run folder not found: {run_dir} is no local folder, and as a Hub repository it could not be "
                f"downloaded ({type(error).__name__}: {error})"
            ) from error
    raise FileNotFoundError(f"run folder not found: {run_dir}")


# diagnostics still imports the former private name.
_resolve_run_dir = resolve_run_dir


def load_run_pipeline(run_dir: str | os.PathLike, modality: str) -> tuple[torch.nn.Module, Any]:
    """The denoiser and the scheduler config of a saved run (``model_index.json`` + ``unet/`` + ``scheduler/``)."""
    run_dir = Path(run_dir)
    if not RunFolder(run_dir).has_pipeline:
        raise FileNotFoundError(
            f"{run_dir} holds no saved model (model_index.json and unet/ are missing); train it first or point at the "
            "run's output_dir"
        )
    if modality == "signal":
        unet = UNet1DMemCtlModel.from_pretrained(run_dir / UNET_DIR)
    else:
        unet = UNet2DModel.from_pretrained(run_dir / UNET_DIR)
    scheduler_config = RunFolder(run_dir).read_scheduler_config()
    return unet, scheduler_config


#: Training-set references of this process, by (data fingerprint, threshold): every cell of a sweep shares them.
_REFERENCE_CACHE: dict[tuple[str, float], dict[str, float]] = {}
_REFERENCE_CACHE_SIZE = 8
#: Above this many training samples the O(M^2) leave-one-out reference is skipped.
REFERENCE_MAX_SAMPLES = 20000


def training_reference(training_data: Any, memorization_threshold: float = 1 / 3) -> dict[str, float]:
    """The training set's own leave-one-out metrics ([`~diffusers_memctl.metrics.reference_metrics`]), computed once
    per process for each data fingerprint and threshold; `{}` for fewer than 3 or more than
    :data:`REFERENCE_MAX_SAMPLES` samples."""
    samples = training_data.samples
    if not 3 <= samples.shape[0] <= REFERENCE_MAX_SAMPLES:
        return {}
    fingerprint = (getattr(training_data, "info", None) or {}).get("fingerprint") or samples_fingerprint(samples)
    key = (fingerprint, float(memorization_threshold))
    if key not in _REFERENCE_CACHE:
        if len(_REFERENCE_CACHE) >= _REFERENCE_CACHE_SIZE:
            _REFERENCE_CACHE.pop(next(iter(_REFERENCE_CACHE)))
        _REFERENCE_CACHE[key] = reference_metrics(samples, memorization_threshold=memorization_threshold)
    return dict(_REFERENCE_CACHE[key])


#: Generated samples whose nearest training sample lies this many times farther than the training samples' own
#: nearest neighbours are "far from the data": an undertrained or broken model (pure noise scores ~3x on digits).
FAR_FROM_DATA_RATIO = 2.0


def sample_distance_check(metrics: dict[str, float], reference: dict[str, float]) -> dict[str, Any]:
    """Are the generated samples near the data at all? One line for the log, metrics.json, reports and the card.

    Compares the generated samples' median nearest-training distance with the training set's own leave-one-out
    median spacing. A model that copies sits below 1, one that generalises near 1, and one that generates noise far
    above (:data:`FAR_FROM_DATA_RATIO`); a low `memorized_fraction` means nothing in that last case.

    Args:
        metrics (`dict`): The run's metrics (`nn_l2_median`).
        reference (`dict`): The training set's leave-one-out values (`nn_l2_median`); may be empty.

    Returns:
        `dict`: `ratio` (or `None`), `far_from_data` (`bool` or `None`) and `line`.
    """
    generated, own = metrics.get("nn_l2_median"), (reference or {}).get("nn_l2_median")
    if generated is None or not own:
        line = "samples vs data: no leave-one-out reference for this training set size, so no distance check"
        return {"ratio": None, "far_from_data": None, "line": line}
    ratio = float(generated) / float(own)
    far = ratio > FAR_FROM_DATA_RATIO
    if far:
        verdict = (
            f"FAR from the data (more than {FAR_FROM_DATA_RATIO:g}x): the model is undertrained or broken, and its "
            "memorization metrics say nothing"
        )
    elif ratio <= 1:
        verdict = "near the data, as close to it as its own samples are to each other or closer"
    else:
        verdict = f"near the data, within {FAR_FROM_DATA_RATIO:g}x the spacing of its own samples"
    line = (
        f"samples vs data: median distance to the nearest training sample {generated:.3g}, the training set's own "
        f"leave-one-out spacing {own:.3g} (ratio {ratio:.2f}): {verdict}"
    )
    return {"ratio": ratio, "far_from_data": far, "line": line}


#: Former keyword names of :func:`evaluate_run`, by the `EvaluationArguments` field they set.
_OVERRIDE_ALIASES = {
    "num_samples": "eval_num_samples",
    "batch_size": "eval_batch_size",
    "sampler": "eval_sampler",
    "mixed_precision": "eval_mixed_precision",
    "seed": "eval_seed",
}


def evaluation_settings(settings: EvaluationArguments | None = None, **overrides: Any) -> EvaluationArguments:
    """`settings` (default: `EvaluationArguments()`) with `overrides` applied, by field name or by the former keyword
    names of :func:`evaluate_run` (``num_samples``, ``batch_size``, ``sampler``, ``mixed_precision``, ``seed``).

    Raises:
        `TypeError`: An override names no evaluation setting (one line listing the valid names).
    """
    fields = {f.name for f in dataclasses.fields(EvaluationArguments)}
    changes = {}
    for name, value in overrides.items():
        field_name = _OVERRIDE_ALIASES.get(name, name)
        if field_name not in fields:
            valid = sorted(fields | set(_OVERRIDE_ALIASES))
            raise TypeError(f"evaluate_run() got an unknown evaluation setting {name!r}; valid names: {valid}")
        changes[field_name] = value
    return dataclasses.replace(settings if settings is not None else EvaluationArguments(), **changes)


def evaluate_run(
    run_dir: str | os.PathLike,
    settings: EvaluationArguments | None = None,
    *,
    device: str | torch.device | None = None,
    make_plots: bool = True,
    progress: bool = True,
    training_data: Any = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Generate `settings.eval_num_samples` samples from a run, compute every metric against its training data, write
    the report.

    Runs four stages: load (config, model, training data), generate, measure, report. Writes ``samples.npz``,
    ``metrics.json`` and the evaluation's ``plots/*.png`` into the run folder all or nothing: they are built in a
    hidden staging folder and renamed into place together at the end, so a failure (a full disk included) leaves the
    previous report intact and no temporary file behind. The run folder is locked meanwhile (a training or another
    evaluation of the same folder makes this one fail at once).

    Args:
        run_dir (`str` or `os.PathLike`): A run folder (or a Hub id holding one).
        settings ([`~diffusers_memctl.args.EvaluationArguments`], *optional*): Every evaluation setting (samples,
            batch size, sampler and steps, precision, seed, PCA, JS bins, thresholds, feature extractor); defaults to
            `EvaluationArguments()` (the paper's N = 1000, DDIM 50 steps, K = 2).
        device (`str`, *optional*): Generation and metric device (default: CUDA when available).
        make_plots (`bool`, defaults to `True`): Write ``plots/*.png`` (needs matplotlib).
        progress (`bool`, defaults to `True`): Progress bars.
        training_data ([`~diffusers_memctl.data.TrainingData`], *optional*): Preloaded training data (the run's
            own: a training job passes what it trained on, so the data is loaded once per run).
        **overrides: Settings that replace those of `settings`, by field name (``eval_seed=1``) or by the former
            keyword names (``num_samples``, ``batch_size``, ``sampler``, ``mixed_precision``, ``seed``); an unknown
            name raises `TypeError`.

    Returns:
        `dict`: The content of ``metrics.json``.
    """
    settings = evaluation_settings(settings, **overrides)
    if settings.eval_num_samples < 2:
        raise ValueError(
            f"evaluation needs num_samples >= 2 for PCA and nearest-neighbour ratios, got {settings.eval_num_samples}"
        )
    run_path = resolve_run_dir(run_dir)
    with run_lock(run_path, flag="run folder"):
        # A report whose swap a kill interrupted is completed first: its metrics.json is never lost.
        recover_interrupted_swaps(run_path)
        # Old weights beside a new config (an interrupted --overwrite_output_dir) must not be measured as the new run.
        run_id = check_run_ids(run_path, (UNET_DIR,), action="evaluate")
        loaded = _load(run_path, settings, device, training_data)
        generated = _generate(loaded, settings, progress)
        measured = _measure(loaded, generated.samples, settings)
        report = _build_report(loaded, generated, measured, settings, run_id)
        _publish_report(run_path, report, generated.samples, loaded, settings, make_plots, measured.features)
        # metrics_history.jsonl (when the run evaluated along training) ends with this evaluation.
        sync_final_row(run_path, report)
    logger.info("%s: %s", run_path.name, report["sample_check"]["line"])
    return report


@dataclass
class _LoadedRun:
    """Stage 1 of :func:`evaluate_run`: the run's config, model and training data (nothing generated yet)."""

    path: Path
    config: dict[str, Any]
    modality: str
    unet: torch.nn.Module
    scheduler_config: Any
    device: torch.device
    training_data: Any
    extractor: Any = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def training(self) -> torch.Tensor:
        return self.training_data.samples


@dataclass
class _Generated:
    """Stage 2: the generated samples and the steps and precision that made them."""

    samples: torch.Tensor
    steps: int
    mixed_precision: str


@dataclass
class _Measured:
    """Stage 3: every metric, the training set's own reference values and the feature report (or `None`)."""

    metrics: dict[str, float]
    reference: dict[str, float]
    pca_components: int
    features: Any = None


def _load(run_path: Path, settings: EvaluationArguments, device: Any, training_data: Any) -> _LoadedRun:
    """Read the config, load the model (and the feature extractor, so a missing one fails before any generation),
    then the training data unless the caller holds it already."""
    config = read_training_config(run_path)
    modality = config["modality"]
    unet, scheduler_config = load_run_pipeline(run_path, modality)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    extractor = None
    if settings.feature_extractor:
        extractor = load_feature_extractor(
            settings.feature_extractor,
            modality=modality,
            device=device,
            replication_threshold=settings.replication_threshold,
        )
    unet.to(device).eval()
    tic = time.perf_counter()
    if training_data is None:
        data_fields = {f for f in DataArguments.__dataclass_fields__}
        # Local paths were published relative to the run folder.
        args = resolve_published_args(config["args"], run_path)
        training_data = load_training_data(DataArguments(**{k: v for k, v in args.items() if k in data_fields}))
    loaded = _LoadedRun(run_path, config, modality, unet, scheduler_config, device, training_data, extractor)
    loaded.timings["load_training_data_s"] = time.perf_counter() - tic
    return loaded


def _generate(loaded: _LoadedRun, settings: EvaluationArguments, progress: bool) -> _Generated:
    """Generate the samples (after logging what it will cost) and refuse non-finite or mis-shaped ones."""
    s, training = settings, loaded.training
    mixed_precision = s.eval_mixed_precision
    if mixed_precision is None:
        mixed_precision = loaded.config["args"].get("mixed_precision") or "no"
    _, steps = make_sampler(loaded.scheduler_config, s.eval_sampler, s.num_inference_steps)
    sample_shape = list(training.shape[1:])
    common = dict(batch_size=s.eval_batch_size, sample_shape=sample_shape, device=loaded.device)
    estimate = estimate_generation_seconds(
        loaded.unet,
        loaded.modality,
        num_samples=s.eval_num_samples,
        steps=steps,
        mixed_precision=mixed_precision,
        **common,
    )
    logger.info(
        "evaluating %s: %d samples, %s %d steps, batch %d, %s, %s; generation takes about %.0f s, then metrics "
        "against %d training samples",
        loaded.path.name,
        s.eval_num_samples,
        s.eval_sampler.upper(),
        steps,
        s.eval_batch_size,
        loaded.device,
        precision_label(mixed_precision),
        estimate,
        training.shape[0],
    )
    loaded.timings["generate_estimate_s"] = estimate
    tic = time.perf_counter()
    generated = generate_samples(
        loaded.unet,
        loaded.scheduler_config,
        loaded.modality,
        num_samples=s.eval_num_samples,
        sampler=s.eval_sampler,
        num_inference_steps=steps,
        seed=s.eval_seed,
        progress=progress,
        mixed_precision=mixed_precision,
        **common,
    )
    loaded.timings["generate_s"] = time.perf_counter() - tic
    if not torch.isfinite(generated).all():
        bad = int((~torch.isfinite(generated.flatten(1))).any(1).sum())
        raise ValueError(
            f"{bad} of {s.eval_num_samples} generated samples contain NaN or inf; the model in {loaded.path} diverged"
        )
    if tuple(generated.shape[1:]) != tuple(training.shape[1:]):
        raise ValueError(
            f"generated samples have shape {tuple(generated.shape[1:])} but the training data {tuple(training.shape[1:])}"
        )
    return _Generated(generated, steps, mixed_precision)


def _measure(loaded: _LoadedRun, generated: torch.Tensor, settings: EvaluationArguments) -> _Measured:
    """The three metric families: memorization and distribution (:func:`measure_generated`), the training set's own
    reference, and the feature-space report when a feature extractor is set."""
    s = settings
    pca_components = _usable_pca_components(s.pca_components, loaded.training)
    tic = time.perf_counter()
    metrics = measure_generated(
        generated,
        loaded.training_data,
        modality=loaded.modality,
        pca_components=pca_components,
        pca_fit_on=s.pca_fit_on,
        js_bins=s.js_bins,
        memorization_threshold=s.memorization_threshold,
        seed=s.eval_seed,
        device=loaded.device,
    )
    reference = training_reference(loaded.training_data, s.memorization_threshold)
    loaded.timings["metrics_s"] = time.perf_counter() - tic
    features = None
    if loaded.extractor is not None:
        tic = time.perf_counter()
        cache = default_feature_cache(s.feature_cache_dir)
        features = feature_report(
            generated, loaded.training, loaded.extractor, replication_threshold=s.replication_threshold, cache=cache
        )
        metrics.update(features.metrics)
        loaded.timings["features_s"] = time.perf_counter() - tic
    return _Measured(metrics, reference, pca_components, features)


def _build_report(
    loaded: _LoadedRun,
    generated: _Generated,
    measured: _Measured,
    settings: EvaluationArguments,
    run_id: str | None,
) -> dict[str, Any]:
    """Stage 4: the content of ``metrics.json`` (nothing written yet)."""
    s, config = settings, loaded.config
    heldout = getattr(loaded.training_data, "heldout", None)
    report = {"schema_version": METRICS_SCHEMA_VERSION, **({"run_id": run_id} if run_id is not None else {})}
    report.update(
        {
            "metrics": measured.metrics,
            "num_samples": s.eval_num_samples,
            "seed": s.eval_seed,
            "settings": {
                "num_inference_steps": generated.steps,
                "sampler": s.eval_sampler,
                "mixed_precision": generated.mixed_precision,
                "batch_size": s.eval_batch_size,
                "pca_components": measured.pca_components,
                "pca_components_requested": s.pca_components,
                "pca_fit_on": s.pca_fit_on,
                "js_bins": s.js_bins,
                "memorization_threshold": s.memorization_threshold,
                "num_training_samples": int(loaded.training.shape[0]),
                "num_heldout_samples": 0 if heldout is None else int(heldout.shape[0]),
            },
            "timings": loaded.timings,
            # The training set's own leave-one-out values: what fresh draws of the data would score (read metrics
            # against these).
            "reference": measured.reference,
            "sample_check": sample_distance_check(measured.metrics, measured.reference),
            # No run_dir: the report lives in the run folder, and a local path must not be published with it.
            "run": {
                "modality": loaded.modality,
                "sampler": config.get("sampler", {}),
            },
        }
    )
    if config.get(BUDGET_KEY):
        report[BUDGET_KEY] = config[BUDGET_KEY]
    if measured.features is not None:
        report["settings"]["features"] = measured.features.settings
        report["feature_reference"] = measured.features.reference
    return report


def _usable_pca_components(requested: int, training: torch.Tensor) -> int:
    """At most M - 1 components for M training samples (and at most D): a tiny training set still gets its report."""
    usable = max(1, min(requested, training.shape[0] - 1, int(np.prod(training.shape[1:]))))
    if usable < requested:
        logger.warning(
            "%d training samples: the PCA distances use %d component(s) instead of --pca_components %d",
            training.shape[0],
            usable,
            requested,
        )
    return usable


def measure_generated(
    generated: torch.Tensor,
    training_data: Any,
    *,
    modality: str,
    pca_components: int = 2,
    pca_fit_on: str = "train",
    js_bins: int = 50,
    memorization_threshold: float = 1 / 3,
    seed: int = 0,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Every metric of ``metrics.json`` (feature metrics aside) for `generated` against `training_data`.

    The one implementation behind the final report and the along-training evaluations
    (:mod:`diffusers_memctl.eval_history`), so both carry the same keys: memorization, PCA distances and, when the
    data holds a held-out split, the held-out quality.
    """
    training = training_data.samples
    metric_device = device if device is not None and torch.device(device).type == "cuda" else None
    metrics = compute_metrics(
        generated.to(metric_device) if metric_device else generated,
        training.to(metric_device) if metric_device else training,
        modality=modality,
        n_components=pca_components,
        bins=js_bins,
        memorization_threshold=memorization_threshold,
    )
    if pca_fit_on != "train":
        metrics.update(
            pca_distribution_distances(generated, training, pca_components, fit_on=pca_fit_on, bins=js_bins)
        )
    heldout = getattr(training_data, "heldout", None)
    if heldout is not None and heldout.shape[0] >= 2:
        metrics.update(heldout_metrics(generated, training, heldout, generator=torch.Generator().manual_seed(seed)))
    return metrics


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    scheduler_config: Any,
    training_data: Any,
    evaluation_args: EvaluationArguments,
    *,
    num_samples: int,
    mixed_precision: str = "no",
    device: torch.device | None = None,
) -> tuple[dict[str, float], float]:
    """Generate `num_samples` from `model` as it is and measure them as the final evaluation does.

    Uses the evaluation settings of `evaluation_args` (sampler, steps, seed, PCA, thresholds); feature-space metrics
    (``--feature_extractor``) are left to the final evaluation.

    Returns:
        `tuple`: The metrics and the seconds the evaluation took.
    """
    e = evaluation_args
    tic = time.perf_counter()
    generated = generate_samples(
        model,
        scheduler_config,
        training_data.modality,
        num_samples=num_samples,
        batch_size=e.eval_batch_size,
        sampler=e.eval_sampler,
        num_inference_steps=e.num_inference_steps,
        seed=e.eval_seed,
        sample_shape=list(training_data.samples.shape[1:]),
        progress=False,
        device=device,
        mixed_precision=e.eval_mixed_precision or mixed_precision or "no",
    )
    if not torch.isfinite(generated).all():
        raise ValueError("generated samples contain NaN or inf: the model diverged during training")
    metrics = measure_generated(
        generated,
        training_data,
        modality=training_data.modality,
        pca_components=e.pca_components,
        pca_fit_on=e.pca_fit_on,
        js_bins=e.js_bins,
        memorization_threshold=e.memorization_threshold,
        seed=e.eval_seed,
        device=device,
    )
    return metrics, time.perf_counter() - tic


#: Every file an evaluation writes into a run folder (plots of either modality included): replaced as one group.
REPORT_FILES = (SAMPLES_NAME, *(f"{PLOTS_DIR}/{name}" for name in EVALUATION_PLOT_NAMES), METRICS_NAME)


def _publish_report(
    run_path: Path,
    report: dict[str, Any],
    generated: torch.Tensor,
    loaded: _LoadedRun,
    settings: EvaluationArguments,
    make_plots: bool,
    features: Any = None,
) -> None:
    """Write samples, plots and metrics into a staging folder, then swap them in together (metrics.json last)."""
    staging = staging_folder(run_path, "report")
    try:
        with disk_full_guard(staging, "evaluation report", kept="the previous report is kept"):
            if make_plots:
                tic = time.perf_counter()
                write_evaluation_plots(
                    run_path,
                    generated,
                    loaded.training,
                    loaded.modality,
                    settings.pca_components,
                    settings.pca_fit_on,
                    settings.memorization_threshold,
                    plots_dir=staging / PLOTS_DIR,
                )
                if features is not None:
                    plot_path = staging / PLOTS_DIR / REPLICATED_PAIRS_PLOT
                    write_replication_figure(plot_path, generated, loaded.training, features)
                report["timings"]["plots_s"] = time.perf_counter() - tic
            write_bytes_atomic(staging / SAMPLES_NAME, lambda h: np.savez_compressed(h, samples=generated.numpy()))
            RunFolder(staging).write_metrics(report)
        swap_in(staging, run_path, REPORT_FILES, last=METRICS_NAME)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_evaluation_plots(
    run_dir: Path,
    generated: torch.Tensor,
    training: torch.Tensor,
    modality: str,
    pca_components: int = 2,
    pca_fit_on: str = "train",
    memorization_threshold: float = 1 / 3,
    plots_dir: Path | None = None,
) -> list[Path]:
    """PCA scatter (the paper's Fig. 4), nearest-neighbour distances, samples beside their nearest training sample
    (images) or overlays (signals), and the loss history, into `plots_dir` (default ``run_dir/plots``).

    File names are those of :data:`EVALUATION_PLOT_NAMES`."""
    # plotting sits in the reports layer above evaluation: imported here, where the figures are drawn.
    from .plotting import (
        plot_image_nn_grid,
        plot_loss_history,
        plot_nn_distance_histogram,
        plot_pca_scatter,
        plot_signal_overlay,
        save_figure,
    )

    plots = Path(plots_dir) if plots_dir is not None else RunFolder(run_dir).plots
    written = []
    # A PCA fitted on M training samples has M - 1 components: with fewer than 3, the scatter's two axes are fitted
    # on training and generated samples together.
    scatter_fit_on = pca_fit_on if training.shape[0] >= 3 else "both"
    gen_proj, train_proj, _ = pca_project(generated, training, max(2, pca_components), fit_on=scatter_fit_on)
    written.append(save_figure(plot_pca_scatter(gen_proj, train_proj, title=run_dir.name), plots / PCA_SCATTER_PLOT))
    distances, indices = nearest_neighbors(generated, training, k=2)
    distances, indices = distances.cpu().numpy(), indices.cpu().numpy()
    ratio = distances[:, 0] / np.maximum(distances[:, 1], 1e-300)
    figure = plot_nn_distance_histogram(distances[:, 0], memorization_ratio=ratio, threshold=memorization_threshold)
    written.append(save_figure(figure, plots / NN_DISTANCES_PLOT))
    if modality == "image":
        nearest = training[indices[:16, 0]].numpy()
        figure = plot_image_nn_grid(
            generated[:16].numpy(),
            nearest,
            distances=distances[:16, 0],
            ratios=ratio,
            threshold=memorization_threshold,
        )
        written.append(save_figure(figure, plots / NEAREST_NEIGHBORS_PLOT))
    else:
        written.append(
            save_figure(plot_signal_overlay(generated.numpy(), training.numpy()), plots / SIGNAL_OVERLAY_PLOT)
        )
    if RunFolder(run_dir).loss_history.is_file():
        records = RunFolder(run_dir).read_loss_history()  # tolerates a partial last line
        if records:
            written.append(save_figure(plot_loss_history(records), plots / LOSS_HISTORY_PLOT))
    return written
