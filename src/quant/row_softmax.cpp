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
#include "quant/int8_ops.h"
#include "quant/lut_vbmi.h"
#include "quant/reference.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

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

#if defined(__x86_64__) && defined(__GNUC__)
#define CSIPOSE_HAVE_SOFTMAX_LANES 1
#define CSIPOSE_LANES __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi")))
// GCC 12 warns about the undefined merge source of unmasked intrinsics (GCC bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

/// exp_nonpositive on 16 lanes: the same float32 operations in the same order (no FMA).
CSIPOSE_LANES inline __m512 exp_lanes(__m512 t) {
  t = _mm512_mask_mov_ps(t, _mm512_cmp_ps_mask(t, _mm512_set1_ps(-87.0f), _CMP_LT_OQ), _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(
      _mm512_add_ps(_mm512_mul_ps(t, _mm512_set1_ps(1.44269504088896341f)), _mm512_set1_ps(0.5f)),
      _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_sub_ps(_mm512_sub_ps(t, _mm512_mul_ps(n, _mm512_set1_ps(0.693359375f))),
                                 _mm512_mul_ps(n, _mm512_set1_ps(-2.12194440e-4f)));
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(5.0000001201e-1f));
  const __m512 y = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(p, _mm512_mul_ps(r, r)), r), _mm512_set1_ps(1.0f));
  const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(y, _mm512_castsi512_ps(bits));
}

/// The byte permutes that put 16 rows' codes, held column by column (column j = 16 bytes, row i
/// at byte i, columns back to back: byte 16 j + i of a block of up to 512 bytes), into row-major
/// order (byte i n + j): lane l of output chunk c (64 bytes) takes block byte src = (pos % n) * 16 +
/// pos / n, pos = 64 c + l: from the first 256 bytes (idx_lo, a lookup into four registers) or,
/// where hi_mask has the lane, from the next 256 (idx_hi).
struct ColumnsToRows {
  alignas(64) uint8_t idx_lo[8][64] = {};
  alignas(64) uint8_t idx_hi[8][64] = {};
  uint64_t hi_mask[8] = {};
  explicit ColumnsToRows(int64_t n) {
    for (int64_t pos = 0; pos < 16 * n; ++pos) {
      const int64_t src = (pos % n) * 16 + pos / n, c = pos / 64, l = pos % 64;
      if (src < 256) {
        idx_lo[c][l] = static_cast<uint8_t>(src);
      } else {
        idx_hi[c][l] = static_cast<uint8_t>(src - 256);
        hi_mask[c] |= 1ULL << l;
      }
    }
  }
};

constexpr int64_t kMaxLaneRow = 32;  ///< the longest row the lane kernel takes (WiFlow's 20 positions)

const ColumnsToRows& columns_to_rows(int64_t n) {
  static const std::vector<ColumnsToRows> all = [] {
    std::vector<ColumnsToRows> v;
    for (int64_t k = 0; k <= kMaxLaneRow; ++k) v.emplace_back(k);
    return v;
  }();
  return all[static_cast<size_t>(n)];
}

/// softmax_rows_int8 for `blocks` blocks of 16 rows of n <= 32 values (half-even rounding), rows
/// mapped by x * a[row] + b[row] first when a / b are given (shift_row's affine form): false when a
/// probability is not finite.
CSIPOSE_LANES bool softmax_codes_lanes(const float* x, int64_t blocks, int64_t n, const QuantParams& p, const float* ra,
                                       const float* rb, int8_t* codes) {
  const __m512 inv = _mm512_set1_ps(inv_scale_of(p.scale[0])), zp = _mm512_set1_ps(static_cast<float>(p.zero_point[0]));
  const __m512 lo = _mm512_set1_ps(static_cast<float>(p.qmin)), hi = _mm512_set1_ps(static_cast<float>(p.qmax));
  const __m512 neg_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  const __m512 fmax = _mm512_set1_ps(std::numeric_limits<float>::max());
  const __m512i row_offsets = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                                 _mm512_set1_epi32(static_cast<int>(n)));
  const ColumnsToRows& ctr = columns_to_rows(n);
  const int64_t chunks = (16 * n + 63) / 64;
  const bool wide = n > 16;  // the columns fill more than the first 256 bytes
  __mmask16 finite = 0xFFFF;
  alignas(64) int8_t cols[16 * kMaxLaneRow];
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const float* xb = x + blk * 16 * n;
    __m512 v[kMaxLaneRow];
    // Column j of the block: element j of each of its 16 rows (x * a + b, as shift_row, when affine).
    for (int64_t j = 0; j < n; ++j) v[j] = _mm512_i32gather_ps(row_offsets, xb + j, 4);
    if (ra != nullptr) {
      const __m512 a = _mm512_loadu_ps(ra + blk * 16), b = _mm512_loadu_ps(rb + blk * 16);
      for (int64_t j = 0; j < n; ++j) v[j] = _mm512_add_ps(_mm512_mul_ps(v[j], a), b);
    }
    // shift_row: m = max over the row, NaNs skipped (out[j] > m keeps m), -inf rows -> NaN.
    __m512 m = neg_inf;
    for (int64_t j = 0; j < n; ++j) m = _mm512_mask_mov_ps(m, _mm512_cmp_ps_mask(v[j], m, _CMP_GT_OQ), v[j]);
    m = _mm512_mask_mov_ps(m, _mm512_cmp_ps_mask(m, neg_inf, _CMP_EQ_OQ),
                           _mm512_set1_ps(std::numeric_limits<float>::quiet_NaN()));
    // The exponentials, then normalize_row: the sum in index order, times its reciprocal.
    __m512 s = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; ++j) {
      v[j] = exp_lanes(_mm512_sub_ps(v[j], m));
      s = _mm512_add_ps(s, v[j]);
    }
    const __m512 rs = _mm512_div_ps(_mm512_set1_ps(1.0f), s);
    for (int64_t j = 0; j < n; ++j) {
      const __m512 pr = _mm512_mul_ps(v[j], rs);
      finite &= static_cast<__mmask16>(_mm512_cmp_ps_mask(_mm512_abs_ps(pr), fmax, _CMP_LE_OQ));
      // quantize_span's operations: * inv, round half even, + zp, max lo, min hi, truncate, pack.
      const __m512 u = _mm512_roundscale_ps(_mm512_mul_ps(pr, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      _mm_store_si128(reinterpret_cast<__m128i*>(cols + 16 * j),
                      _mm512_cvtsepi32_epi8(_mm512_cvttps_epi32(_mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_add_ps(u, zp))))));
    }
    const __m512i t0 = _mm512_load_si512(cols), t1 = _mm512_load_si512(cols + 64), t2 = _mm512_load_si512(cols + 128),
                  t3 = _mm512_load_si512(cols + 192);
    int8_t* out = codes + blk * 16 * n;
    for (int64_t c = 0; c < chunks; ++c) {
      __m512i o = lut_vbmi(_mm512_load_si512(ctr.idx_lo[c]), t0, t1, t2, t3);
      if (wide && ctr.hi_mask[c] != 0)
        o = _mm512_mask_blend_epi8(ctr.hi_mask[c], o,
                                   lut_vbmi(_mm512_load_si512(ctr.idx_hi[c]), _mm512_load_si512(cols + 256),
                                             _mm512_load_si512(cols + 320), _mm512_load_si512(cols + 384),
                                             _mm512_load_si512(cols + 448)));
      const int64_t left = 16 * n - 64 * c;
      if (left >= 64)
        _mm512_storeu_si512(out + 64 * c, o);
      else
        _mm512_mask_storeu_epi8(out + 64 * c, (~0ULL) >> (64 - left), o);
    }
  }
  return finite == 0xFFFF;
}
#pragma GCC diagnostic pop
#endif

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

bool softmax_rows_int8(const float* x, int64_t rows, int64_t n, const QuantParams& p, Rounding r, int8_t* codes,
                       const float* row_scale, const float* row_shift) {
  CSIPOSE_CHECK(!p.per_channel() && p.qmin >= -128 && p.qmax <= 127,
                "softmax_rows_int8: needs per-tensor params with an int8 range");
  CSIPOSE_CHECK((row_scale == nullptr) == (row_shift == nullptr),
                "softmax_rows_int8: give both the rows' scales and shifts, or neither");
  if (rows <= 0 || n <= 0) return true;
  int64_t done = 0;
  bool finite = true;
#ifdef CSIPOSE_HAVE_SOFTMAX_LANES
  if (n <= kMaxLaneRow && r == Rounding::half_even && int8_vbmi_kernels_active()) {
    finite = softmax_codes_lanes(x, rows / 16, n, p, row_scale, row_shift, codes);
    done = rows / 16 * 16;
  }
#endif
  if (done < rows) {
    thread_local std::vector<float> probs;
    const int64_t left = rows - done;
    probs.resize(static_cast<size_t>(left * n));
    if (row_scale == nullptr) {
      softmax_rows(x + done * n, probs.data(), left, n, 1.0f, 0.0f, false);
    } else {
      for (int64_t i = 0; i < left; ++i)
        softmax_rows(x + (done + i) * n, probs.data() + i * n, 1, n, row_scale[done + i], row_shift[done + i], true);
    }
    finite = quantize_span(probs.data(), left * n, codes + done * n, p, r) && finite;
  }
  return finite;
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
