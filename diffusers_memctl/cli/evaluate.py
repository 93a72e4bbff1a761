"""``memctl-evaluate`` / ``training_scripts/evaluate_memctl.py``: metric report of a run folder (or Hub id)."""

from __future__ import annotations

import argparse
import logging
import sys

from ..args import EvaluationArguments, parse_arguments
from ..evaluation import evaluate_run
from ..hub import write_model_card
from ..run_folder import RunFolder


def _positional(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="Run folder (output_dir of a training run) or a Hub id.")
    parser.add_argument("--no_plots", action="store_true", help="Skip the figures.")
    parser.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available).")


def main(argv: list[str] | None = None) -> dict:
    """Evaluate a run and write ``metrics.json``, ``samples.npz``, ``plots/`` and a local run's card; returns the report."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    (e,), rest = parse_arguments([EvaluationArguments], argv, description=__doc__, extra=_positional)
    report = evaluate_run(rest.run_dir, e, device=rest.device, make_plots=not rest.no_plots)
    if RunFolder(rest.run_dir).has_training_config:
        # The card shows the metrics: a local run's card is rewritten with the new ones (and written when a failed
        # evaluation after training left none).
        write_model_card(rest.run_dir)
    for name, value in report["metrics"].items():
        print(f"{name:28s} {value:.6g}")
    return report


def cli() -> None:
    """Console entry point: :func:`main` with one-line errors (see `diffusers_memctl.cli.run_cli`)."""
    from . import run_cli

    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
