#pragma once
// "cpu" | "cuda" | "cuda:N" | "auto" -> a torch device, with a clear error when CUDA is asked for
// and this LibTorch or machine has none.
#include <c10/core/Device.h>

#include <cstdint>
#include <string>

namespace csipose {

/// Parses a device flag; "auto" picks CUDA when available.
c10::Device parse_device(const std::string& text);
/// True when LibTorch was built with CUDA and a device is visible.
bool cuda_available();
/// Uses every core for intra-op parallelism unless OMP_NUM_THREADS says otherwise: Debian's
/// OpenMP LibTorch otherwise starts with one thread on some machines. Returns the thread count.
int configure_threads();
/// Sets the CPU threads of everything that computes on the CPU: LibTorch's intra-op pool (OpenMP,
/// which oneDNN shares) and OpenBLAS's own pthread pool (Debian's LibTorch calls OpenBLAS for fp32
/// GEMMs, and at::set_num_threads does not reach it: a "one thread" fp32 run would otherwise still
/// multiply on every core). n = 0 means all cores. Returns the thread count now in effect.
int set_cpu_threads(int64_t n);
/// OpenBLAS 0.3.21 (Debian 12) does not recognise some newer x86 CPUs (this project's Xeon VMs
/// among them) and falls back to its Prescott (SSE3) kernels, which run fp32 GEMMs 2-3x slower
/// than its AVX-512 ones. When the loaded OpenBLAS reports such a generic core while the CPU has
/// AVX-512 (AVX2 + FMA), returns the OPENBLAS_CORETYPE to force ("SkylakeX" / "Haswell"); else "".
/// Also "" when OPENBLAS_CORETYPE is already set or no OpenBLAS is loaded.
std::string openblas_core_override();
/// "LibTorch 1.13.1 (CPU)" / "LibTorch 2.11.0 (CUDA, 1 device)".
std::string torch_description();

}  // namespace csipose
