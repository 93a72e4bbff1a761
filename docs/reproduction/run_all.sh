#!/usr/bin/env bash
# The reproduction study on a 2-core CPU: for each dataset, pretrain with uniform sampling, then sweep 10 CI cells
# (t_lower < t_upper on {0, 250, 500, 750, 1000}) plus a uniform baseline, 3 seeds each, as two shards running side by
# side (one thread each), then aggregate. N = $EVAL_N generated samples per cell (default 300, DDIM 50 steps). Run folders go to $RUNS (default /tmp/repro); the small results
# (sweep_results.csv, analysis.json, loss histories, figures, REPORT.md) are copied to docs/reproduction/<dataset>/.
#   bash docs/reproduction/run_all.sh [digits] [ecg_normal] [ecg_all] [pokemon]
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS="${RUNS:-/tmp/repro}"
SHARED="${SHARED:-../shared/data}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
EVAL_N="${EVAL_N:-300}"
COMMON=(--model_preset tiny --lr_warmup_steps 100 --ema_max_decay 0.999 --checkpointing_steps 500
        --save_model_epochs 0 --logger none --eval_num_samples "$EVAL_N" --num_inference_steps 50)

dataset_flags() {
  case "$1" in
    digits)     echo "--dataset_name digits --resolution 16 --train_batch_size 64" ;;
    pokemon)    echo "--train_data_dir $SHARED/pokemon-artwork --resolution 16 --train_batch_size 64" ;;
    ecg_normal) echo "--dataset_name ecg5000 --data_dir $SHARED/ecg5000 --classes 1 --train_batch_size 32" ;;
    ecg_all)    echo "--dataset_name ecg5000 --data_dir $SHARED/ecg5000 --train_batch_size 64" ;;
    *) echo "unknown dataset $1" >&2; exit 2 ;;
  esac
}
# Pokemon (RGB, 919 images = 15 steps an epoch) needs many more steps than digits before its samples stop being noise.
pretrain_epochs() { case "$1" in ecg_*) echo 150 ;; pokemon) echo 300 ;; *) echo 50 ;; esac; }
pretrain_lr() { case "$1" in pokemon) echo 5e-4 ;; *) echo 2e-4 ;; esac; }
finetune_epochs() { case "$1" in ecg_*) echo 30 ;; pokemon) echo 15 ;; *) echo 8 ;; esac; }

run_dataset() {
  local name="$1" flags; flags=$(dataset_flags "$name")
  local dir="$RUNS/$name"
  local start=$SECONDS
  if [ ! -f "$dir/pretrained/train_complete.json" ]; then
    # shellcheck disable=SC2086
    python training_scripts/train_memctl.py $flags "${COMMON[@]}" --output_dir "$dir/pretrained" \
      --num_epochs "$(pretrain_epochs "$name")" --learning_rate "$(pretrain_lr "$name")" --save_images_epochs 0 --seed 0 \
      --overwrite_output_dir
  fi
  local sweep=(--sweep_dir "$dir/sweep" --pretrained_run "$dir/pretrained" --grid_min 0 --grid_max 1000
               --grid_step 250 --seeds 0,1,2 --num_epochs "$(finetune_epochs "$name")" --learning_rate 1e-4
               --save_images_epochs 0 --num_shards 2)
  # shellcheck disable=SC2086
  python training_scripts/sweep_ci_grid.py $flags "${COMMON[@]}" "${sweep[@]}" --shard_index 0 > "$dir/shard0.log" 2>&1 &
  # shellcheck disable=SC2086
  python training_scripts/sweep_ci_grid.py $flags "${COMMON[@]}" "${sweep[@]}" --shard_index 1 > "$dir/shard1.log" 2>&1
  wait
  # shellcheck disable=SC2086
  python training_scripts/sweep_ci_grid.py $flags "${COMMON[@]}" "${sweep[@]}" --shard_index 0 --analyze_only
  python -m diffusers_memctl.cli.report "$dir/sweep" --export "docs/reproduction/$name"
  echo "$name: $((SECONDS - start)) s wall" | tee -a "$RUNS/wall_times.txt"
}

for name in "${@:-digits ecg_normal pokemon ecg_all}"; do
  for n in $name; do mkdir -p "$RUNS/$n"; run_dataset "$n"; done
done
