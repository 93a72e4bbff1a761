"""`evaluate` metric: distribution distances between generated and training samples in PCA space."""

import evaluate

from diffusers_memctl import evaluate_base
from diffusers_memctl.metrics import pca_distribution_distances

_DESCRIPTION = """\
Projects generated samples (predictions) and training samples (references) on the leading principal components
of the training set (or of both sets) and compares them per component with the 1-Wasserstein distance and the
base-2 Jensen-Shannon distance of histograms on shared bins, plus a Frechet distance (FID convention) between the
K-dimensional projections, as in arXiv 2601.21348 (Sec. 5.1, Fig. 4). The sets may differ in size (padded
internally). The math lives in `diffusers_memctl.metrics`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`):
        Generated samples (at least 2), each flattened to D values.
    references (`list` of `list` of `float`):
        Training samples (at least 2), each flattened to the same D values.
    n_components (`int`, defaults to `2`):
        Number of principal components K.
    fit_on (`str`, defaults to `"train"`):
        Fit PCA on `"train"` (references) or `"both"` sets.
    bins (`int`, defaults to `50`):
        Histogram bins of the JS distance.
Returns:
    pca_pc{k}_wasserstein_1 (`float`): 1-Wasserstein distance along component k (k = 1..K).
    pca_pc{k}_js_distance (`float`): base-2 JS distance along component k, in [0, 1].
    pca_frechet_distance (`float`): Frechet distance between Gaussian fits of the K-dimensional projections.
Examples:
    >>> import evaluate
    >>> from diffusers_memctl import evaluate_base
from diffusers_memctl.metrics import evaluate_module_path
    >>> metric = evaluate.load(evaluate_module_path("memctl_pca_distances"))
    >>> refs = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    >>> round(metric.compute(predictions=refs, references=refs)["pca_pc1_wasserstein_1"], 12)
    0.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MemctlPcaDistances(evaluate_base.SampleSetMetric):
    DESCRIPTION = _DESCRIPTION
    KWARGS_DESCRIPTION = _KWARGS_DESCRIPTION

    def compute_sets(self, generated, training, n_components=2, fit_on="train", bins=50):
        return pca_distribution_distances(generated, training, n_components=n_components, fit_on=fit_on, bins=bins)
