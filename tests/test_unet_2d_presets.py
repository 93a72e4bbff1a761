import pytest
import torch
from diffusers import UNet2DModel

from diffusers_memctl.models.unet_2d_presets import UNET_2D_PRESETS, create_unet_2d


def _num_params(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


@pytest.mark.parametrize(
    "preset, resolution, in_channels",
    [("tiny", 8, 1), ("tiny", 16, 1), ("tiny", 16, 3), ("tiny", 64, 3), ("small", 32, 3), ("small", 64, 1)],
)
def test_forward_keeps_the_shape(preset, resolution, in_channels):
    model = create_unet_2d(preset, resolution=resolution, in_channels=in_channels)
    sample = torch.randn(2, in_channels, resolution, resolution, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        output = model(sample, torch.tensor([0, 999])).sample
    assert output.shape == sample.shape
    assert torch.isfinite(output).all()
    assert model.config.sample_size == resolution
    assert model.config.out_channels == in_channels


def test_paper_preset_is_the_train_unconditional_64_network():
    model = create_unet_2d("paper", resolution=64)
    assert model.config.block_out_channels == [128, 128, 256, 256, 512, 512]
    assert model.config.layers_per_block == 2
    assert model.config.down_block_types == ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"]
    assert model.config.up_block_types == ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4
    # The parameter count of anton-l/ddpm-ema-pokemon-64 and ddpm-ema-flowers-64.
    assert _num_params(model) == 113_673_219


def test_presets_grow_and_config_values_are_lists():
    sizes = [_num_params(create_unet_2d(preset, resolution=32)) for preset in ("tiny", "small")]
    assert sizes[0] < 500_000 < sizes[1] < 5_000_000
    for preset in UNET_2D_PRESETS:
        for value in UNET_2D_PRESETS[preset].values():
            assert not isinstance(value, tuple)


def test_overrides_and_out_channels(tmp_path):
    model = create_unet_2d(
        "tiny", resolution=8, in_channels=1, out_channels=2, dropout=0.1, block_out_channels=(8, 16)
    )
    assert model.config.block_out_channels == [8, 16]
    assert model.config.dropout == 0.1
    assert (model.config.in_channels, model.config.out_channels) == (1, 2)
    assert UNET_2D_PRESETS["tiny"]["block_out_channels"] == [16, 32]  # the preset itself is untouched
    model.save_pretrained(tmp_path)
    reloaded = UNet2DModel.from_pretrained(tmp_path)
    for key in ("block_out_channels", "down_block_types", "up_block_types", "norm_num_groups", "dropout"):
        assert reloaded.config[key] == model.config[key]


@pytest.mark.parametrize("preset, resolution", [("tiny", 7), ("small", 30), ("paper", 48)])
def test_bad_resolution_names_resolution_and_preset(preset, resolution):
    with pytest.raises(ValueError, match=rf"resolution {resolution} .*preset '{preset}'"):
        create_unet_2d(preset, resolution=resolution)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"'huge'.*\['paper', 'small', 'tiny'\]"):
        create_unet_2d("huge")
    with pytest.raises(ValueError, match="'num_layers' is not a UNet2DModel argument"):
        create_unet_2d("tiny", resolution=8, num_layers=3)
    with pytest.raises(ValueError, match="resolution="):
        create_unet_2d("tiny", sample_size=8)
    with pytest.raises(ValueError, match="norm_num_groups=8"):
        create_unet_2d("tiny", resolution=8, block_out_channels=[12, 16])
    with pytest.raises(ValueError, match="in_channels"):
        create_unet_2d("tiny", resolution=8, in_channels=0)
