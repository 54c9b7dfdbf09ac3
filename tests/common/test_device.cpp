// Thread and BLAS setup (common/device.h): --threads reaches LibTorch's pool and keeps OpenBLAS at
// one thread, range errors name the option, and the OpenBLAS core override only ever names a
// kernel set the CPU can run, and nothing when the user chose one.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "common/check.h"
#include "common/device.h"
#include "testing.h"

namespace csipose {
namespace {

TEST(Device, SetCpuThreadsSetsLibTorchAndKeepsOpenBlasAtOne) {
  const int before = at::get_num_threads();
  EXPECT_EQ(set_cpu_threads(1), 1);
  EXPECT_EQ(at::get_num_threads(), 1);
  EXPECT_EQ(set_cpu_threads(2), 2);
  EXPECT_EQ(at::get_num_threads(), 2);
  // Debian's LibTorch loads OpenBLAS (0 = no OpenBLAS in this process, nothing to check).
  const char* env = std::getenv("OPENBLAS_NUM_THREADS");
  if (openblas_threads() > 0 && (env == nullptr || *env == '\0')) EXPECT_EQ(openblas_threads(), 1);
  EXPECT_NE(testing::error_of([] { set_cpu_threads(-1); }).find("--threads"), std::string::npos);
  EXPECT_NE(testing::error_of([] { set_cpu_threads(5000); }).find("5000"), std::string::npos);
  set_cpu_threads(before);
}

TEST(Device, OpenBlasCoreOverrideOnlyNamesRunnableKernels) {
  const char* set = std::getenv("OPENBLAS_CORETYPE");
  const std::string saved = set != nullptr ? set : "";
  setenv("OPENBLAS_CORETYPE", "Haswell", 1);
  EXPECT_EQ(openblas_core_override(), "");  // the user's choice is never overridden
  unsetenv("OPENBLAS_CORETYPE");
  const std::string core = openblas_core_override();
#if defined(__x86_64__) && defined(__GNUC__)
  if (core == "SkylakeX") {
    EXPECT_TRUE(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw"));
  } else if (core == "Haswell") {
    EXPECT_TRUE(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"));
  } else {
    EXPECT_EQ(core, "");
  }
#else
  EXPECT_EQ(core, "");
#endif
  if (!saved.empty()) setenv("OPENBLAS_CORETYPE", saved.c_str(), 1);
}

}  // namespace
}  // namespace csipose
