"""Tests of `UNet1DMemCtlModel`: shapes, timestep conditioning in every block, save/load, presets, config errors."""

import math
import re

import pytest
import torch

from diffusers_memctl.models import UNET_1D_PRESETS, UNet1DMemCtlModel, UNet1DMemCtlOutput, create_unet_1d
from diffusers_memctl.models import unet_1d_memctl as module

SMALL = {"attention_head_dim": 8, "norm_num_groups": 4, "layers_per_block": 1}


def _model(block_out_channels, seed=0, **kwargs):
    torch.manual_seed(seed)
    return UNet1DMemCtlModel(block_out_channels=block_out_channels, **{**SMALL, **kwargs}).eval()


@pytest.mark.parametrize("block_out_channels", [[8], [8, 16], [8, 16, 16], [8, 8, 16, 16]])
@pytest.mark.parametrize("length", [140, 144, 1000, 7])
def test_output_shape_equals_input_shape(block_out_channels, length):
    model = _model(block_out_channels, in_channels=2, out_channels=2)
    sample = torch.randn(2, 2, length, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        output = model(sample, torch.tensor([3, 900]))
    assert isinstance(output, UNet1DMemCtlOutput)
    assert output.sample.shape == sample.shape
    assert torch.isfinite(output.sample).all()


def test_out_channels_differ_from_in_channels_and_tuple_output():
    model = _model([8, 16], in_channels=3, out_channels=1)
    with torch.no_grad():
        (output,) = model(torch.randn(1, 3, 140), 5, return_dict=False)
    assert output.shape == (1, 1, 140)


def test_default_attention_levels_skip_only_the_first_level():
    model = UNet1DMemCtlModel()
    flags = [isinstance(level.attentions[0], module._SelfAttention1D) for level in model.down_levels]
    assert flags == [False, True, True]
    assert model.config.attention_levels is None and model.config.block_out_channels == [32, 64, 128]


def test_timestep_embedding_is_sinusoidal():
    """Ho et al. (2020) features, computed independently: [cos(t w_k), sin(t w_k)], w_k = 10000^(-k / half)."""
    model = _model([8, 16])
    t = torch.tensor([0.0, 1.0, 37.0, 999.0])
    half = 4
    freqs = torch.tensor([math.exp(-math.log(10000.0) * k / half) for k in range(half)], dtype=torch.float64)
    expected = torch.cat([torch.cos(t[:, None].double() * freqs), torch.sin(t[:, None].double() * freqs)], dim=1)
    torch.testing.assert_close(model.time_proj(t).double(), expected, atol=1e-5, rtol=0)


def test_timestep_changes_the_output():
    model = _model([8, 16])
    sample = torch.randn(2, 1, 140, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        early, late = model(sample, 10).sample, model(sample, 900).sample
    assert (early - late).abs().max() > 1e-3
    # Scalar, int, 0-d and per-sample tensors agree; per-sample timesteps act per sample.
    with torch.no_grad():
        torch.testing.assert_close(model(sample, torch.tensor(10)).sample, early)
        torch.testing.assert_close(model(sample, torch.tensor([10, 10])).sample, early)
        mixed = model(sample, torch.tensor([10, 900])).sample
    torch.testing.assert_close(mixed[0], early[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed[1], late[1], atol=1e-5, rtol=1e-5)


def test_timestep_reaches_every_residual_block():
    """Each residual block's output depends on the timestep embedding (UNet1DModel only feeds its first block)."""
    model = _model([8, 16, 16], layers_per_block=2)
    blocks = [m for m in model.modules() if isinstance(m, module._ResidualBlock1D)]
    # down: 3 levels x 2, mid: 2, up: 3 levels x 3
    assert len(blocks) == 3 * 2 + 2 + 3 * 3
    inputs = {}

    def record(block, args, output):
        inputs[block] = args  # returns None, so the block's output is kept

    hooks = [block.register_forward_hook(record) for block in blocks]
    sample = torch.randn(1, 1, 140, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(sample, 100)
        temb_late = model._timestep_embedding(800, 1, sample.device)
    for hook in hooks:
        hook.remove()
    assert set(inputs) == set(blocks)
    for block in blocks:
        hidden, temb_early = inputs[block]
        with torch.no_grad():
            change = (block(hidden, temb_early) - block(hidden, temb_late)).abs().max()
            # Control: without its time projection the block ignores the timestep.
            block.time_emb_proj.weight.zero_()
            block.time_emb_proj.bias.zero_()
            control = (block(hidden, temb_early) - block(hidden, temb_late)).abs().max()
        assert change > 1e-4 and control == 0


def test_every_parameter_gets_a_gradient():
    model = _model([8, 16], layers_per_block=2).train()
    loss = model(torch.randn(2, 1, 50), torch.tensor([1, 2])).sample.square().mean()
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_save_and_load_round_trip(tmp_path):
    model = _model([8, 16], attention_levels=[True, False], dropout=0.1, time_embedding_dim=24, sample_size=50)
    model.save_pretrained(tmp_path)
    loaded = UNet1DMemCtlModel.from_pretrained(tmp_path).eval()
    assert loaded.config.attention_levels == [True, False] and loaded.config.time_embedding_dim == 24
    assert loaded.config.block_out_channels == [8, 16] and loaded.config.sample_size == 50
    sample = torch.randn(3, 1, 50, generator=torch.Generator().manual_seed(2))
    timesteps = torch.tensor([1, 50, 999])
    with torch.no_grad():
        assert torch.equal(model(sample, timesteps).sample, loaded(sample, timesteps).sample)


def test_presets_and_documented_parameter_counts():
    documented = {
        name: int(count.replace(",", ""))
        for name, count in re.findall(r"\| `(\w+)`\s*\|.*\|\s*([\d,]+)\s*\|", module.__doc__)
    }
    assert set(documented) == set(UNET_1D_PRESETS) == {"tiny", "small", "paper"}
    for name in UNET_1D_PRESETS:
        model = create_unet_1d(name)
        assert sum(p.numel() for p in model.parameters()) == documented[name]
    assert documented["tiny"] < 100_000
    tiny = create_unet_1d("tiny", sample_size=64, dropout=0.2)
    assert tiny.config.sample_size == 64 and tiny.config.dropout == 0.2
    with pytest.raises(
        ValueError, match=r"unknown 1D U-Net preset 'huge'; valid presets: \['paper', 'small', 'tiny'\]"
    ):
        create_unet_1d("huge")


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"block_out_channels": []}, r"at least one level"),
        ({"block_out_channels": 16}, r"block_out_channels must be a list of ints.*got 16"),
        ({"block_out_channels": [8, 18]}, r"divisible by norm_num_groups=4.*\[8, 18\]"),
        ({"attention_levels": [True]}, r"one bool per level \(2 for block_out_channels=\[8, 16\]\)"),
        ({"attention_levels": [1, 0]}, r"one bool per level"),
        ({"attention_head_dim": 12}, r"attention_head_dim=12 must divide.*level 1 has 16 channels"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\); got 1.0"),
        ({"layers_per_block": 0}, r"layers_per_block must be a positive integer; got 0"),
        ({"sample_size": 0}, r"sample_size must be a positive integer"),
        ({"time_embedding_dim": -1}, r"time_embedding_dim must be a positive integer"),
    ],
)
def test_bad_config_raises(kwargs, pattern):
    config = {"block_out_channels": [8, 16], **SMALL, **kwargs}
    with pytest.raises(ValueError, match=pattern):
        UNet1DMemCtlModel(**config)


def test_bad_inputs_raise():
    model = _model([8, 16])
    with pytest.raises(ValueError, match=r"sample must have shape \(batch_size, 1, length >= 1\); got \(2, 140\)"):
        model(torch.randn(2, 140), 1)
    with pytest.raises(ValueError, match=r"got \(2, 3, 140\)"):
        model(torch.randn(2, 3, 140), 1)
    with pytest.raises(ValueError, match=r"one value per sample \(2\); got shape \(3,\)"):
        model(torch.randn(2, 1, 140), torch.tensor([1, 2, 3]))
