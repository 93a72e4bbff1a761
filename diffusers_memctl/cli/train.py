"""``memctl-train`` / ``training_scripts/train_memctl.py``: pretrain or fine-tune with a timestep sampler.

Examples:
    accelerate launch training_scripts/train_memctl.py --dataset_name digits --output_dir runs/digits-uniform
    accelerate launch training_scripts/train_memctl.py --pretrained_model_name_or_path runs/digits-uniform \\
        --timestep_sampling ci_normal --ci_lower 600 --ci_upper 1000 --output_dir runs/digits-ci-600-1000
"""

from __future__ import annotations

import json
import logging
import sys

from ..args import (
    DataArguments,
    EvaluationArguments,
    HubArguments,
    ModelArguments,
    SamplingArguments,
    TrainingArguments,
    TrainingOptions,
    parse_arguments,
)
from ..runner import run_training_job
from ..validation import validate_options

GROUPS = [DataArguments, ModelArguments, SamplingArguments, TrainingArguments, EvaluationArguments, HubArguments]


def parse_training_options(argv: list[str] | None = None) -> TrainingOptions:
    """Parse the training flags (and ``--config FILE``) into [`TrainingOptions`]."""
    groups, _ = parse_arguments(GROUPS, argv, description=__doc__.splitlines()[0])
    return TrainingOptions(*groups)


def main(argv: list[str] | None = None):
    """Train, evaluate and write the model card; returns ``(TrainResult, metrics)`` (or the options on --dry_run)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    options = parse_training_options(argv)
    if options.training.dry_run:
        # Every flag is checked as a run checks it, without loading or writing anything.
        validate_options(options)
        print(json.dumps(options.to_dict(), indent=2))
        return options
    # The job validates every flag before anything is loaded or written.
    result, report = run_training_job(options)
    print(f"run folder: {result.output_dir} ({result.global_step} steps, {result.train_seconds:.0f} s)")
    if report is not None:
        for name, value in report["metrics"].items():
            print(f"  {name:28s} {value:.6g}")
    return result, report


def cli() -> None:
    """Console entry point: :func:`main` with one-line errors (see `diffusers_memctl.cli.run_cli`)."""
    from . import run_cli

    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
