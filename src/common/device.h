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
/// OpenMP LibTorch otherwise starts with one thread on some machines. Also pins OpenBLAS to one
/// thread (see set_cpu_threads). Returns the thread count.
int configure_threads();
/// Sets the CPU threads: LibTorch's intra-op pool (OpenMP, which oneDNN shares) gets n, and
/// OpenBLAS (Debian's LibTorch calls it for fp32 GEMMs; at::set_num_threads does not reach its
/// own pthread pool) gets one, unless OPENBLAS_NUM_THREADS is set. Two pools spinning on the
/// same cores slowed a two-thread pose_micro training step 4x on the 2-core VM (1,240 samples/s,
/// against 5,224 with OpenBLAS at one thread); GEMMs called inside OpenMP regions gain nothing
/// from a second pool. n = 0 means all cores. Returns LibTorch's thread count now in effect.
int set_cpu_threads(int64_t n);
/// OpenBLAS's thread count, or 0 when no OpenBLAS is loaded.
int openblas_threads();
/// OpenBLAS 0.3.21 (Debian 12) does not recognise some newer x86 CPUs (this project's Xeon VMs
/// among them) and falls back to its Prescott (SSE3) kernels, which run fp32 GEMMs 2-3x slower
/// than its AVX-512 ones. When the loaded OpenBLAS reports such a generic core while the CPU has
/// AVX-512 (AVX2 + FMA), returns the OPENBLAS_CORETYPE to force ("SkylakeX" / "Haswell"); else "".
/// Also "" when OPENBLAS_CORETYPE is already set or no OpenBLAS is loaded.
std::string openblas_core_override();
/// Keeps freed heap memory in the process for reuse (glibc malloc: trim threshold 1 GiB, mmap
/// threshold 1 GiB; 32 MiB where glibc refuses more). With glibc's defaults every tensor of a few MB
/// that a forward frees goes back to the kernel (munmap, or a heap trim once the free top of the
/// heap passes 2x the dynamic mmap threshold), and the next forward page-faults it in again,
/// zeroed: 100k page faults per wiflow_half batch-256 forward, 19% of a pose_micro int8 forward in
/// the kernel. A 32 MiB mmap threshold (until 2026-12-02) still did that to every larger tensor:
/// wiflow_full's batch-256 fp32 forward took 7.0 s with it and 1.3-1.6 s with 1 GiB, one thread.
/// Peak memory is unchanged; the process keeps its peak resident until it exits.
/// Leaves malloc alone when CSIPOSE_MALLOC=system, when any glibc MALLOC_*_ variable or a
/// glibc.malloc tunable is set (the user's own settings win), and on non-glibc systems.
/// Call once, first thing in main. Returns allocator_description().
std::string configure_allocator();
/// What configure_allocator did: "glibc, trim 1 GiB / mmap 1 GiB" (or "/ mmap 32 MiB"), "glibc defaults
/// (CSIPOSE_MALLOC=system)", "glibc, settings from the environment" or "system".
std::string allocator_description();
/// "LibTorch 1.13.1 (CPU)" / "LibTorch 2.11.0 (CUDA, 1 device)".
std::string torch_description();

}  // namespace csipose
