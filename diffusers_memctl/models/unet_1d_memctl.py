"""A hierarchical 1D U-Net for denoising signals such as ECG5000 heartbeats.

The paper "Memorization Control in Diffusion Models from Denoising-centric Perspective"
(https://arxiv.org/abs/2601.21348) generates ECG5000 heartbeats (length 140) directly in signal space with a
hierarchical 1D U-Net whose channels grow with depth and which uses self-attention at intermediate levels. This module
implements such a network as a diffusers model (`ModelMixin` + `ConfigMixin`), so it saves and loads with
`save_pretrained` / `from_pretrained` and plugs into `DDPM1DPipeline`.

Differences from diffusers' `UNet1DModel` (the Dance Diffusion network), on purpose:

- The timestep embedding (sinusoidal features, Ho et al. 2020, https://arxiv.org/abs/2006.11239, followed by an MLP)
  is added inside *every* residual block, as in the DDPM and ADM U-Nets; `UNet1DModel` only feeds it to its first
  block.
- Any input length works: the input is padded internally (edge replication) to a multiple of
  `2 ** (len(block_out_channels) - 1)` and the output is cropped back, so length 140 works with any depth.

Parameter counts of the presets in `UNET_1D_PRESETS` (measured with
`sum(p.numel() for p in create_unet_1d(name).parameters())`):

| preset  | block_out_channels   | layers_per_block | attention_levels           | parameters |
| ------- | -------------------- | ---------------- | -------------------------- | ---------- |
| `tiny`  | [16, 32]             | 1                | [False, True]              | 87,569     |
| `small` | [32, 64, 128]        | 2                | [False, True, True]        | 1,890,881  |
| `paper` | [64, 128, 256, 512]  | 2                | [False, True, True, False] | 23,741,313 |
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

__all__ = ["UNET_1D_PRESETS", "UNet1DMemCtlModel", "UNet1DMemCtlOutput", "create_unet_1d"]


@dataclass
class UNet1DMemCtlOutput(BaseOutput):
    """
    The output of [`UNet1DMemCtlModel`].

    Args:
        sample (`torch.Tensor` of shape `(batch_size, out_channels, length)`):
            The predicted noise (or whatever target the model was trained on), same length as the input.
    """

    sample: torch.Tensor


class _ResidualBlock1D(nn.Module):
    """GroupNorm -> SiLU -> Conv, plus the projected timestep embedding, twice; as in Ho et al. (2020), Appendix B."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, num_groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(num_groups, in_channels)
        self.conv1 = nn.Conv1d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(num_groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv1d(out_channels, out_channels, kernel_size=3, padding=1)
        self.skip = nn.Conv1d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        residual = hidden_states if self.skip is None else self.skip(hidden_states)
        hidden_states = self.conv1(F.silu(self.norm1(hidden_states)))
        hidden_states = hidden_states + self.time_emb_proj(F.silu(temb))[:, :, None]
        hidden_states = self.conv2(self.dropout(F.silu(self.norm2(hidden_states))))
        return hidden_states + residual


class _SelfAttention1D(nn.Module):
    """Multi-head self-attention over the length axis with a residual connection (Vaswani et al. 2017)."""

    def __init__(self, channels: int, head_dim: int, num_groups: int):
        super().__init__()
        self.num_heads = channels // head_dim
        self.norm = nn.GroupNorm(num_groups, channels)
        self.to_qkv = nn.Conv1d(channels, 3 * channels, kernel_size=1)
        self.to_out = nn.Conv1d(channels, channels, kernel_size=1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, channels, length = hidden_states.shape
        qkv = self.to_qkv(self.norm(hidden_states))
        # (B, 3C, L) -> 3 x (B, heads, L, head_dim)
        qkv = qkv.reshape(batch, 3, self.num_heads, channels // self.num_heads, length).permute(1, 0, 2, 4, 3)
        attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        attended = attended.permute(0, 1, 3, 2).reshape(batch, channels, length)
        return hidden_states + self.to_out(attended)


class _Level(nn.Module):
    """Residual blocks of one resolution level, each optionally followed by self-attention."""

    def __init__(
        self,
        in_channels: list[int],
        out_channels: int,
        temb_channels: int,
        num_groups: int,
        dropout: float,
        attention: bool,
        head_dim: int,
    ):
        super().__init__()
        self.resnets = nn.ModuleList(
            [_ResidualBlock1D(c, out_channels, temb_channels, num_groups, dropout) for c in in_channels]
        )
        self.attentions = nn.ModuleList(
            [_SelfAttention1D(out_channels, head_dim, num_groups) if attention else nn.Identity() for _ in in_channels]
        )


class UNet1DMemCtlModel(ModelMixin, ConfigMixin):
    r"""
    A hierarchical 1D U-Net that predicts the noise of a noisy signal of shape `(batch_size, channels, length)`.

    The network follows the DDPM U-Net (Ho et al. 2020, https://arxiv.org/abs/2006.11239) in one dimension: a
    sinusoidal timestep embedding and MLP whose output is added inside every residual block; an encoder of
    `len(block_out_channels)` levels, each with `layers_per_block` residual blocks and a stride-2 downsampling
    convolution between levels; a middle block (residual, attention, residual); and a decoder with
    `layers_per_block + 1` residual blocks per level fed by skip connections. Self-attention follows each residual
    block of the levels flagged in `attention_levels`. This is the signal-space network used for ECG5000 in
    "Memorization Control in Diffusion Models from Denoising-centric Perspective"
    (https://arxiv.org/abs/2601.21348).

    Args:
        sample_size (`int`, defaults to 140):
            Default signal length (used by `DDPM1DPipeline` when no `length` is given). The model accepts any length.
        in_channels (`int`, defaults to 1):
            Number of channels of the input signal.
        out_channels (`int`, defaults to 1):
            Number of channels of the output.
        block_out_channels (`list[int]`, defaults to `[32, 64, 128]`):
            Channels of each resolution level, from the finest to the coarsest. Every entry must be divisible by
            `norm_num_groups`.
        layers_per_block (`int`, defaults to 2):
            Residual blocks per encoder level (the decoder uses one more per level).
        attention_levels (`list[bool]`, *optional*, defaults to `None`):
            One flag per level saying whether self-attention follows its residual blocks. `None` means attention at
            every level except the first (finest, most expensive) one. The middle block always has attention.
        attention_head_dim (`int`, defaults to 32):
            Channels per attention head; must divide the channels of every level with attention and of the last one.
        norm_num_groups (`int`, defaults to 8):
            Groups of every `GroupNorm`.
        dropout (`float`, defaults to 0.0):
            Dropout probability inside the residual blocks, in `[0, 1)`.
        time_embedding_dim (`int`, *optional*, defaults to `None`):
            Width of the timestep embedding MLP; `None` means `4 * block_out_channels[0]`, as in the DDPM U-Net.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        sample_size: int = 140,
        in_channels: int = 1,
        out_channels: int = 1,
        block_out_channels: list[int] = [32, 64, 128],  # noqa: B006 - diffusers convention; never mutated
        layers_per_block: int = 2,
        attention_levels: list[bool] | None = None,
        attention_head_dim: int = 32,
        norm_num_groups: int = 8,
        dropout: float = 0.0,
        time_embedding_dim: int | None = None,
    ):
        super().__init__()
        if not isinstance(block_out_channels, (list, tuple)):
            raise ValueError(
                f"block_out_channels must be a list of ints, e.g. [32, 64, 128]; got {block_out_channels!r}"
            )
        channels = list(block_out_channels)
        attention = _validate_config(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=out_channels,
            block_out_channels=channels,
            layers_per_block=layers_per_block,
            attention_levels=attention_levels,
            attention_head_dim=attention_head_dim,
            norm_num_groups=norm_num_groups,
            dropout=dropout,
            time_embedding_dim=time_embedding_dim,
        )
        # Keep the recorded config JSON-like (tuples would come back from config.json as lists).
        self.register_to_config(
            block_out_channels=channels, attention_levels=None if attention_levels is None else list(attention_levels)
        )
        temb_dim = time_embedding_dim if time_embedding_dim is not None else 4 * channels[0]
        self._num_levels = len(channels)

        self.time_proj = Timesteps(channels[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(channels[0], temb_dim)
        self.conv_in = nn.Conv1d(in_channels, channels[0], kernel_size=3, padding=1)

        # Encoder: record the channels of every skip activation so the decoder can be built to match.
        self.down_levels = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        skip_channels = [channels[0]]
        current = channels[0]
        for level, width in enumerate(channels):
            inputs = [current] + [width] * (layers_per_block - 1)
            self.down_levels.append(
                _Level(inputs, width, temb_dim, norm_num_groups, dropout, attention[level], attention_head_dim)
            )
            current = width
            skip_channels.extend([width] * layers_per_block)
            if level < self._num_levels - 1:
                self.downsamplers.append(nn.Conv1d(width, width, kernel_size=3, stride=2, padding=1))
                skip_channels.append(width)

        self.mid_resnet_1 = _ResidualBlock1D(current, current, temb_dim, norm_num_groups, dropout)
        self.mid_attention = _SelfAttention1D(current, attention_head_dim, norm_num_groups)
        self.mid_resnet_2 = _ResidualBlock1D(current, current, temb_dim, norm_num_groups, dropout)

        # Decoder: the reverse of the encoder, each block consuming one skip activation.
        self.up_levels = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for level in reversed(range(self._num_levels)):
            width = channels[level]
            inputs = []
            for _ in range(layers_per_block + 1):
                inputs.append(current + skip_channels.pop())
                current = width
            self.up_levels.append(
                _Level(inputs, width, temb_dim, norm_num_groups, dropout, attention[level], attention_head_dim)
            )
            if level > 0:
                self.upsamplers.append(nn.Conv1d(width, width, kernel_size=3, padding=1))

        self.norm_out = nn.GroupNorm(norm_num_groups, channels[0])
        self.conv_out = nn.Conv1d(channels[0], out_channels, kernel_size=3, padding=1)

    def _timestep_embedding(self, timestep: torch.Tensor | float | int, batch_size: int, device) -> torch.Tensor:
        if not torch.is_tensor(timestep):
            timestep = torch.tensor([timestep], device=device)
        timestep = timestep.to(device).flatten()
        if timestep.numel() == 1:
            timestep = timestep.expand(batch_size)
        elif timestep.numel() != batch_size:
            raise ValueError(
                f"timestep must be a scalar or hold one value per sample ({batch_size}); got shape "
                f"{tuple(timestep.shape)}"
            )
        # The sinusoidal features are float32; cast to the MLP's dtype (e.g. fp16) afterwards.
        features = self.time_proj(timestep).to(dtype=self.time_embedding.linear_1.weight.dtype)
        return self.time_embedding(features)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        return_dict: bool = True,
    ) -> UNet1DMemCtlOutput | tuple[torch.Tensor]:
        r"""
        Predict the noise of `sample` at diffusion step `timestep`.

        Args:
            sample (`torch.Tensor`):
                Noisy input of shape `(batch_size, in_channels, length)`; any length >= 1.
            timestep (`torch.Tensor`, `float` or `int`):
                Diffusion step: a scalar, or a tensor with one value per sample.
            return_dict (`bool`, *optional*, defaults to `True`):
                Whether to return a [`UNet1DMemCtlOutput`] instead of a plain tuple.

        Returns:
            [`UNet1DMemCtlOutput`] or `tuple`: the prediction, of shape `(batch_size, out_channels, length)`.
        """
        if sample.ndim != 3 or sample.shape[1] != self.config.in_channels or sample.shape[2] < 1:
            raise ValueError(
                f"sample must have shape (batch_size, {self.config.in_channels}, length >= 1); got "
                f"{tuple(sample.shape)}"
            )
        length = sample.shape[-1]
        temb = self._timestep_embedding(timestep, sample.shape[0], sample.device)

        # Pad so every downsampling halves the length exactly; edge replication avoids an artificial step at the end.
        multiple = 2 ** (self._num_levels - 1)
        padded_length = math.ceil(length / multiple) * multiple
        if padded_length != length:
            sample = F.pad(sample, (0, padded_length - length), mode="replicate")

        hidden_states = self.conv_in(sample)
        skips = [hidden_states]
        for level, block in enumerate(self.down_levels):
            for resnet, attention in zip(block.resnets, block.attentions):
                hidden_states = attention(resnet(hidden_states, temb))
                skips.append(hidden_states)
            if level < self._num_levels - 1:
                hidden_states = self.downsamplers[level](hidden_states)
                skips.append(hidden_states)

        hidden_states = self.mid_resnet_1(hidden_states, temb)
        hidden_states = self.mid_attention(hidden_states)
        hidden_states = self.mid_resnet_2(hidden_states, temb)

        for index, block in enumerate(self.up_levels):
            for resnet, attention in zip(block.resnets, block.attentions):
                hidden_states = torch.cat([hidden_states, skips.pop()], dim=1)
                hidden_states = attention(resnet(hidden_states, temb))
            if index < self._num_levels - 1:
                hidden_states = F.interpolate(hidden_states, scale_factor=2.0, mode="nearest")
                hidden_states = self.upsamplers[index](hidden_states)

        output = self.conv_out(F.silu(self.norm_out(hidden_states)))[..., :length]
        if not return_dict:
            return (output,)
        return UNet1DMemCtlOutput(sample=output)


def _validate_config(
    *,
    sample_size: int,
    in_channels: int,
    out_channels: int,
    block_out_channels: list[int],
    layers_per_block: int,
    attention_levels: list[bool] | None,
    attention_head_dim: int,
    norm_num_groups: int,
    dropout: float,
    time_embedding_dim: int | None,
) -> list[bool]:
    """Check a `UNet1DMemCtlModel` configuration; return the resolved attention flags."""

    def positive_int(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")

    for name, value in (
        ("sample_size", sample_size),
        ("in_channels", in_channels),
        ("out_channels", out_channels),
        ("layers_per_block", layers_per_block),
        ("attention_head_dim", attention_head_dim),
        ("norm_num_groups", norm_num_groups),
    ):
        positive_int(name, value)
    if time_embedding_dim is not None:
        positive_int("time_embedding_dim", time_embedding_dim)
    if len(block_out_channels) == 0:
        raise ValueError("block_out_channels must list at least one level, e.g. [32, 64, 128]; got []")
    for width in block_out_channels:
        positive_int("every entry of block_out_channels", width)
        if width % norm_num_groups != 0:
            raise ValueError(
                f"every entry of block_out_channels must be divisible by norm_num_groups={norm_num_groups}; "
                f"got {block_out_channels}"
            )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1); got {dropout!r}")

    num_levels = len(block_out_channels)
    if attention_levels is None:
        attention = [level > 0 for level in range(num_levels)]
    else:
        attention = list(attention_levels)
        if len(attention) != num_levels or not all(isinstance(flag, bool) for flag in attention):
            raise ValueError(
                f"attention_levels must hold one bool per level ({num_levels} for block_out_channels="
                f"{block_out_channels}), or be None; got {attention_levels!r}"
            )
    # The middle block always attends at the last level's width.
    for level, width in enumerate(block_out_channels):
        if (attention[level] or level == num_levels - 1) and width % attention_head_dim != 0:
            raise ValueError(
                f"attention_head_dim={attention_head_dim} must divide the channels of every level with attention "
                f"and of the last level; level {level} has {width} channels (block_out_channels={block_out_channels})"
            )
    return attention


UNET_1D_PRESETS: dict[str, dict[str, Any]] = {
    # For tests: two levels, one block each, under 100k parameters.
    "tiny": {
        "block_out_channels": [16, 32],
        "layers_per_block": 1,
        "attention_levels": [False, True],
        "attention_head_dim": 16,
        "norm_num_groups": 4,
    },
    # For CPU runs on ECG5000.
    "small": {
        "block_out_channels": [32, 64, 128],
        "layers_per_block": 2,
        "attention_levels": [False, True, True],
        "attention_head_dim": 32,
        "norm_num_groups": 8,
    },
    # The paper's hierarchical network: channels growing with depth, attention at the intermediate levels (the middle
    # block adds attention at the coarsest resolution).
    "paper": {
        "block_out_channels": [64, 128, 256, 512],
        "layers_per_block": 2,
        "attention_levels": [False, True, True, False],
        "attention_head_dim": 64,
        "norm_num_groups": 32,
    },
}


def create_unet_1d(preset: str = "small", **overrides: Any) -> UNet1DMemCtlModel:
    """
    Build a [`UNet1DMemCtlModel`] from a named preset of `UNET_1D_PRESETS`.

    Args:
        preset (`str`, defaults to `"small"`):
            One of `"tiny"`, `"small"` or `"paper"`.
        **overrides:
            Any [`UNet1DMemCtlModel`] argument, replacing the preset's value (e.g. `sample_size=140`, `dropout=0.1`).

    Returns:
        [`UNet1DMemCtlModel`]: a freshly initialised model (PyTorch's default initialisers, as for every diffusers
        model; training scripts seed them, e.g. with `accelerate.utils.set_seed`).
    """
    if preset not in UNET_1D_PRESETS:
        raise ValueError(f"unknown 1D U-Net preset {preset!r}; valid presets: {sorted(UNET_1D_PRESETS)}")
    config = {**UNET_1D_PRESETS[preset], **overrides}
    return UNet1DMemCtlModel(**config)
