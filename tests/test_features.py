"""Feature extraction (diffusers_memctl.features) on tiny random-weight transformers backbones saved to a folder,
and the feature metrics through the training, evaluation and sweep scripts. Nothing is downloaded."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers  # the [features] extra, also part of [test]
from PIL import Image

from diffusers_memctl import features as features_module
from diffusers_memctl.cli import train as train_cli
from diffusers_memctl.features import (
    FeatureCache,
    FeatureExtractor,
    embed_training_set,
    resolve_backbone,
    samples_to_rgb_uint8,
)

# Tiny models run fastest on one thread; two spinning threads on a busy 2-core machine cost seconds.
pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO_ROOT = Path(__file__).resolve().parents[1]
evaluate_script = runpy.run_path(str(REPO_ROOT / "training_scripts" / "evaluate_memctl.py"))["main"]
sweep_script = runpy.run_path(str(REPO_ROOT / "training_scripts" / "sweep_ci_grid.py"))["main"]

FEATURE_KEYS = {
    "feature_replication_score",
    "feature_max_similarity_mean",
    "feature_nn_ratio_mean",
    "feature_nn_ratio_median",
    "feature_frechet_distance",
    "feature_precision",
    "feature_recall",
    "feature_density",
    "feature_coverage",
}
TINY_TRAIN_FLAGS = [
    "--dataset_name", "digits",
    "--resolution", "8",
    "--model_preset", "tiny",
    "--max_train_samples", "24",
    "--train_batch_size", "12",
    "--max_train_steps", "2",
    "--num_train_timesteps", "20",
    "--logger", "none",
    "--checkpointing_steps", "0",
    "--save_images_epochs", "0",
    "--save_model_epochs", "0",
]  # fmt: skip


def _tiny_vit(hidden=16) -> dict:
    return {"hidden_size": hidden, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 24}


def _save_dinov2(folder: Path) -> Path:
    torch.manual_seed(0)
    model = transformers.Dinov2Model(transformers.Dinov2Config(**_tiny_vit(), image_size=28, patch_size=7))
    model.save_pretrained(folder)
    transformers.BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28}).save_pretrained(
        folder
    )
    return folder


def _save_clip_vision(folder: Path) -> Path:
    torch.manual_seed(1)
    model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**_tiny_vit(), image_size=16, patch_size=8))
    model.save_pretrained(folder)
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    processor.save_pretrained(folder)
    return folder


def _save_clip(folder: Path) -> Path:
    """A whole CLIP checkpoint (text and vision towers): its projected image embedding is used."""
    torch.manual_seed(2)
    text = {**_tiny_vit(), "vocab_size": 50, "max_position_embeddings": 8, "bos_token_id": 0, "eos_token_id": 1}
    config = transformers.CLIPConfig(
        text_config=text, vision_config={**_tiny_vit(), "image_size": 16, "patch_size": 8}, projection_dim=12
    )
    transformers.CLIPModel(config).save_pretrained(folder)
    transformers.CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(
        folder
    )
    return folder


@pytest.fixture(scope="module")
def backbones(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("backbones")
    return {
        "dinov2": _save_dinov2(root / "dinov2"),
        "clip_vision": _save_clip_vision(root / "clip_vision"),
        "clip": _save_clip(root / "clip"),
    }


def _images(n, channels=1, size=8, seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=generator) * 2 - 1


# ---- loading and embedding ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "model_class", "pooling", "dim"),
    [
        ("dinov2", "Dinov2Model", "pooler_output", 16),
        ("clip_vision", "CLIPVisionModel", "pooler_output", 16),
        ("clip", "CLIPModel", "image_features", 12),
    ],
)
def test_backbones_embed_with_the_stated_pooling(backbones, kind, model_class, pooling, dim):
    extractor = FeatureExtractor.from_pretrained(str(backbones[kind]))
    assert type(extractor.model).__name__ == model_class and extractor.pooling == pooling
    images = _images(5, channels=1)
    embeddings = extractor.embed(images, batch_size=2)
    assert embeddings.shape == (5, dim) and embeddings.dtype == torch.float32
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(5))

    # Independently: PIL's own grayscale -> RGB conversion, the processor, and the model's documented output.
    pils = [
        Image.fromarray(((img[0].numpy() + 1) * 127.5).round().astype(np.uint8), "L").convert("RGB") for img in images
    ]
    pixel_values = extractor.processor(images=pils, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        if kind == "clip":
            raw = extractor.model.get_image_features(pixel_values=pixel_values)
            raw = raw if isinstance(raw, torch.Tensor) else raw.pooler_output
        else:
            raw = extractor.model(pixel_values=pixel_values).pooler_output
    torch.testing.assert_close(embeddings, torch.nn.functional.normalize(raw, dim=1), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(embeddings[0], embeddings[1])  # different images, different embeddings


def test_grayscale_equals_its_rgb_copy_and_batching_changes_nothing(backbones):
    extractor = FeatureExtractor.from_pretrained(str(backbones["dinov2"]))
    gray = _images(7, channels=1, size=5)
    rgb = gray.expand(-1, 3, -1, -1)
    one_by_one = extractor.embed(gray, batch_size=1, normalize=False)
    torch.testing.assert_close(one_by_one, extractor.embed(rgb, batch_size=64, normalize=False))
    assert samples_to_rgb_uint8(gray).shape == (7, 5, 5, 3)
    with pytest.raises(ValueError, match="signals have no image backbone"):
        extractor.embed(torch.zeros(2, 1, 16))


def test_bfloat16_embeddings_agree_with_float32(backbones):
    # The dtype a GPU gets by default; on the CPU here it runs the same cast path.
    images = _images(6, channels=3)
    full = FeatureExtractor.from_pretrained(str(backbones["dinov2"]), device="cpu").embed(images)
    half = FeatureExtractor.from_pretrained(str(backbones["dinov2"]), device="cpu", dtype=torch.bfloat16)
    assert next(half.model.parameters()).dtype == torch.bfloat16
    low = half.embed(images)
    assert low.dtype == torch.float32
    assert (low * full).sum(dim=1).min() > 0.99  # cosine similarity of the two embeddings of each image


def test_hub_id_not_in_the_cache_fails_at_once_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError) as info:
        resolve_backbone("memctl-tests/not-a-cached-backbone", cache_dir=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert "'memctl-tests/not-a-cached-backbone' is not in the local Hugging Face cache" in message
    assert "local folder" in message


def test_hub_id_in_the_local_cache_resolves_to_its_commit(monkeypatch, tmp_path, backbones):
    # Lay out the hub cache by hand as huggingface_hub does: refs/main -> snapshots/<commit>/files.
    commit = "a" * 40
    repo = tmp_path / "models--memctl-tests--tiny-dinov2"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in backbones["dinov2"].iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = resolve_backbone("memctl-tests/tiny-dinov2", cache_dir=tmp_path)
    assert source.revision == commit and source.path == snapshot


@pytest.mark.parametrize("name", ["./no/such/folder", "/definitely/missing"])
def test_missing_folders_are_named(name):
    with pytest.raises(FileNotFoundError, match=f"--feature_extractor {name}: no such folder"):
        resolve_backbone(name)


def test_folder_without_a_model_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no config.json"):
        resolve_backbone(str(tmp_path))


# ---- the cache ---------------------------------------------------------------------------------------------------
def test_training_embeddings_are_cached_per_data_backbone_revision_and_preprocessing(backbones, tmp_path):
    folder = Path(shutil_copy(backbones["dinov2"], tmp_path / "dino"))
    extractor = FeatureExtractor.from_pretrained(str(folder))
    cache = FeatureCache(tmp_path / "cache")
    data = _images(10)
    first = embed_training_set(extractor, data, cache=cache, batch_size=4)
    assert extractor.forward_calls == 3
    torch.testing.assert_close(embed_training_set(extractor, data.clone(), cache=cache, batch_size=4), first)
    assert extractor.forward_calls == 3  # same data, backbone, revision and preprocessing: no forward pass

    embed_training_set(extractor, _images(10, seed=1), cache=cache, batch_size=4)
    assert extractor.forward_calls == 6  # other data

    extractor.processor.crop_size = {"height": 21, "width": 21}
    embed_training_set(extractor, data, cache=cache, batch_size=4)
    assert extractor.forward_calls == 9  # other preprocessing

    # A new process (fresh cache object, fresh extractor) finds the file on disk ...
    fresh = FeatureExtractor.from_pretrained(str(folder))
    torch.testing.assert_close(embed_training_set(fresh, data, cache=FeatureCache(tmp_path / "cache")), first)
    assert fresh.forward_calls == 0
    # ... unless the weights in the folder changed (new content hash = new revision).
    model = transformers.Dinov2Model.from_pretrained(folder)
    torch.nn.init.normal_(model.layernorm.weight)
    model.save_pretrained(folder)
    changed = FeatureExtractor.from_pretrained(str(folder))
    assert changed.source.revision != fresh.source.revision
    embed_training_set(changed, data, cache=FeatureCache(tmp_path / "cache"))
    assert changed.forward_calls == 1


def shutil_copy(src: Path, dst: Path) -> Path:
    import shutil

    return Path(shutil.copytree(src, dst))


# ---- through the scripts -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def feature_run(tmp_path_factory, backbones) -> Path:
    """A tiny digits run at 8x8 trained and evaluated by the training script with the DINOv2 backbone."""
    out = tmp_path_factory.mktemp("feature-run") / "run"
    flags = ["--eval_num_samples", "8", "--num_inference_steps", "2", "--feature_extractor", str(backbones["dinov2"])]
    train_cli.main([*TINY_TRAIN_FLAGS, "--output_dir", str(out), *flags])
    return out


def test_training_script_writes_feature_metrics_card_and_figure(feature_run, backbones):
    report = json.loads((feature_run / "metrics.json").read_text())
    assert FEATURE_KEYS <= set(report["metrics"])
    assert all(np.isfinite(report["metrics"][key]) for key in FEATURE_KEYS)
    settings = report["settings"]["features"]
    assert settings["feature_extractor"] == str(backbones["dinov2"]) and settings["pooling"] == "pooler_output"
    assert settings["revision"].startswith("sha256:") and settings["feature_dim"] == 16
    assert {"feature_replication_score", "feature_nn_ratio_mean"} <= set(report["feature_reference"])
    assert (feature_run / "plots" / "replicated_pairs.png").read_bytes().startswith(b"\x89PNG")
    card = (feature_run / "README.md").read_text()
    assert "feature_replication_score" in card and "feature_frechet_distance" in card
    assert f"embeddings of `{backbones['dinov2']}`" in card and "The training set's own values" in card


def test_evaluate_script_with_a_clip_backbone(feature_run, backbones, tmp_path):
    run = shutil_copy(feature_run, tmp_path / "run")
    flags = ["--eval_num_samples", "6", "--num_inference_steps", "2", "--no_plots", "--replication_threshold", "0.9"]
    cache = tmp_path / "cache"
    report = evaluate_script(
        [str(run), *flags, "--feature_extractor", str(backbones["clip"]), "--feature_cache_dir", str(cache)]
    )
    assert len(list(cache.glob("*.safetensors"))) == 1  # the training set's embeddings
    assert FEATURE_KEYS <= set(report["metrics"])
    assert report["settings"]["features"]["pooling"] == "image_features"
    assert report["settings"]["features"]["replication_threshold"] == 0.9
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["metrics"]["feature_frechet_distance"] == report["metrics"]["feature_frechet_distance"]


def test_feature_extractor_on_signals_is_refused_before_training(tmp_path, shared_data):
    flags = [
        "--dataset_name", "ecg5000",
        "--data_dir", str(shared_data / "ecg5000"),
        "--model_preset", "tiny",
        "--max_train_steps", "1",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="embeds images, but this run's data are signals"):
        train_cli.main([*flags, "--output_dir", str(tmp_path / "sig"), "--feature_extractor", "x/y"])
    assert not (tmp_path / "sig" / "training_config.json").exists()


def test_bad_replication_threshold_is_refused_before_training(tmp_path, backbones):
    flags = ["--feature_extractor", str(backbones["dinov2"]), "--replication_threshold", "1.5"]
    with pytest.raises(ValueError, match=r"--replication_threshold must be a cosine similarity in \[-1, 1\], got 1.5"):
        train_cli.main([*TINY_TRAIN_FLAGS, "--output_dir", str(tmp_path / "r"), *flags])
    assert not (tmp_path / "r" / "training_config.json").exists()


def test_missing_backbone_stops_training_before_it_starts(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="not in the local Hugging Face cache"):
        train_cli.main([*TINY_TRAIN_FLAGS, "--output_dir", str(tmp_path / "r"), "--feature_extractor", "memctl/nope"])
    assert not (tmp_path / "r" / "training_config.json").exists()


def test_a_sweep_embeds_its_training_set_once(backbones, tmp_path, monkeypatch):
    sizes: list[int] = []
    real_embed = FeatureExtractor.embed

    def counting_embed(self, samples, **kwargs):
        sizes.append(int(samples.shape[0]))
        return real_embed(self, samples, **kwargs)

    monkeypatch.setattr(FeatureExtractor, "embed", counting_embed)
    monkeypatch.setattr(features_module, "_DEFAULT_CACHE", FeatureCache())  # nothing cached by earlier tests
    flags = [
        "--sweep_dir", str(tmp_path / "sweep"),
        "--num_train_timesteps", "100",
        "--pretrain_epochs", "1",
        "--cells", "0:50,50:100",
        "--include_uniform", "false",
        "--eval_num_samples", "5",
        "--num_inference_steps", "2",
        "--feature_extractor", str(backbones["dinov2"]),
    ]  # fmt: skip
    rows = sweep_script([*TINY_TRAIN_FLAGS, *flags])
    assert len(rows) == 2
    assert sizes.count(24) == 1  # the training set (24 digits), once for the whole sweep
    assert sizes.count(5) == 3  # the generated samples of the pretraining run and of each cell
    assert len(sizes) == 4
    assert all(FEATURE_KEYS <= set(row) for row in rows)
    analysis = json.loads((tmp_path / "sweep" / "analysis.json").read_text())
    assert "feature_replication_score" in analysis["correlations"]
    assert "feature_frechet_distance" in (tmp_path / "sweep" / "REPORT.md").read_text()
