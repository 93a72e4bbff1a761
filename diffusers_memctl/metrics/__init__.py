"""Memorization and distribution metrics for generated samples.

Pure functions over arrays of shape `(N, ...)` (torch tensors or numpy arrays); every sample is flattened to a vector
of dimension `D`. Definitions follow "Memorization Control in Diffusion Models from Denoising-centric Perspective"
(https://arxiv.org/abs/2601.21348, Sec. 5) and the project's DESIGN.md ("Metric definitions"). One module per family:

- `neighbors` (exact k-nearest neighbours, a cached pruning index) over `brute_force` (bounded-precision brute force)
  and `arrays` (validation of the sample arrays): the search every distance metric uses;
- `memorization`: `nn_l2`, `mean_l2`, `memorized_fraction`, `nn_ratio`, `reference_metrics`, `heldout_metrics` and
  `compute_metrics` (every metric of one run under the flat names of `metrics.json`);
- `distribution`: PCA projections, 1-Wasserstein, Jensen-Shannon and Frechet distances, `signal_js`;
- `feature_space`: replication, precision/recall, density/coverage and the Frechet distance of embeddings.

No function prints, plots or touches files. Distances are computed in chunks (never an `N x M x D` tensor) and the
nearest neighbours are exact (see `nearest_neighbors`). The `evaluate` glue (module names and paths) lives in
:mod:`diffusers_memctl.evaluate_base`, beside the module folders; `EVALUATE_MODULES` and `evaluate_module_path` are
re-exported here for existing code.
"""

from ..evaluate_base import EVALUATE_MODULES, evaluate_module_path
from .brute_force import brute_force_neighbors
from .distribution import (
    frechet_distance,
    js_distance,
    pca_distribution_distances,
    pca_project,
    signal_js,
    wasserstein_1,
)
from .feature_space import (
    ReplicationResult,
    compute_feature_metrics,
    cosine_nearest_neighbors,
    density_coverage,
    feature_reference_metrics,
    precision_recall,
    replication_score,
)
from .memorization import (
    compute_metrics,
    heldout_metrics,
    mean_l2,
    memorized_fraction,
    nn_l2,
    nn_ratio,
    reference_metrics,
)
from .neighbors import NeighborIndex, clear_neighbor_cache, nearest_neighbors

__all__ = [
    "EVALUATE_MODULES",
    "NeighborIndex",
    "ReplicationResult",
    "brute_force_neighbors",
    "clear_neighbor_cache",
    "compute_feature_metrics",
    "compute_metrics",
    "cosine_nearest_neighbors",
    "density_coverage",
    "evaluate_module_path",
    "feature_reference_metrics",
    "frechet_distance",
    "heldout_metrics",
    "js_distance",
    "mean_l2",
    "memorized_fraction",
    "nearest_neighbors",
    "nn_l2",
    "nn_ratio",
    "pca_distribution_distances",
    "pca_project",
    "precision_recall",
    "reference_metrics",
    "replication_score",
    "signal_js",
    "wasserstein_1",
]
