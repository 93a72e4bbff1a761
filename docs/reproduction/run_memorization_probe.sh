#!/usr/bin/env bash
# The memorization regime on a 2-core CPU: 32 digits are few enough for the tiny U-Net to start copying them.
# Pretrain with uniform sampling for 3000 steps (memorized_fraction > 0), then fine-tune every cell of the 250-step
# grid plus a uniform baseline for 1000 more steps, 3 seeds, N = $EVAL_N samples (default 300, DDIM 50 steps).
# Results are exported to docs/reproduction/digits32_memorization/.
#   bash docs/reproduction/run_memorization_probe.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS="${RUNS:-/tmp/repro}"
EVAL_N="${EVAL_N:-300}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
dir="$RUNS/digits32"
COMMON=(--dataset_name digits --resolution 16 --max_train_samples 32 --train_batch_size 32 --model_preset tiny
        --lr_warmup_steps 100 --ema_max_decay 0.999 --checkpointing_steps 500 --save_images_epochs 0
        --save_model_epochs 0 --logger none --eval_num_samples "$EVAL_N" --num_inference_steps 50)
start=$SECONDS
if [ ! -f "$dir/pretrained/train_complete.json" ]; then
  python training_scripts/train_memctl.py "${COMMON[@]}" --output_dir "$dir/pretrained" --max_train_steps 3000 \
    --learning_rate 5e-4 --seed 0 --overwrite_output_dir
fi
sweep=(--sweep_dir "$dir/sweep" --pretrained_run "$dir/pretrained" --grid_min 0 --grid_max 1000 --grid_step 250
       --seeds 0,1,2 --max_train_steps 1000 --learning_rate 2e-4 --num_shards 2)
python training_scripts/sweep_ci_grid.py "${COMMON[@]}" "${sweep[@]}" --shard_index 0 > "$dir/shard0.log" 2>&1 &
python training_scripts/sweep_ci_grid.py "${COMMON[@]}" "${sweep[@]}" --shard_index 1 > "$dir/shard1.log" 2>&1
wait
python training_scripts/sweep_ci_grid.py "${COMMON[@]}" "${sweep[@]}" --shard_index 0 --analyze_only
python -m diffusers_memctl.cli.report "$dir/sweep" --export docs/reproduction/digits32_memorization
echo "digits32_memorization: $((SECONDS - start)) s wall" | tee -a "$RUNS/wall_times.txt"
