"""``memctl-sweep`` / ``training_scripts/sweep_ci_grid.py``: fine-tune every cell of a CI grid, evaluate, analyse.

Example (small, CPU):
    python training_scripts/sweep_ci_grid.py --sweep_dir runs/digits-sweep --pretrain_epochs 20 --num_epochs 10 \\
        --cells 0:300,300:600,600:1000 --seeds 0,1 --model_preset tiny --eval_num_samples 500 --num_inference_steps 50
"""

from __future__ import annotations

import logging
import sys

from ..args import SweepArguments, TrainingOptions, parse_arguments
from ..distributed import process_state
from ..experiments.study import is_study, run_study
from ..experiments.sweep import run_sweep
from ..hub import push_sweep_to_hub
from ..reports.cards import write_sweep_card
from . import run_cli
from .train import GROUPS


def main(argv: list[str] | None = None) -> list[dict]:
    """Run this shard of the sweep and write the analysis; returns the result rows."""

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    groups, _ = parse_arguments([*GROUPS, SweepArguments], argv, description=__doc__.splitlines()[0])
    *training_groups, sweep = groups
    options = TrainingOptions(*training_groups)
    rows = run_study(options, sweep) if is_study(sweep) else run_sweep(options, sweep)
    if process_state().is_main_process:
        print(f"{len(rows)} evaluated runs in {sweep.sweep_dir}; report: {sweep.sweep_dir}/REPORT.md")
        if options.hub.push_to_hub:
            if not options.hub.hub_model_id:
                raise ValueError("--push_to_hub needs --hub_model_id (user/name)")
            write_sweep_card(sweep.sweep_dir, repo_id=options.hub.hub_model_id)
            print(push_sweep_to_hub(sweep.sweep_dir, options.hub.hub_model_id, private=options.hub.hub_private_repo))
    return rows


def cli() -> None:
    """Console entry point: :func:`main` with one-line errors (see `diffusers_memctl.cli.run_cli`)."""

    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
