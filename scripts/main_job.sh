#!/usr/bin/env bash
# The main job on the embedded default dataset (scikit-learn's 8x8 digits, upsampled to 16x16), on a 2-core CPU in a
# few minutes: install, pretrain a tiny DDPM with uniform timestep sampling, fine-tune it with the paper's CI-normal
# sampler on an early interval [0, 300] and a late one [600, 1000] plus a uniform baseline, evaluate each
# (memorization + distribution metrics), and write the sweep report.
#   bash scripts/main_job.sh [OUTPUT_DIR] [extra flags for sweep_ci_grid.py]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/main_job}"
shift || true
python -m pip install --quiet --disable-pip-version-check torch==2.13.0
python -m pip install --quiet --disable-pip-version-check -e ".[plot]"
accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
  training_scripts/sweep_ci_grid.py \
  --sweep_dir "$out" --dataset_name digits --resolution 16 --model_preset tiny \
  --pretrain_epochs 20 --pretrain_learning_rate 2e-4 --num_epochs 10 --learning_rate 1e-4 \
  --train_batch_size 64 --lr_warmup_steps 50 --ema_max_decay 0.999 --checkpointing_steps 200 \
  --cells 0:300,600:1000 --seeds 0 --eval_num_samples 500 --num_inference_steps 50 \
  --save_images_epochs 10 --logger tensorboard "$@"
echo
echo "Results: $out/REPORT.md (figures in $out/figures, one run folder per cell in $out/cells/, the pretrained"
echo "model in $out/pretrained). Each run folder loads with diffusers.DDPMPipeline.from_pretrained(<folder>)."
