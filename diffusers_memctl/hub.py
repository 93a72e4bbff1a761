"""Model cards and Hub pushes for diffusers-memctl run folders and sweeps.

Cards are rendered from the Jinja templates in `model_cards/` (shipped as package data) through
`huggingface_hub.ModelCard.from_template`: YAML metadata with `library_name: diffusers`, tags, datasets, `base_model`
for fine-tunes, the sampler settings under one `memctl:` key (the same names as the scheduler config and the argument
dataclasses) and a `model-index` with one `EvalResult` per finite metric of `metrics.json`.

Pushes never upload pickles: `plan_hub_commit` walks a run folder and keeps only safetensors weights, JSON configs,
`loss_history.jsonl`, `samples.npz`, PNG plots and Markdown/CSV/text reports; `.bin`, `.pt`, `.pth`, `.pkl`,
`.pickle`, `.ckpt` and `.joblib` files are skipped with a warning, tensorboard logs and `checkpoints/` (unless asked)
are left out. `push_to_hub` then makes exactly one `HfApi.create_repo(..., exist_ok=True)` and one
`HfApi.create_commit` call. The token comes from the argument, else from huggingface_hub's own resolution (`HF_TOKEN`,
then the login cache); it is never written to a file, a card, a log or an error message.

Sweeps go to ONE repo: one folder per cell (each a complete run folder with its own card) plus the sweep report and
its card at the root. One repo keeps a sweep's cells, their shared report and their provenance together in one
commit. diffusers' `DiffusionPipeline.from_pretrained` has no `subfolder` argument (only single components such as
`UNet2DModel.from_pretrained(repo_id, subfolder="cell/unet")` do), so a cell loads through a partial download:

```python
local = huggingface_hub.snapshot_download(repo_id, allow_patterns=["cell/*"])
pipeline = DDPMPipeline.from_pretrained(f"{local}/cell")
```
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from .data import IMAGE_DATASET_PRESETS, SIGNAL_DATASET_PRESETS
from .distributed import describe_extensions, describe_layout
from .pipelines import REMOTE_PIPELINE_FILE, REMOTE_UNET_FILE
from .run_folder import (
    CARD_NAME,
    CHECKPOINTS_DIR,
    LOGS_DIR,
    METRICS_NAME,
    MODEL_INDEX_NAME,
    PLOTS_DIR,
    RUN_ID_KEY,
    TRAINING_CONFIG_NAME,
    UNET_DIR,
    RunFolder,
    check_run_ids,
    write_text_atomic,
)

__all__ = [
    "HubPushError",
    "PICKLE_SUFFIXES",
    "find_sweep_cells",
    "metrics_to_eval_results",
    "model_card_template_path",
    "plan_hub_commit",
    "push_sweep_to_hub",
    "push_to_hub",
    "render_model_card",
    "render_sweep_card",
    "write_model_card",
    "write_sweep_card",
]

logger = logging.getLogger(__name__)

PAPER_ARXIV_ID = "2601.21348"
PAPER_URL = f"https://arxiv.org/abs/{PAPER_ARXIV_ID}"
PAPER_CITATION = f"""@misc{{memctl2026,
  title         = {{Memorization Control in Diffusion Models from Denoising-centric Perspective}},
  year          = {{2026}},
  eprint        = {{{PAPER_ARXIV_ID}}},
  archivePrefix = {{arXiv}},
  url           = {{{PAPER_URL}}}
}}"""

MODEL_CARD_TEMPLATE = "memctl_model_card.md"
SWEEP_CARD_TEMPLATE = "memctl_sweep_card.md"

#: Keys of the `memctl:` metadata block: scheduler/argument names first, then the sampler summary.
MEMCTL_ARG_KEYS = ("timestep_sampling", "ci_lower", "ci_upper", "ci_coverage", "ci_tail")
MEMCTL_SAMPLER_KEYS = ("num_train_timesteps", "mu", "sigma", "p_tail")

#: File suffixes that may hold pickles; never uploaded.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib"})
_UPLOAD_SUFFIXES = frozenset({".safetensors", ".json", ".jsonl", ".npz", ".png", ".md", ".csv", ".txt"})
#: Python files a run folder publishes: the remote code that lets diffusers load a signal pipeline on its own.
_UPLOAD_CODE = frozenset({REMOTE_PIPELINE_FILE, REMOTE_UNET_FILE})
_EXCLUDED_DIRS = frozenset({LOGS_DIR, "tensorboard", "wandb", "__pycache__"})
_SECRET_ARG = re.compile(r"(^|_)(token|secret|password|passwd|api_key|credentials?)$", re.IGNORECASE)
_MAIN_METRICS = ("nn_l2_mean", "memorized_fraction", "mean_l2", "pca_frechet_distance")


class HubPushError(RuntimeError):
    """A push to the Hub failed; local files are untouched and `retry_code` repeats the call.

    Args:
        message (`str`): What failed, for which repo, and how to retry.
        repo_id (`str`): The target repo id.
        retry_code (`str`): Python code that repeats the push (never contains a token).
    """

    def __init__(self, message: str, *, repo_id: str, retry_code: str) -> None:
        super().__init__(message)
        self.repo_id = repo_id
        self.retry_code = retry_code


# ----------------------------------------------------------------------------------------------------------------
# Templates and small helpers
# ----------------------------------------------------------------------------------------------------------------
def model_card_template_path(name: str = MODEL_CARD_TEMPLATE) -> Path:
    """Path of a card template shipped with the package (`model_cards/` in a source checkout).

    Args:
        name (`str`, defaults to `"memctl_model_card.md"`): Template file name.

    Returns:
        `Path`: The template file.
    """
    here = Path(__file__).resolve().parent
    for folder in (here / "model_cards", here.parent / "model_cards"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(
        f"card template {name!r} not found in {here / 'model_cards'} (installed package) nor in "
        f"{here.parent / 'model_cards'} (source checkout); reinstall diffusers-memctl"
    )


def _looks_like_hub_id(value: Any) -> bool:
    """Whether `value` reads as a Hub repo id (`name` or `namespace/name`) rather than a local path."""
    if not isinstance(value, str) or not value or value.count("/") > 1 or "\\" in value:
        return False
    if value.startswith((".", "/", "~")) or os.path.exists(value):
        return False
    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _flat_metrics(metrics: Mapping[str, Any]) -> Mapping[str, Any]:
    """Accept both a `metrics.json` document and its inner `metrics` mapping."""
    inner = metrics.get("metrics")
    return inner if isinstance(inner, Mapping) else metrics


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _dataset_identity(args: Mapping[str, Any], modality: str) -> tuple[str, str, str | None]:
    """(human name, model-index dataset type, Hub dataset id or None) of a run's training data."""
    dataset_name = args.get("dataset_name")
    preset = str(dataset_name).lower() if dataset_name else None
    if preset in IMAGE_DATASET_PRESETS or preset in SIGNAL_DATASET_PRESETS:
        # A preset names its Hub dataset (pokemon -> huggan/pokemon); embedded and local presets (digits, ecg5000)
        # have none, and a preset name must never pass for a Hub dataset id.
        hub_id = IMAGE_DATASET_PRESETS.get(preset)
        return (hub_id or str(dataset_name)), (hub_id or "custom"), hub_id
    if _looks_like_hub_id(dataset_name):
        return dataset_name, dataset_name, dataset_name
    if dataset_name:
        return str(dataset_name), "custom", None
    data_dir = args.get("train_data_dir") or args.get("data_dir")
    if data_dir:
        return Path(str(data_dir)).name, "local-folder", None
    return f"custom {modality} data", "custom", None


def metrics_to_eval_results(
    metrics: Mapping[str, Any],
    *,
    dataset_name: str,
    dataset_type: str,
    model_name: str,
    task_type: str = "unconditional-image-generation",
) -> list[EvalResult]:
    """One `huggingface_hub.EvalResult` per finite numeric metric, in the order of `metrics`.

    Non-finite values (NaN, inf) and non-numbers are left out: YAML cannot carry NaN through the Hub's model-index.

    Args:
        metrics (`Mapping[str, Any]`):
            Flat `{metric name: value}` mapping, or a whole `metrics.json` document (its `metrics` entry is used).
        dataset_name (`str`): Human-readable name of the training data.
        dataset_type (`str`): Hub dataset id of the training data (or a short type such as `"custom"`).
        model_name (`str`): Name of the model in the model-index (usually the repo name).
        task_type (`str`, defaults to `"unconditional-image-generation"`): Task of the model-index entry.

    Returns:
        `list[EvalResult]`: Results with `metric_type` and `metric_name` equal to the metric name.
    """
    if not isinstance(metrics, Mapping):
        raise ValueError(f"metrics must be a mapping of metric name to value, got {type(metrics).__name__}")
    if not model_name:
        raise ValueError(f"model_name must be a non-empty string, got {model_name!r}")
    results = []
    for name, value in _flat_metrics(metrics).items():
        if not _finite_number(value):
            continue
        results.append(
            EvalResult(
                task_type=task_type,
                dataset_type=dataset_type,
                dataset_name=dataset_name,
                metric_type=str(name),
                metric_name=str(name),
                metric_value=float(value),
            )
        )
    return results


# ----------------------------------------------------------------------------------------------------------------
# Model cards
# ----------------------------------------------------------------------------------------------------------------
def _memctl_metadata(args: Mapping[str, Any], sampler: Mapping[str, Any]) -> dict[str, Any]:
    block = {key: args.get(key) for key in MEMCTL_ARG_KEYS}
    if block["timestep_sampling"] is None:
        block["timestep_sampling"] = sampler.get("name", "uniform")
    block.update({key: sampler.get(key) for key in MEMCTL_SAMPLER_KEYS})
    return {key: value for key, value in block.items() if value is not None}


def _plots(folder: Path) -> list[dict[str, str]]:
    plot_dir = folder / PLOTS_DIR
    if not plot_dir.is_dir():
        return []
    return [{"name": p.stem, "path": f"{PLOTS_DIR}/{p.name}"} for p in sorted(plot_dir.glob("*.png"))]


def render_model_card(
    run_dir: str | os.PathLike,
    *,
    repo_id: str | None = None,
    template_path: str | os.PathLike | None = None,
    subfolder: str | None = None,
) -> ModelCard:
    """Render the model card of a run folder from `training_config.json` and, if present, `metrics.json` and plots.

    Args:
        run_dir (`str` or `os.PathLike`): The run folder (output_dir of training).
        repo_id (`str`, *optional*): Hub repo the card is for; used in the title, loading code and model-index name.
        template_path (`str` or `os.PathLike`, *optional*):
            Jinja template; defaults to the packaged `memctl_model_card.md`.
        subfolder (`str`, *optional*):
            Folder of this run inside `repo_id` (sweep cells); the loading code then downloads that folder first.

    Returns:
        `ModelCard`: The card (not written; see [`write_model_card`]).
    """
    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    if not folder.has_training_config:
        raise FileNotFoundError(f"no {TRAINING_CONFIG_NAME} in run folder {run_dir}; train a model there first")
    config = folder.read_training_config()
    args = config.get("args") or {}
    sampler = config.get("sampler") or {}
    modality = config.get("modality", "image")
    if modality not in ("image", "signal"):
        raise ValueError(f"training_config.json modality must be 'image' or 'signal', got {modality!r}")
    metrics_doc = folder.read_metrics(missing_ok=True)
    metrics = dict(_flat_metrics(metrics_doc)) if metrics_doc else {}

    model_name = (repo_id.split("/")[-1] if repo_id else run_dir.resolve().name) + (
        f"-{subfolder.strip('/').replace('/', '-')}" if subfolder else ""
    )
    dataset_name, dataset_type, dataset_id = _dataset_identity(args, modality)
    base_model = args.get("pretrained_model_name_or_path")
    base_model = base_model if _looks_like_hub_id(base_model) else None
    task_type = "time-series-generation" if modality == "signal" else "unconditional-image-generation"
    eval_results = metrics_to_eval_results(
        metrics, dataset_name=dataset_name, dataset_type=dataset_type, model_name=model_name, task_type=task_type
    )
    card_data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="unconditional-image-generation" if modality == "image" else None,
        tags=[
            "time-series" if modality == "signal" else "unconditional-image-generation",
            "memorization-control",
            "ddpm",
            "diffusers-memctl",
        ],
        datasets=[dataset_id] if dataset_id else None,
        license=args.get("license") or "apache-2.0",
        base_model=base_model,
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
        memctl={
            **_memctl_metadata(args, sampler),
            **({RUN_ID_KEY: config[RUN_ID_KEY]} if config.get(RUN_ID_KEY) else {}),
        },
    )

    # Without a repository, the folder's own name: a card must not publish an absolute local path.
    source = json.dumps(repo_id or run_dir.resolve().name)
    load_note = ""
    if subfolder and repo_id:
        source = f'snapshot_download({json.dumps(repo_id)}, allow_patterns=["{subfolder}/*"]) + "/{subfolder}"'
        load_note = (
            f"This run is the folder `{subfolder}` of a sweep repo; diffusers pipelines cannot load a repo subfolder, "
            "so the snippet downloads that folder first."
        )
    sampler_rows = [(k, _format_value(v)) for k, v in _memctl_metadata(args, sampler).items()]
    sampler_rows += [(k, _format_value(v)) for k, v in sampler.items() if k not in MEMCTL_SAMPLER_KEYS + ("name",)]
    settings_rows = [(k, _format_value(v)) for k, v in sorted(args.items()) if not _SECRET_ARG.search(k)]
    data = config.get("data") or {}
    summary = []
    if "mu" in sampler and "sigma" in sampler:
        summary.append(f"mu = {sampler['mu']:.4g}, sigma = {sampler['sigma']:.4g}")
    if "p_tail" in sampler:
        summary.append(f"p_tail = {sampler['p_tail']:.3g}")
    dataset_description = f"`{dataset_name}`" + (
        f", {data['num_samples']} samples of shape {data.get('sample_shape')}" if "num_samples" in data else ""
    )
    versions = config.get("versions") or {}
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path or model_card_template_path(MODEL_CARD_TEMPLATE)),
        model_title=(f"{repo_id}/{subfolder}" if subfolder and repo_id else repo_id) or run_dir.resolve().name,
        modality=modality,
        paper_url=PAPER_URL,
        paper_arxiv_id=PAPER_ARXIV_ID,
        citation=PAPER_CITATION,
        timestep_sampling=_memctl_metadata(args, sampler).get("timestep_sampling", "uniform"),
        sampler_summary=", ".join(summary),
        dataset_description=dataset_description,
        layout_text=describe_layout(config.get("process_layout")),
        extensions_text=describe_extensions(config.get("extensions")),
        load_source=source,
        needs_snapshot=bool(subfolder and repo_id),
        load_note=load_note,
        sampler_rows=sampler_rows,
        settings_rows=settings_rows,
        versions_text=", ".join(f"{k} {v}" for k, v in sorted(versions.items())),
        run_id=config.get(RUN_ID_KEY),
        metric_rows=[(name, _format_value(value)) for name, value in metrics.items()],
        num_samples=metrics_doc.get("num_samples"),
        eval_seed=metrics_doc.get("seed"),
        sample_check=(metrics_doc.get("sample_check") or {}).get("line"),
        feature_settings=(metrics_doc.get("settings") or {}).get("features"),
        feature_reference=[(k, _format_value(v)) for k, v in (metrics_doc.get("feature_reference") or {}).items()],
        plots=_plots(run_dir),
        budget_message=(config.get("memorization_budget") or {}).get("message"),
    )


def _write_atomic(path: Path, text: str) -> Path:
    """Write `text` to `path` through a temporary file in the same folder and an atomic rename (honours the umask)."""
    return write_text_atomic(path, text)


def write_model_card(run_dir: str | os.PathLike, **kwargs: Any) -> Path:
    """Render the model card of `run_dir` and write it to `run_dir/README.md` atomically (temp file + rename).

    Args:
        run_dir (`str` or `os.PathLike`): The run folder.
        **kwargs: Keyword arguments of [`render_model_card`] (`repo_id`, `template_path`, `subfolder`).

    Returns:
        `Path`: The written `README.md`.
    """
    # The card shows the config's settings beside the metrics: both must be of one run.
    check_run_ids(run_dir, (UNET_DIR, METRICS_NAME), action="write the model card of")
    card = render_model_card(run_dir, **kwargs)
    return _write_atomic(RunFolder(run_dir).card, str(card))


def find_sweep_cells(sweep_dir: str | os.PathLike) -> list[Path]:
    """Run folders (folders holding `model_index.json` or `training_config.json`) below `sweep_dir`, sorted.

    Args:
        sweep_dir (`str` or `os.PathLike`): The sweep's output folder.

    Returns:
        `list[Path]`: The cells' folders (outermost run folders only; `checkpoints/` are not searched).
    """
    sweep_dir = Path(sweep_dir)
    cells: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(sweep_dir):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if d != CHECKPOINTS_DIR and not d.startswith("."))
        if here != sweep_dir and ({MODEL_INDEX_NAME, TRAINING_CONFIG_NAME} & set(filenames)):
            cells.append(here)
            dirnames[:] = []  # a run folder's subfolders (unet/, scheduler/) are not cells
    return sorted(cells)


def render_sweep_card(
    sweep_dir: str | os.PathLike, *, repo_id: str | None = None, template_path: str | os.PathLike | None = None
) -> ModelCard:
    """Render the root card of a sweep repo: a table of cells with their CI and main metrics, and how to load one.

    Args:
        sweep_dir (`str` or `os.PathLike`): The sweep's output folder (cells below it, report files at its root).
        repo_id (`str`, *optional*): Hub repo of the sweep.
        template_path (`str` or `os.PathLike`, *optional*): Jinja template; defaults to `memctl_sweep_card.md`.

    Returns:
        `ModelCard`: The card (not written; see [`write_sweep_card`]).
    """
    sweep_dir = Path(sweep_dir)
    cells = find_sweep_cells(sweep_dir)
    if not cells:
        raise FileNotFoundError(f"no run folders (with model_index.json or training_config.json) below {sweep_dir}")
    rows, modality, datasets, licenses = [], "image", set(), set()
    metric_names: list[str] = []
    for cell in cells:
        config = RunFolder(cell).read_training_config(missing_ok=True)
        args, sampler = config.get("args") or {}, config.get("sampler") or {}
        modality = config.get("modality", modality)
        dataset_id = _dataset_identity(args, modality)[2]
        if dataset_id:
            datasets.add(dataset_id)
        licenses.add(args.get("license") or "apache-2.0")
        metrics = dict(_flat_metrics(RunFolder(cell).read_metrics(missing_ok=True)))
        metric_names += [m for m in _MAIN_METRICS if m in metrics and m not in metric_names]
        rows.append((cell, args, sampler, metrics))
    table = [
        {
            "path": cell.relative_to(sweep_dir).as_posix(),
            "timestep_sampling": args.get("timestep_sampling", sampler.get("name", "")),
            "ci_lower": _format_value(args["ci_lower"]) if "ci_lower" in args else "",
            "ci_upper": _format_value(args["ci_upper"]) if "ci_upper" in args else "",
            "metric_values": [_format_value(metrics[m]) if m in metrics else "" for m in metric_names],
        }
        for cell, args, sampler, metrics in rows
    ]
    card_data = ModelCardData(
        library_name="diffusers",
        tags=[
            "time-series" if modality == "signal" else "unconditional-image-generation",
            "memorization-control",
            "ddpm",
            "diffusers-memctl",
        ],
        datasets=sorted(datasets) or None,
        # The cells of a sweep share their settings, the license included; mixed licenses read as "other".
        license=licenses.pop() if len(licenses) == 1 else "other",
    )
    if modality == "signal":
        # Each signal cell carries its remote code: plain diffusers loads it (the template adds the two arguments).
        pipeline_module, pipeline_class = "diffusers", "DiffusionPipeline"
    else:
        pipeline_module, pipeline_class = "diffusers", "DDPMPipeline"
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path or model_card_template_path(SWEEP_CARD_TEMPLATE)),
        sweep_title=repo_id or sweep_dir.resolve().name,
        modality=modality,
        paper_url=PAPER_URL,
        paper_arxiv_id=PAPER_ARXIV_ID,
        citation=PAPER_CITATION,
        cells=table,
        metric_names=metric_names,
        example_cell=table[0]["path"],
        repo_source=json.dumps(repo_id or "<repo_id>"),
        pipeline_module=pipeline_module,
        pipeline_class=pipeline_class,
        report_files=[op.path_in_repo for op in _plan_root_report(sweep_dir, cells) if op.path_in_repo != CARD_NAME],
        plots=_plots(sweep_dir),
    )


def write_sweep_card(sweep_dir: str | os.PathLike, **kwargs: Any) -> Path:
    """Render the sweep card and write it to `sweep_dir/README.md` atomically.

    Args:
        sweep_dir (`str` or `os.PathLike`): The sweep's output folder.
        **kwargs: Keyword arguments of [`render_sweep_card`].

    Returns:
        `Path`: The written `README.md`.
    """
    card = render_sweep_card(sweep_dir, **kwargs)
    return _write_atomic(Path(sweep_dir) / CARD_NAME, str(card))


# ----------------------------------------------------------------------------------------------------------------
# Pushes
# ----------------------------------------------------------------------------------------------------------------
def _is_remote_code(path: Path) -> bool:
    """A signal pipeline's remote-code copy, in its place beside the pipeline's `model_index.json`."""
    for relative in _UPLOAD_CODE:
        depth = len(PurePosixPath(relative).parts)
        pipeline_root = path.parents[depth - 1]
        if path.relative_to(pipeline_root).as_posix() == relative and (pipeline_root / MODEL_INDEX_NAME).is_file():
            return True
    return False


def _walk_uploadable(
    folder: Path, *, include_checkpoints: bool, skip_dirs: frozenset[Path] = frozenset()
) -> tuple[list[Path], list[Path]]:
    """(files to upload, pickle files refused) below `folder`, both sorted."""
    keep: list[Path] = []
    refused: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not d.startswith(".")
            and d not in _EXCLUDED_DIRS
            and (include_checkpoints or d != CHECKPOINTS_DIR)
            and here / d not in skip_dirs
        )
        for name in sorted(filenames):
            path = here / name
            suffix = path.suffix.lower()
            if suffix in PICKLE_SUFFIXES:
                refused.append(path)
            elif suffix in _UPLOAD_SUFFIXES and not name.startswith((".", "events.out.tfevents")) and path.is_file():
                keep.append(path)
            elif _is_remote_code(path):
                keep.append(path)
            else:
                logger.info("not uploading %s (not a weights/config/metrics/plot/report file)", path)
    return keep, refused


def _redact(data: Any) -> tuple[Any, list[str]]:
    """Copy of a JSON value with secret-looking string entries (`hub_token`, `password`, ...) set to null."""
    if isinstance(data, dict):
        out, found = {}, []
        for key, value in data.items():
            if isinstance(key, str) and _SECRET_ARG.search(key) and isinstance(value, str) and value:
                out[key] = None
                found.append(key)
            else:
                out[key], inner = _redact(value)
                found += inner
        return out, found
    if isinstance(data, list):
        pairs = [_redact(item) for item in data]
        return [p[0] for p in pairs], [k for p in pairs for k in p[1]]
    return data, []


def _upload_source(path: Path) -> Path | bytes:
    """The file itself, or for a JSON file holding secret-looking entries, redacted bytes (the file stays as is)."""
    if path.suffix.lower() != ".json":
        return path
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return path
    redacted, keys = _redact(data)
    if not keys:
        return path
    message = f"uploading {path} with secret-looking entries {sorted(set(keys))} set to null (local file unchanged)"
    logger.warning(message)
    warnings.warn(message, UserWarning, stacklevel=4)
    return (json.dumps(redacted, indent=2) + "\n").encode("utf-8")


def _operations(folder: Path, files: list[Path], path_in_repo: str) -> list[CommitOperationAdd]:
    prefix = PurePosixPath(path_in_repo.strip("/")) if path_in_repo.strip("/") else None
    ops = []
    for path in files:
        relative = path.relative_to(folder).as_posix()
        target = str(prefix / relative) if prefix else relative
        ops.append(CommitOperationAdd(path_in_repo=target, path_or_fileobj=_upload_source(path)))
    return sorted(ops, key=lambda op: op.path_in_repo)


def _warn_refused(refused: list[Path]) -> None:
    if refused:
        listing = ", ".join(str(p) for p in refused)
        message = (
            f"not uploading {len(refused)} file(s) that may contain pickles (never pushed; use safetensors): {listing}"
        )
        logger.warning(message)
        warnings.warn(message, UserWarning, stacklevel=3)


def plan_hub_commit(
    folder: str | os.PathLike, *, path_in_repo: str = "", include_checkpoints: bool = False
) -> list[CommitOperationAdd]:
    """The files of a run folder that a push uploads, as commit operations (pure: reads nothing but the listing).

    Kept: `*.safetensors`, `*.json` (pipeline configs, `training_config.json`, `metrics.json`), `*.jsonl`
    (`loss_history.jsonl`), `*.npz` (`samples.npz`), `*.png` (`plots/`), `*.md` (`README.md`), `*.csv`, `*.txt`.
    JSON files with secret-looking entries (`hub_token`, `*_secret`, `password`, `api_key`...) are uploaded with
    those values set to null (the local file is not changed). Refused with a warning: pickle formats (`.bin`, `.pt`, `.pth`, `.pkl`, `.pickle`, `.ckpt`, `.joblib`). Left out:
    hidden files and folders, tensorboard logs (`logs/`, `tensorboard/`, `events.out.tfevents.*`) and `checkpoints/`
    unless `include_checkpoints` (accelerate's optimizer/RNG states are pickles and stay local even then).

    Args:
        folder (`str` or `os.PathLike`): The run folder.
        path_in_repo (`str`, defaults to `""`): Folder inside the repo to upload to (repo root by default).
        include_checkpoints (`bool`, defaults to `False`): Also upload the safetensors/JSON files of `checkpoints/`.

    Returns:
        `list[CommitOperationAdd]`: One operation per file, sorted by path.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder to push {folder} does not exist or is not a directory")
    files, refused = _walk_uploadable(folder, include_checkpoints=include_checkpoints)
    _warn_refused(refused)
    if not files:
        raise ValueError(f"nothing to upload in {folder}: no safetensors/JSON/plot/report files found")
    return _operations(folder, files, path_in_repo)


def _plan_root_report(sweep_dir: Path, cells: list[Path]) -> list[CommitOperationAdd]:
    """Files of a sweep folder outside its cells (the sweep report, plots and root card)."""
    files, refused = _walk_uploadable(sweep_dir, include_checkpoints=False, skip_dirs=frozenset(cells))
    _warn_refused(refused)
    return _operations(sweep_dir, files, "")


def _retry_code(function: str, folder: Path, repo_id: str, options: Mapping[str, Any], defaults: Mapping) -> str:
    arguments = [repr(str(folder)), repr(repo_id)]
    arguments += [f"{k}={v!r}" for k, v in options.items() if v != defaults.get(k)]
    return f"from diffusers_memctl.hub import {function}; {function}({', '.join(arguments)})"


def _commit(
    function: str,
    folder: Path,
    repo_id: str,
    operations: list[CommitOperationAdd],
    *,
    token: str | None,
    options: Mapping[str, Any],
    default_message: str,
) -> str:
    """Create the repo if missing and commit `operations`; any failure becomes one [`HubPushError`].

    `options` are the keyword arguments the caller `function` was given (never the token): they set `private`,
    `commit_message`, `create_pr` and `endpoint` here, and make up the retry command quoted in the error.
    """
    private, create_pr, endpoint = options["private"], options["create_pr"], options["endpoint"]
    commit_message = options["commit_message"] or default_message
    retry_code = _retry_code(function, folder.resolve(), repo_id, options, _PUSH_DEFAULTS)
    api = HfApi(endpoint=endpoint, token=token)
    stage = f"creating the repo {repo_id!r}"
    try:
        api.create_repo(repo_id, exist_ok=True, private=private)
        stage = f"committing {len(operations)} file(s) to {repo_id!r}"
        info = api.create_commit(repo_id, operations, commit_message=commit_message, create_pr=create_pr)
    except Exception as error:  # every failure becomes one actionable error
        # The token never appears here: huggingface_hub's errors carry the URL and server message, not headers.
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise HubPushError(
            f"pushing {folder} to the Hub repo {repo_id!r} failed while {stage}: {type(error).__name__}: {reason}\n"
            f"Local files are untouched. Check the repo id and your token (argument, HF_TOKEN or `hf auth login`), "
            f'then retry with:\n  python -c "{retry_code}"',
            repo_id=repo_id,
            retry_code=retry_code,
        ) from error
    logger.info("pushed %d file(s) from %s to %s: %s", len(operations), folder, repo_id, info.commit_url)
    return str(info.commit_url)


def _check_repo_id(repo_id: str) -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"invalid Hub repo id {repo_id!r}: {error}") from error


_PUSH_DEFAULTS = {
    "private": False,
    "commit_message": None,
    "path_in_repo": "",
    "include_checkpoints": False,
    "create_pr": False,
    "endpoint": None,
}


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
    path_in_repo: str = "",
    include_checkpoints: bool = False,
    create_pr: bool = False,
    endpoint: str | None = None,
) -> str:
    """Push a run folder to a Hub model repo in one commit (writing its model card first if missing).

    Args:
        folder (`str` or `os.PathLike`): The run folder.
        repo_id (`str`): Target repo, `namespace/name`; created if missing (`exist_ok=True`).
        token (`str`, *optional*):
            Hub token; defaults to huggingface_hub's resolution (`HF_TOKEN`, then the login cache). Never stored.
        private (`bool`, defaults to `False`): Create the repo as private (ignored when it already exists).
        commit_message (`str`, *optional*): Commit title; defaults to "Upload diffusers-memctl run <folder name>".
        path_in_repo (`str`, defaults to `""`): Folder inside the repo to upload to.
        include_checkpoints (`bool`, defaults to `False`): Also upload `checkpoints/` (safetensors/JSON only).
        create_pr (`bool`, defaults to `False`): Open a pull request instead of committing to `main`.
        endpoint (`str`, *optional*): Hub endpoint; defaults to `HF_ENDPOINT` / https://huggingface.co.

    Returns:
        `str`: URL of the created commit.

    Raises:
        `HubPushError`: If creating the repo or the commit fails (message names the repo and the retry code).
    """
    folder = Path(folder)
    _check_repo_id(repo_id)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder to push {folder} does not exist or is not a directory")
    if not RunFolder(folder).has_card:
        if RunFolder(folder).has_training_config:
            write_model_card(folder, repo_id=repo_id, subfolder=path_in_repo.strip("/") or None)
        else:
            logger.warning("no README.md and no training_config.json in %s: pushing without a model card", folder)
    check_run_ids(folder, action="push")
    operations = plan_hub_commit(folder, path_in_repo=path_in_repo, include_checkpoints=include_checkpoints)
    options = {
        "private": private,
        "commit_message": commit_message,
        "path_in_repo": path_in_repo,
        "include_checkpoints": include_checkpoints,
        "create_pr": create_pr,
        "endpoint": endpoint,
    }
    return _commit(
        "push_to_hub",
        folder,
        repo_id,
        operations,
        token=token,
        options=options,
        default_message=f"Upload diffusers-memctl run {folder.resolve().name}",
    )


def push_sweep_to_hub(
    sweep_dir: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
    include_checkpoints: bool = False,
    create_pr: bool = False,
    endpoint: str | None = None,
) -> str:
    """Push a whole sweep to ONE Hub repo in one commit: a folder per cell plus the sweep report at the root.

    Missing cards are written first (each cell's card, with loading code for its subfolder, and the sweep card).

    Args:
        sweep_dir (`str` or `os.PathLike`): The sweep's output folder (cells are found by [`find_sweep_cells`]).
        repo_id (`str`): Target repo, `namespace/name`; created if missing.
        token (`str`, *optional*): Hub token; defaults to huggingface_hub's resolution. Never stored.
        private (`bool`, defaults to `False`): Create the repo as private.
        commit_message (`str`, *optional*): Commit title; defaults to "Upload diffusers-memctl sweep <folder name>".
        include_checkpoints (`bool`, defaults to `False`): Also upload the cells' `checkpoints/` (no pickles).
        create_pr (`bool`, defaults to `False`): Open a pull request instead of committing to `main`.
        endpoint (`str`, *optional*): Hub endpoint; defaults to `HF_ENDPOINT` / https://huggingface.co.

    Returns:
        `str`: URL of the created commit.

    Raises:
        `HubPushError`: If creating the repo or the commit fails.
    """
    sweep_dir = Path(sweep_dir)
    _check_repo_id(repo_id)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep folder {sweep_dir} does not exist or is not a directory")
    cells = find_sweep_cells(sweep_dir)
    if not cells:
        raise FileNotFoundError(f"no run folders (with model_index.json or training_config.json) below {sweep_dir}")
    operations: list[CommitOperationAdd] = []
    for cell in cells:
        subfolder = cell.relative_to(sweep_dir).as_posix()
        if not RunFolder(cell).has_card and RunFolder(cell).has_training_config:
            write_model_card(cell, repo_id=repo_id, subfolder=subfolder)
        check_run_ids(cell, action="push")
        operations += plan_hub_commit(cell, path_in_repo=subfolder, include_checkpoints=include_checkpoints)
    if not (sweep_dir / CARD_NAME).is_file():
        write_sweep_card(sweep_dir, repo_id=repo_id)
    operations += _plan_root_report(sweep_dir, cells)
    operations.sort(key=lambda op: op.path_in_repo)
    options = {
        "private": private,
        "commit_message": commit_message,
        "include_checkpoints": include_checkpoints,
        "create_pr": create_pr,
        "endpoint": endpoint,
    }
    return _commit(
        "push_sweep_to_hub",
        sweep_dir,
        repo_id,
        operations,
        token=token,
        options=options,
        default_message=f"Upload diffusers-memctl sweep {sweep_dir.resolve().name}",
    )
