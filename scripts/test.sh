#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite (GoogleTest via CTest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cd "${CSIPOSE_BUILD_DIR:-build}"
# Parallelism comes from ctest -j; one OpenMP thread per test process, because OpenMP programs
# that oversubscribe the cores slow each other down many times over.
OMP_NUM_THREADS=1 ctest --output-on-failure -j "$(nproc)" --timeout 900
