#pragma once
// The slow, obviously correct scalar reference of quantization. Every numeric choice is made here,
// once, and written beside the code; fake-quant (quant/fake_quant.h), the converted int8 path
// (CPU and CUDA) and the exporter are tested bit-exactly against these functions.
//
// The contract in one place (real = scale * (q - zero_point), quant/quant_spec.h):
//
//   quantize(x)   y  = x * inv_scale          float32 multiply by inv_scale = 1.0f / scale (float32)
//                 r  = round(y)               half-even (std::nearbyint) or half-away (std::round)
//                 u  = r + zero_point         zero point added AFTER rounding (exact, integers)
//                 q  = clamp(u, qmin, qmax)   clamp LAST
//   dequantize(q) x' = float(q - zero_point) * scale      (float32 multiply)
//   STE mask      1 where qmin <= u <= qmax (u = rounded, unclamped), else 0
//   requantize    p  = float(acc + bias) * multiplier     (int32 sum -> float32, float32 multiply)
//                 q  = clamp(round(p) + out_zero_point, qmin, qmax)
//
// Why multiply by the float reciprocal instead of dividing: it is exactly what PyTorch's
// fake_quantize_per_tensor_affine / per_channel_affine kernels do on CPU and CUDA
// (`std::nearbyint(x * inv_scale)` with `float inv_scale = 1.0f / scale`), and the two round to
// different integers for some values within a few float steps of a tie (x = 1.55f, scale 0.1f:
// 15.5 -> 16 by multiplication, 15.499999 -> 15 by division; checked against torch 1.13 in
// tests/quant/test_fake_quant.cpp, `MatchesPyTorchFakeQuantizeBitExactly`). Matching it keeps
// our fake-quant implementable with plain torch ops (x * inv_scale, torch::round, clamp) and
// bit-identical to both this reference and PyTorch's own QAT.
#include <cstdint>
#include <vector>

#include "quant/quant_spec.h"

namespace csipose {

/// Rounds to an integer-valued double: half_even = std::nearbyint under the default FE_TONEAREST
/// mode (checked; throws if someone changed the FP rounding mode), half_away = std::round.
/// Rounding a float promoted to double gives the same integer as rounding the float itself.
double round_value(double v, Rounding r);

/// The reciprocal every implementation multiplies by: 1.0f / scale, in float32.
float inv_scale_of(float scale);

/// round(x * inv_scale) + zero_point, unclamped (a double holding an integer, possibly far outside
/// [qmin, qmax]). Throws for non-finite x or a scale that is not finite and > 0.
double quantize_unclamped(float x, float scale, int32_t zero_point, Rounding r);

/// The STE mask of fake-quant: whether quantize_unclamped lies in [qmin, qmax] (PyTorch's
/// fake_quantize convention: tested on the rounded value, before clamping).
bool quantize_in_range(float x, float scale, int32_t zero_point, int64_t qmin, int64_t qmax, Rounding r);

/// q = clamp(round(x * (1.0f / scale)) + zero_point, qmin, qmax).
int32_t quantize(float x, float scale, int32_t zero_point, int64_t qmin, int64_t qmax, Rounding r);

/// real = float(q - zero_point) * scale, float32.
float dequantize(int32_t q, float scale, int32_t zero_point);

/// dequantize(quantize(x)): the forward value of fake-quant.
float fake_quantize_value(float x, float scale, int32_t zero_point, int64_t qmin, int64_t qmax, Rounding r);

/// The requantization multiplier s_in * s_w / s_out, computed in double and rounded to float32
/// ONCE; that float is part of the converted model (the kernels never recompute it).
float requantize_multiplier(double in_scale, double weight_scale, double out_scale);

/// Requantizes an int32 accumulator (sum of (q_in - zp_in) * q_w) plus an int32 bias at scale
/// s_in * s_w to the output's integers:
///   sum = acc + bias                    int32; overflow is an error (a kernel would wrap)
///   p   = float(sum) * multiplier       float32: int->float rounds half-even above 2^24, then one
///                                       float32 multiply (no FMA, no double)
///   q   = clamp(round(p) + out_zero_point, qmin, qmax)
/// float32 rather than double or gemmlowp's fixed-point multiplier: `float(acc + bias) * m` is one
/// conversion and one IEEE multiply, which CPU SIMD and CUDA (__int2float_rn, __fmul_rn) reproduce
/// bit-exactly; double is slow on consumer GPUs and fixed point needs per-kernel care with shifts.
int32_t requantize(int32_t acc, int32_t bias, float multiplier, int32_t out_zero_point, int64_t qmin, int64_t qmax,
                   Rounding r);

// ---- whole tensors, loop by loop (for tests) ---------------------------------------------------

/// The channel (index into p.scale) of element `i` of a row-major tensor of `shape`: 0 for
/// per-tensor params, otherwise the index along p.axis. Throws when p does not fit the shape.
int64_t channel_of(int64_t i, const std::vector<int64_t>& shape, const QuantParams& p);

/// quantize() of every element of a row-major tensor of `shape` with its channel's parameters.
std::vector<int32_t> quantize_values(const std::vector<float>& x, const std::vector<int64_t>& shape,
                                     const QuantParams& p, Rounding r);
/// dequantize() of every element.
std::vector<float> dequantize_values(const std::vector<int32_t>& q, const std::vector<int64_t>& shape,
                                     const QuantParams& p);
/// fake_quantize_value() of every element.
std::vector<float> fake_quantize_values(const std::vector<float>& x, const std::vector<int64_t>& shape,
                                        const QuantParams& p, Rounding r);
/// quantize_in_range() of every element (1 = gradient passes).
std::vector<uint8_t> ste_mask_values(const std::vector<float>& x, const std::vector<int64_t>& shape,
                                     const QuantParams& p, Rounding r);
/// Narrows quantized values to int8; throws naming the first value outside [-128, 127].
std::vector<int8_t> to_int8(const std::vector<int32_t>& q);

}  // namespace csipose
