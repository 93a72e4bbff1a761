#!/usr/bin/env bash
# The main job on the embedded default dataset (scikit-learn's 8x8 digits, no download), in a few minutes on a 2-core
# CPU: install, then a memorization regime in miniature. A tiny DDPM is pretrained with uniform timestep sampling on
# a seeded subset of 16 digits (few enough that it starts to copy them), then fine-tuned from that checkpoint with
# uniform sampling, the paper's CI-normal sampler on a late interval [750, 1000] and on an early one [0, 250] (a
# control), at matched compute. Each run is evaluated (copies, distance ratios, held-out quality) and REPORT.md
# answers in plain words whether the late interval copied less.
#   bash scripts/main_job.sh [OUTPUT_DIR] [--smoke] [extra flags for sweep_ci_grid.py]
# --smoke (used by CI) runs the same pipeline with a few steps and samples: it checks that everything runs, nothing more.
# The environment: scripts/setup_env.sh (an active virtual environment, else .venv/ in the clone, built on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/main_job}"
shift || true
smoke=()
extra=()
for flag in "$@"; do
  if [ "$flag" = "--smoke" ]; then
    smoke=(--pretrain_max_train_steps 40 --max_train_steps 20 --lr_warmup_steps 2 --checkpointing_steps 10
      --eval_num_samples 32 --num_inference_steps 5)
  else
    extra+=("$flag")
  fi
done
# shellcheck source=setup_env.sh
source scripts/setup_env.sh ""
accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
  training_scripts/sweep_ci_grid.py \
  --sweep_dir "$out" --dataset_name digits --resolution 8 --model_preset tiny \
  --train_subset_sizes 16 --pretrain_seeds 0 --pretrain_max_train_steps 1500 --pretrain_learning_rate 5e-4 \
  --methods uniform,ci_late,ci_early --seeds 0 --max_train_steps 400 --learning_rate 2e-4 \
  --train_batch_size 16 --lr_warmup_steps 100 --ema_max_decay 0.999 --checkpointing_steps 200 \
  --eval_num_samples 500 --num_inference_steps 50 --save_images_epochs 0 --logger tensorboard "${extra[@]}" "${smoke[@]}"
echo
echo "Results: $out/REPORT.md (figures in $out/figures; the pretrained model and one run folder per method in"
echo "$out/n00016-p0/). Each run folder loads with diffusers.DDPMPipeline.from_pretrained(<folder>)."
