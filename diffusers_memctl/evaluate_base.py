"""Shared base of the `evaluate` modules in ``diffusers_memctl/evaluate_modules/`` (loaded with `evaluate.load`).

Each module compares generated samples (`predictions`) with training samples (`references`), both flattened float
vectors; only its description and `_compute` differ. The math lives in :mod:`diffusers_memctl.metrics`.
"""

from __future__ import annotations

from typing import Any

import datasets
import evaluate

from .metrics import pad_evaluate_batch, unpad_evaluate_column

__all__ = ["CITATION", "SampleSetMetric"]

CITATION = """\
@article{memctl2026,
  title={Memorization Control in Diffusion Models from Denoising-centric Perspective},
  journal={arXiv preprint arXiv:2601.21348},
  year={2026}
}
"""


class SampleSetMetric(evaluate.Metric):
    """An `evaluate.Metric` over two sets of flattened samples that may differ in size.

    Subclasses set `DESCRIPTION` and `KWARGS_DESCRIPTION` and implement `_compute(generated, training, **kwargs)`
    on numpy arrays. (`evaluate.load` takes the first `EvaluationModule` subclass defined in a module's namespace, so
    modules import this class through its module, ``from diffusers_memctl import evaluate_base``.)
    """

    DESCRIPTION: str = ""
    KWARGS_DESCRIPTION: str = ""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=self.DESCRIPTION,
            citation=CITATION,
            inputs_description=self.KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Sequence(datasets.Value("float64")),
                }
            ),
            reference_urls=["https://arxiv.org/abs/2601.21348"],
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Adds generated (`predictions`) and training (`references`) samples; the two may differ in number."""
        # evaluate stores both as columns of one table: pad the shorter with null rows, dropped again in _compute.
        predictions, references = pad_evaluate_batch(predictions, references)
        super().add_batch(predictions=predictions, references=references, **kwargs)

    def _compute(self, predictions, references, **kwargs: Any) -> dict[str, float]:
        generated = unpad_evaluate_column(predictions, "predictions")
        training = unpad_evaluate_column(references, "references")
        return self.compute_sets(generated, training, **kwargs)

    def compute_sets(self, generated, training, **kwargs: Any) -> dict[str, float]:
        raise NotImplementedError
