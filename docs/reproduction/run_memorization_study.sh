#!/usr/bin/env bash
# The memorization-regime study (docs/REPRODUCTION.md, "Memorization regime"): per dataset, 3 training-set sizes x
# 3 independent uniform pretrainings (the replicates; each draws its own seeded subset) x 9 methods fine-tuned from
# each pretraining at matched compute, evaluated on N generated samples. Two shards side by side (one thread each).
# Compact results are exported to docs/reproduction/memorization_<dataset>/.
#   bash docs/reproduction/run_memorization_study.sh digits|pokemon
# Rebuild the tables and figures from the exported CSV alone:
#   python -m diffusers_memctl.cli.report docs/reproduction/memorization_<dataset> --from_csv
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS="${RUNS:-/tmp/study}"
EVAL_N="${EVAL_N:-250}"
SHARED="${SHARED:-../shared/data}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
name="$1"
case "$name" in
  digits)  DATA=(--dataset_name digits --resolution 8 --train_subset_sizes 16,64,256) ;;
  pokemon) DATA=(--train_data_dir "$SHARED/pokemon-artwork" --resolution 8 --train_subset_sizes 8,32,128) ;;
  *) echo "unknown dataset $name (digits|pokemon)" >&2; exit 2 ;;
esac
dir="$RUNS/$name"
ARGS=("${DATA[@]}" --sweep_dir "$dir" --model_preset tiny --train_batch_size 16
      --pretrain_seeds 0,1,2 --pretrain_max_train_steps 1500 --pretrain_learning_rate 5e-4
      --methods all --seeds 0 --max_train_steps 400 --learning_rate 2e-4 --lr_warmup_steps 100 --ema_max_decay 0.999
      --checkpointing_steps 200 --checkpoints_total_limit 1 --save_images_epochs 0 --save_model_epochs 0 --logger none
      --eval_num_samples "$EVAL_N" --num_inference_steps 50 --num_shards 2)
mkdir -p "$dir"
start=$SECONDS
python training_scripts/sweep_ci_grid.py "${ARGS[@]}" --shard_index 0 > "$dir/shard0.log" 2>&1 &
python training_scripts/sweep_ci_grid.py "${ARGS[@]}" --shard_index 1 > "$dir/shard1.log" 2>&1
wait
python -m diffusers_memctl.cli.report "$dir" --export "docs/reproduction/memorization_$name"
echo "memorization_$name: $((SECONDS - start)) s wall" | tee -a "$RUNS/wall_times.txt"
