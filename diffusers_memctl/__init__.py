"""diffusers-memctl: memorization control for Hugging Face diffusers.

Implements the confidence-interval timestep sampling of "Memorization Control in Diffusion Models from
Denoising-centric Perspective" (arXiv 2601.21348) with the peer samplers and loss weightings users compare it against,
a 1D U-Net and pipeline for signals, memorization and distribution metrics, sweeps and Hub publishing.
"""

__version__ = "0.1.0"

from .diagnostics import GradientProfile, contribution_shares, estimate_gradient_profile, profile_run
from .features import DEFAULT_FEATURE_EXTRACTOR, FeatureCache, FeatureExtractor
from .loss_weighting import (
    LOSS_WEIGHTINGS,
    compute_loss_weights,
    compute_snr,
    importance_weights,
    min_snr_weights,
    p2_weights,
)
from .metrics import (
    NeighborIndex,
    clear_neighbor_cache,
    compute_feature_metrics,
    compute_metrics,
    density_coverage,
    feature_reference_metrics,
    mean_l2,
    memorized_fraction,
    nearest_neighbors,
    nn_l2,
    nn_ratio,
    pca_distribution_distances,
    precision_recall,
    reference_metrics,
    replication_score,
    signal_js,
)
from .models import UNET_1D_PRESETS, UNET_2D_PRESETS, UNet1DMemCtlModel, create_unet_1d, create_unet_2d
from .pipelines import DDPM1DPipeline, SignalPipelineOutput
from .scheduling_memctl import (
    MEMCTL_CONFIG_DEFAULTS,
    MemCtlDDIMScheduler,
    MemCtlDDPMScheduler,
    MemorizationControlMixin,
)
from .timestep_sampling import (
    TIMESTEP_SAMPLERS,
    CINormalTimestepSampler,
    TimestepSampler,
    ci_normal_parameters,
    ci_normal_timestep_probs,
    create_timestep_sampler,
)

__all__ = [
    "DEFAULT_FEATURE_EXTRACTOR",
    "LOSS_WEIGHTINGS",
    "MEMCTL_CONFIG_DEFAULTS",
    "TIMESTEP_SAMPLERS",
    "UNET_1D_PRESETS",
    "UNET_2D_PRESETS",
    "CINormalTimestepSampler",
    "DDPM1DPipeline",
    "FeatureCache",
    "FeatureExtractor",
    "GradientProfile",
    "MemCtlDDIMScheduler",
    "MemCtlDDPMScheduler",
    "MemorizationControlMixin",
    "NeighborIndex",
    "SignalPipelineOutput",
    "TimestepSampler",
    "UNet1DMemCtlModel",
    "__version__",
    "ci_normal_parameters",
    "ci_normal_timestep_probs",
    "clear_neighbor_cache",
    "compute_feature_metrics",
    "compute_loss_weights",
    "compute_metrics",
    "compute_snr",
    "contribution_shares",
    "create_timestep_sampler",
    "create_unet_1d",
    "create_unet_2d",
    "density_coverage",
    "feature_reference_metrics",
    "estimate_gradient_profile",
    "importance_weights",
    "mean_l2",
    "memorized_fraction",
    "min_snr_weights",
    "nearest_neighbors",
    "nn_l2",
    "nn_ratio",
    "p2_weights",
    "pca_distribution_distances",
    "precision_recall",
    "profile_run",
    "reference_metrics",
    "replication_score",
    "signal_js",
]
