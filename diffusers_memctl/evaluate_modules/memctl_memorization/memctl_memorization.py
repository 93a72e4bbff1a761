"""`evaluate` metric: share of generated samples that memorize a training sample (distance-ratio test)."""

import evaluate

from diffusers_memctl import evaluate_base
from diffusers_memctl.metrics import memorized_fraction

_DESCRIPTION = """\
Fraction of generated samples (predictions) whose distance to the nearest training sample (references) is less
than `threshold` (default 1/3) times the distance to the second-nearest one (Yoon et al. 2023; Gu et al. 2023,
arXiv 2310.02664). A generated sample identical to a training sample counts as memorized. Samples are flattened
float vectors; the sets may differ in size (padded internally). The math lives in `diffusers_memctl.metrics`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`):
        Generated samples, each flattened to D values.
    references (`list` of `list` of `float`):
        Training samples (at least 2), each flattened to the same D values.
    threshold (`float`, defaults to `1/3`):
        Distance-ratio threshold in (0, 1].
    chunk_size (`int`, *optional*):
        Rows per chunk of the distance matrix.
Returns:
    memorized_fraction (`float`): share in [0, 1].
Examples:
    >>> import evaluate
    >>> from diffusers_memctl import evaluate_base
from diffusers_memctl.metrics import evaluate_module_path
    >>> metric = evaluate.load(evaluate_module_path("memctl_memorization"))
    >>> metric.compute(predictions=[[0.0], [5.0]], references=[[0.1], [10.0]])
    {'memorized_fraction': 0.5}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MemctlMemorization(evaluate_base.SampleSetMetric):
    DESCRIPTION = _DESCRIPTION
    KWARGS_DESCRIPTION = _KWARGS_DESCRIPTION

    def compute_sets(self, generated, training, threshold=1 / 3, chunk_size=None):
        return {"memorized_fraction": memorized_fraction(generated, training, threshold, chunk_size=chunk_size)}
