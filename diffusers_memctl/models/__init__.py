"""Models of diffusers-memctl: the hierarchical 1D U-Net for signals and UNet2DModel presets for images."""

from .unet_1d_memctl import UNET_1D_PRESETS, UNet1DMemCtlModel, UNet1DMemCtlOutput, create_unet_1d
from .unet_2d_presets import UNET_2D_PRESETS, create_unet_2d

__all__ = [
    "UNET_1D_PRESETS",
    "UNET_2D_PRESETS",
    "UNet1DMemCtlModel",
    "UNet1DMemCtlOutput",
    "create_unet_1d",
    "create_unet_2d",
]
