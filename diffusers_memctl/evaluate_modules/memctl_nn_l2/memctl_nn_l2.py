"""`evaluate` metric: nearest-neighbour and mean L2 distances from generated to training samples."""

import evaluate

from diffusers_memctl import evaluate_base
from diffusers_memctl.metrics import mean_l2, nn_l2

_DESCRIPTION = """\
L2 distances between generated samples (predictions) and the training set (references), as used to measure
memorization in arXiv 2601.21348 (Sec. 5). `nn_l2_*` summarize each generated sample's distance to its nearest
training sample (exact neighbours); `mean_l2` is the mean over generated samples of the mean distance to all training
samples. Samples are flattened float vectors; the two sets may differ in size (the shorter one is padded with null
rows internally). The math lives in `diffusers_memctl.metrics`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`):
        Generated samples, each flattened to D values.
    references (`list` of `list` of `float`):
        Training samples, each flattened to the same D values.
    chunk_size (`int`, *optional*):
        Rows per chunk of the distance computations.
Returns:
    nn_l2_mean (`float`): mean nearest-neighbour distance.
    nn_l2_median (`float`): median nearest-neighbour distance.
    nn_l2_mean_per_dim (`float`): `nn_l2_mean / sqrt(D)`.
    nn_l2_median_per_dim (`float`): `nn_l2_median / sqrt(D)`.
    mean_l2 (`float`): mean over generated samples of the mean distance to all training samples.
Examples:
    >>> import evaluate
    >>> from diffusers_memctl import evaluate_base
from diffusers_memctl.metrics import evaluate_module_path
    >>> metric = evaluate.load(evaluate_module_path("memctl_nn_l2"))
    >>> metric.compute(predictions=[[0.0, 0.0]], references=[[3.0, 4.0], [0.0, 1.0]])["nn_l2_mean"]
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MemctlNnL2(evaluate_base.SampleSetMetric):
    DESCRIPTION = _DESCRIPTION
    KWARGS_DESCRIPTION = _KWARGS_DESCRIPTION

    def compute_sets(self, generated, training, chunk_size=None):
        summary = nn_l2(generated, training, chunk_size=chunk_size)
        result = {f"nn_l2_{key}": value for key, value in summary.items()}
        result["mean_l2"] = mean_l2(generated, training, chunk_size=chunk_size)
        return result
