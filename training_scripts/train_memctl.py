"""Pretrain or fine-tune a DDPM with memorization-control timestep sampling.

    accelerate launch training_scripts/train_memctl.py --dataset_name digits --output_dir runs/digits-uniform
    accelerate launch training_scripts/train_memctl.py --pretrained_model_name_or_path runs/digits-uniform \
        --timestep_sampling ci_normal --ci_lower 600 --ci_upper 1000 --output_dir runs/digits-ci-600-1000

Every flag is a field of the dataclasses in `diffusers_memctl.args` (`--help` lists them; `--config FILE` loads
them from JSON/YAML). The loop itself is `diffusers_memctl.training.train`.
"""

from diffusers_memctl.cli.train import cli, main  # noqa: F401  (main: for runpy users)

if __name__ == "__main__":
    cli()
