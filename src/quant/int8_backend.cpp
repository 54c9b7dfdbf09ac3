#include "quant/int8_backend.h"

#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <vector>

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
/// Strides for oneDNN: a size-1 dimension's stride is irrelevant to torch (views often leave it
/// 1 or 0) but oneDNN validates it, so it gets the dense value.
dnnl::memory::dims strides_of(const torch::Tensor& t) {
  dnnl::memory::dims st(t.strides().begin(), t.strides().end());
  for (int64_t d = t.dim() - 1; d >= 0; --d)
    if (t.size(d) == 1) st[static_cast<size_t>(d)] = d + 1 < t.dim() ? st[static_cast<size_t>(d + 1)] * t.size(d + 1) : 1;
  return st;
}

/// A memory descriptor of t's layout; when oneDNN rejects the strides, t is made contiguous.
dnnl::memory::desc describe(torch::Tensor& t, dnnl::memory::data_type type) {
  try {
    return dnnl::memory::desc(dims_of(t), type, strides_of(t));
  } catch (const dnnl::error&) {
    t = t.contiguous();
    return dnnl::memory::desc(dims_of(t), type, strides_of(t));
  }
}

}  // namespace

torch::Tensor onednn_s8_gemm(const torch::Tensor& a, const torch::Tensor& b) {
  const int64_t nd = a.dim();
  bool ok = a.scalar_type() == torch::kInt8 && b.scalar_type() == torch::kInt8 && nd >= 2 && b.dim() == nd &&
            a.size(nd - 1) == b.size(nd - 2) && a.device().is_cpu() && b.device().is_cpu();
  std::vector<int64_t> out_shape;
  for (int64_t d = 0; ok && d < nd - 2; ++d) {
    ok = a.size(d) == b.size(d) || a.size(d) == 1 || b.size(d) == 1;
    out_shape.push_back(std::max(a.size(d), b.size(d)));
  }
  CSIPOSE_CHECK(ok, "onednn_s8_gemm: expected int8 CPU tensors (..., M, K) and (..., K, N) of one rank with "
                "broadcastable batch dimensions, got ", a.sizes(), " and ", b.sizes());
  out_shape.push_back(a.size(nd - 2));
  out_shape.push_back(b.size(nd - 1));
  // oneDNN wants a dense last-or-second-to-last dimension; anything else is made contiguous first.
  const auto usable = [nd](const torch::Tensor& t) {
    return t.stride(nd - 1) == 1 || t.stride(nd - 2) == 1;
  };
  torch::Tensor ac = usable(a) ? a : a.contiguous();
  torch::Tensor bc = usable(b) ? b : b.contiguous();
  torch::Tensor c = torch::empty(out_shape, a.options().dtype(torch::kInt));
  if (c.numel() == 0) return c;
  if (a.size(nd - 1) == 0) return c.zero_();
  using dt = dnnl::memory::data_type;
  const dnnl::memory::desc a_md = describe(ac, dt::s8);
  const dnnl::memory::desc b_md = describe(bc, dt::s8);
  const dnnl::memory::desc c_md = describe(c, dt::s32);
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
