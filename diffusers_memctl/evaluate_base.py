"""Shared base of the `evaluate` modules in ``diffusers_memctl/evaluate_modules/`` (loaded with `evaluate.load`).

Each module compares generated samples (`predictions`) with training samples (`references`), both flattened float
vectors; only its description and `_compute` differ. The math lives in :mod:`diffusers_memctl.metrics`; this module
holds the glue beside the module folders: their names and paths, and the padding of two sample sets of different
sizes into one `evaluate` table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import evaluate
import numpy as np
import torch

__all__ = [
    "CITATION",
    "EVALUATE_MODULES",
    "SampleSetMetric",
    "evaluate_module_path",
    "pad_evaluate_batch",
    "unpad_evaluate_column",
]

EVALUATE_MODULES = (
    "memctl_memorization",
    "memctl_metrics",
    "memctl_nn_l2",
    "memctl_pca_distances",
    "memctl_signal_js",
)


def evaluate_module_path(name: str) -> str:
    """Folder of one of our `evaluate` modules, for `evaluate.load(evaluate_module_path(name))`.

    Args:
        name (`str`):
            One of `memctl_memorization`, `memctl_metrics`, `memctl_nn_l2`, `memctl_pca_distances`,
            `memctl_signal_js`.

    Returns:
        `str`: absolute path of the installed module folder.
    """
    if name not in EVALUATE_MODULES:
        raise ValueError(f"unknown evaluate module {name!r}; valid names are {list(EVALUATE_MODULES)}")
    path = Path(__file__).resolve().parent / "evaluate_modules" / name
    if not (path / f"{name}.py").is_file():
        raise FileNotFoundError(f"evaluate module {name!r} is not installed at {path}")
    return str(path)


def _rows(x: Any) -> list:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return list(x.reshape(x.shape[0], -1)) if x.ndim >= 2 else list(x)
    return list(x)


def pad_evaluate_batch(predictions: Any, references: Any) -> tuple[list, list]:
    """Pads the shorter of two sample sets with `None` rows so `evaluate` can store them as one table.

    `evaluate` keeps predictions and references as rows of one table, but generated and training sets have
    different sizes; padded rows are dropped again by [`unpad_evaluate_column`].

    Args:
        predictions (sequence or array of shape `(N, ...)`):
            Generated samples (flattened per row).
        references (sequence or array of shape `(M, ...)`):
            Training samples (flattened per row).

    Returns:
        `tuple[list, list]`: both sets as lists of equal length `max(N, M)`.
    """
    preds, refs = _rows(predictions), _rows(references)
    size = max(len(preds), len(refs))
    return preds + [None] * (size - len(preds)), refs + [None] * (size - len(refs))


def unpad_evaluate_column(column: Sequence[Any], name: str) -> np.ndarray:
    """Drops the `None` rows added by [`pad_evaluate_batch`] and stacks the rest into a float64 `(N, D)` array.

    Args:
        column (sequence of float sequences or `None`):
            One column of an `evaluate` module's stored table.
        name (`str`):
            Column name used in error messages.

    Returns:
        `np.ndarray`: the samples, shape `(N, D)`.
    """
    rows = [row for row in column if row is not None]
    if not rows:
        raise ValueError(f"`{name}` holds no samples; pass at least one flattened sample")
    lengths = {len(row) for row in rows}
    if len(lengths) != 1:
        raise ValueError(
            f"every row of `{name}` must have the same length (a flattened sample), got {sorted(lengths)}"
        )
    return np.asarray(rows, dtype=np.float64)


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
