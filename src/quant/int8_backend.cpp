#include "quant/int8_backend.h"

#include <ATen/record_function.h>
#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <memory>
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

/// One GEMM operand as oneDNN sees it: data, dims, strides (no torch::Tensor, so that re-viewing
/// an operand costs no tensor creation on the per-call path).
struct Operand {
  void* data;
  dnnl::memory::dims dims, strides;
};

/// t's dims and strides. A size-1 dimension's stride is irrelevant to torch (views often leave it
/// 1 or 0) but oneDNN validates it, so it gets the dense value.
Operand operand_of(const torch::Tensor& t) {
  Operand o{const_cast<void*>(t.data_ptr()), dnnl::memory::dims(t.sizes().begin(), t.sizes().end()),
            dnnl::memory::dims(t.strides().begin(), t.strides().end())};
  for (int64_t d = t.dim() - 1; d >= 0; --d)
    if (t.size(d) == 1)
      o.strides[static_cast<size_t>(d)] = d + 1 < t.dim() ? o.strides[static_cast<size_t>(d + 1)] * t.size(d + 1) : 1;
  return o;
}

/// A ready-to-run GEMM for one (dims, strides) triple: the primitive and its three memory
/// objects, whose data handles are re-pointed per call. Creating a primitive descriptor costs
/// ~20 us (implementation dispatch) and three memory objects a few more, against ~1.5 us for the
/// whole s8 GEMM of a batch-1 linear layer, so plans are kept: per thread (no locking, and the
/// memory objects' handles are per-caller state), a few dozen per model, bounded by kMaxPlans (a
/// stream of ever-new shapes starts the cache over instead of growing it).
struct GemmPlan {
  dnnl::matmul prim;
  dnnl::memory a, b, c;
};

constexpr size_t kMaxPlans = 512;

/// Runs c = a @ b (s8 x s8 -> s32) through the calling thread's plan for these layouts. Returns
/// false, running nothing, when oneDNN rejects a layout (the caller then makes copies).
bool run_gemm(const Operand& a, const Operand& b, const Operand& c) {
  const dnnl::engine& eng = cpu_engine();
  thread_local std::map<std::vector<int64_t>, GemmPlan> plans;
  thread_local dnnl::stream st(eng);
  std::vector<int64_t> key;
  key.reserve(1 + 6 * a.dims.size());
  key.push_back(static_cast<int64_t>(a.dims.size()));
  for (const Operand* o : {&a, &b, &c}) {
    key.insert(key.end(), o->dims.begin(), o->dims.end());
    key.insert(key.end(), o->strides.begin(), o->strides.end());
  }
  auto it = plans.find(key);
  if (it == plans.end()) {
    using dt = dnnl::memory::data_type;
    try {
      const dnnl::memory::desc a_md(a.dims, dt::s8, a.strides), b_md(b.dims, dt::s8, b.strides),
          c_md(c.dims, dt::s32, c.strides);
#if DNNL_VERSION_MAJOR >= 3
      dnnl::matmul prim(dnnl::matmul::primitive_desc(eng, a_md, b_md, c_md));
#else
      dnnl::matmul prim(dnnl::matmul::primitive_desc(dnnl::matmul::desc(a_md, b_md, c_md), eng));
#endif
      GemmPlan plan{std::move(prim), dnnl::memory(a_md, eng, nullptr), dnnl::memory(b_md, eng, nullptr),
                    dnnl::memory(c_md, eng, nullptr)};
      if (plans.size() >= kMaxPlans) plans.clear();
      it = plans.emplace(std::move(key), std::move(plan)).first;
    } catch (const dnnl::error&) {
      return false;
    }
  }
  GemmPlan& plan = it->second;
  plan.a.set_data_handle(a.data);
  plan.b.set_data_handle(b.data);
  plan.c.set_data_handle(c.data);
  plan.prim.execute(st, {{DNNL_ARG_SRC, plan.a}, {DNNL_ARG_WEIGHTS, plan.b}, {DNNL_ARG_DST, plan.c}});
  st.wait();
  return true;
}

}  // namespace

torch::Tensor onednn_s8_gemm(const torch::Tensor& a, const torch::Tensor& b) {
  RECORD_FUNCTION("csipose::onednn_s8_gemm", std::vector<c10::IValue>());
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
  const auto usable = [nd](const torch::Tensor& t) { return t.stride(nd - 1) == 1 || t.stride(nd - 2) == 1; };
  const torch::Tensor ac = usable(a) ? a : a.contiguous();
  const torch::Tensor bc = usable(b) ? b : b.contiguous();
  torch::Tensor c = torch::empty(out_shape, a.options().dtype(torch::kInt));
  if (c.numel() == 0) return c;
  if (a.size(nd - 1) == 0) return c.zero_();
  Operand oa = operand_of(ac), ob = operand_of(bc), oc = operand_of(c);
  // oneDNN's batched matmul is 2-3x slower than its 2-D one on small products (a batch of one
  // included), so when b has no batch (all its batch dimensions 1) and a's rows are equally spaced
  // across its batch dimensions, the product is run as (B*...*M, K) @ (K, N).
  bool fold = nd > 2;
  for (int64_t d = 0; fold && d < nd - 2; ++d)
    fold = b.size(d) == 1 && (ac.size(d) == 1 || ac.stride(d) == ac.size(d + 1) * ac.stride(d + 1));
  if (fold) {
    const int64_t rows = ac.numel() / ac.size(nd - 1);
    const auto last2 = [](const dnnl::memory::dims& v) { return dnnl::memory::dims(v.end() - 2, v.end()); };
    oa = Operand{oa.data, {rows, ac.size(nd - 1)}, last2(oa.strides)};
    ob = Operand{ob.data, last2(ob.dims), last2(ob.strides)};
    oc = Operand{oc.data, {rows, c.size(nd - 1)}, last2(oc.strides)};
  }
  if (!run_gemm(oa, ob, oc)) {
    // oneDNN refused a layout (e.g. a zero or overlapping stride): dense copies always work.
    CSIPOSE_CHECK(!ac.is_contiguous() || !bc.is_contiguous(), "onednn_s8_gemm: oneDNN rejected the product of ",
                  a.sizes(), " and ", b.sizes());
    return onednn_s8_gemm(ac.contiguous(), bc.contiguous());
  }
  return c;
}

void onednn_s8_gemm_raw(const S8GemmRaw& g) {
  RECORD_FUNCTION("csipose::onednn_s8_gemm_raw", std::vector<c10::IValue>());
  const int64_t m = g.m, k = g.k, n = g.n;
  CSIPOSE_CHECK(m > 0 && k > 0 && n > 0 && g.batch > 0 && g.lda >= k && g.ldc >= n &&
                    (g.b_stride_k == 1 || g.b_stride_n == 1) && g.a != nullptr && g.b != nullptr && g.c != nullptr,
                "onednn_s8_gemm_raw: bad geometry m ", m, " k ", k, " n ", n, " batch ", g.batch, " lda ", g.lda,
                " b strides (", g.b_stride_k, ", ", g.b_stride_n, ") ldc ", g.ldc);
  // For a size-1 dimension oneDNN wants the dense stride (see operand_of).
  const int64_t sa = m == 1 ? k : g.lda, sc = m == 1 ? n : g.ldc;
  const int64_t sbk = k == 1 ? n * g.b_stride_n : g.b_stride_k, sbn = n == 1 ? 1 : g.b_stride_n;
  Operand oa{const_cast<int8_t*>(g.a), {m, k}, {sa, 1}};
  Operand ob{const_cast<int8_t*>(g.b), {k, n}, {sbk, sbn}};
  Operand oc{g.c, {m, n}, {sc, 1}};
  if (g.batch > 1) {
    oa = Operand{oa.data, {g.batch, m, k}, {g.a_batch, sa, 1}};
    // A shared b is a batch of one, broadcast.
    ob = g.b_batch == 0 ? Operand{ob.data, {1, k, n}, {k * n, sbk, sbn}}
                        : Operand{ob.data, {g.batch, k, n}, {g.b_batch, sbk, sbn}};
    oc = Operand{oc.data, {g.batch, m, n}, {g.c_batch, sc, 1}};
  }
  CSIPOSE_CHECK(run_gemm(oa, ob, oc), "onednn_s8_gemm_raw: oneDNN rejected the layout (m ", m, ", k ", k, ", n ", n,
                ", batch ", g.batch, ")");
}
#else
torch::Tensor onednn_s8_gemm(const torch::Tensor&, const torch::Tensor&) {
  fail("onednn_s8_gemm: this build has no oneDNN");
}
void onednn_s8_gemm_raw(const S8GemmRaw&) {
  fail("onednn_s8_gemm_raw: this build has no oneDNN");
}
#endif

}  // namespace csipose
