#!/usr/bin/env bash
# Installs what csipose needs on Debian 12 (as root) and builds it into build/. Idempotent: packages
# already present are not reinstalled, and the build is incremental.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  build-essential cmake ninja-build git pkg-config
  libtorch-dev libopenblas0-pthread          # LibTorch 1.13 (CPU) + a fast BLAS (reference BLAS is ~50x slower)
  libdnnl-dev ocl-icd-opencl-dev             # oneDNN 2.6: the fast CPU int8 backend (quant/int8_backend.h); its CMake config needs OpenCL
  libyaml-cpp-dev libboost-program-options-dev zlib1g-dev
  libgtest-dev libgmock-dev
  python3-torch python3-numpy                # cross-checks in tests only (Debian's /usr/bin/python3)
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends "${missing[@]}"
fi

BUILD_DIR=${CSIPOSE_BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD_DIR" -j "$(nproc)"
