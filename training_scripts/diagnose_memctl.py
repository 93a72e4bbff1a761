"""Per-timestep gradient profile of a run folder: where does the model learn, and what would an interval change?

    python training_scripts/diagnose_memctl.py runs/digits --samplers uniform,ci:750-1000

Writes gradient_profile.json and plots/gradient_*.png; the work is done by `diffusers_memctl.diagnostics`.
"""

from diffusers_memctl.cli.diagnose import cli, main  # noqa: F401  (main: for runpy users)

if __name__ == "__main__":
    cli()
