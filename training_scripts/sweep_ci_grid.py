"""Fine-tune one pretrained model for every interval of a CI grid, evaluate each cell, and analyse the sweep.

    python training_scripts/sweep_ci_grid.py --sweep_dir runs/digits-sweep --pretrain_epochs 20 --num_epochs 10 \
        --cells 0:300,300:600,600:1000 --seeds 0,1 --model_preset tiny

Resumable (finished cells are skipped), shardable (--num_shards/--shard_index or SLURM array variables) and runnable
under `accelerate launch`. The work is done by `diffusers_memctl.experiments.sweep.run_sweep`.
"""

from diffusers_memctl.cli.sweep import cli, main  # noqa: F401  (main: for runpy users)

if __name__ == "__main__":
    cli()
