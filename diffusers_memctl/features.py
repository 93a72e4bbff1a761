"""Image embeddings from transformers vision backbones, for feature-space memorization and quality metrics.

Pixel distances miss near-copies that differ by a shift, a crop or a colour change; the field measures replication
and quality in the feature space of self-supervised backbones (Somepalli et al. 2023, https://arxiv.org/abs/2212.03860;
Stein et al. 2023, https://arxiv.org/abs/2306.04675). [`FeatureExtractor`] loads any transformers vision backbone by
Hub id or local folder through `AutoModel` / `AutoImageProcessor` (default: DINOv2, `facebook/dinov2-small`) and
embeds images in batches; [`FeatureCache`] keeps the training set's embeddings per (data fingerprint, backbone,
revision, preprocessing), so a sweep embeds its training set once. The metrics themselves are pure functions in
`metrics.py` (`compute_feature_metrics`) and work on any embedding.

Pooling, stated per backbone (see [`FeatureExtractor.pooling`]):

- models with `get_image_features` (CLIP, SigLIP): the projected image embedding (`image_features`);
- models whose output has a `pooler_output` (DINOv2: the CLS token after the final layer norm, which is DINOv2's
  `x_norm_clstoken` that dgm-eval uses; `CLIPVisionModel`: the CLS token after `post_layernorm`): `pooler_output`;
- otherwise the first token of `last_hidden_state` (`cls_token`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import samples_fingerprint
from .run_folder import MODEL_CONFIG_NAME, write_bytes_atomic

__all__ = [
    "DEFAULT_FEATURE_EXTRACTOR",
    "BackboneSource",
    "FeatureCache",
    "FeatureExtractor",
    "FeatureReport",
    "check_feature_extractor",
    "default_feature_cache",
    "embed_training_set",
    "feature_report",
    "load_feature_extractor",
    "resolve_backbone",
    "samples_to_rgb_uint8",
    "write_replication_figure",
]

logger = logging.getLogger(__name__)

#: The documented default backbone (FD_DINOv2 of Stein et al. 2023 uses DINOv2 ViT-L/14; `-small` is the light one).
DEFAULT_FEATURE_EXTRACTOR = "facebook/dinov2-small"
# Bumped whenever the conversion of samples to processor input or the pooling rule changes: old cache entries die.
_PREPROCESSING_VERSION = 1
_BACKBONE_FILES = ("*.json", "*.safetensors", "*.txt", "*.model")
_TRUE = {"1", "ON", "YES", "TRUE"}


# ----------------------------------------------------------------------------------------------------------------
# Locating a backbone
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneSource:
    """Where a backbone's files are, and the revision that identifies their content."""

    name: str
    path: Path
    revision: str


def _hub_offline() -> bool:
    from huggingface_hub import constants

    env = any(os.environ.get(name, "").upper() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return env or bool(constants.HF_HUB_OFFLINE)


def _folder_hash(folder: Path) -> str:
    """sha256 over the names and bytes of the files that define a backbone (config, processor, weights)."""
    digest = hashlib.sha256()
    files = sorted(
        {p for pattern in ("*.json", "*.safetensors", "*.bin", "*.txt", "*.model") for p in folder.glob(pattern)}
    )
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()[:16]


def resolve_backbone(
    name_or_path: str, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None
) -> BackboneSource:
    """Find a backbone's files: a local folder, the local Hugging Face cache, or (when online) a download.

    Args:
        name_or_path (`str`): A folder holding `config.json`, `preprocessor_config.json` and the weights (as
            `save_pretrained` writes them), or a Hub id such as `facebook/dinov2-small`.
        revision (`str`, *optional*): Hub branch, tag or commit.
        cache_dir (`str`, *optional*): Hugging Face cache folder (default: the hub's).

    Returns:
        [`BackboneSource`]: The folder and its revision: the commit hash of a Hub snapshot, or `sha256:...` of a local
        folder's files (so retrained weights in the same folder never reuse stale cached embeddings).
    """
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ValueError(f"--feature_extractor must be a Hub id or a local folder, got {name_or_path!r}")
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        if not (folder / MODEL_CONFIG_NAME).is_file():
            raise FileNotFoundError(
                f"--feature_extractor {name_or_path}: the folder holds no config.json; save a transformers vision "
                "model and its image processor there with save_pretrained"
            )
        return BackboneSource(name_or_path, folder, _folder_hash(folder))
    if name_or_path.startswith((".", "/", "~")) or folder.exists() or name_or_path.count("/") > 1:
        raise FileNotFoundError(f"--feature_extractor {name_or_path}: no such folder")
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=True)
    except Exception as cached_error:  # not in the cache (or an invalid id): only a download can help
        hint = f"download it where the Hub is reachable (`hf download {name_or_path}`) or pass a local folder"
        if _hub_offline():
            raise ValueError(
                f"--feature_extractor {name_or_path!r} is not in the local Hugging Face cache and the Hub is offline "
                f"(HF_HUB_OFFLINE); {hint}"
            ) from cached_error
        try:
            path = snapshot_download(
                name_or_path, revision=revision, cache_dir=cache_dir, allow_patterns=list(_BACKBONE_FILES)
            )
        except Exception as error:
            raise ValueError(
                f"--feature_extractor {name_or_path!r} is not in the local Hugging Face cache and could not be "
                f"downloaded ({type(error).__name__}); {hint}"
            ) from error
    return BackboneSource(name_or_path, Path(path), Path(path).name)


# ----------------------------------------------------------------------------------------------------------------
# Embedding
# ----------------------------------------------------------------------------------------------------------------


def samples_to_rgb_uint8(samples: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Images `(N, C, H, W)` in `value_range` to `(N, H, W, 3)` uint8, as image processors expect them.

    Grayscale (C = 1) is repeated to three channels and an alpha channel (C = 4) is dropped; the processor then
    resizes small images to its input size (e.g. 224 for DINOv2 and CLIP) and normalises them.
    """
    if samples.ndim != 4 or samples.shape[1] not in (1, 3, 4):
        raise ValueError(
            f"feature extractors embed images of shape (N, C, H, W) with C in (1, 3, 4), got shape "
            f"{tuple(samples.shape)}; signals have no image backbone"
        )
    low, high = value_range
    x = (samples.detach().to("cpu", torch.float32) - low) / (high - low)
    x = (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    x = x[:, :3] if x.shape[1] == 4 else x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    return np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())


class FeatureExtractor:
    """A transformers vision backbone with its image processor, turning images into one embedding each.

    Args:
        model (`transformers.PreTrainedModel`): The backbone (e.g. `Dinov2Model`, `CLIPVisionModel`, `CLIPModel`).
        processor: Its image processor (`AutoImageProcessor`).
        source ([`BackboneSource`]): Name, folder and revision, recorded with the embeddings.
        device (`str` or `torch.device`, *optional*): Defaults to CUDA when available.
        dtype (`torch.dtype`, *optional*): Defaults to bfloat16 on GPUs that support it, else float32.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        source: BackboneSource,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype is None:
            bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
            dtype = torch.bfloat16 if bf16 else torch.float32
        self.dtype = dtype
        self.model = model.to(self.device, dtype).eval()
        self.processor = processor
        self.source = source
        self.forward_calls = 0

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = DEFAULT_FEATURE_EXTRACTOR,
        *,
        revision: str | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> FeatureExtractor:
        """Load a backbone by Hub id or local folder (see [`resolve_backbone`]); never downloads when offline."""
        return cls.from_source(resolve_backbone(name_or_path, revision=revision), device=device, dtype=dtype)

    @classmethod
    def from_source(
        cls, source: BackboneSource, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> FeatureExtractor:
        """Load the backbone of a resolved [`BackboneSource`]."""
        try:
            from transformers import AutoImageProcessor, AutoModel
        except ImportError as err:
            raise ImportError(
                "--feature_extractor needs transformers: pip install 'diffusers-memctl[features]'"
            ) from err
        if not (source.path / "preprocessor_config.json").is_file():
            raise FileNotFoundError(
                f"--feature_extractor {source.name}: no preprocessor_config.json in {source.path}; save the image "
                "processor beside the model (processor.save_pretrained(folder))"
            )
        model = AutoModel.from_pretrained(source.path, local_files_only=True)
        processor = AutoImageProcessor.from_pretrained(source.path, local_files_only=True)
        return cls(model, processor, source, device=device, dtype=dtype)

    @property
    def pooling(self) -> str:
        """`"image_features"` (projected, CLIP-like), `"pooler_output"` (DINOv2, CLIP vision tower) or `"cls_token"`."""
        if hasattr(self.model, "get_image_features"):
            return "image_features"
        return "pooler_output" if getattr(self.model.config, "model_type", "") != "vit" else "cls_token"

    @property
    def preprocessing(self) -> dict[str, Any]:
        """Everything that turns a sample into an embedding besides the weights (part of the cache key)."""
        processor = {k: v for k, v in self.processor.to_dict().items() if not k.startswith("_")}
        return {
            "version": _PREPROCESSING_VERSION,
            "input": "rgb_uint8 from [-1, 1]",
            "processor": processor,
            "model_class": type(self.model).__name__,
            "pooling": self.pooling,
            # bf16 and float32 embeddings differ slightly: never mix them between the two sets of one comparison.
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    def cache_key(self, fingerprint: str) -> str:
        """Key of one set's embeddings: (data fingerprint, backbone, revision, preprocessing)."""
        parts = [fingerprint, self.source.name, self.source.revision, json.dumps(self.preprocessing, sort_keys=True)]
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]

    def _forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        self.forward_calls += 1
        if self.pooling == "image_features":
            out = self.model.get_image_features(pixel_values=pixel_values)
            # transformers 5 returns a model output whose pooler_output holds the projected embedding.
            return out if isinstance(out, torch.Tensor) else out.pooler_output
        out = self.model(pixel_values=pixel_values)
        pooled = getattr(out, "pooler_output", None) if self.pooling == "pooler_output" else None
        return pooled if pooled is not None else out.last_hidden_state[:, 0]

    def embed(self, samples: torch.Tensor, *, batch_size: int = 64, normalize: bool = True) -> torch.Tensor:
        """Embed images `(N, C, H, W)` in [-1, 1] (the models' value range) in batches under `inference_mode`.

        Args:
            samples (`torch.Tensor`): Images; grayscale and small images are converted as the processor expects.
            batch_size (`int`, defaults to 64): Images per forward pass.
            normalize (`bool`, defaults to `True`): L2-normalise each embedding (cosine similarity = dot product).
                The evaluation keeps the raw pooled features (`normalize=False`) for the Frechet distance and
                precision/recall, as dgm-eval does, and normalises where it needs cosines.

        Returns:
            `torch.Tensor`: float32 embeddings `(N, F)` on the CPU.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        outputs = []
        for start in range(0, samples.shape[0], batch_size):
            images = samples_to_rgb_uint8(samples[start : start + batch_size])
            inputs = self.processor(images=list(images), return_tensors="pt", input_data_format="channels_last")
            pixel_values = inputs["pixel_values"].to(self.device, self.dtype)
            with torch.inference_mode():
                outputs.append(self._forward(pixel_values).float().cpu())
        features = torch.cat(outputs)
        return torch.nn.functional.normalize(features, dim=1) if normalize else features


def check_feature_extractor(
    name_or_path: str, modality: str, *, replication_threshold: float = 0.5, revision: str | None = None
) -> BackboneSource:
    """Fail at once (before training or generating) when the feature settings cannot work: signals, a threshold that
    is no cosine similarity, or backbone files that are not found."""
    if not isinstance(replication_threshold, (int, float)) or not -1.0 <= replication_threshold <= 1.0:
        raise ValueError(
            f"--replication_threshold must be a cosine similarity in [-1, 1], got {replication_threshold}"
        )
    if modality != "image":
        raise ValueError(
            f"--feature_extractor {name_or_path} embeds images, but this run's data are {modality}s; leave it unset"
        )
    return resolve_backbone(name_or_path, revision=revision)


_LOADED: OrderedDict[tuple, FeatureExtractor] = OrderedDict()


def load_feature_extractor(
    name_or_path: str,
    *,
    modality: str = "image",
    device: str | torch.device | None = None,
    revision: str | None = None,
    replication_threshold: float = 0.5,
) -> FeatureExtractor:
    """[`FeatureExtractor.from_pretrained`] after [`check_feature_extractor`], reusing the last loaded backbone when
    its files did not change (the cells of a sweep)."""
    source = check_feature_extractor(
        name_or_path, modality, replication_threshold=replication_threshold, revision=revision
    )
    key = (str(source.path), source.revision, str(device))
    if key not in _LOADED:
        _LOADED.clear()  # one backbone in memory at a time
        _LOADED[key] = FeatureExtractor.from_source(source, device=device)
    return _LOADED[key]


# ----------------------------------------------------------------------------------------------------------------
# Cache of training-set embeddings
# ----------------------------------------------------------------------------------------------------------------


class FeatureCache:
    """Embeddings by key, in memory (the last `max_entries`) and, with a `directory`, in safetensors files there.

    Args:
        directory (`str` or `os.PathLike`, *optional*): Folder for the files (shared by processes and shards).
        max_entries (`int`, defaults to 4): Sets kept in memory.
    """

    def __init__(self, directory: str | os.PathLike | None = None, max_entries: int = 4):
        self.directory = Path(directory) if directory is not None else None
        self.max_entries = max_entries
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()

    def get_or_compute(
        self, key: str, compute: Callable[[], torch.Tensor], metadata: dict[str, str] | None = None
    ) -> torch.Tensor:
        """The embeddings stored under `key`, computing and storing them first when absent."""
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key]
        path = self.directory / f"{key}.safetensors" if self.directory is not None else None
        if path is not None and path.is_file():
            from safetensors.torch import load_file

            value = load_file(path)["embeddings"]
        else:
            value = compute()
            if path is not None:
                from safetensors.torch import save

                payload = save({"embeddings": value.contiguous()}, metadata=metadata)
                write_bytes_atomic(path, lambda handle: handle.write(payload))
        self._memory[key] = value
        while len(self._memory) > self.max_entries:
            self._memory.popitem(last=False)
        return value


_DEFAULT_CACHE = FeatureCache()
_FOLDER_CACHES: dict[Path, FeatureCache] = {}


def default_feature_cache(directory: str | os.PathLike | None = None) -> FeatureCache:
    """The process's in-memory cache, or the one backed by `directory` (its files shared between processes)."""
    if directory is None:
        return _DEFAULT_CACHE
    folder = Path(directory).expanduser().resolve()
    return _FOLDER_CACHES.setdefault(folder, FeatureCache(folder))


def embed_training_set(
    extractor: FeatureExtractor, training: torch.Tensor, *, cache: FeatureCache | None = None, batch_size: int = 64
) -> torch.Tensor:
    """Raw (not normalised) embeddings of the training set, computed once per (data, backbone, revision,
    preprocessing) and then served from `cache` (default: the process's in-memory cache)."""
    cache = cache if cache is not None else _DEFAULT_CACHE
    fingerprint = samples_fingerprint(training)
    metadata = {"backbone": extractor.source.name, "revision": extractor.source.revision, "data": fingerprint}
    return cache.get_or_compute(
        extractor.cache_key(fingerprint),
        lambda: extractor.embed(training, batch_size=batch_size, normalize=False),
        metadata,
    )


# ----------------------------------------------------------------------------------------------------------------
# The evaluation's feature section
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class FeatureReport:
    """Feature metrics of one evaluation, their training-set reference values and the replication matches."""

    metrics: dict[str, float]
    reference: dict[str, float]
    settings: dict[str, Any]
    similarity: np.ndarray
    index: np.ndarray


def feature_report(
    generated: torch.Tensor,
    training: torch.Tensor,
    extractor: FeatureExtractor,
    *,
    replication_threshold: float = 0.5,
    batch_size: int = 64,
    cache: FeatureCache | None = None,
) -> FeatureReport:
    """Embed both sets (the training set through the cache) and compute every feature metric.

    Args:
        generated (`torch.Tensor`): Generated images `(N, C, H, W)` in [-1, 1].
        training (`torch.Tensor`): Training images, same layout.
        extractor ([`FeatureExtractor`]): The backbone.
        replication_threshold (`float`, defaults to 0.5): Cosine-similarity threshold (Somepalli et al. 2023).
        batch_size (`int`, defaults to 64): Images per forward pass.
        cache ([`FeatureCache`], *optional*): Cache of training embeddings.

    Returns:
        [`FeatureReport`]
    """
    from .metrics import compute_feature_metrics, feature_reference_metrics, replication_score

    train_features = embed_training_set(extractor, training, cache=cache, batch_size=batch_size)
    gen_features = extractor.embed(generated, batch_size=batch_size, normalize=False)
    metrics = compute_feature_metrics(gen_features, train_features, replication_threshold=replication_threshold)
    reference = feature_reference_metrics(train_features, replication_threshold=replication_threshold)
    matches = replication_score(gen_features, train_features, replication_threshold)
    settings = {
        "feature_extractor": extractor.source.name,
        "revision": extractor.source.revision,
        "pooling": extractor.pooling,
        "feature_dim": int(gen_features.shape[1]),
        "replication_threshold": replication_threshold,
        "precision_k": 3,
        "density_k": 5,
        "dtype": str(extractor.dtype).removeprefix("torch."),
    }
    return FeatureReport(metrics, reference, settings, matches.similarity, matches.index)


def write_replication_figure(
    path: str | os.PathLike,
    generated: torch.Tensor,
    training: torch.Tensor,
    report: FeatureReport,
    *,
    top: int = 8,
) -> Path:
    """The `top` generated images of highest similarity, each beside its most similar training image."""
    from .plotting import plot_replicated_pairs, save_figure

    order = np.argsort(-report.similarity, kind="stable")[:top]
    figure = plot_replicated_pairs(
        generated[order].numpy(),
        training[report.index[order]].numpy(),
        report.similarity[order],
        threshold=report.settings["replication_threshold"],
        train_indices=report.index[order],
    )
    return save_figure(figure, Path(path))
