"""`evaluate` metric: every diffusers-memctl evaluation metric at once (`compute_metrics`)."""

import evaluate

from diffusers_memctl import evaluate_base
from diffusers_memctl.metrics import compute_metrics

_DESCRIPTION = """\
All memorization and distribution metrics of arXiv 2601.21348 (Sec. 5) under the flat names of a run's
`metrics.json`: nearest-neighbour and mean L2 distances, the memorized fraction (distance-ratio test), PCA
Wasserstein/JS/Frechet distances and, for signals, the amplitude-histogram JS distance. Predictions are generated
samples, references training samples, both flattened; the sets may differ in size (padded internally). Wraps
`diffusers_memctl.metrics.compute_metrics`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`):
        Generated samples (at least 2), each flattened to D values.
    references (`list` of `list` of `float`):
        Training samples (at least 2), each flattened to the same D values.
    modality (`str`, defaults to `"image"`):
        `"image"` or `"signal"` (adds `signal_js_mean` and `signal_js_median`).
    n_components (`int`, defaults to `2`):
        Number of principal components K.
    bins (`int`, defaults to `50`):
        Histogram bins of the JS distances.
    memorization_threshold (`float`, defaults to `1/3`):
        Distance-ratio threshold of `memorized_fraction`.
    chunk_size (`int`, *optional*):
        Rows per chunk of the distance computations.
Returns:
    `nn_l2_mean`, `nn_l2_median`, `nn_l2_mean_per_dim`, `nn_l2_median_per_dim`, `mean_l2`, `memorized_fraction`,
    `nn_ratio_mean`, `nn_ratio_median`, `pca_pc{k}_wasserstein_1`, `pca_pc{k}_js_distance`, `pca_frechet_distance`
    and, for signals, `signal_js_mean`, `signal_js_median` (all `float`).
Examples:
    >>> import evaluate
    >>> from diffusers_memctl import evaluate_base
from diffusers_memctl.metrics import evaluate_module_path
    >>> metric = evaluate.load(evaluate_module_path("memctl_metrics"))
    >>> refs = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    >>> metric.compute(predictions=refs, references=refs)["memorized_fraction"]
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MemctlMetrics(evaluate_base.SampleSetMetric):
    DESCRIPTION = _DESCRIPTION
    KWARGS_DESCRIPTION = _KWARGS_DESCRIPTION

    def compute_sets(
        self,
        generated,
        training,
        modality="image",
        n_components=2,
        bins=50,
        memorization_threshold=1 / 3,
        chunk_size=None,
    ):
        return compute_metrics(
            generated,
            training,
            modality=modality,
            n_components=n_components,
            bins=bins,
            memorization_threshold=memorization_threshold,
            chunk_size=chunk_size,
        )
