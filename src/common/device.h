#pragma once
// "cpu" | "cuda" | "cuda:N" | "auto" -> a torch device, with a clear error when CUDA is asked for
// and this LibTorch or machine has none.
#include <c10/core/Device.h>

#include <string>

namespace csipose {

/// Parses a device flag; "auto" picks CUDA when available.
c10::Device parse_device(const std::string& text);
/// True when LibTorch was built with CUDA and a device is visible.
bool cuda_available();
/// Uses every core for intra-op parallelism unless OMP_NUM_THREADS says otherwise: Debian's
/// OpenMP LibTorch otherwise starts with one thread on some machines. Returns the thread count.
int configure_threads();
/// "LibTorch 1.13.1 (CPU)" / "LibTorch 2.11.0 (CUDA, 1 device)".
std::string torch_description();

}  // namespace csipose
