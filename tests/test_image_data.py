import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_memctl.data.images import (
    IMAGE_DATASET_PRESETS,
    PreprocessedImages,
    load_digits_dataset,
    load_image_dataset,
    preprocess_images,
    random_flip,
)

NUM_POKEMON = 12
RESOLUTION = 16


@pytest.fixture(scope="module")
def pokemon_dir(shared_data, tmp_path_factory) -> Path:
    """A small imagefolder of Pokemon artworks, named so that file order equals numeric order."""
    folder = tmp_path_factory.mktemp("pokemon")
    for number in range(1, NUM_POKEMON + 1):
        shutil.copy(shared_data / "pokemon-artwork" / f"{number}.jpg", folder / f"{number:03d}.jpg")
    return folder


@pytest.fixture(scope="module")
def pokemon_reference(pokemon_dir) -> torch.Tensor:
    """Independent expectation: the artworks are square 256x256, so resize-then-center-crop is one plain resize."""
    arrays = []
    for path in sorted(pokemon_dir.glob("*.jpg")):
        with Image.open(path) as image:
            assert image.size == (256, 256)
            small = image.convert("RGB").resize((RESOLUTION, RESOLUTION), Image.Resampling.BILINEAR)
        arrays.append(np.asarray(small, dtype=np.float32) / 255.0 * 2.0 - 1.0)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def digits() -> tuple[datasets.Dataset, str]:
    return load_image_dataset()  # no name and no folder: the embedded digits


def test_presets_name_the_paper_datasets():
    assert IMAGE_DATASET_PRESETS == {
        "pokemon": "huggan/pokemon",
        "flowers": "huggan/flowers-102-categories",
        "digits": None,
    }


def test_digits_load_offline(digits):
    dataset, column = digits
    assert column == "image"
    assert len(dataset) == 1797
    assert set(dataset.column_names) == {"image", "label"}
    first = dataset[0]["image"]
    assert first.mode == "L" and first.size == (8, 8)
    # sklearn's digits[0] is a "0": its corner is blank and its brightest stroke is 15/16 -> 239.
    pixels = np.asarray(first)
    assert pixels[0, 0] == 0 and pixels.max() == 239
    assert sorted(set(dataset["label"])) == list(range(10))
    assert len(load_digits_dataset()) == 1797


def test_digits_preprocess_to_16(digits):
    dataset, column = digits
    result = preprocess_images(dataset, column, 16)
    assert isinstance(result, PreprocessedImages)
    assert result.samples.shape == (1797, 1, 16, 16)
    assert result.samples.dtype == torch.float32
    assert result.color_mode == "L"
    assert result.num_skipped == 0 and result.skipped == []
    assert result.samples.min() == -1.0 and result.samples.max() == 1.0
    rgb = preprocess_images(dataset.select(range(5)), column, 8, color_mode="RGB")
    assert rgb.samples.shape == (5, 3, 8, 8)
    assert torch.equal(rgb.samples[:, 0], rgb.samples[:, 2])
    # At native size nothing is resampled: the values are exactly the 0..255 pixels scaled to [-1, 1].
    expected = torch.from_numpy(np.asarray(dataset[0]["image"], dtype=np.float32)) / 127.5 - 1.0
    assert torch.allclose(rgb.samples[0, 1], expected)


def _as_parquet(pokemon_dir: Path, target: Path) -> Path:
    paths = [str(path) for path in sorted(pokemon_dir.glob("*.jpg"))]
    dataset = datasets.Dataset.from_dict({"image": paths}).cast_column("image", datasets.Image())
    target.parent.mkdir(parents=True, exist_ok=True)
    dataset.to_parquet(str(target))
    return target


def _as_saved_folder(pokemon_dir: Path, target: Path) -> Path:
    paths = [str(path) for path in sorted(pokemon_dir.glob("*.jpg"))]
    dataset = datasets.Dataset.from_dict({"image": paths, "name": [Path(p).stem for p in paths]})
    dataset.cast_column("image", datasets.Image()).save_to_disk(str(target))
    return target


@pytest.mark.parametrize("layout", ["imagefolder", "parquet_file", "parquet_hub_dir", "save_to_disk", "by_name"])
def test_local_formats_give_the_same_tensors(layout, pokemon_dir, pokemon_reference, tmp_path):
    cache = tmp_path / "cache"
    if layout == "imagefolder":
        dataset, column = load_image_dataset(train_data_dir=pokemon_dir, cache_dir=cache)
    elif layout == "parquet_file":
        source = _as_parquet(pokemon_dir, tmp_path / "pokemon.parquet")
        dataset, column = load_image_dataset(train_data_dir=source, cache_dir=cache)
    elif layout == "parquet_hub_dir":
        _as_parquet(pokemon_dir, tmp_path / "repo" / "data" / "train-00000-of-00001.parquet")
        dataset, column = load_image_dataset(train_data_dir=tmp_path / "repo", cache_dir=cache)
    elif layout == "save_to_disk":
        source = _as_saved_folder(pokemon_dir, tmp_path / "saved")
        dataset, column = load_image_dataset(train_data_dir=source, cache_dir=cache)
    else:  # an existing path given as dataset_name goes through the same local loaders
        dataset, column = load_image_dataset(str(pokemon_dir), cache_dir=cache)
    assert column == "image"
    assert len(dataset) == NUM_POKEMON
    result = preprocess_images(dataset, column, RESOLUTION)
    assert result.color_mode == "RGB"
    assert result.samples.shape == (NUM_POKEMON, 3, RESOLUTION, RESOLUTION)
    torch.testing.assert_close(result.samples, pokemon_reference, atol=1e-6, rtol=0)


def test_threads_give_identical_tensors(pokemon_dir, pokemon_reference):
    values = [str(path) for path in sorted(pokemon_dir.glob("*.jpg"))]
    result = preprocess_images(values, None, RESOLUTION, num_proc=2)
    torch.testing.assert_close(result.samples, pokemon_reference, atol=1e-6, rtol=0)


def test_max_train_samples_takes_the_first_rows(pokemon_dir, tmp_path):
    full, column = load_image_dataset(train_data_dir=pokemon_dir, cache_dir=tmp_path)
    head, _ = load_image_dataset(train_data_dir=pokemon_dir, cache_dir=tmp_path, max_train_samples=5)
    assert len(head) == 5
    assert [Path(row["path"]).name for row in head.cast_column(column, datasets.Image(decode=False))[column]] == [
        f"{number:03d}.jpg" for number in range(1, 6)
    ]
    more, _ = load_image_dataset(train_data_dir=pokemon_dir, cache_dir=tmp_path, max_train_samples=10_000)
    assert len(more) == len(full) == NUM_POKEMON
    with pytest.raises(ValueError, match="max_train_samples"):
        load_image_dataset(train_data_dir=pokemon_dir, cache_dir=tmp_path, max_train_samples=0)


def test_rgba_palette_and_gray_become_rgb():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3] = 255  # white but fully transparent: must end up black (composited over black)
    rgba[0, 0] = (255, 0, 0, 255)  # one opaque red pixel
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # index 1 = blue
    gray = Image.new("L", (4, 4), 255)
    images = [Image.fromarray(rgba, mode="RGBA"), palette, gray]
    result = preprocess_images(images, None, 4)
    assert result.color_mode == "RGB"
    assert result.samples.shape == (3, 3, 4, 4)
    assert result.samples[0, :, 0, 0].tolist() == [1.0, -1.0, -1.0]
    assert torch.all(result.samples[0, :, 1:, :] == -1.0)
    assert torch.all(result.samples[1, 2] == 1.0) and torch.all(result.samples[1, :2] == -1.0)
    assert torch.all(result.samples[2] == 1.0)


def test_palette_transparency_and_rgba_dataset_column(tmp_path):
    palette = Image.new("P", (6, 6), 1)
    palette.putpalette([0, 255, 0, 255, 255, 255] + [0] * 762)
    palette.info["transparency"] = 1  # index 1 (white) is transparent
    palette_path = tmp_path / "p.png"
    palette.save(palette_path, transparency=1)
    rgba_path = tmp_path / "a.png"
    Image.new("RGBA", (6, 6), (0, 0, 255, 255)).save(rgba_path)
    dataset = datasets.Dataset.from_dict({"img": [str(palette_path), str(rgba_path)]}).cast_column(
        "img", datasets.Image()
    )
    dataset.save_to_disk(str(tmp_path / "saved"))
    loaded, column = load_image_dataset(train_data_dir=tmp_path / "saved")
    assert column == "img"
    result = preprocess_images(loaded, column, 6)
    assert result.samples.shape == (2, 3, 6, 6)
    assert torch.all(result.samples[0] == -1.0)  # transparent white -> black
    assert torch.all(result.samples[1, 2] == 1.0) and torch.all(result.samples[1, :2] == -1.0)


def test_center_crop_keeps_the_middle():
    array = np.zeros((20, 60, 3), dtype=np.uint8)
    array[:, :20, 0] = 255  # red left third
    array[:, 20:40, 2] = 255  # blue middle third
    array[:, 40:, 0] = 255  # red right third
    image = Image.fromarray(array)
    cropped = preprocess_images([image], None, 10).samples[0]
    assert cropped.shape == (3, 10, 10)
    # 60x20 -> 30x10, keep columns 10..19: pure blue away from the two blended edge columns.
    assert torch.allclose(cropped[2, :, 1:-1], torch.ones(10, 8)) and torch.allclose(
        cropped[0, :, 1:-1], -torch.ones(10, 8)
    )
    squeezed = preprocess_images([image], None, 10, center_crop=False).samples[0]
    assert squeezed.shape == (3, 10, 10)
    assert squeezed[0, :, 0].min() > 0.9 and squeezed[2, :, 5].min() > 0.9  # all three thirds survive


def test_corrupt_jpeg_is_skipped_and_counted(pokemon_dir, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(pokemon_dir, folder)
    (folder / "002.jpg").write_bytes((pokemon_dir / "002.jpg").read_bytes()[:400])  # truncated
    (folder / "005.jpg").write_bytes(b"this is not a jpeg")
    dataset, column = load_image_dataset(train_data_dir=folder, cache_dir=tmp_path / "cache")
    assert len(dataset) == NUM_POKEMON
    result = preprocess_images(dataset, column, 8)
    assert result.num_skipped == 2
    assert [index for index, _ in result.skipped] == [1, 4]
    assert all(isinstance(reason, str) and reason for _, reason in result.skipped)
    assert result.samples.shape == (NUM_POKEMON - 2, 3, 8, 8)


def test_all_images_failing_raises():
    with pytest.raises(ValueError, match="None of the 2 images"):
        preprocess_images([b"junk", b"more junk"], None, 8)


def test_missing_image_column_lists_columns(tmp_path):
    datasets.Dataset.from_dict({"pixels": [[0, 1]], "label": [3]}).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(ValueError, match=r"columns: \['pixels', 'label'\]"):
        load_image_dataset(train_data_dir=tmp_path / "saved")
    with pytest.raises(ValueError, match="image_column='photo'.*'pixels'"):
        load_image_dataset(train_data_dir=tmp_path / "saved", image_column="photo")
    dataset, column = load_image_dataset(train_data_dir=tmp_path / "saved", image_column="pixels")
    assert column == "pixels" and len(dataset) == 1


def test_unknown_dataset_names_presets_and_offline_hub():
    with pytest.raises(ValueError, match="not-a-preset-or-path") as info:
        load_image_dataset("not-a-preset-or-path")
    message = str(info.value)
    assert "'digits'" in message and "'pokemon'" in message and "'flowers'" in message and "'ecg5000'" in message
    assert "offline" in message
    with pytest.raises(ValueError, match="'huggan/pokemon'.*offline"):
        load_image_dataset("pokemon")
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        load_image_dataset("./does-not-exist")
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        load_image_dataset(train_data_dir="/nonexistent/does-not-exist")
    with pytest.raises(ValueError, match="not both"):
        load_image_dataset("digits", train_data_dir="/tmp")


def test_empty_dataset_raises(tmp_path):
    empty = datasets.Dataset.from_dict({"image": []}, features=datasets.Features({"image": datasets.Image()}))
    empty.save_to_disk(str(tmp_path / "saved"))
    empty.to_parquet(str(tmp_path / "empty.parquet"))
    (tmp_path / "no_images").mkdir()
    for source in ("saved", "empty.parquet", "no_images"):
        with pytest.raises(ValueError, match="is empty"):
            load_image_dataset(train_data_dir=tmp_path / source, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="empty"):
        preprocess_images(empty, "image", 8)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"resolution": 0}, "resolution"),
        ({"resolution": 8, "color_mode": "CMYK"}, "color_mode"),
        ({"resolution": 8, "num_proc": 0}, "num_proc"),
    ],
)
def test_preprocess_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        preprocess_images([Image.new("RGB", (4, 4))], None, **kwargs)


def test_random_flip_is_reproducible_and_flips_about_half():
    batch = torch.arange(1000 * 2 * 3 * 4, dtype=torch.float32).reshape(1000, 2, 3, 4)
    first = random_flip(batch, generator=torch.Generator().manual_seed(0))
    second = random_flip(batch, generator=torch.Generator().manual_seed(0))
    other = random_flip(batch, generator=torch.Generator().manual_seed(1))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
    flipped = (first == batch.flip(-1)).flatten(1).all(1)
    unchanged = (first == batch).flatten(1).all(1)
    assert torch.all(flipped ^ unchanged)  # every sample is either mirrored or untouched
    assert 0.42 < flipped.float().mean().item() < 0.58  # Binomial(1000, 0.5): sd 0.016
    with pytest.raises(ValueError, match="B, C, H, W"):
        random_flip(batch[0])
