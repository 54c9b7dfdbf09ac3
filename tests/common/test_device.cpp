// Thread and BLAS setup (common/device.h): --threads reaches LibTorch's pool and keeps OpenBLAS at
// one thread, range errors name the option, and the OpenBLAS core override only ever names a
// kernel set the CPU can run, and nothing when the user chose one; the allocator setup keeps a
// freed block in the process, so touching it again costs no page faults.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <cstdlib>
#include <cstring>
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
  if (openblas_threads() > 0 && (env == nullptr || *env == '\0')) {
    EXPECT_EQ(openblas_threads(), 1);
  }
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

namespace {
long minor_faults() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}
/// Page faults of allocating, touching and freeing `bytes`.
long faults_of_block(size_t bytes) {
  const long before = minor_faults();
  void* p = std::malloc(bytes);
  std::memset(p, 1, bytes);
  asm volatile("" : : "r"(p) : "memory");  // the compiler may not drop the block
  std::free(p);
  return minor_faults() - before;
}
}  // namespace

TEST(Device, AllocatorKeepsFreedTensorsMemory) {
  // The user's own settings, by the rule configure_allocator follows.
  const char* own = std::getenv("CSIPOSE_MALLOC");
  const bool system = own != nullptr && std::string(own) == "system";
  bool from_env = false;
  for (const char* name : {"MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_",
                           "MALLOC_ARENA_MAX", "MALLOC_ARENA_TEST"})
    from_env = from_env || std::getenv(name) != nullptr;
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  from_env = from_env || (tunables != nullptr && std::string(tunables).find("glibc.malloc") != std::string::npos);
  const std::string what = configure_allocator();
  EXPECT_EQ(allocator_description(), what);
  EXPECT_EQ(configure_allocator(), what);  // once: a second call changes nothing
#if defined(__GLIBC__)
  if (system || from_env) {  // left alone, and said so
    EXPECT_EQ(what, system ? "glibc defaults (CSIPOSE_MALLOC=system)" : "glibc, settings from the environment");
    return;
  }
  // glibc 2.36 (Debian 12) takes the 1 GiB mmap threshold; an older one that caps it gets 32 MiB.
  EXPECT_TRUE(what == "glibc, trim 1 GiB / mmap 1 GiB" || what == "glibc, trim 1 GiB / mmap 32 MiB") << what;
  // A 24 MiB block (a batch-256 activation) is reused: the second round touches resident pages.
  // glibc's defaults mmap it and give it back on free, so each round faults in its 6,144 pages.
  // Under the 1 GiB threshold a 96 MiB block (a batch-256 wiflow_full activation) is reused too.
  std::vector<size_t> sizes = {size_t{24} << 20};
  if (what == "glibc, trim 1 GiB / mmap 1 GiB") sizes.push_back(size_t{96} << 20);
  for (size_t bytes : sizes) {
    const long first = faults_of_block(bytes);
    const long second = faults_of_block(bytes);
    EXPECT_GT(first + second, 0) << bytes;
    EXPECT_LT(second, 64) << bytes << " bytes: first round " << first << " faults";
  }
#else
  EXPECT_EQ(what, "system");
#endif
}

}  // namespace
}  // namespace csipose
