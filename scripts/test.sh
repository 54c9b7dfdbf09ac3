#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite (GoogleTest via CTest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cd "${CSIPOSE_BUILD_DIR:-build}"
ctest --output-on-failure -j "$(nproc)" --timeout 900
