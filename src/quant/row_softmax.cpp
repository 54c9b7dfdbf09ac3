#include "quant/row_softmax.h"

#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "common/check.h"

namespace csipose {
namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CSIPOSE_SOFTMAX_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CSIPOSE_SOFTMAX_CLONES
#endif

/// e^t for t <= 0 (flat loop; vectorizes: the file is built with -fno-trapping-math): Cephes expf. t is clamped at -87 (e^-87 ~ 1.6e-38, the
/// smallest normal float's neighbourhood), so 2^n stays a normal number.
CSIPOSE_SOFTMAX_CLONES
void exp_nonpositive(float* v, int64_t count) {
  constexpr float kLog2e = 1.44269504088896341f, kC1 = 0.693359375f, kC2 = -2.12194440e-4f;
  constexpr float kP0 = 1.9875691500e-4f, kP1 = 1.3981999507e-3f, kP2 = 8.3334519073e-3f, kP3 = 4.1665795894e-2f,
                  kP4 = 1.6666665459e-1f, kP5 = 5.0000001201e-1f;
  for (int64_t i = 0; i < count; ++i) {
    float t = v[i];
    t = t < -87.0f ? -87.0f : t;
    const float n = std::floor(t * kLog2e + 0.5f);
    const float r = t - n * kC1 - n * kC2;
    float p = kP0;
    p = p * r + kP1;
    p = p * r + kP2;
    p = p * r + kP3;
    p = p * r + kP4;
    p = p * r + kP5;
    const float y = p * (r * r) + r + 1.0f;
    const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
    float two_n;
    std::memcpy(&two_n, &bits, sizeof two_n);
    v[i] = y * two_n;
  }
}

/// Row by row: out = x * a + b (or x), then out -= max(out). NaNs are skipped by the max and reach
/// the row sum through the exponential, so a row holding one comes out all NaN; so does a row
/// whose maximum is infinite (inf - inf), as in ATen.
CSIPOSE_SOFTMAX_CLONES
void shift_row(const float* x, float a, float b, bool affine, float* out, int64_t n) {
  if (affine) {
    for (int64_t j = 0; j < n; ++j) out[j] = x[j] * a + b;
  } else {
    for (int64_t j = 0; j < n; ++j) out[j] = x[j];
  }
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; ++j) m = out[j] > m ? out[j] : m;
  if (m == -std::numeric_limits<float>::infinity()) m = std::numeric_limits<float>::quiet_NaN();  // all -inf / NaN
  for (int64_t j = 0; j < n; ++j) out[j] -= m;
}

CSIPOSE_SOFTMAX_CLONES
void normalize_row(float* out, int64_t n) {
  float s = 0.0f;
  for (int64_t j = 0; j < n; ++j) s += out[j];
  const float inv = 1.0f / s;
  for (int64_t j = 0; j < n; ++j) out[j] *= inv;
}

torch::Tensor reference(const torch::Tensor& x, const torch::Tensor& scale, const torch::Tensor& shift) {
  std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1);
  shape[1] = x.size(1);
  torch::Tensor y = x;
  if (scale.defined()) y = y * scale.view(shape);
  if (shift.defined()) y = y + shift.view(shape);
  return torch::softmax(y, /*dim=*/-1);
}

}  // namespace

void softmax_rows(const float* x, float* y, int64_t rows, int64_t n, float a, float b, bool affine) {
  if (rows <= 0 || n <= 0) return;
  const int64_t block = std::max<int64_t>(1, 4096 / n);  // as row_softmax: the exponentials of a block in L1
  for (int64_t b0 = 0; b0 < rows; b0 += block) {
    const int64_t b1 = std::min(rows, b0 + block);
    for (int64_t r = b0; r < b1; ++r) shift_row(x + r * n, a, b, affine, y + r * n, n);
    exp_nonpositive(y + b0 * n, (b1 - b0) * n);
    for (int64_t r = b0; r < b1; ++r) normalize_row(y + r * n, n);
  }
}

torch::Tensor row_softmax(const torch::Tensor& x, const torch::Tensor& scale, const torch::Tensor& shift) {
  CSIPOSE_CHECK(x.dim() >= 2, "row_softmax: needs at least 2 dimensions, got ", x.dim());
  for (const torch::Tensor* p : {&scale, &shift})
    CSIPOSE_CHECK(!p->defined() || (x.dim() >= 3 && p->dim() == 1 && p->size(0) == x.size(1)),
                  "row_softmax: scale / shift must be vectors of x.size(1) = ", x.size(1),
                  " entries, for an x of at least 3 dimensions (x has ", x.dim(), ")");
  const bool grad = torch::GradMode::is_enabled() &&
                    (x.requires_grad() || (scale.defined() && scale.requires_grad()) ||
                     (shift.defined() && shift.requires_grad()));
  if (grad || x.scalar_type() != torch::kFloat || !x.device().is_cpu() || !x.is_contiguous() ||
      (scale.defined() && (scale.scalar_type() != torch::kFloat || !scale.device().is_cpu())) ||
      (shift.defined() && (shift.scalar_type() != torch::kFloat || !shift.device().is_cpu())))
    return reference(x, scale, shift);
  RECORD_FUNCTION("csipose::row_softmax", std::vector<c10::IValue>());
  torch::Tensor y = torch::empty_like(x, x.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t n = x.size(-1);
  if (y.numel() == 0 || n == 0) return y;
  const int64_t rows = x.numel() / n, channels = x.size(1);
  const int64_t rows_per_channel = x.dim() >= 3 ? rows / (x.size(0) * channels) : 1;  // rows per channel step
  const torch::Tensor a = scale.defined() ? scale.contiguous() : torch::Tensor();
  const torch::Tensor b = shift.defined() ? shift.contiguous() : torch::Tensor();
  const float* ap = a.defined() ? a.data_ptr<float>() : nullptr;
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  const bool affine = ap != nullptr || bp != nullptr;
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  // Blocks of about 4,096 elements: the flat exponential loop runs over a block that is in L1.
  const int64_t block = std::max<int64_t>(1, 4096 / n);
  at::parallel_for(0, rows, std::max<int64_t>(block, 32768 / n), [&](int64_t r0, int64_t r1) {
    for (int64_t b0 = r0; b0 < r1; b0 += block) {
      const int64_t b1 = std::min(r1, b0 + block);
      for (int64_t r = b0; r < b1; ++r) {
        const int64_t c = affine ? (r / rows_per_channel) % channels : 0;
        shift_row(xp + r * n, ap != nullptr ? ap[c] : 1.0f, bp != nullptr ? bp[c] : 0.0f, affine, yp + r * n, n);
      }
      exp_nonpositive(yp + b0 * n, (b1 - b0) * n);
      for (int64_t r = b0; r < b1; ++r) normalize_row(yp + r * n, n);
    }
  });
  return y;
}

}  // namespace csipose
