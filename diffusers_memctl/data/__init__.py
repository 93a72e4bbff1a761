"""Training data: image datasets (Hub ids, local folders, embedded digits) and UCR/ECG signals.

:func:`load_training_data` is the one entry point the training loop and the evaluation use: it turns the data
settings of a run into one in-memory tensor of preprocessed samples, so that evaluation compares generated samples
against exactly the data the run trained on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from .images import (
    IMAGE_DATASET_PRESETS,
    PreprocessedImages,
    load_digits_dataset,
    load_image_dataset,
    preprocess_images,
    random_flip,
)
from .ucr import SIGNAL_DATASET_PRESETS, UCRDataset, load_signal_dataset, load_ucr_dataset, load_ucr_file

__all__ = [
    "IMAGE_DATASET_PRESETS",
    "SIGNAL_DATASET_PRESETS",
    "PreprocessedImages",
    "TrainingData",
    "UCRDataset",
    "infer_modality",
    "load_digits_dataset",
    "load_image_dataset",
    "load_signal_dataset",
    "load_training_data",
    "load_ucr_dataset",
    "load_ucr_file",
    "preprocess_images",
    "random_flip",
    "samples_fingerprint",
    "select_training_subset",
]

_UCR_SUFFIXES = (".txt", ".tsv", ".csv", ".ts", ".arff")


@dataclass
class TrainingData:
    """Preprocessed training samples of one run.

    Args:
        samples (`torch.Tensor`): float32 ``(N, C, H, W)`` images in [-1, 1] or ``(N, C, L)`` signals.
        modality (`str`): ``"image"`` or ``"signal"``.
        info (`dict`): Provenance for ``training_config.json`` (source, counts, skipped images, fingerprint, the
            indices of a training subset).
        heldout (`torch.Tensor`, *optional*): With a training subset, the loaded samples left out of it (same
            preprocessing): data the model never saw, against which quality can be measured without rewarding copies.
    """

    samples: torch.Tensor
    modality: Literal["image", "signal"]
    info: dict[str, Any] = field(default_factory=dict)
    heldout: torch.Tensor | None = None

    @property
    def sample_shape(self) -> list[int]:
        return list(self.samples.shape[1:])


def infer_modality(dataset_name: str | None, data_dir: str | None = None) -> Literal["image", "signal"]:
    """``"signal"`` for signal presets, UCR files/folders and `data_dir`; ``"image"`` otherwise."""
    if data_dir is not None:
        return "signal"
    if dataset_name is None:
        return "image"
    if dataset_name.lower() in SIGNAL_DATASET_PRESETS:
        return "signal"
    path = Path(dataset_name).expanduser()
    if path.is_file() and path.suffix.lower() in _UCR_SUFFIXES:
        return "signal"
    if path.is_dir() and any(p.suffix.lower() in _UCR_SUFFIXES and "_TRAIN" in p.name.upper() for p in path.iterdir()):
        return "signal"
    return "image"


def _parse_classes(classes: str | list | None) -> list[int | str] | None:
    if classes is None or classes == "":
        return None
    items = classes.split(",") if isinstance(classes, str) else list(classes)
    parsed: list[int | str] = []
    for item in items:
        item = str(item).strip()
        try:
            parsed.append(int(item))
        except ValueError:
            parsed.append(item)
    return parsed


def default_resolution(dataset_name: str | None) -> int:
    """16 for the 8x8 digits (upsampled so a U-Net has room to downsample), 64 (the paper's size) otherwise."""
    return 16 if dataset_name in (None, "digits") else 64


def samples_fingerprint(samples: torch.Tensor) -> str:
    """SHA-256 of the preprocessed samples (shape, dtype and bytes): the data a run trained on, in one string."""
    tensor = samples.detach().to("cpu").contiguous()
    digest = hashlib.sha256(f"{list(tensor.shape)}|{tensor.dtype}|".encode())
    # A byte view, not a copy (and one that works for dtypes numpy lacks, e.g. bfloat16).
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data if tensor.numel() else b"")
    return digest.hexdigest()


def select_training_subset(num_available: int, size: int, seed: int) -> list[int]:
    """The sorted indices of a seeded random training subset of `size` out of `num_available` samples.

    The subset is the training-set-size axis of the memorization study (Gu et al. 2023, arXiv 2310.02664: whether a
    model memorizes depends on how many samples it must fit): a fixed seed gives the same subset on every machine and
    torch version that keeps `torch.randperm`'s CPU stream, and the indices are recorded in ``training_config.json``.

    Args:
        num_available (`int`): Number of loaded samples to choose from.
        size (`int`): Subset size, ``1 <= size <= num_available``.
        seed (`int`): Seed of the draw (a `torch.Generator` of its own; no global RNG).

    Returns:
        `list[int]`: `size` distinct indices in increasing order.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"--train_subset_size must be a positive integer, got {size!r}")
    if size > num_available:
        raise ValueError(f"--train_subset_size {size} is larger than the {num_available} samples loaded")
    generator = torch.Generator().manual_seed(int(seed))
    return sorted(torch.randperm(num_available, generator=generator)[:size].tolist())


def _apply_subset(data: TrainingData, data_args: Any) -> TrainingData:
    size = getattr(data_args, "train_subset_size", None)
    if size is not None:
        seed = int(getattr(data_args, "train_subset_seed", 0) or 0)
        total = data.samples.shape[0]
        indices = select_training_subset(total, size, seed)
        keep = torch.zeros(total, dtype=torch.bool)
        keep[indices] = True
        data.heldout = data.samples[~keep] if size < total else None
        data.samples = data.samples[keep]
        data.info.update(
            num_available=total,
            subset={"size": size, "seed": seed, "indices": indices, "num_heldout": total - size},
        )
    data.info["num_samples"] = int(data.samples.shape[0])
    data.info["fingerprint"] = samples_fingerprint(data.samples)
    return data


def load_training_data(data_args: Any) -> TrainingData:
    """Load and preprocess the training samples described by a :class:`~diffusers_memctl.args.DataArguments`.

    `max_train_samples` keeps the first N loaded samples; `train_subset_size` then draws a seeded random subset of
    those (`train_subset_seed`) and keeps the rest as `heldout`.

    Args:
        data_args: An object with the fields of `DataArguments` (a dataclass instance or a namespace).

    Returns:
        [`TrainingData`]
    """
    modality = infer_modality(data_args.dataset_name, data_args.data_dir)
    if modality == "signal":
        samples = load_signal_dataset(
            data_args.dataset_name,
            data_args.data_dir,
            split=data_args.dataset_split,
            classes=_parse_classes(data_args.classes),
            sequence_column=data_args.sequence_column,
            max_train_samples=data_args.max_train_samples,
            config_name=data_args.dataset_config_name,
        )
        if samples.shape[0] == 0:
            raise ValueError(f"signal dataset {data_args.dataset_name!r} with classes={data_args.classes!r} is empty")
        return _apply_subset(TrainingData(samples, "signal", {"num_samples": samples.shape[0]}), data_args)
    resolution = default_resolution(data_args.dataset_name) if data_args.resolution is None else data_args.resolution
    dataset, column = load_image_dataset(
        data_args.dataset_name if data_args.train_data_dir is None else None,
        data_args.train_data_dir,
        split=data_args.dataset_split,
        image_column=data_args.image_column,
        cache_dir=data_args.cache_dir,
        max_train_samples=data_args.max_train_samples,
        config_name=data_args.dataset_config_name,
    )
    workers = data_args.dataloader_num_workers
    processed = preprocess_images(
        dataset, column, resolution, center_crop=data_args.center_crop, num_proc=workers if workers > 0 else None
    )
    info = {
        "num_samples": len(processed.samples),
        "image_column": column,
        "resolution": resolution,
        "color_mode": processed.color_mode,
        "num_skipped": processed.num_skipped,
        "skipped": [list(item) if isinstance(item, tuple) else item for item in processed.skipped[:20]],
    }
    return _apply_subset(TrainingData(processed.samples, "image", info), data_args)
