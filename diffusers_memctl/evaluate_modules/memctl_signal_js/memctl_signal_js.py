"""`evaluate` metric: amplitude-histogram Jensen-Shannon distance of generated signals to the training set."""

import evaluate

from diffusers_memctl import evaluate_base
from diffusers_memctl.metrics import signal_js

_DESCRIPTION = """\
For every generated signal (predictions), the base-2 Jensen-Shannon distance between its amplitude histogram and
the pooled amplitude histogram of the training signals (references), on shared equal-width bins over the pooled range;
reported as mean and median over generated signals (arXiv 2601.21348, Sec. 5.2). The sets may differ in size
(padded internally). The math lives in `diffusers_memctl.metrics`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`):
        Generated signals, each flattened to D values.
    references (`list` of `list` of `float`):
        Training signals, each flattened to the same D values.
    bins (`int`, defaults to `50`):
        Number of shared bins.
Returns:
    signal_js_mean (`float`): mean JS distance, in [0, 1].
    signal_js_median (`float`): median JS distance, in [0, 1].
Examples:
    >>> import evaluate
    >>> from diffusers_memctl import evaluate_base
from diffusers_memctl.metrics import evaluate_module_path
    >>> metric = evaluate.load(evaluate_module_path("memctl_signal_js"))
    >>> metric.compute(predictions=[[0.0, 1.0]], references=[[1.0, 0.0], [0.0, 1.0]], bins=2)
    {'signal_js_mean': 0.0, 'signal_js_median': 0.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MemctlSignalJs(evaluate_base.SampleSetMetric):
    DESCRIPTION = _DESCRIPTION
    KWARGS_DESCRIPTION = _KWARGS_DESCRIPTION

    def compute_sets(self, generated, training, bins=50):
        return {f"signal_js_{key}": value for key, value in signal_js(generated, training, bins=bins).items()}
