#pragma once
// The int8 codes of standardized, transposed input tokens in one pass: what the converted pose
// transformer's first linear op takes (its tokens are (x - mean) / denom, read across the packets
// axis of a sample stored (A * S, T)).
//
// In a pose_nano int8 forward at batch 256 (one thread) making these codes was a quarter of the
// forward: a float32 division per value (one 16-lane vdivps every ~10 cycles), a gather of the
// strided values into vectors (one shuffle per value), a float token buffer and a second pass to
// quantize it. quantize_standardized_transposed computes the same codes from contiguous vectors
// (no gather), divides with an exact multiply-and-correct sequence (divide_span), quantizes in the
// same registers and transposes the bytes at the end (a few byte permutes per 16 rows).
#include <cstdint>

#include "quant/quant_spec.h"

namespace csipose {

/// out[i] = a[i] / b for i < n, bit for bit the IEEE float32 quotient (round to nearest even,
/// signed zeros, NaN / Inf, subnormals as the division gives them). With AVX-512 (and the explicit
/// kernels on: set_int8_avx512_kernels) the quotient of a lane whose numerator is zero or has a
/// magnitude in [2^-90, 2^90] is computed as Markstein's correction of a product with the correctly
/// rounded reciprocal y = 1 / b (q0 = a * y; q1 = q0 + (a - q0 b) y, faithful; q = q1 + (a - q1 b) y,
/// the correctly rounded quotient by Markstein's theorem; each remainder an exact FMA), which is
/// valid for b in [2^-30, 2^30]; any other vector (or b) is divided with vdivps. Elsewhere a plain
/// division loop.
void divide_span(const float* a, int64_t n, float b, float* out);

/// codes[t * rows + r] = quantize((x[r * cols + t] - mean) / denom, p) for r < rows, t < cols: the
/// float32 subtraction and division of the float token, then quantize_span's float32 operations
/// (the same codes as quantizing the float tokens). p per-tensor with an int8 range. False (codes
/// unspecified) when a token is not finite. With AVX-512 VBMI, half-even rounding and cols <= 12
/// (the pose presets have 10 packets) one fused pass and a byte transpose; otherwise the float
/// tokens of the sample and quantize_span.
///
/// from_stats: the caller promises that mean is the float32 mean of these rows * cols values and
/// denom = sqrt(unbiased variance of (x - mean) computed from their float32 squares) + 1e-6 (the
/// pose models' per-sample statistics). Then every |x - mean| is at most denom * sqrt(n - 1), and
/// the multiply-and-correct division skips its per-vector range test where denom is in range.
bool quantize_standardized_transposed(const float* x, int64_t rows, int64_t cols, float mean, float denom,
                                      const QuantParams& p, Rounding r, int8_t* codes, bool from_stats = false);

}  // namespace csipose
