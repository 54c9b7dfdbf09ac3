#!/usr/bin/env bash
# The main job: set up and build, generate the default synthetic datasets, score the baselines, then
# for wiflow_half (WiFlow layout) and pose_micro (MM-Fi layout):
#   fp32 training (configs/train/<model>.yaml) -> static PTQ to int8 (calibration from the train split)
#   -> QAT from the fp32 model (configs/qat/<model>.yaml) -> conversion to int8 (model.csq)
# plus an int4-weight QAT of pose_micro (configs/qat/pose_micro_int4.yaml, packed int4 in its .csq),
# and writes experiments/main/summary.md: fp32, PTQ and QAT (fake-quant and converted int8) under the
# locked metric, with the fake-quant -> int8 and fp32 -> int8 gaps.
# Re-running continues interrupted training runs (--resume) and skips finished ones; a run whose
# inputs changed since (its config file, the checkpoint it starts from) is moved aside to
# DIR.stale-<time> and started again, so a re-run never reports a model of an older config. A new
# csipose build alone does not restart a run (run.json records the git sha it ran with); delete
# experiments/main to retrain everything with it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BIN=${CSIPOSE_BUILD_DIR:-build}/csipose
OUT=experiments/main
mkdir -p "$OUT"

# The fingerprint of a run's inputs: the config file and the files it starts from.
inputs_key() {
  sha256sum "$@" | sha256sum | cut -d' ' -f1
}

# train|qat CONFIG RUN_DIR [INPUT ...]: a run that resumes when interrupted, is skipped when
# finished, and starts over when CONFIG or an INPUT changed since it began.
run() {
  local cmd=$1 config=$2 dir=$3
  shift 3
  local key
  key=$(inputs_key "$config" "$@")
  if [ -d "$dir" ] && [ "$(cat "$dir.inputs" 2>/dev/null)" != "$key" ]; then
    local stale="$dir.stale-$(date +%Y%m%d-%H%M%S)"
    echo "$dir: its inputs changed since it ran; moved to $stale"
    mv "$dir" "$stale"
  fi
  echo "$key" > "$dir.inputs"
  if [ -f "$dir/report.json" ]; then
    echo "$dir: finished earlier"
  elif [ -f "$dir/config.yaml" ]; then
    "$BIN" "$cmd" --resume "$dir"
  else
    "$BIN" "$cmd" --config "$config" --run-dir "$dir"
  fi
}

if [ ! -f data/synth_small/csi_windows.npy ]; then
  "$BIN" data synth --config configs/data/synth_small.yaml --out data/synth_small
fi
"$BIN" data inspect data/synth_small --json "$OUT/dataset.json" | tee "$OUT/dataset.txt"
"$BIN" baseline --data data/synth_small --json "$OUT/baselines.json" | tee "$OUT/baselines.txt"

for model in wiflow_half pose_micro; do
  run train "configs/train/$model.yaml" "$OUT/$model"
  "$BIN" ptq --checkpoint "$OUT/$model/checkpoints/best.safetensors" --mode static --calibration 32 \
    --out "$OUT/${model}_ptq.csq" --json "$OUT/${model}_ptq.json" | tee "$OUT/${model}_ptq.txt"
  run qat "configs/qat/$model.yaml" "$OUT/${model}_qat" "$OUT/$model/checkpoints/best.safetensors"
done
run qat configs/qat/pose_micro_int4.yaml "$OUT/pose_micro_qat_int4" "$OUT/pose_micro/checkpoints/best.safetensors"

{
  echo "# csipose main job: fp32 -> PTQ / QAT -> int8"
  echo
  for model in wiflow_half pose_micro; do
    echo "## $model"
    echo
    echo '### Static PTQ (histogram / MSE observer, 32 calibration batches of train/clean)'
    echo
    echo '```'
    cat "$OUT/${model}_ptq.txt"
    echo '```'
    echo
    sed -e 's/^# /### /' -e 's/^## /### /' "$OUT/${model}_qat/report.md"
    echo
  done
  echo "## pose_micro, int4 weights (QAT)"
  echo
  sed -e 's/^# /### /' -e 's/^## /### /' "$OUT/pose_micro_qat_int4/report.md"
} > "$OUT/summary.md"
cat "$OUT/summary.md"
echo "main job done: $OUT/summary.md (runs: $OUT/wiflow_half{,_qat}, $OUT/pose_micro{,_qat,_qat_int4})"
