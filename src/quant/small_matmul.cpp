#include "quant/small_matmul.h"

#include <ATen/ExpandUtils.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/torch.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "common/check.h"
#include "quant/int8_ops.h"

namespace csipose {
namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CSIPOSE_MM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CSIPOSE_MM_CLONES
#endif

/// c (m x n, row-major, overwritten) = a (m x k, strides sam, sak) @ b (k x n, rows ldb apart,
/// contiguous along n): output rows as axpys of b's rows (the inner loop vectorizes), four rows at
/// a time so that each row of b is loaded once for four (1.45x over one row at a time on 20 x 8 x
/// 20 products; every element is still the sum over k in increasing order, c = 0, then c += a * b
/// as a float32 multiply and an add: this file is built without FMA contraction, so every clone
/// does the same operations and small_matmul_int8 can reproduce them).
CSIPOSE_MM_CLONES
void matmul_rows(const float* a, int64_t sam, int64_t sak, const float* b, int64_t ldb, float* c, int64_t m, int64_t k,
                 int64_t n) {
  int64_t i = 0;
  for (; i + 4 <= m; i += 4) {
    float* c0 = c + i * n;
    float* c1 = c0 + n;
    float* c2 = c1 + n;
    float* c3 = c2 + n;
    for (int64_t j = 0; j < n; ++j) c0[j] = c1[j] = c2[j] = c3[j] = 0.0f;
    for (int64_t kk = 0; kk < k; ++kk) {
      const float a0 = a[i * sam + kk * sak], a1 = a[(i + 1) * sam + kk * sak];
      const float a2 = a[(i + 2) * sam + kk * sak], a3 = a[(i + 3) * sam + kk * sak];
      const float* bk = b + kk * ldb;
      for (int64_t j = 0; j < n; ++j) {
        const float bv = bk[j];
        c0[j] += a0 * bv;
        c1[j] += a1 * bv;
        c2[j] += a2 * bv;
        c3[j] += a3 * bv;
      }
    }
  }
  for (; i < m; ++i) {
    float* ci = c + i * n;
    for (int64_t j = 0; j < n; ++j) ci[j] = 0.0f;
    for (int64_t kk = 0; kk < k; ++kk) {
      const float aik = a[i * sam + kk * sak];
      const float* bk = b + kk * ldb;
      for (int64_t j = 0; j < n; ++j) ci[j] += aik * bk[j];
    }
  }
}

/// Offsets of every batch item of an expanded tensor (row-major order of its batch dimensions).
std::vector<int64_t> batch_offsets(const torch::Tensor& t, int64_t batch_dims) {
  int64_t count = 1;
  for (int64_t d = 0; d < batch_dims; ++d) count *= t.size(d);
  std::vector<int64_t> off(static_cast<size_t>(count), 0);
  std::vector<int64_t> idx(static_cast<size_t>(batch_dims), 0);
  for (int64_t i = 0; i < count; ++i) {
    int64_t o = 0;
    for (int64_t d = 0; d < batch_dims; ++d) o += idx[static_cast<size_t>(d)] * t.stride(d);
    off[static_cast<size_t>(i)] = o;
    for (int64_t d = batch_dims - 1; d >= 0; --d) {
      if (++idx[static_cast<size_t>(d)] < t.size(d)) break;
      idx[static_cast<size_t>(d)] = 0;
    }
  }
  return off;
}

/// 16 float32 lanes (GCC vector extension: one AVX-512 register, or narrower ones lane for lane).
typedef float V16 __attribute__((vector_size(64)));

/// One batch item of small_matmul_int8: f = the dequantized codes (k x n), then each output row
/// i = sum over the nonzero a[i][kk] in increasing kk of a[i][kk] * f[kk] (as matmul_rows' sums),
/// quantized into dst. `nz` lists row i's nonzero columns at nz[start[i] .. start[i + 1]).
/// False when a quantized value is not finite.
CSIPOSE_MM_CLONES
bool matmul_rows_codes(const float* a, const int64_t* nz, const int64_t* start, const int8_t* q, float zp, float s,
                       int8_t* dst, float* f, float* rows, int64_t m, int64_t k, int64_t n, const QuantParams& to,
                       Rounding r) {
  // dequantize_tensor's float32 (q - zp) * scale (every int8 code converts exactly).
  for (int64_t j = 0; j < k * n; ++j) f[j] = (static_cast<float>(q[j]) - zp) * s;
  for (int64_t i = 0; i < m; ++i) {
    float* row = rows + i * n;
    // 16 columns at a time with the sums in a register (a sum kept in memory across the nonzeros
    // waited on store forwarding); each element still c = 0, then c += a * f over the nonzeros in
    // increasing kk.
    int64_t j0 = 0;
    for (; j0 + 16 <= n; j0 += 16) {
      V16 acc = {};
      for (int64_t t = start[i]; t < start[i + 1]; ++t) {
        V16 fk;
        std::memcpy(&fk, f + nz[t] * n + j0, sizeof fk);
        acc += a[i * k + nz[t]] * fk;  // lanewise float32 multiply, then add (no contraction here)
      }
      std::memcpy(row + j0, &acc, sizeof acc);
    }
    for (int64_t j = j0; j < n; ++j) row[j] = 0.0f;
    for (int64_t t = start[i]; t < start[i + 1]; ++t) {
      const float aik = a[i * k + nz[t]];
      const float* fk = f + nz[t] * n;
      for (int64_t j = j0; j < n; ++j) row[j] += aik * fk[j];
    }
  }
  return quantize_span(rows, m * n, dst, to, r);  // one call per item (a call per 64-value row cost more than the sums)
}

}  // namespace

torch::Tensor small_matmul_int8(const torch::Tensor& a, const torch::Tensor& q, const QuantParams& from,
                                const QuantParams& to, Rounding r) {
  CSIPOSE_CHECK(a.dim() == 2 && a.scalar_type() == torch::kFloat && a.device().is_cpu(),
                "small_matmul_int8: expected a float32 CPU matrix (m, k), got ", a.sizes());
  CSIPOSE_CHECK(q.dim() >= 2 && q.scalar_type() == torch::kChar && q.device().is_cpu() && q.size(-2) == a.size(1),
                "small_matmul_int8: expected int8 CPU codes (..., ", a.size(1), ", n), got ", q.sizes());
  CSIPOSE_CHECK(!from.per_channel() && !to.per_channel(), "small_matmul_int8: per-tensor points only");
  RECORD_FUNCTION("csipose::small_matmul_int8", std::vector<c10::IValue>());
  const int64_t m = a.size(0), k = a.size(1), n = q.size(-1);
  const torch::Tensor ac = a.contiguous(), qc = q.contiguous();
  std::vector<int64_t> shape(q.sizes().begin(), q.sizes().end());
  shape[shape.size() - 2] = m;
  torch::Tensor y = torch::empty(shape, q.options());
  if (y.numel() == 0) return y;
  const float* ap = ac.data_ptr<float>();
  for (int64_t i = 0; i < m * k; ++i)
    CSIPOSE_CHECK(std::isfinite(ap[i]), "small_matmul_int8: the matrix has non-finite values");
  std::vector<int64_t> nz, start{0};
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t kk = 0; kk < k; ++kk)
      if (ap[i * k + kk] != 0.0f) nz.push_back(kk);
    start.push_back(static_cast<int64_t>(nz.size()));
  }
  const float zp = static_cast<float>(from.zero_point[0]), s = from.scale[0];
  const int64_t items = y.numel() / (m * n);
  const int8_t* qp = qc.data_ptr<int8_t>();
  int8_t* yp = y.data_ptr<int8_t>();
  std::atomic<bool> bad{false};
  at::parallel_for(0, items, std::max<int64_t>(1, 16384 / std::max<int64_t>(k * n, 1)), [&](int64_t b0, int64_t b1) {
    thread_local std::vector<float> f, row;
    f.resize(static_cast<size_t>(k * n));
    row.resize(static_cast<size_t>(m * n));
    for (int64_t i = b0; i < b1; ++i)
      if (!matmul_rows_codes(ap, nz.data(), start.data(), qp + i * k * n, zp, s, yp + i * m * n, f.data(), row.data(), m,
                             k, n, to, r))
        bad.store(true);
  });
  CSIPOSE_CHECK(!bad.load(), "quantize_tensor: the tensor has non-finite values (NaN or Inf)");
  return y;
}

torch::Tensor small_matmul(const torch::Tensor& a, const torch::Tensor& b) {
  const bool grad = torch::GradMode::is_enabled() && (a.requires_grad() || b.requires_grad());
  if (grad || a.dim() < 2 || b.dim() < 2 || a.scalar_type() != torch::kFloat || b.scalar_type() != torch::kFloat ||
      !a.device().is_cpu() || !b.device().is_cpu() || a.size(-1) != b.size(-2))
    return torch::matmul(a, b);
  const int64_t m = a.size(-2), k = a.size(-1), n = b.size(-1);
  if (m * k * n > kSmallMatmulMaxWork || k == 0) return torch::matmul(a, b);
  RECORD_FUNCTION("csipose::small_matmul", std::vector<c10::IValue>());
  const std::vector<int64_t> batch = at::infer_size(a.sizes().slice(0, a.dim() - 2), b.sizes().slice(0, b.dim() - 2));
  std::vector<int64_t> ea = batch, eb = batch, out = batch;
  ea.insert(ea.end(), {m, k});
  eb.insert(eb.end(), {k, n});
  out.insert(out.end(), {m, n});
  const auto nbd = static_cast<int64_t>(batch.size());
  const torch::Tensor ae = a.expand(ea);
  // b contiguous along n for the kernel's inner loop (attention's k^T is not: one packed copy).
  const torch::Tensor be = b.stride(-1) == 1 || n == 1 ? b.expand(eb) : b.contiguous().expand(eb);
  torch::Tensor y = torch::empty(out, a.options());
  if (y.numel() == 0) return y;
  const int64_t nb = y.numel() / (m * n);
  const std::vector<int64_t> oa = batch_offsets(ae, nbd), ob = batch_offsets(be, nbd);
  const float* ap = ae.data_ptr<float>();
  const float* bp = be.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t sam = ae.stride(-2), sak = ae.stride(-1), ldb = be.stride(-2);
  at::parallel_for(0, nb, std::max<int64_t>(1, 32768 / std::max<int64_t>(m * k * n, 1)), [&](int64_t b0, int64_t b1) {
    for (int64_t i = b0; i < b1; ++i)
      matmul_rows(ap + oa[static_cast<size_t>(i)], sam, sak, bp + ob[static_cast<size_t>(i)], ldb, yp + i * m * n, m, k, n);
  });
  return y;
}

}  // namespace csipose
