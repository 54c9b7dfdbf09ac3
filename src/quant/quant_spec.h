#pragma once
// The numeric contract of quantization, as small value types (STYLE.md "Quantization"):
//   QuantSpec    what to do: bits, signed, symmetric, per-tensor or per-channel, rounding;
//   QuantParams  what was observed or learned: scale, zero point, the integer range;
//   qparams_from_range  the one function that turns observed ranges into QuantParams.
//
// The affine equation, written once for the whole project:
//
//     real = scale * (q - zero_point)          q an integer in [qmin, qmax]
//
// How a real becomes q (rounding, where the zero point is added, clamp order) is the scalar
// reference in quant/reference.h; fake-quant, the int8 path and the exporter are tested against it.
#include <cstdint>
#include <string>
#include <vector>

namespace csipose {
class ConfigNode;
class Json;

/// One (scale, zero point) for the whole tensor, or one per slice along a channel axis.
enum class Granularity { per_tensor, per_channel };
const char* to_string(Granularity g);
/// "per_tensor" | "per_channel"; throws csipose::Error listing the names otherwise.
Granularity parse_granularity(const std::string& text);

/// How a real value between two integers is rounded (see quant/reference.h, `round_value`).
///   half_even: ties to the even integer (IEEE default, std::nearbyint, torch.round, PyTorch's
///              fake_quantize and FBGEMM) - the default.
///   half_away: ties away from zero (std::round; some DSP / TFLite-micro style kernels).
enum class Rounding { half_even, half_away };
const char* to_string(Rounding r);
/// "half_even" | "half_away"; throws csipose::Error listing the names otherwise.
Rounding parse_rounding(const std::string& text);

/// What to quantize to. A default-constructed spec is int8 signed symmetric per-tensor, round
/// half-even; weight_default() and activation_default() below are the project's two formats.
struct QuantSpec {
  /// Integer width, 2..8.
  int bits = 8;
  /// Signed range [-2^(bits-1), 2^(bits-1)-1] or unsigned [0, 2^bits-1].
  bool is_signed = true;
  /// Symmetric: the zero point is the middle of the range (0 for signed) and the range is
  /// [-amax, amax]; affine: min and max of the observed range map to qmin and qmax.
  bool symmetric = true;
  /// Per-tensor or per-channel.
  Granularity granularity = Granularity::per_tensor;
  /// Channel axis of the tensor for per_channel (0 for conv/linear weights: output channels).
  /// Ignored for per_tensor.
  int64_t axis = 0;
  /// Rounding of quantize / requantize and of the zero point.
  Rounding rounding = Rounding::half_even;

  /// int8 signed symmetric per-channel along axis 0 (output channels), round half-even: the
  /// weight format of FBGEMM / XNNPACK style kernels (zero point 0, so no weight-zero-point term).
  static QuantSpec weight_default();
  /// int8 SIGNED affine per-tensor [-128, 127], round half-even. Signed rather than fbgemm's uint8
  /// [0, 255] so that one int8 type runs end to end (activations, weights, exported tensors, and
  /// the CUDA dp4a / int8 tensor-core paths, which want signed x signed); affine, because
  /// activations after ReLU/SiLU are far from symmetric and a symmetric range would waste a bit.
  static QuantSpec activation_default();

  int64_t qmin() const;  ///< signed: -2^(bits-1); unsigned: 0
  int64_t qmax() const;  ///< signed: 2^(bits-1)-1; unsigned: 2^bits-1
  /// Throws csipose::Error naming the field and value for an impossible spec.
  void validate() const;

  /// Reads bits, signed, symmetric, granularity, axis, rounding; absent keys keep `base`'s values
  /// (the defaults above in the one-argument form). Validates. Does NOT call node.finish(): the
  /// caller owns the node and calls finish() itself.
  static QuantSpec from_yaml(const ConfigNode& node, const QuantSpec& base);
  static QuantSpec from_yaml(const ConfigNode& node);
  /// One `key: value` line per field, readable by from_yaml.
  std::string to_yaml() const;
  /// One line, e.g. "int8 per_channel(axis 0) symmetric signed, round half-even".
  std::string describe() const;

  bool operator==(const QuantSpec& o) const;
  bool operator!=(const QuantSpec& o) const { return !(*this == o); }
};

/// What was observed or learned: real = scale[c] * (q - zero_point[c]), q in [qmin, qmax].
/// Per-tensor parameters hold one entry and axis -1; per-channel hold one entry per slice of
/// the tensor along `axis`.
struct QuantParams {
  std::vector<float> scale;
  std::vector<int32_t> zero_point;
  int64_t qmin = -128;
  int64_t qmax = 127;
  /// The channel axis, or -1 for per-tensor.
  int64_t axis = -1;

  bool per_channel() const { return axis >= 0; }
  /// Number of (scale, zero point) pairs: 1 for per-tensor.
  int64_t size() const { return static_cast<int64_t>(scale.size()); }
  /// Per-tensor parameters (axis -1).
  static QuantParams per_tensor(float scale, int32_t zero_point, int64_t qmin, int64_t qmax);
  /// Throws csipose::Error unless: sizes agree and are >= 1, per-tensor has exactly one entry,
  /// every scale is finite and > 0, every zero point is in [qmin, qmax], qmin < qmax.
  void validate() const;

  /// {"scale": [...], "zero_point": [...], "qmin": .., "qmax": .., "axis": ..}; floats round-trip.
  Json to_json() const;
  /// Inverse of to_json; validates.
  static QuantParams from_json(const Json& j);

  bool operator==(const QuantParams& o) const;
  bool operator!=(const QuantParams& o) const { return !(*this == o); }
};

/// Smallest scale qparams_from_range produces: float32 machine epsilon (2^-23, PyTorch's observer
/// eps). An all-zero range therefore gives scale 2^-23, which is finite and quantizes 0 exactly.
constexpr double kMinScale = 1.1920928955078125e-07;

/// THE function from observed ranges to quantization parameters; observers, calibration and
/// tests all use it. `min_val` / `max_val` hold one entry for per-tensor specs, or one per channel
/// for per-channel specs (any count >= 1). Rules, in order, per entry:
///  1. min must be <= max, both finite (otherwise csipose::Error naming the channel and values).
///  2. The range is widened to include 0: min = min(min, 0), max = max(max, 0), so that real 0
///     (padding, ReLU output, zero bias) is exactly representable as q = zero_point.
///  3. symmetric: amax = max(-min, max); the zero point is the middle of the range,
///       zp = 0 for signed, zp = (qmin + qmax + 1) / 2 (128 for uint8) for unsigned,
///     and scale = amax / (qmax - zp), so +amax maps exactly to qmax (127 for int8) and -amax to
///     -127: the range is symmetric around zp and the extra code (-128) is only reached by
///     clamping. (PyTorch's observers use amax / 127.5 instead; we keep +-amax exact.)
///     affine: scale = (max - min) / (qmax - qmin),
///       zp = qmin - round(min / scale)  (spec.rounding), clamped to [qmin, qmax].
///  4. scale = max(scale, kMinScale) so an all-zero (or tiny) range still gives a usable scale.
///  5. Arithmetic is in double; scale is then rounded to float once, and the affine zero point is
///     computed from that float scale (the one the kernels use).
QuantParams qparams_from_range(const QuantSpec& spec, const std::vector<float>& min_val,
                               const std::vector<float>& max_val);

}  // namespace csipose
