#!/usr/bin/env bash
# Where learning happens: gradient profiles (docs/REPRODUCTION.md, last section) of three small pretrained models,
# trained here with uniform sampling on one CPU thread: digits 16x16 (1,797 images), ECG5000 normal beats (class 1)
# and the memorization regime (32 digits, 3000 steps at lr 5e-4, as in run_memorization_probe.sh).
# Each profile: 20 bins, 32 seeded batches of the training batch size per bin, stratified timesteps, per-sample
# alignment on 1 batch per bin. The profiles and figures are copied to docs/reproduction/gradient_profiles/.
# digits32_ft_uniform / digits32_ft_ci750 fine-tune digits32 for 1000 more steps (uniform / CI [750, 1000]) and are
# profiled the same way: what does training on the late interval do to the profile?
#   bash docs/reproduction/run_gradient_profiles.sh [digits] [ecg_normal] [digits32] [digits32_ft_uniform] ...
#   (RUNS=/tmp/diag by default; a model already trained there is reused)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS="${RUNS:-/tmp/diag}"
SHARED="${SHARED:-../shared/data}"
OUT=docs/reproduction/gradient_profiles
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
COMMON=(--model_preset tiny --lr_warmup_steps 100 --ema_max_decay 0.999 --checkpointing_steps 0
        --save_images_epochs 0 --save_model_epochs 0 --logger none --num_inference_steps 50 --seed 0
        --overwrite_output_dir)
train() {  # name, flags...
  local name="$1"; shift
  if [ ! -f "$RUNS/$name/train_complete.json" ]; then
    python training_scripts/train_memctl.py "${COMMON[@]}" "$@" --output_dir "$RUNS/$name"
  fi
}
flags() {
  case "$1" in
    digits)     echo "--dataset_name digits --resolution 16 --train_batch_size 64 --max_train_steps 1500 --learning_rate 2e-4 --eval_num_samples 0" ;;
    ecg_normal) echo "--dataset_name ecg5000 --data_dir $SHARED/ecg5000 --classes 1 --train_batch_size 32 --max_train_steps 1500 --learning_rate 2e-4 --eval_num_samples 0" ;;
    digits32)   echo "--dataset_name digits --resolution 16 --max_train_samples 32 --train_batch_size 32 --max_train_steps 3000 --learning_rate 5e-4 --eval_num_samples 200" ;;
    # 1000 more steps from digits32 (as the memorization probe's cells): uniform, and the paper's late interval.
    digits32_ft_uniform) echo "--dataset_name digits --resolution 16 --max_train_samples 32 --train_batch_size 32 --max_train_steps 1000 --learning_rate 2e-4 --eval_num_samples 200 --pretrained_model_name_or_path $RUNS/digits32" ;;
    digits32_ft_ci750)   echo "--dataset_name digits --resolution 16 --max_train_samples 32 --train_batch_size 32 --max_train_steps 1000 --learning_rate 2e-4 --eval_num_samples 200 --pretrained_model_name_or_path $RUNS/digits32 --timestep_sampling ci_normal --ci_lower 750 --ci_upper 1000" ;;
    *) echo "unknown model $1" >&2; exit 2 ;;
  esac
}
SAMPLERS="uniform,ci:0-250,ci:500-1000,ci:750-1000,logit_normal,uniform+min_snr,uniform+p2"
mkdir -p "$OUT" "$RUNS/profiles"
for name in "${@:-digits ecg_normal digits32 digits32_ft_uniform digits32_ft_ci750}"; do
  for n in $name; do
    # shellcheck disable=SC2046
    train "$n" $(flags "$n")
    python training_scripts/diagnose_memctl.py "$RUNS/$n" --output_dir "$RUNS/profiles/$n" --num_bins 20 \
      --num_batches 32 --per_sample_batches 1 --samplers "$SAMPLERS" --device cpu 2>&1 | grep -v "it/s\]" \
      | tee "$RUNS/profiles/$n.log"
    cp "$RUNS/profiles/$n/gradient_profile.json" "$OUT/$n.json"
    cp "$RUNS/profiles/$n/plots/gradient_profile.png" "$OUT/${n}_profile.png"
    cp "$RUNS/profiles/$n/plots/gradient_contribution.png" "$OUT/${n}_contribution.png"
  done
done
python docs/reproduction/gradient_profiles/summarize.py > "$OUT/SUMMARY.md"
