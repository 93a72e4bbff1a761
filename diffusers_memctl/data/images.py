"""Image datasets for unconditional DDPM training: loading (presets, Hub ids, local files) and one-time preprocessing.

The paper ([Memorization Control in Diffusion Models from Denoising-centric Perspective](https://arxiv.org/abs/2601.21348))
trains 64x64 unconditional DDPMs on Pokemon and Flowers-102. The transforms follow diffusers'
`examples/unconditional_image_generation/train_unconditional.py` (bilinear resize of the short side, center crop,
random horizontal flip, scaling to [-1, 1]) but the deterministic part is done once, up front, into one tensor:
the training sets are small (hundreds to a few thousand images), so decoding JPEGs every epoch would dominate a CPU
run. Only the random flip stays per batch (`random_flip`, driven by the training loop's generator).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
import torch
from datasets.data_files import EmptyDatasetError
from diffusers.utils import logging
from PIL import Image as PILImage

from ..resources import check_fits_in_memory
from .ucr import SIGNAL_DATASET_PRESETS

logger = logging.get_logger(__name__)

IMAGE_DATASET_PRESETS: dict[str, str | None] = {
    "pokemon": "huggan/pokemon",
    "flowers": "huggan/flowers-102-categories",
    "digits": None,
}
"""Short dataset names. A value is the Hub id; `None` marks a dataset embedded in the package (offline)."""

IMAGE_COLUMN_NAMES: tuple[str, ...] = ("image", "img", "images")
"""Column names tried, in order, when no column has the `datasets.Image` feature."""

_GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_DATA_FILE_SUFFIXES = (".parquet", ".arrow")
_DECODE_CHUNK_SIZE = 256


@dataclass
class PreprocessedImages:
    """
    The decoded, resized training images of one dataset, held in memory.

    Args:
        samples (`torch.Tensor`):
            float32 tensor of shape `(N, C, R, R)` with values in [-1, 1]; `C` is 3 for "RGB" and 1 for "L".
        num_skipped (`int`):
            Number of rows whose image could not be decoded (left out of `samples`).
        skipped (`list[tuple[int, str]]`):
            `(row index, reason)` for every skipped row.
        color_mode (`str`):
            The resolved color mode, "RGB" or "L".
    """

    samples: torch.Tensor
    num_skipped: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)
    color_mode: str = "RGB"

    def __len__(self) -> int:
        return self.samples.shape[0]


def load_digits_dataset() -> datasets.Dataset:
    """
    The 1797 8x8 handwritten digits bundled with scikit-learn, as an image dataset (no download).

    Returns:
        `datasets.Dataset`: columns "image" (`datasets.Image`, PIL mode "L", the 0..16 intensities scaled to 0..255)
        and "label" (`datasets.ClassLabel` with names "0".."9").
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    images = [PILImage.fromarray(array, mode="L") for array in pixels]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(digit) for digit in range(10)])}
    )
    return datasets.Dataset.from_dict({"image": images, "label": digits.target.tolist()}, features=features)


def _is_save_to_disk_folder(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def _empty_dataset_error(source: Any, split: str) -> ValueError:
    return ValueError(f"The dataset {str(source)!r} (split {split!r}) is empty: there are no images to train on.")


def _no_configurations(path: Path, config_name: str | None) -> None:
    if config_name is not None:
        raise ValueError(
            f"--dataset_config_name {config_name!r}: {str(path)!r} has no configurations (only Hub datasets and "
            "local dataset folders in Hub format, with data files and a README.md `configs:` section, have them)"
        )


def _load_local(path: Path, split: str, cache_dir: str | None, config_name: str | None = None) -> datasets.Dataset:
    """Load a local path, turning the various ways `datasets` fails on empty data into one clear error."""
    try:
        return _load_local_unchecked(path, split, cache_dir, config_name)
    except EmptyDatasetError as error:  # an imagefolder or data directory without any data file
        raise _empty_dataset_error(path, split) from error
    except ValueError as error:
        if "corresponds to no data" in str(error):  # a parquet/arrow file with zero rows
            raise _empty_dataset_error(path, split) from error
        raise


def _load_local_unchecked(
    path: Path, split: str, cache_dir: str | None, config_name: str | None = None
) -> datasets.Dataset:
    """Load a local imagefolder, parquet/arrow file(s) or `save_to_disk` folder as one split."""
    if path.is_file():
        _no_configurations(path, config_name)
        suffix = path.suffix.lower()
        if suffix not in _DATA_FILE_SUFFIXES:
            raise ValueError(
                f"Cannot load the file {str(path)!r} as a dataset: expected one of {list(_DATA_FILE_SUFFIXES)}, "
                "or a directory (imagefolder, parquet/arrow files or a `save_to_disk` folder)."
            )
        return datasets.load_dataset(suffix[1:], data_files=str(path), split=split, cache_dir=cache_dir)
    if _is_save_to_disk_folder(path):
        _no_configurations(path, config_name)
        state = path / "state.json"
        if state.is_file() and not json.loads(state.read_text()).get("_data_files", [None]):
            raise _empty_dataset_error(path, split)  # `load_from_disk` fails with an IndexError on these
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"Split {split!r} not found in {str(path)!r}; available splits: {list(loaded)}.")
            return loaded[split]
        return loaded
    has_data_files = any(child.suffix.lower() in _DATA_FILE_SUFFIXES for child in path.rglob("*") if child.is_file())
    if has_data_files:
        # The packaged-module inference of `load_dataset` picks parquet/arrow and the split names from the file
        # names (`data/train-00000-of-00001.parquet`), exactly as for a Hub repository.
        return datasets.load_dataset(str(path), config_name, split=split, cache_dir=cache_dir)
    _no_configurations(path, config_name)
    return datasets.load_dataset("imagefolder", data_dir=str(path), split=split, cache_dir=cache_dir)


def _hub_is_offline() -> bool:
    return bool(getattr(datasets.config, "HF_HUB_OFFLINE", False) or datasets.config.HF_DATASETS_OFFLINE)


def _load_hub(
    repo_id: str, name: str, split: str, cache_dir: str | None, config_name: str | None = None
) -> datasets.Dataset:
    try:
        return datasets.load_dataset(repo_id, config_name, split=split, cache_dir=cache_dir)
    except Exception as error:  # the failure modes of `load_dataset` are many; all mean "this name did not load"
        offline = (
            " The Hub is offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set): only presets embedded in the "
            "package, local paths and Hub datasets already in the cache can be loaded."
            if _hub_is_offline()
            else ""
        )
        raise ValueError(
            f"Could not load the dataset {name!r}: it is not a local path and loading {repo_id!r} from the Hub "
            f"failed ({type(error).__name__}: {error}).{offline} Valid presets: "
            f"{sorted([*IMAGE_DATASET_PRESETS, *SIGNAL_DATASET_PRESETS])}; "
            "otherwise pass a Hub dataset id or an existing local path (imagefolder directory, parquet/arrow "
            "file(s) or a `save_to_disk` folder)."
        ) from error


def _resolve_image_column(dataset: datasets.Dataset, image_column: str | None) -> str:
    columns = list(dataset.column_names)
    if image_column is not None:
        if image_column not in columns:
            raise ValueError(f"image_column={image_column!r} is not a column of the dataset; columns: {columns}.")
        return image_column
    image_features = [name for name, feature in dataset.features.items() if isinstance(feature, datasets.Image)]
    if image_features:
        preferred = [name for name in IMAGE_COLUMN_NAMES if name in image_features]
        return preferred[0] if preferred else image_features[0]
    for name in IMAGE_COLUMN_NAMES:
        if name in columns:
            return name
    raise ValueError(
        f"Cannot find the image column: no column has the `datasets.Image` feature and none is named one of "
        f"{list(IMAGE_COLUMN_NAMES)}; columns: {columns}. Pass `image_column`."
    )


def load_image_dataset(
    dataset_name: str | None = None,
    train_data_dir: str | os.PathLike | None = None,
    *,
    split: str = "train",
    image_column: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    max_train_samples: int | None = None,
    config_name: str | None = None,
) -> tuple[datasets.Dataset, str]:
    """
    Load an image dataset and find its image column.

    Args:
        dataset_name (`str`, *optional*):
            A preset of `IMAGE_DATASET_PRESETS` ("pokemon", "flowers", "digits"), a Hub dataset id (loaded with
            `datasets.load_dataset`), or an existing local path (treated like `train_data_dir`). When neither
            `dataset_name` nor `train_data_dir` is given, the embedded "digits" dataset is used.
        train_data_dir (`str` or `os.PathLike`, *optional*):
            A local imagefolder directory (`load_dataset("imagefolder", data_dir=...)`), a parquet or arrow file, a
            directory of parquet/arrow files (splits inferred from the file names), or a `Dataset.save_to_disk`
            folder (`load_from_disk`).
        split (`str`, defaults to `"train"`):
            The split to load.
        image_column (`str`, *optional*):
            The column holding the images. Auto-detected when omitted: the column with the `datasets.Image` feature,
            else a column named "image", "img" or "images".
        cache_dir (`str` or `os.PathLike`, *optional*):
            The `datasets` cache directory.
        max_train_samples (`int`, *optional*):
            Keep only the first `max_train_samples` rows (deterministic; no shuffling).
        config_name (`str`, *optional*):
            The configuration of a Hub dataset or of a local dataset folder in Hub format (`--dataset_config_name`).

    Returns:
        `tuple[datasets.Dataset, str]`: the dataset and the name of its image column.
    """
    if dataset_name is not None and train_data_dir is not None:
        raise ValueError(
            f"Pass either dataset_name ({dataset_name!r}) or train_data_dir ({str(train_data_dir)!r}), not both."
        )
    if max_train_samples is not None and (isinstance(max_train_samples, bool) or max_train_samples < 1):
        raise ValueError(f"max_train_samples must be a positive integer or None, got {max_train_samples!r}.")
    cache_dir = None if cache_dir is None else str(cache_dir)

    if train_data_dir is not None:
        path = Path(train_data_dir).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"train_data_dir {str(train_data_dir)!r} does not exist; expected an imagefolder directory, "
                "parquet/arrow file(s) or a `save_to_disk` folder."
            )
        dataset = _load_local(path, split, cache_dir, config_name)
        source = str(train_data_dir)
    else:
        name = "digits" if dataset_name is None else dataset_name
        source = name
        if name in IMAGE_DATASET_PRESETS and IMAGE_DATASET_PRESETS[name] is None:
            if split != "train":
                raise ValueError(f"The embedded {name!r} dataset has only the 'train' split, got split={split!r}.")
            _no_configurations(Path(name), config_name)
            dataset = load_digits_dataset()
        elif name in IMAGE_DATASET_PRESETS:
            dataset = _load_hub(IMAGE_DATASET_PRESETS[name], name, split, cache_dir, config_name)
        elif Path(name).expanduser().exists():
            dataset = _load_local(Path(name).expanduser(), split, cache_dir, config_name)
        elif name.startswith((".", "/", "~")) or "\\" in name:
            raise FileNotFoundError(
                f"dataset_name {name!r} looks like a local path but does not exist; valid presets: "
                f"{sorted(IMAGE_DATASET_PRESETS)}, or a Hub dataset id."
            )
        else:
            dataset = _load_hub(name, name, split, cache_dir, config_name)

    if not isinstance(dataset, datasets.Dataset):
        raise ValueError(
            f"{source!r} loaded as {type(dataset).__name__}; expected a map-style `datasets.Dataset` (one split)."
        )
    if len(dataset) == 0:
        raise _empty_dataset_error(source, split)
    column = _resolve_image_column(dataset, image_column)
    if max_train_samples is not None and max_train_samples < len(dataset):
        dataset = dataset.select(range(max_train_samples))
    return dataset, column


def _open_image(value: Any) -> PILImage.Image:
    """Turn one stored image value (PIL image, `{"bytes", "path"}` dict, path, bytes or array) into a PIL image."""
    if isinstance(value, PILImage.Image):
        image = value
    elif isinstance(value, dict):
        if value.get("bytes") is not None:
            image = PILImage.open(io.BytesIO(value["bytes"]))
        elif value.get("path") is not None:
            image = PILImage.open(value["path"])
        else:
            raise ValueError("the image value has neither bytes nor a path")
    elif isinstance(value, (str, os.PathLike)):
        image = PILImage.open(value)
    elif isinstance(value, (bytes, bytearray)):
        image = PILImage.open(io.BytesIO(value))
    elif isinstance(value, np.ndarray):
        image = PILImage.fromarray(value)
    elif value is None:
        raise ValueError("the image value is missing (None)")
    else:
        raise ValueError(f"unsupported image value of type {type(value).__name__}")
    image.load()  # decode now, so that truncated or corrupt files fail here and are skipped
    return image


def _to_rgb(image: PILImage.Image) -> PILImage.Image:
    """Convert any PIL mode to RGB; transparency is composited over black (the artworks' background)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float64)
        scale = 255.0 / 65535.0 if (mode.startswith("I;16") or array.max(initial=0) > 255) else 1.0
        image = PILImage.fromarray(np.clip(np.rint(array * scale), 0, 255).astype(np.uint8), mode="L")
        mode = "L"
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = image.convert("RGBA")
        background = PILImage.new("RGBA", rgba.size, (0, 0, 0, 255))
        return PILImage.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _resize(image: PILImage.Image, resolution: int, center_crop: bool) -> PILImage.Image:
    """Bilinear, antialiased resize (short side to `resolution`) and center crop, as torchvision's Resize/CenterCrop."""
    if not center_crop:
        return image.resize((resolution, resolution), resample=PILImage.Resampling.BILINEAR)
    width, height = image.size
    if width <= height:
        new_size = (resolution, int(resolution * height / width))
    else:
        new_size = (int(resolution * width / height), resolution)
    if new_size != (width, height):
        image = image.resize(new_size, resample=PILImage.Resampling.BILINEAR)
    width, height = image.size
    left = int(round((width - resolution) / 2.0))
    top = int(round((height - resolution) / 2.0))
    return image.crop((left, top, left + resolution, top + resolution))


def _decode_one(value: Any, resolution: int, center_crop: bool) -> tuple[np.ndarray, bool]:
    image = _open_image(value)
    grayscale = image.mode in _GRAYSCALE_MODES
    array = np.asarray(_resize(_to_rgb(image), resolution, center_crop), dtype=np.uint8)
    return array, grayscale


def preprocess_images(
    dataset: datasets.Dataset | Sequence[Any],
    image_column: str | None,
    resolution: int,
    *,
    center_crop: bool = True,
    color_mode: Literal["auto", "RGB", "L"] = "auto",
    num_proc: int | None = None,
) -> PreprocessedImages:
    """
    Decode, convert, resize and scale every image once, into one tensor (the cache reused by every epoch).

    Each image is converted to RGB (palette and 16-bit images included; transparency, as in RGBA, LA or P with a
    transparent color, is composited over black, matching the black background of the Pokemon artworks, rather than
    dropping alpha and keeping whatever color the transparent pixels happen to store), its short side resized to
    `resolution` with PIL's antialiased bilinear filter, center cropped to `resolution` x `resolution`, and scaled
    from 0..255 to [-1, 1] (`x / 127.5 - 1`), as in diffusers' `train_unconditional.py`.

    Images that fail to decode (corrupt or truncated files, missing values) are skipped and counted instead of
    aborting a long preprocessing run: `num_skipped` and `skipped` report them and a warning is logged. If every
    image fails, a `ValueError` is raised.

    Args:
        dataset (`datasets.Dataset` or a sequence):
            The dataset, or a plain sequence of image values (then `image_column` is ignored).
        image_column (`str`, *optional*):
            The column holding the images (see `load_image_dataset`).
        resolution (`int`):
            Side of the square output images.
        center_crop (`bool`, defaults to `True`):
            Resize the short side then center crop; with `False`, resize directly to `resolution` x `resolution`
            (the aspect ratio is not kept).
        color_mode (`str`, defaults to `"auto"`):
            "RGB" (3 channels), "L" (1 channel, luminance) or "auto": "L" when every source image is grayscale
            (modes 1, L, LA, I, I;16, F: e.g. the digits) else "RGB".
        num_proc (`int`, *optional*):
            Number of worker threads for decoding (PIL releases the GIL while decoding and resizing). Defaults to 1.

    Returns:
        `PreprocessedImages`: the `(N, C, R, R)` float32 samples in [-1, 1] and the skipped rows.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive integer, got {resolution!r}.")
    if color_mode not in ("auto", "RGB", "L"):
        raise ValueError(f"color_mode must be one of ['auto', 'RGB', 'L'], got {color_mode!r}.")
    if num_proc is not None and (isinstance(num_proc, bool) or num_proc < 1):
        raise ValueError(f"num_proc must be a positive integer or None, got {num_proc!r}.")
    num_rows, chunk_values = _image_values(dataset, image_column)
    if num_rows == 0:
        raise ValueError("The dataset is empty: there are no images to preprocess.")
    pixels, kept, all_grayscale, skipped = _decode_all(num_rows, chunk_values, resolution, center_crop, num_proc)
    if not kept.any():
        raise ValueError(
            f"None of the {num_rows} images could be decoded; first failure: row {skipped[0][0]}: {skipped[0][1]}."
        )
    if skipped:
        logger.warning(
            f"Skipped {len(skipped)} of {num_rows} images that could not be decoded "
            f"(first: row {skipped[0][0]}: {skipped[0][1]})."
        )
    resolved_mode = ("L" if all_grayscale else "RGB") if color_mode == "auto" else color_mode
    samples = _scaled_samples(pixels[kept], all_grayscale, resolved_mode)
    return PreprocessedImages(samples=samples, num_skipped=len(skipped), skipped=skipped, color_mode=resolved_mode)


def _image_values(
    dataset: datasets.Dataset | Sequence[Any], image_column: str | None
) -> tuple[int, Callable[[int, int], list[Any]]]:
    """The number of rows and a reader of the undecoded image values of rows `start:stop`."""
    if isinstance(dataset, datasets.Dataset):
        if image_column not in dataset.column_names:
            raise ValueError(
                f"image_column={image_column!r} is not a column of the dataset; columns: {list(dataset.column_names)}."
            )
        dataset = dataset.with_format(None)  # plain Python values, whatever format the caller had set
        feature = dataset.features[image_column]
        if isinstance(feature, datasets.Image) and feature.decode:
            # Read the raw bytes/paths and decode ourselves, so that one corrupt file can be skipped.
            dataset = dataset.cast_column(image_column, datasets.Image(decode=False))

        def chunk_values(start: int, stop: int) -> list[Any]:
            return dataset[start:stop][image_column]

    else:

        def chunk_values(start: int, stop: int) -> list[Any]:
            return list(dataset[start:stop])

    return len(dataset), chunk_values


def _decode_all(
    num_rows: int,
    chunk_values: Callable[[int, int], list[Any]],
    resolution: int,
    center_crop: bool,
    num_proc: int | None,
) -> tuple[np.ndarray, np.ndarray, bool, list[tuple[int, str]]]:
    """Decode every row into one uint8 `(N, R, R, 3)` array, in chunks and on `num_proc` threads.

    Returns the pixels, which rows decoded, whether every decoded image was grayscale, and the skipped rows with why.
    """

    def safe_decode(item: tuple[int, Any]) -> tuple[int, np.ndarray | None, bool, str | None]:
        index, value = item
        try:
            array, grayscale = _decode_one(value, resolution, center_crop)
        except Exception as error:  # any decoding failure of any image library counts as "could not decode"
            return index, None, False, f"{type(error).__name__}: {error}"
        return index, array, grayscale, None

    # Checked before allocating: uint8 pixels, then the float32 samples and one float32 copy while converting.
    check_fits_in_memory(
        num_rows * resolution * resolution * 3 * (1 + 4 + 4),
        f"preprocessing {num_rows} images at resolution {resolution}",
        "lower --resolution or --max_train_samples",
    )
    pixels = np.empty((num_rows, resolution, resolution, 3), dtype=np.uint8)
    kept = np.zeros(num_rows, dtype=bool)
    all_grayscale = True
    skipped: list[tuple[int, str]] = []
    workers = num_proc or 1
    executor = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        for start in range(0, num_rows, _DECODE_CHUNK_SIZE):
            stop = min(start + _DECODE_CHUNK_SIZE, num_rows)
            items = list(enumerate(chunk_values(start, stop), start=start))
            results = executor.map(safe_decode, items) if executor is not None else map(safe_decode, items)
            for index, array, grayscale, reason in results:
                if array is None:
                    skipped.append((index, reason))
                    continue
                pixels[index] = array
                kept[index] = True
                all_grayscale = all_grayscale and grayscale
    finally:
        if executor is not None:
            executor.shutdown()
    return pixels, kept, all_grayscale, skipped


def _scaled_samples(pixels: np.ndarray, all_grayscale: bool, mode: str) -> torch.Tensor:
    """uint8 `(N, R, R, 3)` pixels as float32 `(N, C, R, R)` samples in [-1, 1], one channel for mode "L"."""
    if mode == "L":
        if all_grayscale:
            luma = pixels[..., 0]  # grayscale sources were replicated to RGB exactly: any channel is the image
        else:
            weights = np.asarray([0.299, 0.587, 0.114])  # ITU-R 601-2 luma, as PIL's convert("L")
            luma = np.clip(np.rint(pixels @ weights), 0, 255).astype(np.uint8)
        tensor = torch.from_numpy(np.ascontiguousarray(luma)).unsqueeze(1)
    else:
        tensor = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).contiguous()
    return tensor.to(torch.float32).div_(127.5).sub_(1.0)


def random_flip(batch: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """
    Flip each image of a batch horizontally with probability 0.5 (diffusers' `RandomHorizontalFlip`, per sample).

    Args:
        batch (`torch.Tensor`):
            Images of shape `(B, C, H, W)`, on any device.
        generator (`torch.Generator`, *optional*):
            Source of the coin flips; the mask is drawn on the generator's device, then moved to the batch's device,
            so a CPU generator gives the same flips for a batch on any device.

    Returns:
        `torch.Tensor`: a new tensor of the same shape, with the selected samples mirrored along the width.
    """
    if batch.ndim != 4:
        raise ValueError(f"random_flip expects a (B, C, H, W) batch, got shape {tuple(batch.shape)}.")
    device = generator.device if generator is not None else batch.device
    flip = torch.rand(batch.shape[0], generator=generator, device=device) < 0.5
    flip = flip.to(batch.device).view(-1, 1, 1, 1)
    return torch.where(flip, batch.flip(-1), batch)
