#include "common/device.h"

#include <ATen/Parallel.h>

#include <cstdlib>
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

int configure_threads() {
  const char* env = std::getenv("OMP_NUM_THREADS");
  if (env == nullptr || *env == '\0') {
    const unsigned n = std::thread::hardware_concurrency();
    if (n > 0 && static_cast<unsigned>(at::get_num_threads()) < n) at::set_num_threads(static_cast<int>(n));
  }
  return at::get_num_threads();
}

std::string torch_description() {
  std::string s = "LibTorch " TORCH_VERSION;
  if (cuda_available())
    s += " (CUDA, " + std::to_string(torch::cuda::device_count()) + " device(s))";
  else
    s += " (CPU)";
  return s;
}

}  // namespace csipose
