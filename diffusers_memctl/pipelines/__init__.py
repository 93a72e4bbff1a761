"""Pipelines of diffusers-memctl: DDPM/DDIM generation of 1D signals."""

from .pipeline_ddpm_1d import DDPM1DPipeline, SignalPipelineOutput

__all__ = ["DDPM1DPipeline", "SignalPipelineOutput"]
