"""Pipelines of diffusers-memctl: DDPM/DDIM generation of 1D signals."""

# Imported for its side effect too: `save_pretrained` records the UNet's module path in model_index.json and
# diffusers resolves it from sys.modules when loading.
from ..models import unet_1d_memctl  # noqa: F401
from .pipeline_ddpm_1d import DDPM1DPipeline, SignalPipelineOutput
from .remote_code import REMOTE_PIPELINE_FILE, REMOTE_UNET_FILE, write_remote_code

__all__ = [
    "DDPM1DPipeline",
    "REMOTE_PIPELINE_FILE",
    "REMOTE_UNET_FILE",
    "SignalPipelineOutput",
    "write_remote_code",
]
