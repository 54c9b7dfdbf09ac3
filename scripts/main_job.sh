#!/usr/bin/env bash
# The main job: set up, generate the default synthetic dataset, inspect it and score the
# baselines on it under the locked metric. Writes experiments/main/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BIN=${CSIPOSE_BUILD_DIR:-build}/csipose
OUT=experiments/main
DATA=data/synth_small
mkdir -p "$OUT"
"$BIN" data synth --config configs/data/synth_small.yaml --out "$DATA"
"$BIN" data inspect "$DATA" --json "$OUT/dataset.json" | tee "$OUT/dataset.txt"
"$BIN" baseline --data "$DATA" --json "$OUT/baselines.json" | tee "$OUT/baselines.txt"
echo "main job done: $OUT/"
