#include "quant/reference.h"

#include <algorithm>
#include <cfenv>
#include <cmath>

#include "common/check.h"

namespace csipose {
namespace {

void check_scale(float scale) {
  CSIPOSE_CHECK(std::isfinite(scale) && scale > 0.0f, "quantize: scale = ", scale, "; expected a finite value > 0");
}

/// clamp LAST, after rounding and adding the zero point; the value is an integer in a double.
int32_t clamp_to_int(double u, int64_t qmin, int64_t qmax) {
  CSIPOSE_CHECK(qmin < qmax && qmin >= INT32_MIN && qmax <= INT32_MAX, "quantize: [qmin, qmax] = [", qmin, ", ", qmax,
                "]; expected qmin < qmax within int32");
  const double clamped = std::min<double>(std::max<double>(u, static_cast<double>(qmin)), static_cast<double>(qmax));
  return static_cast<int32_t>(clamped);
}

}  // namespace

double round_value(double v, Rounding r) {
  switch (r) {
    case Rounding::half_even:
      // std::nearbyint rounds in the current FP mode; the contract is ties-to-even, so insist on
      // the default mode instead of silently rounding differently.
      CSIPOSE_CHECK(std::fegetround() == FE_TONEAREST, "round_value: the floating-point rounding mode is ",
                    std::fegetround(), ", not FE_TONEAREST; half-even rounding needs the default mode");
      return std::nearbyint(v);
    case Rounding::half_away:
      return std::round(v);  // ties away from zero, independent of the FP mode
  }
  fail("round_value: unknown rounding ", static_cast<int>(r));
}

float inv_scale_of(float scale) {
  check_scale(scale);
  return 1.0f / scale;  // float32 division, as PyTorch's `float inv_scale = 1.0f / scale`
}

double quantize_unclamped(float x, float scale, int32_t zero_point, Rounding r) {
  CSIPOSE_CHECK(std::isfinite(x), "quantize: x = ", x, " is not finite");
  const float y = x * inv_scale_of(scale);  // float32 multiply (not x / scale: see reference.h)
  // The zero point is added after rounding; r and zero_point are integers, so the double sum is
  // exact (PyTorch adds them in float, which is also exact while |r| < 2^24, and larger values clamp
  // to the same end either way).
  return round_value(static_cast<double>(y), r) + static_cast<double>(zero_point);
}

bool quantize_in_range(float x, float scale, int32_t zero_point, int64_t qmin, int64_t qmax, Rounding r) {
  const double u = quantize_unclamped(x, scale, zero_point, r);
  return static_cast<double>(qmin) <= u && u <= static_cast<double>(qmax);
}

int32_t quantize(float x, float scale, int32_t zero_point, int64_t qmin, int64_t qmax, Rounding r) {
  return clamp_to_int(quantize_unclamped(x, scale, zero_point, r), qmin, qmax);
}

float dequantize(int32_t q, float scale, int32_t zero_point) {
  check_scale(scale);
  // q - zero_point in int64 (exact), converted to float (exact for |q - zp| < 2^24), one float32
  // multiply. PyTorch computes the same product in double and rounds once to float; the product of
  // a small integer and a float is exact in double, so both give the correctly rounded float.
  const int64_t d = static_cast<int64_t>(q) - static_cast<int64_t>(zero_point);
  return static_cast<float>(d) * scale;
}

float fake_quantize_value(float x, float scale, int32_t zero_point, int64_t qmin, int64_t qmax, Rounding r) {
  return dequantize(quantize(x, scale, zero_point, qmin, qmax, r), scale, zero_point);
}

float requantize_multiplier(double in_scale, double weight_scale, double out_scale) {
  CSIPOSE_CHECK(std::isfinite(in_scale) && in_scale > 0 && std::isfinite(weight_scale) && weight_scale > 0 &&
                    std::isfinite(out_scale) && out_scale > 0,
                "requantize_multiplier: scales (in ", in_scale, ", weight ", weight_scale, ", out ", out_scale,
                ") must be finite and > 0");
  const double m = in_scale * weight_scale / out_scale;
  const float mf = static_cast<float>(m);
  CSIPOSE_CHECK(std::isfinite(mf) && mf > 0.0f, "requantize_multiplier: s_in * s_w / s_out = ", m,
                " is not representable as a positive float32");
  return mf;
}

int32_t requantize(int32_t acc, int32_t bias, float multiplier, int32_t out_zero_point, int64_t qmin, int64_t qmax,
                   Rounding r) {
  CSIPOSE_CHECK(std::isfinite(multiplier) && multiplier > 0.0f, "requantize: multiplier = ", multiplier,
                "; expected a finite value > 0");
  // int32 accumulate: the sum must fit, as it must in the kernels' int32 registers.
  const int64_t sum = static_cast<int64_t>(acc) + static_cast<int64_t>(bias);
  CSIPOSE_CHECK(sum >= INT32_MIN && sum <= INT32_MAX, "requantize: acc + bias = ", acc, " + ", bias, " = ", sum,
                " overflows int32");
  // int32 -> float32 (rounds half-even when |sum| > 2^24), then ONE float32 multiply.
  const float p = static_cast<float>(static_cast<int32_t>(sum)) * multiplier;
  // Round, then add the zero point (exact, integers), then clamp last.
  return clamp_to_int(round_value(static_cast<double>(p), r) + static_cast<double>(out_zero_point), qmin, qmax);
}

// ---- whole tensors -----------------------------------------------------------------------------

int64_t channel_of(int64_t i, const std::vector<int64_t>& shape, const QuantParams& p) {
  if (!p.per_channel()) return 0;
  CSIPOSE_CHECK(p.axis < static_cast<int64_t>(shape.size()), "quant reference: axis ", p.axis,
                " is out of range for a tensor with ", shape.size(), " dimensions");
  int64_t inner = 1;
  for (size_t d = static_cast<size_t>(p.axis) + 1; d < shape.size(); ++d) inner *= shape[d];
  const int64_t channels = shape[static_cast<size_t>(p.axis)];
  CSIPOSE_CHECK(channels == p.size(), "quant reference: tensor has ", channels, " channels along axis ", p.axis,
                " but the params hold ", p.size());
  return (i / inner) % channels;
}

namespace {

int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t s : shape) {
    CSIPOSE_CHECK(s >= 0, "quant reference: negative dimension ", s);
    n *= s;
  }
  return n;
}

void check_sizes(size_t values, const std::vector<int64_t>& shape, const QuantParams& p) {
  p.validate();
  CSIPOSE_CHECK(static_cast<int64_t>(values) == numel_of(shape), "quant reference: ", values,
                " values for a tensor of ", numel_of(shape), " elements");
}

}  // namespace

std::vector<int32_t> quantize_values(const std::vector<float>& x, const std::vector<int64_t>& shape,
                                     const QuantParams& p, Rounding r) {
  check_sizes(x.size(), shape, p);
  std::vector<int32_t> q(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const auto c = static_cast<size_t>(channel_of(static_cast<int64_t>(i), shape, p));
    q[i] = quantize(x[i], p.scale[c], p.zero_point[c], p.qmin, p.qmax, r);
  }
  return q;
}

std::vector<float> dequantize_values(const std::vector<int32_t>& q, const std::vector<int64_t>& shape,
                                     const QuantParams& p) {
  check_sizes(q.size(), shape, p);
  std::vector<float> x(q.size());
  for (size_t i = 0; i < q.size(); ++i) {
    const auto c = static_cast<size_t>(channel_of(static_cast<int64_t>(i), shape, p));
    x[i] = dequantize(q[i], p.scale[c], p.zero_point[c]);
  }
  return x;
}

std::vector<float> fake_quantize_values(const std::vector<float>& x, const std::vector<int64_t>& shape,
                                        const QuantParams& p, Rounding r) {
  return dequantize_values(quantize_values(x, shape, p, r), shape, p);
}

std::vector<uint8_t> ste_mask_values(const std::vector<float>& x, const std::vector<int64_t>& shape,
                                     const QuantParams& p, Rounding r) {
  check_sizes(x.size(), shape, p);
  std::vector<uint8_t> m(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const auto c = static_cast<size_t>(channel_of(static_cast<int64_t>(i), shape, p));
    m[i] = quantize_in_range(x[i], p.scale[c], p.zero_point[c], p.qmin, p.qmax, r) ? 1 : 0;
  }
  return m;
}

std::vector<int8_t> to_int8(const std::vector<int32_t>& q) {
  std::vector<int8_t> out(q.size());
  for (size_t i = 0; i < q.size(); ++i) {
    CSIPOSE_CHECK(q[i] >= -128 && q[i] <= 127, "to_int8: value[", i, "] = ", q[i], " is outside [-128, 127]");
    out[i] = static_cast<int8_t>(q[i]);
  }
  return out;
}

}  // namespace csipose
