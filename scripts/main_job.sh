#!/usr/bin/env bash
# The main job: set up and build, generate the default synthetic dataset, score the baselines,
# then train wiflow_half with the full fp32 recipe (configs/train/wiflow_half.yaml) and evaluate it
# under the locked metric. Outputs: experiments/main/ (dataset, baselines, summary) and the run
# directory experiments/main/wiflow_half/ (config, metrics.jsonl, checkpoints, report.md/json).
# Re-running continues an interrupted training run (--resume) instead of starting over.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BIN=${CSIPOSE_BUILD_DIR:-build}/csipose
OUT=experiments/main
DATA=data/synth_small
RUN=$OUT/wiflow_half
mkdir -p "$OUT"
if [ ! -f "$DATA/csi_windows.npy" ]; then
  "$BIN" data synth --config configs/data/synth_small.yaml --out "$DATA"
fi
"$BIN" data inspect "$DATA" --json "$OUT/dataset.json" | tee "$OUT/dataset.txt"
"$BIN" baseline --data "$DATA" --json "$OUT/baselines.json" | tee "$OUT/baselines.txt"
if [ -f "$RUN/config.yaml" ] && [ ! -f "$RUN/report.json" ]; then
  "$BIN" train --resume "$RUN"
elif [ ! -f "$RUN/report.json" ]; then
  "$BIN" train --config configs/train/wiflow_half.yaml --set data.root="$DATA" --run-dir "$RUN"
fi
cat "$RUN/report.md" | tee "$OUT/summary.md"
echo "main job done: $OUT/ (training run: $RUN/)"
