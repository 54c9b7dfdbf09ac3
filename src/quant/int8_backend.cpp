#include "quant/int8_backend.h"

#include <torch/torch.h>

#include <atomic>

#include "common/check.h"

#if CSIPOSE_WITH_ONEDNN
#include <oneapi/dnnl/dnnl.hpp>
#endif

namespace csipose {
namespace {

std::atomic<int> g_backend{static_cast<int>(
#if CSIPOSE_WITH_ONEDNN
    Int8BackendKind::onednn
#else
    Int8BackendKind::reference
#endif
    )};

}  // namespace

const char* to_string(Int8BackendKind k) { return k == Int8BackendKind::onednn ? "onednn" : "reference"; }

Int8BackendKind parse_int8_backend(const std::string& text) {
  if (text == "reference") return Int8BackendKind::reference;
  if (text == "onednn") return Int8BackendKind::onednn;
  fail("unknown int8 backend \"", text, "\"; expected reference or onednn");
}

bool onednn_available() {
#if CSIPOSE_WITH_ONEDNN
  return true;
#else
  return false;
#endif
}

void set_int8_backend(Int8BackendKind k) {
  CSIPOSE_CHECK(k != Int8BackendKind::onednn || onednn_available(),
                "the onednn int8 backend is not in this build (CMake did not find dnnl: apt-get install libdnnl-dev)");
  g_backend.store(static_cast<int>(k));
}

Int8BackendKind int8_backend() { return static_cast<Int8BackendKind>(g_backend.load()); }

bool use_onednn(const torch::Device& device) {
  return device.is_cpu() && int8_backend() == Int8BackendKind::onednn;
}

#if CSIPOSE_WITH_ONEDNN
namespace {

const dnnl::engine& cpu_engine() {
  static const dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

dnnl::memory::dims dims_of(const torch::Tensor& t) { return dnnl::memory::dims(t.sizes().begin(), t.sizes().end()); }
dnnl::memory::dims strides_of(const torch::Tensor& t) {
  return dnnl::memory::dims(t.strides().begin(), t.strides().end());
}

}  // namespace

torch::Tensor onednn_s8_gemm(const torch::Tensor& a, const torch::Tensor& b) {
  CSIPOSE_CHECK(a.scalar_type() == torch::kInt8 && b.scalar_type() == torch::kInt8 && a.dim() == 3 && b.dim() == 3 &&
                    a.size(0) == b.size(0) && a.size(2) == b.size(1) && a.device().is_cpu() && b.device().is_cpu(),
                "onednn_s8_gemm: expected int8 CPU tensors (B, M, K) and (B, K, N), got ", a.sizes(), " and ", b.sizes());
  // oneDNN wants non-negative strides and a dense last-or-second-to-last dimension; torch views
  // from im2col and transposes satisfy that, everything else is made contiguous first.
  const auto usable = [](const torch::Tensor& t) {
    return t.stride(2) == 1 || t.stride(1) == 1;
  };
  const torch::Tensor ac = usable(a) ? a : a.contiguous();
  const torch::Tensor bc = usable(b) ? b : b.contiguous();
  torch::Tensor c = torch::empty({a.size(0), a.size(1), b.size(2)}, a.options().dtype(torch::kInt));
  if (c.numel() == 0) return c;
  if (a.size(2) == 0) return c.zero_();
  using dt = dnnl::memory::data_type;
  const dnnl::memory::desc a_md(dims_of(ac), dt::s8, strides_of(ac));
  const dnnl::memory::desc b_md(dims_of(bc), dt::s8, strides_of(bc));
  const dnnl::memory::desc c_md(dims_of(c), dt::s32, strides_of(c));
  const dnnl::engine& eng = cpu_engine();
  // oneDNN's primitive cache makes a repeated shape cheap to re-create; a stream per call keeps
  // concurrent callers apart.
#if DNNL_VERSION_MAJOR >= 3
  const dnnl::matmul::primitive_desc pd(eng, a_md, b_md, c_md);
#else
  const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, b_md, c_md), eng);
#endif
  const dnnl::matmul prim(pd);
  dnnl::memory am(a_md, eng, const_cast<void*>(ac.data_ptr()));
  dnnl::memory bm(b_md, eng, const_cast<void*>(bc.data_ptr()));
  dnnl::memory cm(c_md, eng, c.data_ptr());
  dnnl::stream st(eng);
  prim.execute(st, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
  st.wait();
  return c;
}
#else
torch::Tensor onednn_s8_gemm(const torch::Tensor&, const torch::Tensor&) {
  fail("onednn_s8_gemm: this build has no oneDNN");
}
#endif

}  // namespace csipose
