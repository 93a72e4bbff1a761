#!/usr/bin/env bash
# The matched-quality frontier study (docs/REPRODUCTION.md, "Does CI-late beat training less?"): per dataset, two
# training-set sizes (digits 16 and 64, the Pokemon stand-in 8 and 32, at 8x8) x 5 independent uniform pretrainings
# (1500 steps, each evaluated along its own steps: the plainest "train less") x 8 arms fine-tuned 500 steps from each
# pretraining and evaluated at steps 0, 100, ..., 500 (metrics_history.jsonl; step 0 = the pretrained model).
# Arms: uniform at the study's learning rate (2e-4) and at half and a quarter of it, ci_late, ci_mid, the logit-normal
# mass-matched to ci_late, importance_ci_late, min_snr. Every evaluation: 250 samples, DDIM 25 steps, seed 0.
#   bash docs/reproduction/run_frontier_study.sh digits|pokemon        (one dataset; the two ran side by side)
# Each dataset runs as two processes (one thread each) sharing the study folder: the first takes every size in turn,
# the second starts on the larger size; finished and running groups/runs are skipped through the folders' locks.
# The study folder is resumable: rerunning the command skips finished runs and resumes killed ones.
# Raw trajectory rows (one per arm, size, pretraining, step) go to docs/reproduction/frontier_<dataset>/, from which
#   python -m diffusers_memctl.experiments.frontier docs/reproduction/frontier_<dataset>
# rebuilds analysis.json, the tables (REPORT.md) and the figures.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS="${RUNS:-/tmp/study}"
SHARED="${SHARED:-../shared/data}"
PRETRAIN_SEEDS="${PRETRAIN_SEEDS:-0,1,2,3,4}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
name="$1"
case "$name" in
  digits)  DATA=(--dataset_name digits --resolution 8); SIZES=16,64; LARGER=64 ;;
  pokemon) DATA=(--train_data_dir "$SHARED/pokemon-artwork" --resolution 8); SIZES=8,32; LARGER=32 ;;
  *) echo "unknown dataset $name (digits|pokemon)" >&2; exit 2 ;;
esac
dir="$RUNS/frontier_$name"
ARGS=("${DATA[@]}" --sweep_dir "$dir" --model_preset tiny --train_batch_size 16
      --pretrain_seeds "$PRETRAIN_SEEDS" --pretrain_max_train_steps 1500 --pretrain_learning_rate 5e-4
      --pretrain_eval_every_steps 300
      --methods uniform,uniform_lr0.5,uniform_lr0.25,ci_late,ci_mid,logit_normal_matched,importance_ci_late,min_snr
      --seeds 0 --max_train_steps 500 --learning_rate 2e-4 --lr_warmup_steps 100 --ema_max_decay 0.999
      --eval_every_steps 100 --checkpointing_steps 100 --checkpoints_total_limit 1
      --save_images_epochs 0 --save_model_epochs 0 --logger none
      --eval_num_samples 250 --num_inference_steps 25)
mkdir -p "$dir"
start=$SECONDS
python training_scripts/sweep_ci_grid.py "${ARGS[@]}" --train_subset_sizes "$SIZES" > "$dir/study.log" 2>&1 &
python training_scripts/sweep_ci_grid.py "${ARGS[@]}" --train_subset_sizes "$LARGER" > "$dir/study_n$LARGER.log" 2>&1
wait
echo "frontier_$name: $((SECONDS - start)) s wall" | tee -a "$RUNS/frontier_wall_times.txt"
python -m diffusers_memctl.experiments.frontier "docs/reproduction/frontier_$name" --export "$dir"
