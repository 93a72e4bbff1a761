"""Generate samples from a run folder and write its metric report (metrics.json, samples.npz, plots/).

    python training_scripts/evaluate_memctl.py runs/digits-ci-600-1000 --eval_num_samples 1000

The work is done by `diffusers_memctl.evaluation.evaluate_run`.
"""

from diffusers_memctl.cli.evaluate import cli, main  # noqa: F401  (main: for runpy users)

if __name__ == "__main__":
    cli()
