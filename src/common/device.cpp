#include "common/device.h"

#include <ATen/Parallel.h>

#include <dlfcn.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <thread>

#include <torch/torch.h>
#include <torch/version.h>

#include "common/check.h"

namespace csipose {

bool cuda_available() { return torch::cuda::is_available(); }

c10::Device parse_device(const std::string& text) {
  if (text == "auto") return cuda_available() ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
  if (text == "cpu") return c10::Device(c10::kCPU);
  if (text == "cuda" || text.rfind("cuda:", 0) == 0) {
    CSIPOSE_CHECK(cuda_available(), "--device ", text,
                  ": CUDA is not available (this LibTorch has no CUDA, or no GPU is visible); use cpu or auto");
    return text == "cuda" ? c10::Device(c10::kCUDA, 0) : c10::Device(text);
  }
  fail("--device: unknown value \"", text, "\"; expected one of: cpu, cuda, cuda:N, auto");
}

namespace {

/// OpenBLAS's entry points, looked up at run time: it is LibTorch's BLAS on Debian (libblas.so.3
/// alternative) and absent elsewhere (MKL builds, the pip LibTorch), where there is nothing to set.
void pin_openblas_threads() {
  if (const char* env = std::getenv("OPENBLAS_NUM_THREADS"); env != nullptr && *env != '\0') return;
  using SetThreads = void (*)(int);
  if (auto* f = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) f(1);
}

}  // namespace

int configure_threads() {
  const char* env = std::getenv("OMP_NUM_THREADS");
  if (env == nullptr || *env == '\0') {
    const unsigned n = std::thread::hardware_concurrency();
    if (n > 0 && static_cast<unsigned>(at::get_num_threads()) < n) at::set_num_threads(static_cast<int>(n));
  }
  pin_openblas_threads();
  return at::get_num_threads();
}

int set_cpu_threads(int64_t n) {
  CSIPOSE_CHECK(n >= 0 && n <= 4096, "--threads: expected 0 (all cores) .. 4096, got ", n);
  if (n == 0) n = std::max<int64_t>(1, std::thread::hardware_concurrency());
  at::set_num_threads(static_cast<int>(n));
  pin_openblas_threads();
  return at::get_num_threads();
}

int openblas_threads() {
  using GetThreads = int (*)();
  auto* f = reinterpret_cast<GetThreads>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  return f != nullptr ? f() : 0;
}

std::string openblas_core_override() {
  if (const char* forced = std::getenv("OPENBLAS_CORETYPE"); forced != nullptr) return "";
  using CoreName = char* (*)();
  auto* corename = reinterpret_cast<CoreName>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  if (corename == nullptr) return "";
  const char* name = corename();
  if (name == nullptr) return "";
  std::string core(name);
  std::transform(core.begin(), core.end(), core.begin(), [](unsigned char ch) { return std::tolower(ch); });
  if (core != "prescott" && core != "core2" && core != "nehalem" && core != "unknown") return "";
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#endif
  return "";
}

namespace {
std::string& allocator_state() {
  static std::string state = "system";
  return state;
}
}  // namespace

std::string configure_allocator() {
#if defined(__GLIBC__)
  static const std::string done = [] {
    if (const char* v = std::getenv("CSIPOSE_MALLOC"); v != nullptr && std::string(v) == "system")
      return std::string("glibc defaults (CSIPOSE_MALLOC=system)");
    for (const char* name : {"MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_",
                             "MALLOC_ARENA_MAX", "MALLOC_ARENA_TEST"})
      if (std::getenv(name) != nullptr) return std::string("glibc, settings from the environment");
    if (const char* t = std::getenv("GLIBC_TUNABLES"); t != nullptr && std::strstr(t, "glibc.malloc") != nullptr)
      return std::string("glibc, settings from the environment");
    // Order matters: setting the mmap threshold first turns off glibc's dynamic thresholds, which
    // would otherwise move the trim threshold again.
    // Blocks up to 1 GiB come from the heap and are reused (Debian 12's glibc 2.36 takes it); a
    // glibc that refuses it gets 32 MiB.
    const bool big = mallopt(M_MMAP_THRESHOLD, 1 << 30) == 1;
    const bool ok = (big || mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1) && mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1;
    if (!ok) return std::string("glibc defaults (mallopt refused)");
    return std::string(big ? "glibc, trim 1 GiB / mmap 1 GiB" : "glibc, trim 1 GiB / mmap 32 MiB");
  }();
  allocator_state() = done;
#endif
  return allocator_state();
}

std::string allocator_description() { return allocator_state(); }

std::string torch_description() {
  std::string s = "LibTorch " TORCH_VERSION;
  if (cuda_available())
    s += " (CUDA, " + std::to_string(torch::cuda::device_count()) + " device(s))";
  else
    s += " (CPU)";
  return s;
}

}  // namespace csipose
