"""Named `diffusers.UNet2DModel` configurations for image DDPMs, from test-sized to the paper's 64x64 network.

Parameter counts (measured with `in_channels=3`, `out_channels=3`; they do not depend on `resolution`; with one
channel, e.g. the digits, "tiny" has 176,849 and "small" 1,623,169):

| preset | block_out_channels | layers | attention | params | note |
| --- | --- | --- | --- | --- | --- |
| tiny | [16, 32] | 1 | lowest level + mid | 177,427 | tests; resolution divisible by 2 (8, 16, ...) |
| small | [32, 64, 64] | 2 | lowest level + mid | 1,624,323 | CPU runs; resolution divisible by 4 |
| paper | [128, 128, 256, 256, 512, 512] | 2 | 5th level + mid | 113,673,219 | resolution divisible by 32 |

"paper" is the 64x64 network of diffusers' `examples/unconditional_image_generation/train_unconditional.py`, the
architecture of the `anton-l/ddpm-ema-pokemon-64` and `anton-l/ddpm-ema-flowers-64` checkpoints, used by
[Memorization Control in Diffusion Models from Denoising-centric Perspective](https://arxiv.org/abs/2601.21348).
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

from diffusers import UNet2DModel

UNET_2D_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "block_out_channels": [16, 32],
        "layers_per_block": 1,
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
        "norm_num_groups": 8,
        "attention_head_dim": 8,
    },
    "small": {
        "block_out_channels": [32, 64, 64],
        "layers_per_block": 2,
        "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
        "norm_num_groups": 16,
        "attention_head_dim": 8,
    },
    "paper": {
        "block_out_channels": [128, 128, 256, 256, 512, 512],
        "layers_per_block": 2,
        "down_block_types": [
            "DownBlock2D",
            "DownBlock2D",
            "DownBlock2D",
            "DownBlock2D",
            "AttnDownBlock2D",
            "DownBlock2D",
        ],
        "up_block_types": [
            "UpBlock2D",
            "AttnUpBlock2D",
            "UpBlock2D",
            "UpBlock2D",
            "UpBlock2D",
            "UpBlock2D",
        ],
    },
}
"""`UNet2DModel` config values of each preset (lists, never tuples: tuples come back from JSON as lists)."""


def _as_config_value(value: Any) -> Any:
    return [_as_config_value(item) for item in value] if isinstance(value, (tuple, list)) else value


def create_unet_2d(
    preset: str = "small",
    *,
    resolution: int = 64,
    in_channels: int = 3,
    out_channels: int | None = None,
    **overrides: Any,
) -> UNet2DModel:
    """
    Build a randomly initialised `UNet2DModel` from a named preset.

    Args:
        preset (`str`, defaults to `"small"`):
            One of `UNET_2D_PRESETS`: "tiny" (tests), "small" (CPU runs) or "paper" (the 64x64 network of diffusers'
            `train_unconditional.py`).
        resolution (`int`, defaults to 64):
            Image side (`sample_size`); must be divisible by 2 ** (number of down blocks - 1).
        in_channels (`int`, defaults to 3):
            Image channels (3 for RGB, 1 for grayscale).
        out_channels (`int`, *optional*):
            Output channels; defaults to `in_channels` (epsilon prediction).
        **overrides:
            Any other `UNet2DModel` argument, replacing the preset's value (e.g. `dropout=0.1`).

    Returns:
        `diffusers.UNet2DModel`: the model, with `sample_size=resolution`.
    """
    if preset not in UNET_2D_PRESETS:
        raise ValueError(f"Unknown UNet2D preset {preset!r}; valid presets: {sorted(UNET_2D_PRESETS)}.")
    valid_keys = set(inspect.signature(UNet2DModel.__init__).parameters) - {"self"}
    reserved = {"sample_size": "resolution"}
    for key in overrides:
        if key in reserved:
            raise ValueError(f"Pass {reserved[key]}= instead of {key}= to create_unet_2d.")
        if key not in valid_keys:
            raise ValueError(
                f"{key!r} is not a UNet2DModel argument; valid overrides: {sorted(valid_keys - set(reserved))}."
            )
    for name, value in (("resolution", resolution), ("in_channels", in_channels), ("out_channels", out_channels)):
        if value is None and name == "out_channels":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r} (preset {preset!r}).")

    config = copy.deepcopy(UNET_2D_PRESETS[preset])
    config.update({key: _as_config_value(value) for key, value in overrides.items()})
    config.update(
        sample_size=resolution,
        in_channels=in_channels,
        out_channels=in_channels if out_channels is None else out_channels,
    )

    num_down_blocks = len(config["down_block_types"])
    if len(config["up_block_types"]) != num_down_blocks or len(config["block_out_channels"]) != num_down_blocks:
        raise ValueError(
            f"down_block_types ({num_down_blocks}), up_block_types ({len(config['up_block_types'])}) and "
            f"block_out_channels ({len(config['block_out_channels'])}) must have the same length (preset {preset!r})."
        )
    factor = 2 ** (num_down_blocks - 1)
    if resolution % factor != 0:
        raise ValueError(
            f"resolution {resolution} is not divisible by {factor} = 2 ** ({num_down_blocks} down blocks - 1) of "
            f"preset {preset!r}; use a multiple of {factor} (e.g. {max(factor, resolution // factor * factor)})."
        )
    groups = config.get("norm_num_groups", 32)
    bad_channels = [channels for channels in config["block_out_channels"] if channels % groups != 0]
    if bad_channels:
        raise ValueError(
            f"block_out_channels {config['block_out_channels']} of preset {preset!r} must be divisible by "
            f"norm_num_groups={groups}; not divisible: {bad_channels}."
        )
    return UNet2DModel(**config)
