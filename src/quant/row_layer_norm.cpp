#include "quant/row_layer_norm.h"

#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "common/check.h"
#include "quant/int8_ops.h"

namespace csipose {
namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CSIPOSE_NORM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CSIPOSE_NORM_CLONES
#endif

/// Sum of v[0..d) as 16 interleaved partial sums combined in a fixed tree.
__attribute__((always_inline)) inline float sum16(const float* v, int64_t d) {
  float p[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 16 <= d; j += 16)
    for (int k = 0; k < 16; ++k) p[k] += v[j + k];
  for (int k = 0; j < d; ++j, ++k) p[k] += v[j];
  for (int w = 8; w >= 1; w /= 2)
    for (int k = 0; k < w; ++k) p[k] += p[k + w];
  return p[0];
}

/// One row: y = LayerNorm(x + res) (res may be null); v is d floats of scratch (may be y).
CSIPOSE_NORM_CLONES
void layer_norm_row(const float* x, const float* res, const float* gamma, const float* beta, float eps, int64_t d,
                    float* v, float* y) {
  if (res != nullptr) {
    for (int64_t j = 0; j < d; ++j) v[j] = x[j] + res[j];
  } else {
    for (int64_t j = 0; j < d; ++j) v[j] = x[j];
  }
  const float n = static_cast<float>(d);
  const float mean = sum16(v, d) / n;
  float acc[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 16 <= d; j += 16)
    for (int k = 0; k < 16; ++k) {
      const float c = v[j + k] - mean;
      acc[k] += c * c;
    }
  for (int k = 0; j < d; ++j, ++k) {
    const float c = v[j] - mean;
    acc[k] += c * c;
  }
  for (int w = 8; w >= 1; w /= 2)  // sum16's tree
    for (int k = 0; k < w; ++k) acc[k] += acc[k + w];
  const float rstd = 1.0f / std::sqrt(acc[0] / n + eps);
  for (int64_t i = 0; i < d; ++i) y[i] = (v[i] - mean) * rstd * gamma[i] + beta[i];
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CSIPOSE_HAVE_NORM_AVX512 1
// GCC 12's extract / convert intrinsics pass an undefined merge vector and warn about it (a false
// positive).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
/// layer_norm_row with explicit AVX-512 (the generic form's partial sums and tree compiled to
/// spills and scalar code): lane k is partial sum k, masked tails add +0 (a sum that started at +0
/// stays unchanged) or nothing, the tree is the same pairwise combination, and every element takes
/// the same float32 operations in the same order. The same bits (tested).
/// x + res (res may be null) at j, lanes outside m zero.
__attribute__((target("avx512f"), always_inline)) inline __m512 norm_value(const float* x, const float* res, int64_t j,
                                                                         __mmask16 m) {
  const __m512 a = _mm512_maskz_loadu_ps(m, x + j);
  return res != nullptr ? _mm512_add_ps(a, _mm512_maskz_loadu_ps(m, res + j)) : a;
}

/// The partial sums' tree: p[k] += p[k + 8], then + 4, + 2, + 1.
__attribute__((target("avx512f"), always_inline)) inline float norm_tree(__m512 p) {
  const __m256 a =
      _mm256_add_ps(_mm512_castps512_ps256(p), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(p), 1)));
  const __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  const __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));
  return _mm_cvtss_f32(_mm_add_ss(c, _mm_shuffle_ps(c, c, 1)));
}

/// R consecutive rows (row r at x + r d, res + r d, y + r d; y is also the scratch v) with their
/// steps interleaved: a row's reductions, division and square root are a chain of dependent
/// operations (~120 cycles at d = 48) that the rows now overlap. Each row takes the same
/// operations whatever R (R = 1 is layer_norm_row_avx512), so the bits do not depend on it.
template <int R>
__attribute__((target("avx512f"), always_inline)) inline void layer_norm_rows_avx512(
    const float* x, const float* res, const float* gamma, const float* beta, float eps, int64_t d, float* y) {
  const int64_t full = d / 16 * 16;
  const __mmask16 tail = static_cast<__mmask16>((1u << (d - full)) - 1u);
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t j = 0; j < full; j += 16)
    for (int r = 0; r < R; ++r) {
      const __m512 vj = norm_value(x + r * d, res != nullptr ? res + r * d : nullptr, j, 0xFFFF);
      _mm512_storeu_ps(y + r * d + j, vj);
      acc[r] = _mm512_add_ps(acc[r], vj);
    }
  if (tail != 0)
    for (int r = 0; r < R; ++r) {
      const __m512 vj = norm_value(x + r * d, res != nullptr ? res + r * d : nullptr, full, tail);
      _mm512_mask_storeu_ps(y + r * d + full, tail, vj);
      acc[r] = _mm512_add_ps(acc[r], vj);  // +0 in the lanes past d
    }
  const float n = static_cast<float>(d);
  __m512 mv[R], sq[R];
  for (int r = 0; r < R; ++r) {
    mv[r] = _mm512_set1_ps(norm_tree(acc[r]) / n);
    sq[r] = _mm512_setzero_ps();
  }
  for (int64_t j = 0; j < full; j += 16)
    for (int r = 0; r < R; ++r) {
      const __m512 c = _mm512_sub_ps(_mm512_loadu_ps(y + r * d + j), mv[r]);
      sq[r] = _mm512_add_ps(sq[r], _mm512_mul_ps(c, c));
    }
  if (tail != 0)
    for (int r = 0; r < R; ++r) {
      const __m512 c = _mm512_sub_ps(_mm512_maskz_loadu_ps(tail, y + r * d + full), mv[r]);
      sq[r] = _mm512_mask_add_ps(sq[r], tail, sq[r], _mm512_mul_ps(c, c));
    }
  __m512 rstd[R];
  for (int r = 0; r < R; ++r) rstd[r] = _mm512_set1_ps(1.0f / std::sqrt(norm_tree(sq[r]) / n + eps));
  for (int64_t j = 0; j < d; j += 16) {
    const __mmask16 m = j + 16 <= d ? static_cast<__mmask16>(0xFFFF) : tail;
    const __m512 g = _mm512_maskz_loadu_ps(m, gamma + j), be = _mm512_maskz_loadu_ps(m, beta + j);
    for (int r = 0; r < R; ++r) {
      const __m512 c = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, y + r * d + j), mv[r]);
      _mm512_mask_storeu_ps(y + r * d + j, m, _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(c, rstd[r]), g), be));
    }
  }
}

/// layer_norm_row's signature (v is y's storage: the AVX-512 rows keep x + res in y).
__attribute__((target("avx512f"))) void layer_norm_row_avx512(const float* x, const float* res, const float* gamma,
                                                              const float* beta, float eps, int64_t d, float* /*v*/,
                                                              float* y) {
  layer_norm_rows_avx512<1>(x, res, gamma, beta, eps, d, y);
}

/// Four consecutive rows at once.
__attribute__((target("avx512f"))) void layer_norm_rows4_avx512(const float* x, const float* res, const float* gamma,
                                                                const float* beta, float eps, int64_t d, float* y) {
  layer_norm_rows_avx512<4>(x, res, gamma, beta, eps, d, y);
}
#pragma GCC diagnostic pop
#endif

using NormRow = void (*)(const float*, const float*, const float*, const float*, float, int64_t, float*, float*);

/// The explicit AVX-512 row where the CPU has it and set_int8_avx512_kernels leaves it on.
NormRow norm_row() {
#ifdef CSIPOSE_HAVE_NORM_AVX512
  if (int8_avx512_kernels_active()) return layer_norm_row_avx512;
#endif
  return layer_norm_row;
}

/// Whether the row kernel applies (else torch ops).
bool kernel_applies(const torch::Tensor& x, const torch::Tensor& residual, const torch::Tensor& gamma,
                    const torch::Tensor& beta) {
  if (!x.defined() || x.dim() < 1 || !gamma.defined() || !beta.defined()) return false;
  if (torch::GradMode::is_enabled() && (x.requires_grad() || gamma.requires_grad() || beta.requires_grad() ||
                                        (residual.defined() && residual.requires_grad())))
    return false;
  const int64_t d = x.size(-1);
  if (x.scalar_type() != torch::kFloat || !x.device().is_cpu() || gamma.scalar_type() != torch::kFloat ||
      !gamma.device().is_cpu() || beta.scalar_type() != torch::kFloat || !beta.device().is_cpu())
    return false;
  if (gamma.dim() != 1 || gamma.size(0) != d || beta.dim() != 1 || beta.size(0) != d) return false;
  if (residual.defined() && (residual.sizes() != x.sizes() || residual.scalar_type() != torch::kFloat ||
                             !residual.device().is_cpu()))
    return false;
  return true;
}

torch::Tensor torch_form(const torch::Tensor& x, const torch::Tensor& residual, const torch::Tensor& gamma,
                         const torch::Tensor& beta, double eps) {
  return torch::layer_norm(residual.defined() ? x + residual : x, {x.size(-1)}, gamma, beta, eps);
}

/// Runs the kernel over every row, quantizing into `codes` when given; false when a code's value
/// was not finite.
bool run_rows(const torch::Tensor& x, const torch::Tensor& residual, const torch::Tensor& gamma,
              const torch::Tensor& beta, double eps, torch::Tensor& y, int8_t* codes, const QuantParams* point,
              Rounding r) {
  const int64_t d = x.size(-1);
  const int64_t rows = d == 0 ? 0 : x.numel() / d;
  const torch::Tensor xc = x.contiguous();
  const torch::Tensor rc = residual.defined() ? residual.contiguous() : residual;
  const torch::Tensor gc = gamma.contiguous(), bc = beta.contiguous();
  const float* xp = xc.data_ptr<float>();
  const float* rp = rc.defined() ? rc.data_ptr<float>() : nullptr;
  const float* gp = gc.data_ptr<float>();
  const float* bp = bc.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const auto e = static_cast<float>(eps);
  const NormRow row_kernel = norm_row();
  std::atomic<bool> bad{false};
  // Rows in blocks of ~16 KiB: normalized, then quantized in one call per block while in L1 (a
  // call per 64-value row cost more than the quantization).
  const int64_t block = std::max<int64_t>(1, 4096 / std::max<int64_t>(d, 1));
  at::parallel_for(0, rows, block, [&](int64_t b, int64_t en) {
    for (int64_t i0 = b; i0 < en; i0 += block) {
      const int64_t i1 = std::min(en, i0 + block);
      int64_t i = i0;
#ifdef CSIPOSE_HAVE_NORM_AVX512
      if (row_kernel == layer_norm_row_avx512)
        for (; i + 4 <= i1; i += 4) layer_norm_rows4_avx512(xp + i * d, rp ? rp + i * d : nullptr, gp, bp, e, d, yp + i * d);
#endif
      for (; i < i1; ++i) {
        float* yi = yp + i * d;
        row_kernel(xp + i * d, rp ? rp + i * d : nullptr, gp, bp, e, d, yi, yi);
      }
      if (codes != nullptr && !quantize_span(yp + i0 * d, (i1 - i0) * d, codes + i0 * d, *point, r)) bad.store(true);
    }
  });
  return !bad.load();
}

}  // namespace

torch::Tensor row_layer_norm(const torch::Tensor& x, const torch::Tensor& residual, const torch::Tensor& gamma,
                             const torch::Tensor& beta, double eps) {
  if (!kernel_applies(x, residual, gamma, beta)) return torch_form(x, residual, gamma, beta, eps);
  RECORD_FUNCTION("csipose::row_layer_norm", std::vector<c10::IValue>());
  torch::Tensor y = torch::empty(x.sizes(), x.options().memory_format(c10::MemoryFormat::Contiguous));
  run_rows(x, residual, gamma, beta, eps, y, nullptr, nullptr, Rounding::half_even);
  return y;
}

std::pair<torch::Tensor, torch::Tensor> row_layer_norm_int8(const torch::Tensor& x, const torch::Tensor& residual,
                                                            const torch::Tensor& gamma, const torch::Tensor& beta,
                                                            double eps, const QuantParams& point, Rounding r) {
  CSIPOSE_CHECK(kernel_applies(x, residual, gamma, beta),
                "row_layer_norm_int8: expected float32 CPU tensors of one shape (..., d) and gamma / beta of (d) "
                "with no gradient, got ", x.sizes());
  CSIPOSE_CHECK(!point.per_channel(), "row_layer_norm_int8: a per-tensor point only");
  RECORD_FUNCTION("csipose::row_layer_norm_int8", std::vector<c10::IValue>());
  torch::Tensor y = torch::empty(x.sizes(), x.options().memory_format(c10::MemoryFormat::Contiguous));
  torch::Tensor q = torch::empty(x.sizes(), x.options().dtype(torch::kChar).memory_format(c10::MemoryFormat::Contiguous));
  const bool ok = run_rows(x, residual, gamma, beta, eps, y, q.data_ptr<int8_t>(), &point, r);
  CSIPOSE_CHECK(ok, "quantize_tensor: the tensor has non-finite values (NaN or Inf)");
  return {y, q};
}

}  // namespace csipose
