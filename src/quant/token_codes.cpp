#include "quant/token_codes.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "common/check.h"
#include "quant/int8_ops.h"
#include "quant/reference.h"

namespace csipose {
namespace {

void divide_span_plain(const float* a, int64_t n, float b, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] / b;
}

/// The float tokens of a sample, then quantize_span: the definition the fused kernel reproduces.
bool codes_portable(const float* x, int64_t rows, int64_t cols, float mean, float denom, const QuantParams& p,
                    Rounding r, int8_t* codes) {
  thread_local std::vector<float> tokens;
  tokens.resize(static_cast<size_t>(rows * cols));
  for (int64_t t = 0; t < cols; ++t)
    for (int64_t i = 0; i < rows; ++i) tokens[static_cast<size_t>(t * rows + i)] = (x[i * cols + t] - mean) / denom;
  return quantize_span(tokens.data(), rows * cols, codes, p, r);
}

#if defined(__x86_64__) && defined(__GNUC__)
#define CSIPOSE_HAVE_TOKEN_KERNELS 1
#define CSIPOSE_AVX512 __attribute__((target("avx512f")))
#define CSIPOSE_VBMI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi")))
// GCC 12 warns about the undefined merge source of unmasked intrinsics (GCC bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

/// Whether the multiply-and-correct quotient is valid for every numerator divide16 lets through:
/// b and its reciprocal normal and far from the ends of the range, so that no product, remainder
/// or quotient over- or underflows.
bool markstein_divisor(float b) { return b >= 0x1p-30f && b <= 0x1p30f; }

/// a / b on 16 lanes, bit for bit vdivps (b in markstein_divisor's range, y = 1.0f / b, both
/// broadcast). Markstein (1990): with y the correctly rounded reciprocal and q a faithful quotient
/// (one of the two floats around a / b), q + (a - q b) y rounded once is the correctly rounded
/// quotient; a - q b is then exact in one FMA. q0 = a * y is within about 1.5 ulp, so one
/// correction first makes it faithful (its error becomes |a - q0 b| |y - 1/b|, ~2^-46 relative,
/// plus the final rounding's half ulp) and the second one rounds it correctly. The sequence needs
/// no over- or underflow: a lane whose |a| lies outside [2^-90, 2^90] (with b in [2^-30, 2^30] the
/// remainders stay above 2^-114, normal) is not taken unless a is a zero (then the quotient is a,
/// sign included, as ±0 / b for b > 0); a vector with any such lane is divided with vdivps.
/// The sequence alone (no range tests): q0 = a y, two corrections q + (a - q b) y.
CSIPOSE_AVX512 inline __m512 markstein16(__m512 a, __m512 b, __m512 y) {
  const __m512 q0 = _mm512_mul_ps(a, y);
  const __m512 q1 = _mm512_fmadd_ps(_mm512_fnmadd_ps(q0, b, a), y, q0);
  return _mm512_fmadd_ps(_mm512_fnmadd_ps(q1, b, a), y, q1);
}

CSIPOSE_AVX512 inline __m512 divide16(__m512 a, __m512 b, __m512 y) {
  const __m512 q = markstein16(a, b, y);
  const __m512 abs_a = _mm512_abs_ps(a);
  const __mmask16 zero = _mm512_cmp_ps_mask(a, _mm512_setzero_ps(), _CMP_EQ_OQ);
  const __mmask16 in_range = _mm512_cmp_ps_mask(abs_a, _mm512_set1_ps(0x1p-90f), _CMP_GE_OQ) &
                             _mm512_cmp_ps_mask(abs_a, _mm512_set1_ps(0x1p90f), _CMP_LE_OQ);
  if (static_cast<__mmask16>(zero | in_range) != static_cast<__mmask16>(0xFFFF)) return _mm512_div_ps(a, b);
  return _mm512_mask_mov_ps(q, zero, a);
}

CSIPOSE_AVX512 void divide_span_avx512(const float* a, int64_t n, float b_s, float* out) {
  const __m512 b = _mm512_set1_ps(b_s), y = _mm512_set1_ps(1.0f / b_s);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, divide16(_mm512_loadu_ps(a + i), b, y));
  if (i < n) {
    const auto m = static_cast<__mmask16>((1u << (n - i)) - 1u);
    // Masked-off lanes hold +0 (a taken lane: exact zero quotient), never stored.
    _mm512_mask_storeu_ps(out + i, m, divide16(_mm512_maskz_loadu_ps(m, a + i), b, y));
  }
}

/// The byte permutes that transpose 16 rows of `cols` codes (cols <= 12: 16 * cols <= 192 bytes, three
/// registers) into cols rows of 16: output register g holds rows t = 4g .. 4g + 3 of the transpose,
/// 16 bytes each (lane 16 k + i = byte i * cols + 4g + k of the block).
struct ByteTranspose {
  int64_t cols = 0;
  int64_t groups = 0;
  alignas(64) uint8_t lo_idx[3][64] = {};   // vpermt2b over block bytes [0, 128)
  alignas(64) uint8_t hi_idx[3][64] = {};   // vpermb over block bytes [128, 192)
  uint64_t hi_mask[3] = {0, 0, 0};          // lanes taken from [128, 192)

  explicit ByteTranspose(int64_t c) : cols(c), groups((c + 3) / 4) {
    for (int64_t g = 0; g < groups; ++g)
      for (int64_t k = 0; k < 4 && 4 * g + k < cols; ++k)
        for (int64_t i = 0; i < 16; ++i) {
          const int64_t lane = 16 * k + i, o = i * cols + 4 * g + k;
          if (o < 128) {
            lo_idx[g][lane] = static_cast<uint8_t>(o);
          } else {
            hi_idx[g][lane] = static_cast<uint8_t>(o - 128);
            hi_mask[g] |= 1ULL << lane;
          }
        }
  }
};

const ByteTranspose& byte_transpose_for(int64_t cols) {
  static const std::vector<ByteTranspose> all = [] {
    std::vector<ByteTranspose> v;
    for (int64_t c = 0; c <= 12; ++c) v.emplace_back(c);
    return v;
  }();
  return all[static_cast<size_t>(cols)];
}

/// Stores 128-bit lane k of v (k < 4) to dst, the first `count` bytes (count <= 16).
CSIPOSE_VBMI inline void store_lane(int8_t* dst, __m512i v, int k, int64_t count) {
  __m128i lane;
  switch (k) {
    case 0: lane = _mm512_castsi512_si128(v); break;
    case 1: lane = _mm512_extracti32x4_epi32(v, 1); break;
    case 2: lane = _mm512_extracti32x4_epi32(v, 2); break;
    default: lane = _mm512_extracti32x4_epi32(v, 3); break;
  }
  if (count >= 16)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), lane);
  else
    _mm_mask_storeu_epi8(dst, static_cast<__mmask16>((1u << count) - 1u), lane);
}

struct TokenQuant {
  __m512 mean, b, y, inv, zp, lo, hi;
};

/// The integer-valued float codes clamp(round((v - mean) / b * inv) + zp) of 16 lanes. The quotient
/// is markstein16 (divide16 without its per-lane tests): the caller (codes_vbmi) has checked b in
/// [2^-30, 2^30] and inv <= 2^50, so a lane with |a| < 2^-90 has |a / b * inv| < 2^-10 both
/// exactly and through the sequence (whose subnormal roundings add at most ~2^-117 to a quotient
/// of at most 2^-60): both round to zero, the code is the zero point's. A zero a gives a zero
/// quotient of either sign, which also rounds to zero. A lane with |a| > 2^90 or not finite
/// (unordered compare) sends the vector to vdivps and a finiteness test: `finite` loses its lanes
/// outside `m` that are not finite. In the sequence's lanes |a / b| <= 2^120 is finite.
/// Checked = false: the caller knows every |a| <= 2^90 (quantize_standardized_transposed's
/// from_stats), so the test is left out.
template <bool Checked>
CSIPOSE_VBMI inline __m512 code16(const TokenQuant& q, __m512 v, __mmask16 m, __mmask16& finite) {
  const __m512 a = _mm512_sub_ps(v, q.mean);
  __m512 t = markstein16(a, q.b, q.y);
  if (Checked &&
      static_cast<__mmask16>(_mm512_cmp_ps_mask(_mm512_abs_ps(a), _mm512_set1_ps(0x1p90f), _CMP_LE_OQ)) !=
          static_cast<__mmask16>(0xFFFF)) {
    t = _mm512_div_ps(a, q.b);
    finite &= static_cast<__mmask16>(
        _mm512_mask_cmp_ps_mask(m, _mm512_abs_ps(t), _mm512_set1_ps(std::numeric_limits<float>::max()), _CMP_LE_OQ) |
        ~m);
  }
  const __m512 u = _mm512_roundscale_ps(_mm512_mul_ps(t, q.inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm512_min_ps(q.hi, _mm512_max_ps(q.lo, _mm512_add_ps(u, q.zp)));
}

/// code16 with vdivps and a finiteness test on every vector (b or inv outside code16's range).
CSIPOSE_VBMI inline __m512 code16_div(const TokenQuant& q, __m512 v, __mmask16 m, __mmask16& finite) {
  const __m512 t = _mm512_div_ps(_mm512_sub_ps(v, q.mean), q.b);
  finite &= static_cast<__mmask16>(
      _mm512_mask_cmp_ps_mask(m, _mm512_abs_ps(t), _mm512_set1_ps(std::numeric_limits<float>::max()), _CMP_LE_OQ) | ~m);
  const __m512 u = _mm512_roundscale_ps(_mm512_mul_ps(t, q.inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm512_min_ps(q.hi, _mm512_max_ps(q.lo, _mm512_add_ps(u, q.zp)));
}

/// How a vector's quotients are computed: vdivps, code16's sequence with its range test, or
/// without it.
enum class Divide { ieee, checked, bounded };

template <Divide D>
CSIPOSE_VBMI inline __m512 code_any(const TokenQuant& q, __m512 v, __mmask16 m, __mmask16& finite) {
  if constexpr (D == Divide::checked) return code16<true>(q, v, m, finite);
  if constexpr (D == Divide::bounded) return code16<false>(q, v, m, finite);
  return code16_div(q, v, m, finite);
}

/// The int8 codes of n values from x into s: 64 at a step, packed with vpackssdw / vpacksswb (the
/// values are integers in [qmin, qmax], so the saturation never acts) and put back in order with
/// one vpermd; the tail 16 at a time (vpmovsdb).
template <Divide D>
CSIPOSE_VBMI inline bool codes_of_span(const TokenQuant& q, const float* x, int64_t n, int8_t* s) {
  __mmask16 finite = 0xFFFF;
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  int64_t j = 0;
  for (; j + 64 <= n; j += 64) {
    const __m512i c0 = _mm512_cvttps_epi32(code_any<D>(q, _mm512_loadu_ps(x + j), 0xFFFF, finite));
    const __m512i c1 = _mm512_cvttps_epi32(code_any<D>(q, _mm512_loadu_ps(x + j + 16), 0xFFFF, finite));
    const __m512i c2 = _mm512_cvttps_epi32(code_any<D>(q, _mm512_loadu_ps(x + j + 32), 0xFFFF, finite));
    const __m512i c3 = _mm512_cvttps_epi32(code_any<D>(q, _mm512_loadu_ps(x + j + 48), 0xFFFF, finite));
    // Per 128-bit lane L: packs give [c0 L, c1 L, c2 L, c3 L] (4 values each); vpermd gathers the
    // lanes' dwords so that bytes 16 v .. 16 v + 15 are vector v's.
    const __m512i b = _mm512_packs_epi16(_mm512_packs_epi32(c0, c1), _mm512_packs_epi32(c2, c3));
    _mm512_storeu_si512(s + j, _mm512_permutexvar_epi32(order, b));
  }
  for (; j < n; j += 16) {
    const auto m = static_cast<__mmask16>(n - j >= 16 ? 0xFFFF : (1u << (n - j)) - 1u);
    const __m512 c = code_any<D>(q, _mm512_maskz_loadu_ps(m, x + j), m, finite);
    _mm_mask_storeu_epi8(s + j, m, _mm512_cvtsepi32_epi8(_mm512_cvttps_epi32(c)));
  }
  return finite == 0xFFFF;
}

/// codes_portable with AVX-512 VBMI (cols <= 12, half-even rounding): the codes of the sample in
/// its stored order (contiguous vectors: subtract, divide (code16's sequence, or vdivps), then
/// quantize_span's operations: * inv, vrndscaleps to nearest even, + zp, max lo, min hi, truncate,
/// pack), into a scratch buffer, then ByteTranspose per 16 rows.
CSIPOSE_VBMI bool codes_vbmi(const float* x, int64_t rows, int64_t cols, float mean_s, float denom_s,
                             const QuantParams& p, bool from_stats, int8_t* codes) {
  const int64_t n = rows * cols;
  thread_local std::vector<int8_t> scratch;
  scratch.resize(static_cast<size_t>(n + 192));  // the transpose reads whole 192-byte blocks
  int8_t* s = scratch.data();
  const float inv_s = inv_scale_of(p.scale[0]);
  const TokenQuant tq{_mm512_set1_ps(mean_s),
                      _mm512_set1_ps(denom_s),
                      _mm512_set1_ps(1.0f / denom_s),
                      _mm512_set1_ps(inv_s),
                      _mm512_set1_ps(static_cast<float>(p.zero_point[0])),
                      _mm512_set1_ps(static_cast<float>(p.qmin)),
                      _mm512_set1_ps(static_cast<float>(p.qmax))};
  // from_stats: every |x - mean| <= denom sqrt(n - 1) (the unbiased variance is at least a single
  // square over n - 1), at most 2^30 * 2^30 here, so code16's range test cannot fail.
  const bool fast = markstein_divisor(denom_s) && inv_s <= 0x1p50f;
  const bool ok = !fast                                            ? codes_of_span<Divide::ieee>(tq, x, n, s)
                  : from_stats && n - 1 <= (int64_t{1} << 60) ? codes_of_span<Divide::bounded>(tq, x, n, s)
                                                                   : codes_of_span<Divide::checked>(tq, x, n, s);
  if (!ok) return false;
  const ByteTranspose& bt = byte_transpose_for(cols);
  __m512i lo_idx[3], hi_idx[3];
  for (int64_t g = 0; g < bt.groups; ++g) {
    lo_idx[g] = _mm512_load_si512(bt.lo_idx[g]);
    hi_idx[g] = _mm512_load_si512(bt.hi_idx[g]);
  }
  for (int64_t r0 = 0; r0 < rows; r0 += 16) {
    const int8_t* block = s + r0 * cols;
    const __m512i b0 = _mm512_loadu_si512(block), b1 = _mm512_loadu_si512(block + 64),
                  b2 = _mm512_loadu_si512(block + 128);
    const int64_t count = std::min<int64_t>(16, rows - r0);
    for (int64_t g = 0; g < bt.groups; ++g) {
      __m512i v = _mm512_permutex2var_epi8(b0, lo_idx[g], b1);
      v = _mm512_mask_permutexvar_epi8(v, bt.hi_mask[g], hi_idx[g], b2);
      for (int k = 0; k < 4 && 4 * g + k < cols; ++k) store_lane(codes + (4 * g + k) * rows + r0, v, k, count);
    }
  }
  return true;
}

#pragma GCC diagnostic pop
#endif

}  // namespace

void divide_span(const float* a, int64_t n, float b, float* out) {
#ifdef CSIPOSE_HAVE_TOKEN_KERNELS
  if (int8_avx512_kernels_active() && markstein_divisor(b))
    return divide_span_avx512(a, n, b, out);
#endif
  divide_span_plain(a, n, b, out);
}

bool quantize_standardized_transposed(const float* x, int64_t rows, int64_t cols, float mean, float denom,
                                      const QuantParams& p, Rounding r, int8_t* codes, bool from_stats) {
  CSIPOSE_CHECK(!p.per_channel() && p.qmin >= -128 && p.qmax <= 127 && rows >= 1 && cols >= 1,
                "quantize_standardized_transposed: needs per-tensor params with an int8 range and rows, cols >= 1");
#ifdef CSIPOSE_HAVE_TOKEN_KERNELS
  if (r == Rounding::half_even && cols <= 12 && int8_vbmi_kernels_active())
    return codes_vbmi(x, rows, cols, mean, denom, p, from_stats, codes);
#endif
  return codes_portable(x, rows, cols, mean, denom, p, r, codes);
}

}  // namespace csipose
