#include "quant/int8_ops.h"

#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <type_traits>
#include <atomic>
#include <cmath>
#include <cstring>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <limits>
#include <numeric>
#include <vector>

#include "common/check.h"
#include "quant/fake_quant.h"
#include "quant/int8_backend.h"
#include "quant/lut_vbmi.h"
#include "quant/reference.h"
#include "quant/token_codes.h"
#include "quant/row_softmax.h"

namespace csipose {
namespace {

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

/// The integer range of params must fit the int8 storage of the activations and weights.
void check_int8_range(const QuantParams& p, const char* what) {
  p.validate();
  CSIPOSE_CHECK(p.qmin >= -128 && p.qmax <= 127, what, ": integer range [", p.qmin, ", ", p.qmax,
                "] does not fit int8 [-128, 127]");
}

/// Per-tensor params of an int8 activation.
void check_activation_params(const QuantParams& p, const char* what) {
  check_int8_range(p, what);
  CSIPOSE_CHECK(!p.per_channel(), what, ": activation params must be per-tensor (axis -1), got axis ", p.axis);
}

void check_int8_tensor(const torch::Tensor& t, const char* what) {
  CSIPOSE_CHECK(t.defined(), what, ": undefined tensor");
  CSIPOSE_CHECK(t.scalar_type() == torch::kInt8, what, ": tensor of dtype ", t.scalar_type(), "; expected int8");
}

void check_float_tensor(const torch::Tensor& t, const char* what) {
  CSIPOSE_CHECK(t.defined(), what, ": undefined tensor");
  CSIPOSE_CHECK(t.scalar_type() == torch::kFloat, what, ": tensor of dtype ", t.scalar_type(), "; expected float32");
}

void check_finite(const torch::Tensor& t, const char* what) {
  CSIPOSE_CHECK(torch::isfinite(t).all().item<bool>(), what, ": tensor holds non-finite values");
}

/// The largest |q - zp| of a per-tensor range: the worst-case magnitude of a centered integer.
int64_t max_centered(const QuantParams& p) {
  return std::max<int64_t>(p.zero_point[0] - p.qmin, p.qmax - p.zero_point[0]);
}

/// Float32 values as a tensor of `shape` on `device`.
torch::Tensor float_tensor(const std::vector<float>& v, const std::vector<int64_t>& shape,
                           const torch::Device& device) {
  return torch::tensor(v, torch::kFloat).reshape(shape).to(device);
}

/// Broadcast shape for per-channel values along `axis` of a `dim`-dimensional tensor, or 0-dim
/// for per-tensor ones.
std::vector<int64_t> channel_shape(const QuantParams& p, int64_t dim) {
  std::vector<int64_t> shape;
  if (p.per_channel()) {
    shape.assign(static_cast<size_t>(dim), 1);
    shape[static_cast<size_t>(p.axis)] = p.size();
  }
  return shape;
}

/// Scale of channel c of possibly per-tensor params.
float scale_at(const QuantParams& p, int64_t c) { return p.scale[static_cast<size_t>(p.per_channel() ? c : 0)]; }

/// The requantization multipliers M[c] = requantize_multiplier(s_in, s_w[c], s_out), c < channels.
std::vector<float> multipliers(const QuantParams& in_qp, const QuantParams& w_params, const QuantParams& out_qp,
                               int64_t channels) {
  std::vector<float> m(static_cast<size_t>(channels));
  for (int64_t c = 0; c < channels; ++c)
    m[static_cast<size_t>(c)] = requantize_multiplier(in_qp.scale[0], scale_at(w_params, c), out_qp.scale[0]);
  return m;
}

/// Exact integer accumulators (float64, integer-valued, |acc| < 2^31) -> int8 outputs:
///   clamp(round(float(acc + bias) * mult) + zp_out, qmin, qmax)
/// bias (int32) and mult (float32) broadcast against acc; bias may be undefined.
torch::Tensor requantize_tensor(const torch::Tensor& acc, const torch::Tensor& bias, const torch::Tensor& mult,
                                const QuantParams& out_qp, Rounding r) {
  torch::Tensor sum = acc.to(torch::kInt);               // exact: acc holds integers below 2^31 in magnitude
  if (bias.defined()) sum = sum + bias;                  // int32 + int32 -> int32; the bound rules out overflow
  const torch::Tensor p = sum.to(torch::kFloat) * mult;  // correctly rounded int->float, one multiply
  // Round, add the zero point (exact in float32 while |round(p)| < 2^24; beyond that the sum
  // clamps to the same end either way), clamp last.
  const torch::Tensor u = round_tensor(p, r) + static_cast<double>(out_qp.zero_point[0]);
  return u.clamp(static_cast<double>(out_qp.qmin), static_cast<double>(out_qp.qmax)).to(torch::kInt8);
}

/// The int32 accumulator of a product of two int8 activations over k terms cannot overflow.
void check_matmul_bound(const char* op, int64_t k, const QuantParams& a_qp, const QuantParams& b_qp) {
  const int64_t bound = k * max_centered(a_qp) * max_centered(b_qp);
  CSIPOSE_CHECK(bound <= kInt32Max, op, ": inner dimension ", k, " can overflow the int32 accumulator (max |acc| = ",
                bound, " exceeds 2^31 - 1)");
}

/// Common checks of a product of two activations (int8_matmul, int8_matmul_float): the three
/// per-tensor params, shapes that multiply, and the int32 bound for the inner dimension.
void check_matmul_operands(const char* op, const torch::Tensor& a, const QuantParams& a_qp, const torch::Tensor& b,
                           const QuantParams& b_qp, const QuantParams& out_qp) {
  check_activation_params(a_qp, op);
  check_activation_params(b_qp, op);
  check_activation_params(out_qp, op);
  CSIPOSE_CHECK(a.dim() >= 2 && b.dim() >= 2 && a.size(-1) == b.size(-2), op, ": shapes ", a.sizes(), " and ",
                b.sizes(), " do not multiply");
  check_matmul_bound(op, a.size(-1), a_qp, b_qp);
}

/// Common checks of an int8 op with a packed weight: activation dtype and params, device, the
/// input params the weight was packed for.
void check_op(const char* op, const torch::Tensor& x_q, const QuantParams& in_qp, const PackedWeight& w,
              const QuantParams& out_qp, int64_t weight_dim) {
  check_int8_tensor(x_q, op);
  check_activation_params(in_qp, op);
  check_activation_params(out_qp, op);
  check_int8_tensor(w.q, op);
  CSIPOSE_CHECK(w.q.dim() == weight_dim, op, ": packed weight of shape ", w.q.sizes(), "; expected ", weight_dim,
                " dimensions");
  CSIPOSE_CHECK(w.q.device() == x_q.device(), op, ": input on ", x_q.device(), " but weight on ", w.q.device());
  CSIPOSE_CHECK(w.input_params == in_qp, op, ": input params (scale ", in_qp.scale[0], ", zero point ",
                in_qp.zero_point[0], ") differ from those the weight was packed for (scale ", w.input_params.scale[0],
                ", zero point ", w.input_params.zero_point[0], ")");
}

/// im2col of a convolution input x (N, C, *S) (any dtype) for a weight of shape (O, C / groups, *K):
/// pads every spatial dimension with `pad_value`, takes the dilated windows, and returns
/// cols (N, G, P, Cg * prod K) with P = prod S_out, and S_out.
struct Im2col {
  torch::Tensor cols;
  std::vector<int64_t> out_size;
};

Im2col im2col(const char* op, const torch::Tensor& x, c10::IntArrayRef w_sizes, const std::vector<int64_t>& stride,
              const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation, int64_t groups,
              double pad_value, bool positions_last = false) {
  const auto nd = static_cast<int64_t>(stride.size());
  CSIPOSE_CHECK(x.dim() == 2 + nd, op, ": input of shape ", x.sizes(), "; expected ", 2 + nd,
                " dimensions (N, C, ...)");
  CSIPOSE_CHECK(groups >= 1, op, ": groups = ", groups, "; expected >= 1");
  const int64_t n = x.size(0), c_in = x.size(1), c_out = w_sizes[0], c_group = w_sizes[1];
  CSIPOSE_CHECK(c_out % groups == 0 && c_group * groups == c_in, op, ": weight of shape ", w_sizes, " with ", groups,
                " groups does not fit an input of ", c_in, " channels");
  for (int64_t i = 0; i < nd; ++i) {
    const auto s = static_cast<size_t>(i);
    CSIPOSE_CHECK(stride[s] >= 1 && dilation[s] >= 1 && padding[s] >= 0, op, ": stride ", stride[s], ", dilation ",
                  dilation[s], ", padding ", padding[s], "; expected stride, dilation >= 1 and padding >= 0");
  }
  // Pad every spatial dimension (constant_pad_nd lists the last dimension first).
  std::vector<int64_t> pads;
  for (int64_t i = nd - 1; i >= 0; --i) pads.insert(pads.end(), 2, padding[static_cast<size_t>(i)]);
  torch::Tensor cols = std::any_of(padding.begin(), padding.end(), [](int64_t p) { return p > 0; })
                           ? torch::constant_pad_nd(x, pads, pad_value)
                           : x;
  // Windows of span d * (k - 1) + 1 every `stride`, then every d-th tap of each window.
  Im2col r;
  for (int64_t i = 0; i < nd; ++i) {
    const auto s = static_cast<size_t>(i);
    const int64_t k = w_sizes[static_cast<size_t>(2 + i)];
    const int64_t span = dilation[s] * (k - 1) + 1;
    CSIPOSE_CHECK(cols.size(2 + i) >= span, op, ": padded input of size ", cols.size(2 + i), " along dimension ", 2 + i,
                  " is smaller than the dilated kernel (", span, ")");
    r.out_size.push_back((cols.size(2 + i) - span) / stride[s] + 1);
    cols = cols.unfold(2 + i, span, stride[s]);  // appends the window dimension
  }
  for (int64_t i = 0; i < nd; ++i) {
    const auto s = static_cast<size_t>(i);
    if (dilation[s] > 1) cols = cols.slice(2 + nd + i, 0, cols.size(2 + nd + i), dilation[s]);
  }
  int64_t positions = 1;
  for (int64_t o : r.out_size) positions *= o;
  if (positions_last) {
    // (N, C, *S_out, *K) -> (N, C, *K, *S_out) -> (N, G, Cg * prod K, P): a view (no copy) for a
    // 1x1 kernel with stride 1 and no padding.
    std::vector<int64_t> perm = {0, 1};
    for (int64_t i = 0; i < nd; ++i) perm.push_back(2 + nd + i);
    for (int64_t i = 0; i < nd; ++i) perm.push_back(2 + i);
    r.cols = cols.permute(perm).reshape({n, groups, -1, positions});
    return r;
  }
  // (N, C, *S_out, *K) -> (N, G, Cg, *S_out, *K) -> (N, G, *S_out, Cg, *K) -> (N, G, P, Cg * prod K)
  std::vector<int64_t> split = {n, groups, c_group};
  for (int64_t i = 2; i < cols.dim(); ++i) split.push_back(cols.size(i));
  std::vector<int64_t> perm = {0, 1};
  for (int64_t i = 0; i < nd; ++i) perm.push_back(3 + i);
  perm.push_back(2);
  for (int64_t i = 0; i < nd; ++i) perm.push_back(3 + nd + i);
  r.cols = cols.reshape(split).permute(perm).reshape({n, groups, positions, -1});
  return r;
}

/// The exact accumulators of an int8 convolution, (N, O, *S_out): float64 integers (reference) or
/// int64 (oneDNN), padding with the input zero point (0 once centered).
torch::Tensor conv_accumulate(const char* op, const torch::Tensor& x_q, int32_t zp, const PackedWeight& w,
                              const std::vector<int64_t>& stride, const std::vector<int64_t>& padding,
                              const std::vector<int64_t>& dilation, int64_t groups) {
  const int64_t n = x_q.size(0), c_out = w.q.size(0);
  const bool dnn = use_onednn(x_q.device());
  const Im2col ic = dnn ? im2col(op, x_q, w.q.sizes(), stride, padding, dilation, groups, static_cast<double>(zp))
                        : im2col(op, x_q.to(torch::kDouble) - static_cast<double>(zp), w.q.sizes(), stride, padding,
                                 dilation, groups, 0.0);
  // Weight (O, Cg, *K) -> (G, O / G, Cg * prod K) -> (G, Cg * prod K, O / G).
  const torch::Tensor wg = w.q.reshape({groups, c_out / groups, -1}).transpose(1, 2);
  CSIPOSE_CHECK(ic.cols.size(3) == wg.size(1), op, ": internal im2col size mismatch");
  const int64_t positions = ic.cols.size(2);
  torch::Tensor acc;  // (N, G, P, O / G)
  if (dnn) {
    // (N, G, P, K') -> (G, N * P, K'): one batched s8 GEMM per group, then the zero-point term.
    const torch::Tensor a = ic.cols.transpose(0, 1).reshape({groups, n * positions, -1});
    const torch::Tensor raw = onednn_s8_gemm(a, wg);  // (G, N * P, O / G) int32
    const torch::Tensor rs = w.row_sum.defined() ? w.row_sum : w.with_row_sum().row_sum;
    acc = (raw.to(torch::kLong) - static_cast<int64_t>(zp) * rs.reshape({groups, 1, c_out / groups}))
              .reshape({groups, n, positions, c_out / groups})
              .transpose(0, 1);
  } else {
    acc = torch::matmul(ic.cols, wg.to(torch::kDouble));  // exact, see the header
  }
  // (N, G, P, O / G) -> (N, G, O / G, P) -> (N, O, *S_out)
  std::vector<int64_t> out_shape = {n, c_out};
  out_shape.insert(out_shape.end(), ic.out_size.begin(), ic.out_size.end());
  return acc.permute({0, 1, 3, 2}).reshape(out_shape);
}

/// The int8 conv ops after their checks: centered input, exact accumulators, requantize.
torch::Tensor int8_conv(const char* op, const torch::Tensor& x_q, const QuantParams& in_qp, const PackedWeight& w,
                        const QuantParams& out_qp, const std::vector<int64_t>& stride,
                        const std::vector<int64_t>& padding, const std::vector<int64_t>& dilation, int64_t groups,
                        Rounding r) {
  const auto nd = static_cast<int64_t>(stride.size());
  check_op(op, x_q, in_qp, w, out_qp, 2 + nd);
  const torch::Tensor acc = conv_accumulate(op, x_q, in_qp.zero_point[0], w, stride, padding, dilation, groups);
  const int64_t c_out = w.out_channels();
  std::vector<int64_t> shape(static_cast<size_t>(2 + nd), 1);
  shape[1] = c_out;
  const torch::Tensor mult = float_tensor(multipliers(in_qp, w.params, out_qp, c_out), shape, x_q.device());
  const torch::Tensor bias = w.bias_q.defined() ? w.bias_q.reshape(shape) : torch::Tensor();
  return requantize_tensor(acc, bias, mult, out_qp, r);
}

/// The dequantized int32 bias of the fake-quant references (undefined stays undefined).
torch::Tensor fq_bias(const torch::Tensor& b, const QuantParams& in_qp, const QuantParams& w_qp) {
  if (!b.defined()) return b;
  return dequantize_bias(quantize_bias(b, in_qp.scale[0], w_qp), in_qp.scale[0], w_qp);
}

}  // namespace

// ---- quantize / dequantize ---------------------------------------------------------------------

torch::Tensor quantize_tensor(const torch::Tensor& x_float, const QuantParams& p, Rounding r) {
  check_float_tensor(x_float, "quantize_tensor");
  check_int8_range(p, "quantize_tensor");
  check_finite(x_float, "quantize_tensor");  // the reference throws for non-finite values too
  if (p.per_channel())
    CSIPOSE_CHECK(p.axis < x_float.dim() && x_float.size(p.axis) == p.size(), "quantize_tensor: tensor of shape ",
                  x_float.sizes(), " does not have ", p.size(), " channels along axis ", p.axis);
  std::vector<float> inv(p.scale.size()), zp(p.scale.size());
  for (size_t c = 0; c < p.scale.size(); ++c) {
    inv[c] = inv_scale_of(p.scale[c]);  // 1.0f / scale in float32, as the reference
    zp[c] = static_cast<float>(p.zero_point[c]);
  }
  const std::vector<int64_t> shape = channel_shape(p, x_float.dim());
  const torch::Tensor u = round_tensor(x_float.detach() * float_tensor(inv, shape, x_float.device()), r) +
                          float_tensor(zp, shape, x_float.device());
  return u.clamp(static_cast<double>(p.qmin), static_cast<double>(p.qmax)).to(torch::kInt8);
}

torch::Tensor dequantize_tensor(const torch::Tensor& q, const QuantParams& p) {
  check_int8_tensor(q, "dequantize_tensor");
  p.validate();
  if (p.per_channel())
    CSIPOSE_CHECK(p.axis < q.dim() && q.size(p.axis) == p.size(), "dequantize_tensor: tensor of shape ", q.sizes(),
                  " does not have ", p.size(), " channels along axis ", p.axis);
  std::vector<float> zp(p.scale.size());
  for (size_t c = 0; c < p.scale.size(); ++c) zp[c] = static_cast<float>(p.zero_point[c]);
  const std::vector<int64_t> shape = channel_shape(p, q.dim());
  // q - zp is an exact small integer in float32; then one float32 multiply, as the reference.
  return (q.to(torch::kFloat) - float_tensor(zp, shape, q.device())) * float_tensor(p.scale, shape, q.device());
}

// ---- packing -----------------------------------------------------------------------------------

float PackedWeight::weight_scale(int64_t c) const { return scale_at(params, c); }

PackedWeight PackedWeight::to(const torch::Device& device) const {
  PackedWeight p = *this;
  p.q = q.to(device);
  if (bias_q.defined()) p.bias_q = bias_q.to(device);
  if (row_sum.defined()) p.row_sum = row_sum.to(device);
  if (zp_row_sum.defined()) p.zp_row_sum = zp_row_sum.to(device);
  return p;
}

PackedWeight PackedWeight::with_row_sum() const {
  PackedWeight p = *this;
  if (!p.row_sum.defined()) p.row_sum = q.reshape({q.size(0), -1}).to(torch::kLong).sum(1);
  if (!p.zp_row_sum.defined() && !p.input_params.zero_point.empty())
    p.zp_row_sum = p.row_sum * static_cast<int64_t>(p.input_params.zero_point[0]);
  return p;
}

torch::Tensor quantize_bias(const torch::Tensor& bias_float, float input_scale, const QuantParams& w_params) {
  check_float_tensor(bias_float, "quantize_bias");
  CSIPOSE_CHECK(bias_float.dim() == 1, "quantize_bias: bias of shape ", bias_float.sizes(), "; expected 1-D (out)");
  CSIPOSE_CHECK(std::isfinite(input_scale) && input_scale > 0.0f, "quantize_bias: input scale ", input_scale,
                "; expected a finite value > 0");
  w_params.validate();
  const int64_t out = bias_float.size(0);
  CSIPOSE_CHECK(!w_params.per_channel() || w_params.size() == out, "quantize_bias: ", out,
                " bias values but the weight params hold ", w_params.size(), " channels");
  const torch::Tensor b = bias_float.detach().to(torch::kCPU).contiguous();
  const float* bp = b.data_ptr<float>();
  std::vector<int32_t> q(static_cast<size_t>(out));
  for (int64_t c = 0; c < out; ++c) {
    CSIPOSE_CHECK(std::isfinite(bp[c]), "quantize_bias: bias[", c, "] = ", bp[c], " is not finite");
    // s_in * s_w in double is exact (two 24-bit significands); one division, one half-even rounding.
    const double bias_scale = static_cast<double>(input_scale) * static_cast<double>(scale_at(w_params, c));
    const double v = round_value(static_cast<double>(bp[c]) / bias_scale, Rounding::half_even);
    CSIPOSE_CHECK(std::fabs(v) <= static_cast<double>(kInt32Max), "quantize_bias: bias[", c, "] = ", bp[c],
                  " at scale s_in * s_w = ", bias_scale, " is ", v, ", which overflows int32");
    q[static_cast<size_t>(c)] = static_cast<int32_t>(v);
  }
  return torch::tensor(q, torch::kInt).to(bias_float.device());
}

torch::Tensor dequantize_bias(const torch::Tensor& bias_q, float input_scale, const QuantParams& w_params) {
  CSIPOSE_CHECK(bias_q.defined() && bias_q.scalar_type() == torch::kInt && bias_q.dim() == 1,
                "dequantize_bias: expected a 1-D int32 tensor");
  const torch::Tensor b = bias_q.to(torch::kCPU).contiguous();
  const int32_t* bp = b.data_ptr<int32_t>();
  std::vector<float> out(static_cast<size_t>(b.size(0)));
  for (int64_t c = 0; c < b.size(0); ++c) {
    const double bias_scale = static_cast<double>(input_scale) * static_cast<double>(scale_at(w_params, c));
    out[static_cast<size_t>(c)] = static_cast<float>(static_cast<double>(bp[c]) * bias_scale);
  }
  return torch::tensor(out, torch::kFloat).to(bias_q.device());
}

PackedWeight pack_weight(const torch::Tensor& w_float, const torch::Tensor& bias_float, const QuantSpec& wspec,
                         const QuantParams& input_qp) {
  check_float_tensor(w_float, "pack_weight");
  CSIPOSE_CHECK(w_float.dim() >= 2 && w_float.numel() > 0, "pack_weight: weight of shape ", w_float.sizes(),
                "; expected (out, in, ...) with at least one element");
  wspec.validate();
  CSIPOSE_CHECK(wspec.symmetric && wspec.is_signed, "pack_weight: weight spec ", wspec.describe(),
                " has a non-zero zero point; the int8 ops need signed symmetric weights");
  CSIPOSE_CHECK(wspec.granularity == Granularity::per_tensor || wspec.axis == 0, "pack_weight: weight spec ",
                wspec.describe(), "; per-channel weights must use axis 0 (output channels)");
  check_activation_params(input_qp, "pack_weight");
  check_finite(w_float, "pack_weight");
  const int64_t out = w_float.size(0);
  const torch::Tensor w2 = w_float.detach().reshape({out, -1});
  std::vector<float> lo, hi;
  if (wspec.granularity == Granularity::per_channel) {
    const torch::Tensor mn = w2.amin(1).to(torch::kCPU).contiguous(), mx = w2.amax(1).to(torch::kCPU).contiguous();
    lo.assign(mn.data_ptr<float>(), mn.data_ptr<float>() + out);
    hi.assign(mx.data_ptr<float>(), mx.data_ptr<float>() + out);
  } else {
    lo = {w2.min().item<float>()};
    hi = {w2.max().item<float>()};
  }
  const QuantParams wp = qparams_from_range(wspec, lo, hi);
  return pack_weight_with(w_float, bias_float, wspec, wp, input_qp);
}

PackedWeight pack_weight_with(const torch::Tensor& w_float, const torch::Tensor& bias_float, const QuantSpec& wspec,
                              const QuantParams& weight_qp, const QuantParams& input_qp) {
  check_float_tensor(w_float, "pack_weight");
  CSIPOSE_CHECK(w_float.dim() >= 2 && w_float.numel() > 0, "pack_weight: weight of shape ", w_float.sizes(),
                "; expected (out, in, ...) with at least one element");
  check_activation_params(input_qp, "pack_weight");
  check_finite(w_float, "pack_weight");
  weight_qp.validate();
  const int64_t out = w_float.size(0);
  CSIPOSE_CHECK(weight_qp.size() == (weight_qp.per_channel() ? out : 1) && weight_qp.axis <= 0,
                "pack_weight: weight params with ", weight_qp.size(), " scales (axis ", weight_qp.axis,
                ") do not fit ", out, " output channels");
  for (const int32_t z : weight_qp.zero_point)
    CSIPOSE_CHECK(z == 0, "pack_weight: weight zero point ", z, "; the int8 ops need symmetric weights");
  PackedWeight pw;
  pw.params = weight_qp;
  check_int8_range(pw.params, "pack_weight");
  pw.q = quantize_tensor(w_float, pw.params, wspec.rounding);
  pw.input_params = input_qp;
  if (bias_float.defined()) {
    CSIPOSE_CHECK(bias_float.dim() == 1 && bias_float.size(0) == out, "pack_weight: bias of shape ", bias_float.sizes(),
                  " does not fit ", out, " output channels");
    pw.bias_q = quantize_bias(bias_float, input_qp.scale[0], pw.params);
  }
  // Overflow: the largest |acc[c]| any input can produce, plus |bias[c]|, must fit int32.
  const torch::Tensor abs_sum = pw.q.reshape({out, -1}).to(torch::kLong).abs().sum(1).to(torch::kCPU).contiguous();
  const torch::Tensor bias_cpu = pw.bias_q.defined() ? pw.bias_q.to(torch::kCPU).contiguous() : torch::Tensor();
  const int64_t x_max = max_centered(input_qp);
  for (int64_t c = 0; c < out; ++c) {
    const int64_t acc_max = abs_sum.data_ptr<int64_t>()[c] * x_max;
    const int64_t bias_abs = bias_cpu.defined() ? std::abs(static_cast<int64_t>(bias_cpu.data_ptr<int32_t>()[c])) : 0;
    CSIPOSE_CHECK(acc_max + bias_abs <= kInt32Max, "pack_weight: output channel ", c,
                  " can overflow the int32 accumulator: max |acc| = ", acc_max, " (sum |w_q| * ", x_max,
                  ") + |bias_q| = ", bias_abs, " exceeds 2^31 - 1");
  }
  return pw.with_row_sum();
}

// ---- int8 ops ----------------------------------------------------------------------------------

torch::Tensor int8_linear(const torch::Tensor& x_q, const QuantParams& in_qp, const PackedWeight& w,
                          const QuantParams& out_qp, Rounding r) {
  check_op("int8_linear", x_q, in_qp, w, out_qp, 2);
  CSIPOSE_CHECK(x_q.dim() >= 1 && x_q.size(-1) == w.q.size(1), "int8_linear: input of shape ", x_q.sizes(),
                " does not fit a weight of shape ", w.q.sizes());
  torch::Tensor acc;
  if (use_onednn(x_q.device())) {
    // Raw int8 products, then the zero-point term: sum (x - zp) w = sum x w - zp sum w.
    const int64_t k = x_q.size(-1), o = w.out_channels();
    const torch::Tensor raw = onednn_s8_gemm(x_q.reshape({1, -1, k}), w.q.t().unsqueeze(0));  // (1, M, O)
    const torch::Tensor rs = w.row_sum.defined() ? w.row_sum : w.with_row_sum().row_sum;
    std::vector<int64_t> shape(x_q.sizes().begin(), x_q.sizes().end());
    shape.back() = o;
    acc = (raw.to(torch::kLong) - static_cast<int64_t>(in_qp.zero_point[0]) * rs).reshape(shape);
  } else {
    const torch::Tensor xc = x_q.to(torch::kDouble) - static_cast<double>(in_qp.zero_point[0]);
    acc = torch::matmul(xc, w.q.to(torch::kDouble).t());  // exact, see the header
  }
  const torch::Tensor mult =
      float_tensor(multipliers(in_qp, w.params, out_qp, w.out_channels()), {w.out_channels()}, x_q.device());
  return requantize_tensor(acc, w.bias_q, mult, out_qp, r);
}

torch::Tensor int8_conv1d(const torch::Tensor& x_q, const QuantParams& in_qp, const PackedWeight& w,
                          const QuantParams& out_qp, int64_t stride, int64_t padding, int64_t dilation, int64_t groups,
                          Rounding r) {
  return int8_conv("int8_conv1d", x_q, in_qp, w, out_qp, {stride}, {padding}, {dilation}, groups, r);
}

torch::Tensor int8_conv2d(const torch::Tensor& x_q, const QuantParams& in_qp, const PackedWeight& w,
                          const QuantParams& out_qp, std::array<int64_t, 2> stride, std::array<int64_t, 2> padding,
                          std::array<int64_t, 2> dilation, int64_t groups, Rounding r) {
  return int8_conv("int8_conv2d", x_q, in_qp, w, out_qp, {stride[0], stride[1]}, {padding[0], padding[1]},
                   {dilation[0], dilation[1]}, groups, r);
}

torch::Tensor int8_matmul(const torch::Tensor& a_q, const QuantParams& a_qp, const torch::Tensor& b_q,
                          const QuantParams& b_qp, const QuantParams& out_qp, Rounding r) {
  check_int8_tensor(a_q, "int8_matmul");
  check_int8_tensor(b_q, "int8_matmul");
  check_matmul_operands("int8_matmul", a_q, a_qp, b_q, b_qp, out_qp);
  CSIPOSE_CHECK(a_q.device() == b_q.device(), "int8_matmul: operands on ", a_q.device(), " and ", b_q.device());
  const int64_t k = a_q.size(-1);
  torch::Tensor acc;
  if (use_onednn(a_q.device())) {
    // sum (a - za)(b - zb) = sum a b - za sum_k b - zb sum_k a + K za zb, over broadcast batches.
    std::vector<int64_t> batch_a(a_q.sizes().begin(), a_q.sizes().end() - 2);
    std::vector<int64_t> batch_b(b_q.sizes().begin(), b_q.sizes().end() - 2);
    const std::vector<int64_t> batch = at::infer_size(batch_a, batch_b);
    std::vector<int64_t> ea = batch, eb = batch;
    ea.insert(ea.end(), {a_q.size(-2), k});
    eb.insert(eb.end(), {k, b_q.size(-1)});
    const torch::Tensor a3 = a_q.expand(ea).reshape({-1, a_q.size(-2), k});
    const torch::Tensor b3 = b_q.expand(eb).reshape({-1, k, b_q.size(-1)});
    const int64_t za = a_qp.zero_point[0], zb = b_qp.zero_point[0];
    torch::Tensor acc3 = onednn_s8_gemm(a3, b3).to(torch::kLong);
    if (za != 0) acc3 -= za * b3.to(torch::kLong).sum(1, /*keepdim=*/true);
    if (zb != 0) acc3 -= zb * a3.to(torch::kLong).sum(2, /*keepdim=*/true);
    if (za != 0 && zb != 0) acc3 += k * za * zb;
    std::vector<int64_t> out = batch;
    out.insert(out.end(), {a_q.size(-2), b_q.size(-1)});
    acc = acc3.reshape(out);
  } else {
    const torch::Tensor ac = a_q.to(torch::kDouble) - static_cast<double>(a_qp.zero_point[0]);
    const torch::Tensor bc = b_q.to(torch::kDouble) - static_cast<double>(b_qp.zero_point[0]);
    acc = torch::matmul(ac, bc);  // exact, see the header
  }
  const float m = requantize_multiplier(a_qp.scale[0], b_qp.scale[0], out_qp.scale[0]);
  return requantize_tensor(acc, torch::Tensor(), float_tensor({m}, {}, a_q.device()), out_qp, r);
}

// ---- fused CPU path (oneDNN backend) --------------------------------------------------------------
namespace {

// Hot loops of the fused path, half-to-even rounding (the default; half_away takes the plain
// loops). Written branch-free so that GCC vectorizes them, and compiled for AVX-512, AVX2 and the
// baseline ISA with the best chosen at load time (target_clones): the same IEEE float32 operations
// in every clone (none of the three targets enables FMA, and no expression has an a * b + c shape
// to contract), so every clone gives the reference's bits (tested on the clone this machine picks).
// no-trapping-math only lets GCC turn the selects into vector blends (it assumes nobody inspects
// floating-point exception flags); it changes no value.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CSIPOSE_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")
#else
#define CSIPOSE_SIMD_CLONES
#endif

constexpr float kTwo23f = 8388608.0f;

/// The working set of one chunk of samples of a batched int8 conv (int8_op_fused): its int8
/// columns and int32 sums, sized to stay in a core's L2 cache (set_int8_conv_chunk_bytes).
std::atomic<int64_t>& conv_chunk_bytes() {
  static std::atomic<int64_t> bytes{256 * 1024};
  return bytes;
}
constexpr float kFloatMax = std::numeric_limits<float>::max();

// Builtins and plain selects instead of std::fabs / std::min / ...: functions compiled with other
// options (the pragma above) cannot inline the std ones, which would stop the vectorizer.
#if defined(__GNUC__)
inline float fabs_f(float x) { return __builtin_fabsf(x); }
inline float copysign_f(float x, float y) { return __builtin_copysignf(x, y); }
#else
inline float fabs_f(float x) { return std::fabs(x); }
inline float copysign_f(float x, float y) { return std::copysign(x, y); }
#endif
inline float clamp_f(float x, float lo, float hi) {
  x = x < lo ? lo : x;
  return x > hi ? hi : x;
}

/// Round half to even of a float32, inline and vectorizable (std::nearbyint is an out-of-line libm
/// call per element without SSE4.1): for |y| < 2^23, |y| + 2^23 lies in [2^23, 2^24), where the
/// float32 spacing is 1, so the IEEE addition itself rounds |y| to an integer, ties to even (the
/// default rounding mode, which std::nearbyint also uses), and subtracting 2^23 is exact; larger
/// |y| are integers already (both sides are computed and selected, for the vectorizer). The sign is
/// put back (so -0.3 gives -0, as nearbyint); NaN stays NaN. Exact for every float32 given IEEE
/// float semantics (no -ffast-math, which would fold the addition away); tested against the
/// reference at ties of both parities and extremes.
inline float round_half_even_select(float y) {
  const float a = fabs_f(y);
  const float r = (a + kTwo23f) - kTwo23f;
  return copysign_f(a < kTwo23f ? r : a, y);
}

/// dst[i] = clamp(round(src[i] * inv) + zp, lo, hi); returns 0 when a value is not finite.
CSIPOSE_SIMD_CLONES
int quantize_span_even_auto(const float* src, int64_t n, int8_t* dst, float inv, float zp, float lo, float hi) {
  int finite = 1;
  for (int64_t i = 0; i < n; ++i) {
    const float v = src[i];
    finite &= fabs_f(v) <= kFloatMax ? 1 : 0;
    const float u = clamp_f((round_half_even_select(v * inv) + zp), lo, hi);
    dst[i] = static_cast<int8_t>(static_cast<int32_t>(u));
  }
  return finite;
}

/// dst[i] = dequantize(requantize(src[i] + add[i], mult[i])) for n int32 sums: add[i] is the
/// per-element constant (bias - zero-point terms) as a 32-bit two's-complement value (the true
/// acc + bias fits int32 by pack_weight's bound, so wrapping unsigned addition gives it exactly).
CSIPOSE_SIMD_CLONES
void requant_span_even_auto(const int32_t* src, const uint32_t* add, const float* mult, int64_t n, float zp, float lo,
                       float hi, float s_out, float* dst) {
  for (int64_t i = 0; i < n; ++i) {
    const int32_t acc = static_cast<int32_t>(static_cast<uint32_t>(src[i]) + add[i]);
    const float u = clamp_f((round_half_even_select(static_cast<float>(acc) * mult[i]) + zp), lo, hi);
    dst[i] = (u - zp) * s_out;  // dequantize: float(q - zp) * scale
  }
}

/// The int8 codes themselves (no dequantize): an int8 op that hands its output to the next one.
CSIPOSE_SIMD_CLONES
void requant_span_even_q_auto(const int32_t* src, const uint32_t* add, const float* mult, int64_t n, float zp, float lo,
                         float hi, int8_t* dst) {
  for (int64_t i = 0; i < n; ++i) {
    const int32_t acc = static_cast<int32_t>(static_cast<uint32_t>(src[i]) + add[i]);
    const float u = clamp_f((round_half_even_select(static_cast<float>(acc) * mult[i]) + zp), lo, hi);
    dst[i] = static_cast<int8_t>(static_cast<int32_t>(u));
  }
}

/// Conv outputs: `rows` consecutive rows of np contiguous positions, row r (counted from row0)
/// belonging to channel (row0 + r) % channels with that channel's add and multiplier; float32
/// dequantized output (dst_f) or int8 codes (dst_q; the caller maps them through a table). One call per
/// block of rows: conv rows are short (a TCN row is ~20-40 positions), and a call per row cost as
/// much as its arithmetic.
CSIPOSE_SIMD_CLONES
void requant_rows_even_auto(const int32_t* src, int64_t row0, int64_t rows, int64_t np, int64_t channels,
                       const uint32_t* add, const float* mult, float zp, float lo, float hi, float s_out, float* dst_f,
                       int8_t* dst_q) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t c = (row0 + r) % channels;
    const uint32_t a = add[c];
    const float m = mult[c];
    const int32_t* s_row = src + r * np;
    if (dst_q == nullptr) {
      float* d = dst_f + r * np;
      for (int64_t i = 0; i < np; ++i) {
        const int32_t acc = static_cast<int32_t>(static_cast<uint32_t>(s_row[i]) + a);
        const float u = clamp_f((round_half_even_select(static_cast<float>(acc) * m) + zp), lo, hi);
        d[i] = (u - zp) * s_out;
      }
    } else {
      int8_t* d = dst_q + r * np;
      for (int64_t i = 0; i < np; ++i) {
        const int32_t acc = static_cast<int32_t>(static_cast<uint32_t>(s_row[i]) + a);
        const float u = clamp_f((round_half_even_select(static_cast<float>(acc) * m) + zp), lo, hi);
        d[i] = static_cast<int8_t>(static_cast<int32_t>(u));
      }
    }
  }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

#if defined(__x86_64__) && defined(__GNUC__)
/// apply_lut with AVX-512 VBMI (lut_vbmi, quant/lut_vbmi.h), 64 codes per step.
#define CSIPOSE_VBMI __attribute__((target("avx512f,avx512bw,avx512vbmi")))

CSIPOSE_VBMI void apply_lut_vbmi(int8_t* dst, int64_t n, const int8_t* table) {
  const __m512i t0 = _mm512_loadu_si512(table), t1 = _mm512_loadu_si512(table + 64);
  const __m512i t2 = _mm512_loadu_si512(table + 128), t3 = _mm512_loadu_si512(table + 192);
  int64_t i = 0;
  for (; i + 64 <= n; i += 64)
    _mm512_storeu_si512(dst + i, lut_vbmi(_mm512_loadu_si512(dst + i), t0, t1, t2, t3));
  if (i < n) {
    const __mmask64 m = (~0ULL) >> (64 - (n - i));
    _mm512_mask_storeu_epi8(dst + i, m, lut_vbmi(_mm512_maskz_loadu_epi8(m, dst + i), t0, t1, t2, t3));
  }
}

/// dst row r = table[src row r] for `width` codes of `rows` rows (src / dst rows src_stride /
/// dst_stride apart; src may be dst), one table load.
CSIPOSE_VBMI void lut_rows_copy_vbmi(const int8_t* src, int64_t src_stride, int8_t* dst, int64_t dst_stride,
                                     int64_t rows, int64_t width, const int8_t* table) {
  const __m512i t0 = _mm512_loadu_si512(table), t1 = _mm512_loadu_si512(table + 64);
  const __m512i t2 = _mm512_loadu_si512(table + 128), t3 = _mm512_loadu_si512(table + 192);
  const int64_t full = width / 64 * 64;
  const __mmask64 m = width > full ? (~0ULL) >> (64 - (width - full)) : 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int8_t* in = src + r * src_stride;
    int8_t* out = dst + r * dst_stride;
    for (int64_t i = 0; i < full; i += 64)
      _mm512_storeu_si512(out + i, lut_vbmi(_mm512_loadu_si512(in + i), t0, t1, t2, t3));
    if (m != 0) _mm512_mask_storeu_epi8(out + full, m, lut_vbmi(_mm512_maskz_loadu_epi8(m, in + full), t0, t1, t2, t3));
  }
}

// GCC 12's _mm512_reduce_add_epi64 reads an undefined vector (GCC bug 105593, a false positive).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
CSIPOSE_VBMI void row_sums_i8_bw(const int8_t* x, int64_t rows, int64_t k, int64_t stride, int32_t* out) {
  const __mmask64 m = k >= 64 ? ~0ULL : (1ULL << k) - 1ULL;
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80)), zero = _mm512_setzero_si512();
  for (int64_t r = 0; r < rows; ++r) {
    const __m512i u = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, x + r * stride), flip);
    out[r] = static_cast<int32_t>(_mm512_reduce_add_epi64(_mm512_sad_epu8(u, zero)) - 64 * 128);
  }
}
#pragma GCC diagnostic pop

bool cpu_has_vbmi() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vbmi");
  return has;
}
#endif

// ---- explicit AVX-512 kernels of the hot loops -------------------------------------------------
// The vectorized loops above leave a conv row's tail (a TCN row is 20 positions: one 16-lane step
// and 4 scalar ones) and the int8 packing to scalar code, which made the requantization as costly
// as the GEMM before it (wiflow_half at batch 256). These do the same float32 operations in the
// same order with masked tails, one instruction per step of the contract:
//  - int32 -> float32 conversion: vcvtdq2ps, round to nearest (as static_cast<float>);
//  - round half to even: vrndscaleps with _MM_FROUND_TO_NEAREST_INT, which equals
//    round_half_even_select for every float32 (integers, including |y| >= 2^23, are returned
//    unchanged; the sign of a zero result is y's, as copysign gives);
//  - clamp: vmaxps(lo, x) then vminps(hi, x), which are x < lo ? lo : x and x > hi ? hi : x
//    operand for operand (MAXPS / MINPS return the second operand unless the comparison holds),
//    so signed zeros and NaN come out as in clamp_f;
//  - codes: vcvttps2dq then a saturating pack to bytes (the values are integers in [lo, hi]).
// Used when the CPU has AVX-512F and set_int8_avx512_kernels has not turned them off (tests run
// both and compare them with the reference bit for bit).
#if defined(__x86_64__) && defined(__GNUC__)
#define CSIPOSE_AVX512 __attribute__((target("avx512f")))
// GCC 12's avx512fintrin.h passes _mm512_undefined_ps() as the unused merge source of unmasked
// intrinsics and then warns about it (GCC bug 105593, fixed in GCC 13): a false positive.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

std::atomic<bool>& avx512_kernels_on() {
  static std::atomic<bool> on{true};
  return on;
}

bool use_avx512_kernels() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has && avx512_kernels_on().load(std::memory_order_relaxed);
}

CSIPOSE_AVX512 inline __mmask16 tail_mask16(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
}

/// clamp(round_half_even(y) + zp, lo, hi) on 16 lanes.
CSIPOSE_AVX512 inline __m512 round_shift_clamp(__m512 y, __m512 zp, __m512 lo, __m512 hi) {
  const __m512 r = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_add_ps(r, zp)));
}

CSIPOSE_AVX512 int quantize_span_even_avx512(const float* src, int64_t n, int8_t* dst, float inv, float zp_s,
                                            float lo_s, float hi_s) {
  const __m512 vinv = _mm512_set1_ps(inv), zp = _mm512_set1_ps(zp_s), lo = _mm512_set1_ps(lo_s),
               hi = _mm512_set1_ps(hi_s), fmax = _mm512_set1_ps(kFloatMax);
  __mmask16 finite = 0xFFFF;
  int64_t i = 0;
  // 64 values a step without masks (independent lanes: the same operations per value).
  for (; i + 64 <= n; i += 64) {
    __m128i packed[4];
    for (int u4 = 0; u4 < 4; ++u4) {
      const __m512 v = _mm512_loadu_ps(src + i + 16 * u4);
      finite &= static_cast<__mmask16>(_mm512_cmp_ps_mask(_mm512_abs_ps(v), fmax, _CMP_LE_OQ));
      packed[u4] = _mm512_cvtsepi32_epi8(_mm512_cvttps_epi32(round_shift_clamp(_mm512_mul_ps(v, vinv), zp, lo, hi)));
    }
    for (int u4 = 0; u4 < 4; ++u4) _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i + 16 * u4), packed[u4]);
  }
  for (; i < n; i += 16) {
    const __mmask16 m = tail_mask16(n - i);
    const __m512 v = _mm512_maskz_loadu_ps(m, src + i);
    finite &= static_cast<__mmask16>(_mm512_cmp_ps_mask(_mm512_abs_ps(v), fmax, _CMP_LE_OQ) | ~m);
    const __m512 u = round_shift_clamp(_mm512_mul_ps(v, vinv), zp, lo, hi);
    _mm512_mask_cvtsepi32_storeu_epi8(dst + i, m, _mm512_cvttps_epi32(u));
  }
  return finite == 0xFFFF ? 1 : 0;
}

/// acc = src + add (wrapping), clamp(round(acc * mult) + zp): 16 lanes of int32 sums.
CSIPOSE_AVX512 inline __m512 requant16(__m512i acc, __m512i add, __m512 mult, __m512 zp, __m512 lo, __m512 hi) {
  const __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(acc, add)), mult);
  return round_shift_clamp(y, zp, lo, hi);
}

CSIPOSE_AVX512 inline void requant_span_even_avx512(const int32_t* src, const uint32_t* add, const float* mult, int64_t n,
                                             float zp_s, float lo_s, float hi_s, float s_out_s, float* dst) {
  const __m512 zp = _mm512_set1_ps(zp_s), lo = _mm512_set1_ps(lo_s), hi = _mm512_set1_ps(hi_s),
               s_out = _mm512_set1_ps(s_out_s);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 u = requant16(_mm512_loadu_si512(src + i), _mm512_loadu_si512(add + i), _mm512_loadu_ps(mult + i),
                               zp, lo, hi);
    _mm512_storeu_ps(dst + i, _mm512_mul_ps(_mm512_sub_ps(u, zp), s_out));
  }
  if (i < n) {
    const __mmask16 m = tail_mask16(n - i);
    const __m512 u = requant16(_mm512_maskz_loadu_epi32(m, src + i), _mm512_maskz_loadu_epi32(m, add + i),
                               _mm512_maskz_loadu_ps(m, mult + i), zp, lo, hi);
    _mm512_mask_storeu_ps(dst + i, m, _mm512_mul_ps(_mm512_sub_ps(u, zp), s_out));
  }
}

CSIPOSE_AVX512 inline void requant_span_even_q_avx512(const int32_t* src, const uint32_t* add, const float* mult, int64_t n,
                                               float zp_s, float lo_s, float hi_s, int8_t* dst) {
  const __m512 zp = _mm512_set1_ps(zp_s), lo = _mm512_set1_ps(lo_s), hi = _mm512_set1_ps(hi_s);
  int64_t i = 0;
  // Whole vectors: the pack into a register and a plain 16-byte store (the masked memory form of
  // vpmovsdb was a third of this loop's time).
  for (; i + 16 <= n; i += 16) {
    const __m512 u = requant16(_mm512_loadu_si512(src + i), _mm512_loadu_si512(add + i), _mm512_loadu_ps(mult + i),
                               zp, lo, hi);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm512_cvtsepi32_epi8(_mm512_cvttps_epi32(u)));
  }
  if (i < n) {
    const __mmask16 m = tail_mask16(n - i);
    const __m512 u = requant16(_mm512_maskz_loadu_epi32(m, src + i), _mm512_maskz_loadu_epi32(m, add + i),
                               _mm512_maskz_loadu_ps(m, mult + i), zp, lo, hi);
    _mm512_mask_cvtsepi32_storeu_epi8(dst + i, m, _mm512_cvttps_epi32(u));
  }
}

/// requant_span_even(_q) of `rows` rows of o channels (row r at src + r o, the same add / mult per
/// channel), into dst_f or dst_q: the span kernels called directly row by row (a dispatching call
/// per row of a linear op's 48..144 outputs cost about a third of the requantization).
CSIPOSE_AVX512 void requant_linear_rows_even_avx512(const int32_t* src, int64_t rows, int64_t o, const uint32_t* add,
                                                    const float* mult, float zp, float lo, float hi, float s_out,
                                                    float* dst_f, int8_t* dst_q) {
  for (int64_t r = 0; r < rows; ++r) {
    if (dst_q != nullptr)
      requant_span_even_q_avx512(src + r * o, add, mult, o, zp, lo, hi, dst_q + r * o);
    else
      requant_span_even_avx512(src + r * o, add, mult, o, zp, lo, hi, s_out, dst_f + r * o);
  }
}

CSIPOSE_AVX512 void requant_rows_even_avx512(const int32_t* src, int64_t row0, int64_t rows, int64_t np,
                                             int64_t channels, const uint32_t* add, const float* mult, float zp_s,
                                             float lo_s, float hi_s, float s_out_s, float* dst_f, int8_t* dst_q) {
  const __m512 zp = _mm512_set1_ps(zp_s), lo = _mm512_set1_ps(lo_s), hi = _mm512_set1_ps(hi_s),
               s_out = _mm512_set1_ps(s_out_s);
  int64_t c = row0 % channels;
  for (int64_t r = 0; r < rows; ++r) {
    const __m512i a = _mm512_set1_epi32(static_cast<int32_t>(add[c]));
    const __m512 mv = _mm512_set1_ps(mult[c]);
    const int32_t* s_row = src + r * np;
    int64_t i = 0;
    // Whole vectors unmasked, the codes packed in a register and stored as 16 bytes (the masked
    // memory form of vpmovsdb cost more than the arithmetic); the row's tail masked.
    for (; i + 16 <= np; i += 16) {
      const __m512 u = requant16(_mm512_loadu_si512(s_row + i), a, mv, zp, lo, hi);
      if (dst_q == nullptr)
        _mm512_storeu_ps(dst_f + r * np + i, _mm512_mul_ps(_mm512_sub_ps(u, zp), s_out));
      else
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst_q + r * np + i), _mm512_cvtsepi32_epi8(_mm512_cvttps_epi32(u)));
    }
    if (i < np) {
      const __mmask16 m = tail_mask16(np - i);
      const __m512 u = requant16(_mm512_maskz_loadu_epi32(m, s_row + i), a, mv, zp, lo, hi);
      if (dst_q == nullptr) {
        _mm512_mask_storeu_ps(dst_f + r * np + i, m, _mm512_mul_ps(_mm512_sub_ps(u, zp), s_out));
      } else {
        _mm512_mask_cvtsepi32_storeu_epi8(dst_q + r * np + i, m, _mm512_cvttps_epi32(u));
      }
    }
    if (++c == channels) c = 0;
  }
}
#pragma GCC diagnostic pop
#else
bool use_avx512_kernels() { return false; }
#endif

// The hot loops: the explicit AVX-512 kernels where the CPU has them, else the vectorizer's.
int quantize_span_even(const float* src, int64_t n, int8_t* dst, float inv, float zp, float lo, float hi) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (use_avx512_kernels()) return quantize_span_even_avx512(src, n, dst, inv, zp, lo, hi);
#endif
  return quantize_span_even_auto(src, n, dst, inv, zp, lo, hi);
}

void requant_span_even(const int32_t* src, const uint32_t* add, const float* mult, int64_t n, float zp, float lo,
                       float hi, float s_out, float* dst) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (use_avx512_kernels()) return requant_span_even_avx512(src, add, mult, n, zp, lo, hi, s_out, dst);
#endif
  requant_span_even_auto(src, add, mult, n, zp, lo, hi, s_out, dst);
}

void requant_span_even_q(const int32_t* src, const uint32_t* add, const float* mult, int64_t n, float zp, float lo,
                         float hi, int8_t* dst) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (use_avx512_kernels()) return requant_span_even_q_avx512(src, add, mult, n, zp, lo, hi, dst);
#endif
  requant_span_even_q_auto(src, add, mult, n, zp, lo, hi, dst);
}

void requant_rows_even(const int32_t* src, int64_t row0, int64_t rows, int64_t np, int64_t channels,
                       const uint32_t* add, const float* mult, float zp, float lo, float hi, float s_out, float* dst_f,
                       int8_t* dst_q) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (use_avx512_kernels())
    return requant_rows_even_avx512(src, row0, rows, np, channels, add, mult, zp, lo, hi, s_out, dst_f, dst_q);
#endif
  requant_rows_even_auto(src, row0, rows, np, channels, add, mult, zp, lo, hi, s_out, dst_f, dst_q);
}

/// dst[i] = table[bit pattern of dst[i]] (an Int8Output table), in place.
void apply_lut(int8_t* dst, int64_t n, const int8_t* table) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (cpu_has_vbmi() && use_avx512_kernels()) return apply_lut_vbmi(dst, n, table);
#endif
  for (int64_t i = 0; i < n; ++i) dst[i] = table[static_cast<uint8_t>(dst[i])];
}

/// dst row r = table[src row r] for `width` codes of `rows` rows, src / dst rows src_stride /
/// dst_stride apart (src may be dst).
void lut_rows_copy(const int8_t* src, int64_t src_stride, int8_t* dst, int64_t dst_stride, int64_t rows,
                   int64_t width, const int8_t* table) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (cpu_has_vbmi() && use_avx512_kernels())
    return lut_rows_copy_vbmi(src, src_stride, dst, dst_stride, rows, width, table);
#endif
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < width; ++i)
      dst[r * dst_stride + i] = table[static_cast<uint8_t>(src[r * src_stride + i])];
}

/// apply_lut on `width` codes at each of `rows` rows `stride` apart.
void apply_lut_rows(int8_t* dst, int64_t rows, int64_t stride, int64_t width, const int8_t* table) {
  lut_rows_copy(dst, stride, dst, stride, rows, width, table);
}

/// out[r] = the sum of the k int8 values at x + r * stride, r < rows (the zero-point terms of the
/// attention products: short rows, k = 10..64).
void row_sums_i8(const int8_t* x, int64_t rows, int64_t k, int64_t stride, int32_t* out) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (k <= 64 && cpu_has_vbmi() && use_avx512_kernels()) return row_sums_i8_bw(x, rows, k, stride, out);
#endif
  for (int64_t r = 0; r < rows; ++r) {
    int32_t sum = 0;
    for (int64_t i = 0; i < k; ++i) sum += x[r * stride + i];
    out[r] = sum;
  }
}

/// round() of a float with the contract's tie rule, as round_tensor does elementwise.
inline float round_one(float y, Rounding r) {
  if (r == Rounding::half_even) return round_half_even_select(y);
  const float t = std::trunc(y);
  return t + (std::fabs(y - t) >= 0.5f ? (y > 0 ? 1.0f : -1.0f) : 0.0f);
}

/// The 32-bit pattern of an int64 constant that is added to int32 sums (see requant_span_even).
inline uint32_t wrap32(int64_t v) { return static_cast<uint32_t>(static_cast<uint64_t>(v)); }

/// quantize_into on the calling thread (inside a parallel region).
bool quantize_into_serial(const float* src, int64_t n, int8_t* dst, const QuantParams& p, Rounding r) {
  const float inv = inv_scale_of(p.scale[0]);
  const float zp = static_cast<float>(p.zero_point[0]);
  const float lo = static_cast<float>(p.qmin), hi = static_cast<float>(p.qmax);
  if (r == Rounding::half_even) return quantize_span_even(src, n, dst, inv, zp, lo, hi) != 0;
  bool finite = true;
  for (int64_t i = 0; i < n; ++i) {
    const float v = src[i];
    finite = finite && std::fabs(v) <= std::numeric_limits<float>::max();
    const float u = round_one(v * inv, r) + zp;
    dst[i] = static_cast<int8_t>(u < lo ? lo : (u > hi ? hi : u));
  }
  return finite;
}

/// quantize() of n contiguous float32 values into int8 with per-tensor params (the contract's
/// float32 operations: x * (1 / s), round, + zp, clamp); false when a value is not finite.
bool quantize_into(const float* src, int64_t n, int8_t* dst, const QuantParams& p, Rounding r) {
  const float inv = inv_scale_of(p.scale[0]);
  const float zp = static_cast<float>(p.zero_point[0]);
  const float lo = static_cast<float>(p.qmin), hi = static_cast<float>(p.qmax);
  std::atomic<bool> bad{false};
  at::parallel_for(0, n, 16384, [&](int64_t b, int64_t e) {
    bool finite = true;
    if (r == Rounding::half_even) {
      finite = quantize_span_even(src + b, e - b, dst + b, inv, zp, lo, hi) != 0;
    } else {
      for (int64_t i = b; i < e; ++i) {
        const float v = src[i];
        finite &= std::fabs(v) <= std::numeric_limits<float>::max();
        const float u = round_one(v * inv, r) + zp;
        dst[i] = static_cast<int8_t>(u < lo ? lo : (u > hi ? hi : u));
      }
    }
    if (!finite) bad.store(true);
  });
  return !bad.load();
}

/// quantize() of every element of a float32 CPU tensor of any layout (views, transposes, narrowed
/// slices, expanded dimensions) into dst in row-major order, without a float copy first. The
/// dimensions are taken in memory order (strides descending): the innermost ones that are
/// contiguous there form spans of `span` floats (attention's q, k, v slices of the qkv output: a
/// whole (C, L) block per sequence), each quantized in one vectorized pass into an int8 tensor laid
/// out in that order, which an int8 copy then lays out row-major (none when the memory order is
/// the row-major one). Short spans take a per-row loop instead. False when a value is not finite.
bool quantize_strided_into(const torch::Tensor& x, int8_t* dst, const QuantParams& p, Rounding r) {
  if (x.is_contiguous()) return quantize_into(x.data_ptr<float>(), x.numel(), dst, p, r);
  const int64_t nd = x.dim();
  if (x.numel() == 0) return true;
  // Memory order: size-1 dimensions outermost (their strides mean nothing), then strides descending.
  std::vector<int64_t> perm(static_cast<size_t>(nd));
  std::iota(perm.begin(), perm.end(), 0);
  std::stable_sort(perm.begin(), perm.end(), [&](int64_t u, int64_t v) {
    const bool u1 = x.size(u) == 1, v1 = x.size(v) == 1;
    if (u1 != v1) return u1;
    return x.stride(u) > x.stride(v);
  });
  int64_t span = 1, inner = 0;  // the contiguous run of the innermost dimensions in memory order
  for (int64_t i = nd - 1; i >= 0; --i) {
    const int64_t d = perm[static_cast<size_t>(i)];
    if (x.size(d) == 1) break;
    if (x.stride(d) != span) break;
    span *= x.size(d);
    ++inner;
  }
  const float inv = inv_scale_of(p.scale[0]);
  const float zp = static_cast<float>(p.zero_point[0]);
  const float lo = static_cast<float>(p.qmin), hi = static_cast<float>(p.qmax);
  const float* base = x.data_ptr<float>();
  if (span >= 32 && r == Rounding::half_even) {
    const torch::Tensor xp = x.permute(perm);
    const bool row_major = std::is_sorted(perm.begin(), perm.end());
    torch::Tensor q;
    int8_t* out = dst;
    if (!row_major) {
      q = torch::empty(xp.sizes(), x.options().dtype(torch::kInt8));
      out = q.data_ptr<int8_t>();
    }
    // Work items: pieces of at most 16,384 elements of one span (a dense tensor is one span).
    const int64_t outer_dims = nd - inner, spans = x.numel() / span;
    const int64_t piece = std::min<int64_t>(span, 16384), pieces = (span + piece - 1) / piece;
    std::atomic<bool> bad{false};
    at::parallel_for(0, spans * pieces, std::max<int64_t>(1, 16384 / piece), [&](int64_t w0, int64_t w1) {
      bool finite = true;
      for (int64_t w = w0; w < w1; ++w) {
        const int64_t si = w / pieces, from = (w % pieces) * piece, count = std::min(piece, span - from);
        int64_t off = 0, rest = si;  // the span's outer index, innermost outer dimension first
        for (int64_t i = outer_dims - 1; i >= 0; --i) {
          const int64_t size = xp.size(i);
          off += (rest % size) * xp.stride(i);
          rest /= size;
        }
        finite = quantize_span_even(base + off + from, count, out + si * span + from, inv, zp, lo, hi) != 0 && finite;
      }
      if (!finite) bad.store(true);
    });
    if (!row_major) {
      std::vector<int64_t> back(static_cast<size_t>(nd));
      for (int64_t i = 0; i < nd; ++i) back[static_cast<size_t>(perm[static_cast<size_t>(i)])] = i;
      torch::from_blob(dst, x.sizes(), q.options()).copy_(q.permute(back));
    }
    return !bad.load();
  }
  const int64_t len = x.size(nd - 1), step = x.stride(nd - 1);
  const int64_t rows = x.numel() / len;
  bool finite = true;
  std::vector<int64_t> idx(static_cast<size_t>(std::max<int64_t>(nd - 1, 0)), 0);
  for (int64_t row = 0; row < rows; ++row) {
    int64_t off = 0;
    for (int64_t d = 0; d + 1 < nd; ++d) off += idx[static_cast<size_t>(d)] * x.stride(d);
    const float* src = base + off;
    int8_t* out = dst + row * len;
    if (step == 1 && r == Rounding::half_even) {
      finite = quantize_span_even(src, len, out, inv, zp, lo, hi) != 0 && finite;
    } else {
      for (int64_t i = 0; i < len; ++i) {
        const float v = src[i * step];
        finite = finite && std::isfinite(v);
        const float u = round_one(v * inv, r) + zp;
        out[i] = static_cast<int8_t>(u < lo ? lo : (u > hi ? hi : u));
      }
    }
    for (int64_t d = nd - 2; d >= 0; --d) {  // next row index (odometer)
      if (++idx[static_cast<size_t>(d)] < x.size(d)) break;
      idx[static_cast<size_t>(d)] = 0;
    }
  }
  return finite;
}

/// quantize_tensor of a float32 CPU tensor with per-tensor params in one pass (same float32
/// operations, so the same bits); throws for a non-finite value as quantize_tensor does.
torch::Tensor quantize_cpu_fused(const torch::Tensor& x_in, const QuantParams& p, Rounding r) {
  const torch::Tensor x = x_in.contiguous();
  torch::Tensor q = torch::empty(x.sizes(), x.options().dtype(torch::kInt8));
  CSIPOSE_CHECK(quantize_into(x.data_ptr<float>(), x.numel(), q.data_ptr<int8_t>(), p, r),
                "quantize_tensor: the tensor has non-finite values (NaN or Inf)");
  return q;
}

/// Requantize (+ dequantize) in one pass: the contiguous raw int32 GEMM result of a (N, G, Og, P)
/// output (row n * O + o holds channel o = g * Og + og), the zero-point term comp[o] (int64) and
/// bias[o] (int32) give acc + bias; then the contract's float32 requantize with mult[o], and the
/// output dequantize (float32 (N, O, P), equal bit for bit to
/// dequantize_tensor(requantize_tensor(acc, bias, mult, out))), or the int8 codes themselves mapped
/// through `out_spec`'s table (int8 (N, O, P)).
/// The per-channel constants of a conv's requantization: add32[c], the 32-bit pattern of
/// bias[c] - comp[c] (acc + bias fits int32 by pack_weight's bound, so wrapped addition gives it
/// exactly), and mult[c].
struct ConvRequant {
  std::vector<uint32_t> add32;
  std::vector<float> mult;
};

ConvRequant conv_requant(int64_t o, const torch::Tensor& comp, const torch::Tensor& bias, const std::vector<float>& mult) {
  const torch::Tensor comp_c = comp.defined() ? comp.contiguous() : comp;
  const torch::Tensor bias_c = bias.defined() ? bias.contiguous() : bias;
  const int64_t* cp = comp_c.defined() ? comp_c.data_ptr<int64_t>() : nullptr;
  const int32_t* bp = bias_c.defined() ? bias_c.data_ptr<int32_t>() : nullptr;
  ConvRequant q;
  q.add32.resize(static_cast<size_t>(o));
  q.mult.resize(static_cast<size_t>(o));
  for (int64_t c = 0; c < o; ++c) {
    q.add32[static_cast<size_t>(c)] = wrap32((bp ? static_cast<int64_t>(bp[c]) : 0) - (cp ? cp[c] : 0));
    q.mult[static_cast<size_t>(c)] = mult[static_cast<size_t>(mult.size() == 1 ? 0 : c)];
  }
  return q;
}

/// Requantize (+ dequantize) of n samples' contiguous raw int32 GEMM result (N, O, P) (row n * O + o
/// holds channel o): acc + bias, the contract's float32 requantize with mult[o], then either the
/// dequantized float32 (dst_f, equal bit for bit to dequantize_tensor(requantize_tensor(acc, bias,
/// mult, out))) or the int8 codes themselves mapped through `table` when given (dst_q).
void requantize_conv_into(const int32_t* src, int64_t n, int64_t o, int64_t np, const ConvRequant& q,
                          const QuantParams& out, Rounding r, float* dst_f, int8_t* dst_q, const int8_t* table) {
  const float zp = static_cast<float>(out.zero_point[0]), s_out = out.scale[0];
  const float lo = static_cast<float>(out.qmin), hi = static_cast<float>(out.qmax);
  const uint32_t* add32 = q.add32.data();
  const float* mv = q.mult.data();
  // Rows of a length that is not a multiple of 16 (a TCN row is 20 positions: a vector and a
  // 4-lane masked tail) run as one flat span per sample instead, with the channel constants
  // expanded per element: the same operations on every element, in whole vectors.
  const bool spans = r == Rounding::half_even && np % 16 != 0 && o * np <= 65536;
  std::vector<uint32_t> add_e;
  std::vector<float> mult_e;
  if (spans) {
    add_e.resize(static_cast<size_t>(o * np));
    mult_e.resize(add_e.size());
    for (int64_t c = 0; c < o; ++c)
      for (int64_t pi = 0; pi < np; ++pi) {
        add_e[static_cast<size_t>(c * np + pi)] = add32[c];
        mult_e[static_cast<size_t>(c * np + pi)] = mv[c];
      }
  }
  at::parallel_for(0, n * o, std::max<int64_t>(1, 16384 / std::max<int64_t>(np, 1)), [&](int64_t b, int64_t e) {
    if (r == Rounding::half_even) {  // blocks of whole rows per call (requant_rows_even)
      const auto rows_of = [&](int64_t r0, int64_t r1) {
        if (r1 > r0)
          requant_rows_even(src + r0 * np, r0, r1 - r0, np, o, add32, mv, zp, lo, hi, s_out,
                            dst_f ? dst_f + r0 * np : nullptr, dst_q ? dst_q + r0 * np : nullptr);
      };
      if (!spans) {
        rows_of(b, e);
      } else {
        // Partial samples at the ends row by row, whole samples as spans.
        const int64_t s0 = (b + o - 1) / o, s1 = e / o;
        if (s0 >= s1) {
          rows_of(b, e);
        } else {
          rows_of(b, s0 * o);
          for (int64_t smp = s0; smp < s1; ++smp) {
            const int64_t at = smp * o * np;
            if (dst_q != nullptr)
              requant_span_even_q(src + at, add_e.data(), mult_e.data(), o * np, zp, lo, hi, dst_q + at);
            else
              requant_span_even(src + at, add_e.data(), mult_e.data(), o * np, zp, lo, hi, s_out, dst_f + at);
          }
          rows_of(s1 * o, e);
        }
      }
      if (dst_q != nullptr && table != nullptr) apply_lut(dst_q + b * np, (e - b) * np, table);
      return;
    }
    for (int64_t row = b; row < e; ++row) {
      const int64_t c = row % o;
      for (int64_t pi = 0; pi < np; ++pi) {
        const int32_t sum = static_cast<int32_t>(static_cast<uint32_t>(src[row * np + pi]) + add32[c]);
        float u = round_one(static_cast<float>(sum) * mv[c], r) + zp;
        u = u < lo ? lo : (u > hi ? hi : u);
        if (dst_q != nullptr) {
          const auto qv = static_cast<int8_t>(static_cast<int32_t>(u));
          dst_q[row * np + pi] = table != nullptr ? table[static_cast<uint8_t>(qv)] : qv;
        } else {
          dst_f[row * np + pi] = (u - zp) * s_out;  // dequantize: float(q - zp) * scale
        }
      }
    }
  });
}

/// The same for a linear op's raw (M, O) int32 GEMM result (row-major, channels last), written to
/// dst_f (M, O) float32, or as int8 codes (through `table` when given) to dst_q.
/// With `groups` > 0 column tables instead, column c's codes go through group_tables[c / (o / groups)]
/// (null: unchanged).
void requantize_rows(const int32_t* src, int64_t m, int64_t o, const torch::Tensor& comp, const torch::Tensor& bias,
                     const std::vector<float>& mult, const QuantParams& out, Rounding r, float* dst_f, int8_t* dst_q,
                     const int8_t* table, const int8_t* const* group_tables = nullptr, int64_t groups = 0) {
  const int64_t group_width = groups > 0 ? o / groups : o;
  // Rows [b, e) of codes through the table(s), one call per block and table.
  const auto map_rows = [&](int64_t b, int64_t e) {
    if (table != nullptr) apply_lut(dst_q + b * o, (e - b) * o, table);
    for (int64_t g = 0; g < groups; ++g)
      if (group_tables[g] != nullptr) apply_lut_rows(dst_q + b * o + g * group_width, e - b, o, group_width, group_tables[g]);
  };
  // acc + bias fits int32 (pack_weight's bound): the per-channel constant is exact in int64 and
  // its 32-bit pattern added with wrapping gives acc + bias (see requant_span_even).
  thread_local std::vector<uint32_t> add32;
  thread_local std::vector<float> mv;
  add32.resize(static_cast<size_t>(o));
  mv.resize(static_cast<size_t>(o));
  const torch::Tensor bias_c = bias.defined() ? bias.contiguous() : bias;
  const torch::Tensor comp_c = comp.defined() ? comp.contiguous() : comp;
  const int32_t* bp = bias_c.defined() ? bias_c.data_ptr<int32_t>() : nullptr;
  const int64_t* cp = comp_c.defined() ? comp_c.data_ptr<int64_t>() : nullptr;
  for (int64_t c = 0; c < o; ++c) {
    add32[static_cast<size_t>(c)] = wrap32((bp ? static_cast<int64_t>(bp[c]) : 0) - (cp ? cp[c] : 0));
    mv[static_cast<size_t>(c)] = mult[static_cast<size_t>(mult.size() == 1 ? 0 : c)];
  }
  const uint32_t* add32p = add32.data();
  const float* mvp = mv.data();
  const float zp = static_cast<float>(out.zero_point[0]), s_out = out.scale[0];
  const float lo = static_cast<float>(out.qmin), hi = static_cast<float>(out.qmax);
  at::parallel_for(0, m, std::max<int64_t>(1, 4096 / std::max<int64_t>(o, 1)), [&](int64_t b, int64_t e) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (r == Rounding::half_even && use_avx512_kernels()) {
      requant_linear_rows_even_avx512(src + b * o, e - b, o, add32p, mvp, zp, lo, hi, s_out,
                                      dst_f != nullptr ? dst_f + b * o : nullptr,
                                      dst_q != nullptr ? dst_q + b * o : nullptr);
      if (dst_q != nullptr) map_rows(b, e);
      return;
    }
#endif
    for (int64_t row = b; row < e; ++row) {
      const int32_t* s_row = src + row * o;
      if (r == Rounding::half_even) {
        if (dst_q != nullptr) {
          requant_span_even_q(s_row, add32p, mvp, o, zp, lo, hi, dst_q + row * o);
        } else {
          requant_span_even(s_row, add32p, mvp, o, zp, lo, hi, s_out, dst_f + row * o);
        }
        continue;
      }
      for (int64_t c = 0; c < o; ++c) {
        const int32_t sum = static_cast<int32_t>(static_cast<uint32_t>(s_row[c]) + add32p[c]);
        float u = round_one(static_cast<float>(sum) * mvp[c], r) + zp;
        u = u < lo ? lo : (u > hi ? hi : u);
        if (dst_q != nullptr) {
          dst_q[row * o + c] = static_cast<int8_t>(static_cast<int32_t>(u));
        } else {
          dst_f[row * o + c] = (u - zp) * s_out;  // dequantize: float(q - zp) * scale
        }
      }
    }
    if (dst_q != nullptr) map_rows(b, e);
  });
}

/// im2col of a contiguous int8 input (N, C, *S), 1 or 2 spatial dimensions, straight into `cols`
/// laid out (N, C, prod K, P) = (N, G, Cg * prod K, P), positions last, padding with `pad`: one
/// pass over the output (the ATen route pads into a copy, unfolds, then copies the permuted view,
/// and at batch 1 its dozen tensor ops per conv cost more than the copies). Same values as
/// im2col(..., positions_last = true).
struct Conv2dGeometry {
  int64_t n, c, s0, s1, k0, k1, st0, st1, pd0, pd1, dl0, dl1, o0, o1;
};

Conv2dGeometry conv_geometry(const torch::Tensor& x, c10::IntArrayRef w_sizes, const Int8Conv& conv) {
  const auto nd = static_cast<int64_t>(conv.stride.size());
  Conv2dGeometry g{};
  g.n = x.size(0), g.c = x.size(1);
  // A 1-d conv is the 2-d one with a leading spatial dimension of size 1.
  const auto at = [&](const std::vector<int64_t>& v, int64_t i, int64_t one) {
    return nd == 2 ? v[static_cast<size_t>(i)] : (i == 0 ? one : v[0]);
  };
  g.s0 = nd == 2 ? x.size(2) : 1, g.s1 = x.size(nd == 2 ? 3 : 2);
  g.k0 = nd == 2 ? w_sizes[2] : 1, g.k1 = w_sizes[nd == 2 ? 3 : 2];
  g.st0 = at(conv.stride, 0, 1), g.st1 = at(conv.stride, 1, 1);
  g.pd0 = at(conv.padding, 0, 0), g.pd1 = at(conv.padding, 1, 0);
  g.dl0 = at(conv.dilation, 0, 1), g.dl1 = at(conv.dilation, 1, 1);
  g.o0 = (g.s0 + 2 * g.pd0 - g.dl0 * (g.k0 - 1) - 1) / g.st0 + 1;
  g.o1 = (g.s1 + 2 * g.pd1 - g.dl1 * (g.k1 - 1) - 1) / g.st1 + 1;
  return g;
}

/// The output columns [lo, hi) of tap a1 that read inside an input row:
/// 0 <= p1 * st1 + a1 * dl1 - pd1 < s1 (the rest read the padding).
std::pair<int64_t, int64_t> tap_span(const Conv2dGeometry& g, int64_t a1) {
  const int64_t off = a1 * g.dl1 - g.pd1;
  const int64_t lo = std::min(g.o1, off >= 0 ? 0 : (-off + g.st1 - 1) / g.st1);
  const int64_t hi = std::max(lo, std::min(g.o1, g.s1 - off > 0 ? (g.s1 - off + g.st1 - 1) / g.st1 : 0));
  return {lo, hi};
}

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC diagnostic push  // GCC bug 105593 again (the undefined merge source of vpmovwb)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
/// dst[i] = src[2 i] for i < n with AVX-512BW: 64 source bytes as 32 16-bit words, each truncated
/// to its low byte (vpmovwb) is the even bytes; masked loads read no byte past src[2 (n - 1)].
__attribute__((target("avx512f,avx512bw,avx512vl"))) void gather_stride2_avx512(int8_t* dst, const int8_t* src,
                                                                                 int64_t n) {
  for (int64_t i = 0; i < n; i += 32) {
    const int64_t cnt = std::min<int64_t>(32, n - i);
    const __mmask64 load = (~0ULL) >> (64 - (2 * cnt - 1));
    const __m256i even = _mm512_cvtepi16_epi8(_mm512_maskz_loadu_epi8(load, src + 2 * i));
    _mm256_mask_storeu_epi8(dst + i, static_cast<__mmask32>((~0ULL) >> (64 - cnt)), even);
  }
}

/// im2col_s8's rows of (input row) x (channel) pairs nc in [b, e) when every output row is at most
/// 64 bytes and stride 1 along it: per tap, the in-range span [lo, hi) and its masks are computed
/// once; a row is then a masked fill of the padding and a masked copy (a TCN row is 20 bytes, and a
/// memcpy call and two fill loops per row cost more than the bytes they move).
__attribute__((target("avx512f,avx512bw"))) void im2col_short_rows_avx512(const int8_t* x, const Conv2dGeometry& g,
                                                                           int8_t pad, int8_t* cols, int64_t b,
                                                                           int64_t e) {
  const auto bits = [](int64_t k) { return k <= 0 ? 0ULL : (~0ULL) >> (64 - k); };
  const int64_t kk = g.k0 * g.k1, np = g.o0 * g.o1;
  const __m512i padv = _mm512_set1_epi8(pad);
  std::vector<int64_t> lo_off(static_cast<size_t>(g.k1));
  std::vector<__mmask64> copy(static_cast<size_t>(g.k1)), fill(static_cast<size_t>(g.k1));
  for (int64_t a1 = 0; a1 < g.k1; ++a1) {  // stride 1: output p1 reads input p1 + a1 * dl1 - pd1
    const auto [lo, hi] = tap_span(g, a1);
    lo_off[static_cast<size_t>(a1)] = lo;
    copy[static_cast<size_t>(a1)] = bits(hi - lo);
    fill[static_cast<size_t>(a1)] = bits(g.o1) & ~(bits(hi) & ~bits(lo));
  }
  const __mmask64 all = bits(g.o1);
  for (int64_t nc = b; nc < e; ++nc) {
    const int8_t* src = x + nc * g.s0 * g.s1;
    int8_t* dst = cols + nc * kk * np;
    for (int64_t a0 = 0; a0 < g.k0; ++a0) {
      const int64_t off0 = a0 * g.dl0 - g.pd0;
      for (int64_t a1 = 0; a1 < g.k1; ++a1, dst += np) {
        const auto t = static_cast<size_t>(a1);
        const int64_t lo = lo_off[t], src_lo = lo + a1 * g.dl1 - g.pd1;
        for (int64_t p0 = 0; p0 < g.o0; ++p0) {
          int8_t* row = dst + p0 * g.o1;
          const int64_t i0 = p0 * g.st0 + off0;
          if (i0 < 0 || i0 >= g.s0) {
            _mm512_mask_storeu_epi8(row, all, padv);
            continue;
          }
          _mm512_mask_storeu_epi8(row, fill[t], padv);
          _mm512_mask_storeu_epi8(row + lo, copy[t], _mm512_maskz_loadu_epi8(copy[t], src + i0 * g.s1 + src_lo));
        }
      }
    }
  }
}
#pragma GCC diagnostic pop
#endif

bool short_row_kernels() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool has_bw = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  return has_bw && use_avx512_kernels();
#else
  return false;
#endif
}

void im2col_short_rows(const int8_t* x, const Conv2dGeometry& g, int8_t pad, int8_t* cols, int64_t b, int64_t e) {
#if defined(__x86_64__) && defined(__GNUC__)
  im2col_short_rows_avx512(x, g, pad, cols, b, e);
#else
  (void)x, (void)g, (void)pad, (void)cols, (void)b, (void)e;
#endif
}

/// The stride-2 gather of a strided conv's columns where the CPU has AVX-512BW (and the explicit
/// kernels are on); false: the caller's scalar loop does it.
bool gather_stride2(int8_t* dst, const int8_t* src, int64_t n) {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool has_bw = __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  if (has_bw && use_avx512_kernels()) {
    gather_stride2_avx512(dst, src, n);
    return true;
  }
#endif
  return false;
}

void im2col_s8(const int8_t* x, const Conv2dGeometry& g, int8_t pad, int8_t* cols) {
  RECORD_FUNCTION("csipose::im2col_s8", std::vector<c10::IValue>());
  const int64_t kk = g.k0 * g.k1, np = g.o0 * g.o1;
  const auto fill = [pad](int8_t* p, int64_t count) {  // mostly 0-2 bytes: no call
    for (int64_t i = 0; i < count; ++i) p[i] = pad;
  };
  // Stride 1 with "same" rows (o1 == s1): a tap's block is the input shifted by one flat offset,
  // so one copy covers all its in-range rows and only the padded columns at row ends are fixed.
  const bool flat = g.st0 == 1 && g.st1 == 1 && g.o1 == g.s1;
  // Stride-1 rows of at most 64 outputs with AVX-512BW: per row, masked stores instead of a
  // memcpy call and two fill loops (which cost more than the ~20 bytes they move).
  const bool short_rows = g.st1 == 1 && g.o1 <= 64 && short_row_kernels();
  at::parallel_for(0, g.n * g.c, std::max<int64_t>(1, 32768 / std::max<int64_t>(kk * np, 1)), [&](int64_t b, int64_t e) {
    if (short_rows) return im2col_short_rows(x, g, pad, cols, b, e);
    for (int64_t nc = b; nc < e; ++nc) {
      const int8_t* src = x + nc * g.s0 * g.s1;
      int8_t* dst = cols + nc * kk * np;
      for (int64_t a0 = 0; a0 < g.k0; ++a0) {
        const int64_t off0 = a0 * g.dl0 - g.pd0;
        for (int64_t a1 = 0; a1 < g.k1; ++a1, dst += np) {
          const int64_t off = a1 * g.dl1 - g.pd1;
          const auto [lo, hi] = tap_span(g, a1);
          if (flat) {
            // Rows p0 in [r0, r1) read input row p0 + off0.
            const int64_t r0 = std::clamp<int64_t>(-off0, 0, g.o0);
            const int64_t r1 = std::clamp<int64_t>(g.s0 - off0, r0, g.o0);
            fill(dst, r0 * g.o1);
            fill(dst + r1 * g.o1, (g.o0 - r1) * g.o1);
            if (r1 > r0 && hi > lo) {
              // From the first to the last in-range element: every source index in between is
              // inside the input (the map is a shift); the row ends are overwritten next.
              const int64_t first = r0 * g.o1 + lo, last = (r1 - 1) * g.o1 + hi;
              std::memcpy(dst + first, src + first + off0 * g.s1 + off, static_cast<size_t>(last - first));
              for (int64_t p0 = r0; p0 < r1; ++p0) {
                fill(dst + p0 * g.o1, lo);
                fill(dst + p0 * g.o1 + hi, g.o1 - hi);
              }
            } else {
              fill(dst + r0 * g.o1, (r1 - r0) * g.o1);
            }
            continue;
          }
          for (int64_t p0 = 0; p0 < g.o0; ++p0) {
            int8_t* row = dst + p0 * g.o1;
            const int64_t i0 = p0 * g.st0 + off0;
            if (i0 < 0 || i0 >= g.s0) {
              fill(row, g.o1);
              continue;
            }
            const int8_t* srow = src + i0 * g.s1;  // element p1 is srow[p1 * st1 + off]
            fill(row, lo);
            if (g.st1 == 1) {
              if (hi > lo) std::memcpy(row + lo, srow + lo + off, static_cast<size_t>(hi - lo));
            } else if (g.st1 == 2 && hi > lo && gather_stride2(row + lo, srow + lo * 2 + off, hi - lo)) {
            } else {
              for (int64_t p1 = lo; p1 < hi; ++p1) row[p1] = srow[p1 * g.st1 + off];
            }
            fill(row + hi, g.o1 - hi);
          }
        }
      }
    }
  });
}

}  // namespace

namespace {

constexpr int64_t kMinTaskBytes = 16 * 1024;

/// memcpy of n bytes for the short spans of head layouts (a pose head's row is 8..64 bytes): two
/// overlapping fixed-size copies instead of a library call per span.
inline void copy_short(int8_t* dst, const int8_t* src, int64_t n) {
  if (n >= 16 && n <= 32) {
    std::memcpy(dst, src, 16);
    std::memcpy(dst + n - 16, src + n - 16, 16);
  } else if (n >= 8 && n < 16) {
    std::memcpy(dst, src, 8);
    std::memcpy(dst + n - 8, src + n - 8, 8);
  } else if (n > 32 && n <= 64) {
    std::memcpy(dst, src, 32);
    std::memcpy(dst + n - 32, src + n - 32, 32);
  } else {
    std::memcpy(dst, src, static_cast<size_t>(n));
  }
}

/// run(i0, i1) over [0, items) in chunks of about conv_chunk_bytes() (bytes_per_item each, at least
/// one item), one chunk per task and every thread given work, unless that would make tasks of
/// under kMinTaskBytes; few items are one call on the calling thread, whose stages then use all
/// threads.

template <typename Run>
void run_in_chunks(int64_t items, int64_t bytes_per_item, const Run& run) {
  const int64_t threads = at::get_num_threads();
  const int64_t per_item = std::max<int64_t>(bytes_per_item, 1);
  int64_t chunk = std::clamp<int64_t>(conv_chunk_bytes().load() / per_item, 1, items);
  // Every thread gets work, but no task smaller than ~16 KiB (a batch-1 linear op's few rows split
  // over two threads cost more in the parallel region than the rows themselves).
  chunk = std::min(chunk, std::max((items + threads - 1) / threads, kMinTaskBytes / per_item));
  if (chunk >= items) {
    run(int64_t{0}, items);
    return;
  }
  const int64_t chunks = (items + chunk - 1) / chunk;
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t ci = c0; ci < c1; ++ci) run(ci * chunk, std::min(items, (ci + 1) * chunk));
  });
}

}  // namespace

bool int8_fused_available(const torch::Device& device) { return use_onednn(device); }

bool quantize_span(const float* src, int64_t n, int8_t* dst, const QuantParams& p, Rounding r) {
  CSIPOSE_CHECK(!p.per_channel() && p.qmin >= -128 && p.qmax <= 127,
                "quantize_span: needs per-tensor params with an int8 range");
  return quantize_into_serial(src, n, dst, p, r);
}

torch::Tensor quantize_tensor_cpu(const torch::Tensor& x_float, const QuantParams& p, Rounding r) {
  check_float_tensor(x_float, "quantize_tensor_cpu");
  CSIPOSE_CHECK(x_float.device().is_cpu() && !p.per_channel() && p.qmin >= -128 && p.qmax <= 127,
                "quantize_tensor_cpu: needs a CPU tensor and per-tensor params with an int8 range");
  return quantize_cpu_fused(x_float, p, r);
}

void set_int8_conv_chunk_bytes(int64_t bytes) {
  CSIPOSE_CHECK(bytes >= 1, "set_int8_conv_chunk_bytes: needs at least 1 byte, got ", bytes);
  conv_chunk_bytes().store(bytes);
}
int64_t int8_conv_chunk_bytes() { return conv_chunk_bytes().load(); }

bool set_int8_avx512_kernels(bool on) {
#if defined(__x86_64__) && defined(__GNUC__)
  return avx512_kernels_on().exchange(on);
#else
  (void)on;
  return false;
#endif
}
bool int8_avx512_kernels_active() { return use_avx512_kernels(); }

bool int8_vbmi_kernels_active() {
#if defined(__x86_64__) && defined(__GNUC__)
  return cpu_has_vbmi() && use_avx512_kernels();
#else
  return false;
#endif
}

torch::Tensor int8_op_float(const torch::Tensor& x, const QuantParams& in_qp, const PackedWeight& w,
                            const QuantParams& out_qp, const Int8Conv* conv, Rounding r) {
  return int8_op_fused(x, in_qp, w, out_qp, conv, Int8Output{}, r);
}

namespace {
torch::Tensor int8_op_fused_impl(const torch::Tensor& x, const QuantParams& in_qp, const PackedWeight& w,
                                 const QuantParams& out_qp, const Int8Conv* conv, const Int8Output& out_spec,
                                 Rounding r);
}  // namespace

torch::Tensor int8_op_fused(const torch::Tensor& x, const QuantParams& in_qp, const PackedWeight& w,
                            const QuantParams& out_qp, const Int8Conv* conv, const Int8Output& out_spec, Rounding r) {
  RECORD_FUNCTION("csipose::int8_op_fused", std::vector<c10::IValue>());
  if (out_spec.relu) {
    CSIPOSE_CHECK(out_spec.table == nullptr && out_spec.column_tables.empty(),
                  "int8_op_fused: relu with a code table (the table maps codes through the function instead)");
    check_activation_params(out_qp, "int8_op_fused");
    QuantParams clipped = out_qp;
    clipped.qmin = std::max<int64_t>(clipped.qmin, clipped.zero_point[0]);
    Int8Output plain;
    plain.int8 = out_spec.int8;
    return int8_op_fused_impl(x, in_qp, w, clipped, conv, plain, r);
  }
  return int8_op_fused_impl(x, in_qp, w, out_qp, conv, out_spec, r);
}

namespace {
torch::Tensor int8_op_fused_impl(const torch::Tensor& x, const QuantParams& in_qp, const PackedWeight& w,
                                 const QuantParams& out_qp, const Int8Conv* conv, const Int8Output& out_spec,
                                 Rounding r) {
  CSIPOSE_CHECK(int8_fused_available(x.device()), "int8_op_fused: the fused path needs the onednn backend on the CPU");
  const bool q_in = x.scalar_type() == torch::kInt8;
  if (!q_in) check_float_tensor(x, "int8_op_fused");
  check_activation_params(in_qp, "int8_op_fused");
  check_activation_params(out_qp, "int8_op_fused");
  check_int8_tensor(w.q, "int8_op_fused");
  CSIPOSE_CHECK(w.input_params == in_qp, "int8_op_fused: input params differ from those the weight was packed for");
  CSIPOSE_CHECK((out_spec.table == nullptr && out_spec.column_tables.empty()) || out_spec.int8,
                "int8_op_fused: a code table needs int8 output");
  const auto column_groups = static_cast<int64_t>(out_spec.column_tables.size());
  CSIPOSE_CHECK(column_groups == 0 || (conv == nullptr && out_spec.table == nullptr && w.out_channels() % column_groups == 0),
                "int8_op_fused: column tables are for a linear op whose outputs split evenly into them (and no "
                "whole-output table), got ", column_groups, " for ", w.out_channels(), " outputs");
  // zp_in * sum_k w (in_qp == w.input_params, checked above): precomputed at pack / load time.
  const torch::Tensor comp = w.zp_row_sum.defined() ? w.zp_row_sum : w.with_row_sum().zp_row_sum;
  const int64_t c_out = w.out_channels();
  const std::vector<float> mult = multipliers(in_qp, w.params, out_qp, c_out);
  const auto out_options = x.options().dtype(out_spec.int8 ? torch::kInt8 : torch::kFloat);
  if (conv == nullptr) {
    CSIPOSE_CHECK(w.q.dim() == 2 && x.dim() >= 1 && x.size(-1) == w.q.size(1), "int8_op_fused: input of shape ",
                  x.sizes(), " does not fit a linear weight of shape ", w.q.sizes());
    // Caller-owned buffers end to end (the batch-1 cost of a small layer is allocations, not
    // arithmetic): int8 input and int32 sums in per-thread scratch, one output tensor.
    const torch::Tensor xc = x.contiguous();
    const torch::Tensor wq = w.q.contiguous();  // packed weights are; a no-op
    const int64_t k = x.size(-1);
    int64_t rows = 1;  // product of the leading dimensions (numel / k fails for k == 0)
    for (int64_t d = 0; d + 1 < x.dim(); ++d) rows *= x.size(d);
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
    shape.back() = c_out;
    // Split heads: (G, leading..., H, T, O / (G H)) with T = x.size(-2) (see Int8Output::heads).
    const int64_t heads = out_spec.heads;
    int64_t seq = 1, head_dim = 0;
    if (heads > 0) {
      CSIPOSE_CHECK(out_spec.int8 && column_groups > 0 && x.dim() >= 2 && c_out % (column_groups * heads) == 0,
                    "int8_op_fused: split heads need int8 output, column tables and an input (..., T, in) whose "
                    "outputs split into groups x heads, got ", heads, " heads for ", c_out, " outputs");
      seq = x.size(-2);
      head_dim = c_out / (column_groups * heads);
      shape.pop_back();
      shape.pop_back();
      shape.insert(shape.begin(), column_groups);
      shape.insert(shape.end(), {heads, seq, head_dim});
    }
    torch::Tensor y = torch::empty(shape, out_options);
    if (rows == 0) return y;
    const int8_t* wp = wq.data_ptr<int8_t>();
    float* dst_f = out_spec.int8 ? nullptr : y.data_ptr<float>();
    int8_t* dst_q = out_spec.int8 ? y.data_ptr<int8_t>() : nullptr;
    const int64_t lead = rows / seq;  // leading items (split heads)
    std::atomic<bool> bad{false};
    // Rows [r0, r1): int8 input (quantized into per-thread scratch unless the codes came in), the
    // int32 sums in per-thread scratch, the requantization into y.
    const auto run = [&](int64_t r0, int64_t r1) {
      thread_local std::vector<int8_t> xq_buf;
      thread_local std::vector<int32_t> acc_buf;
      const int64_t m = r1 - r0;
      acc_buf.resize(static_cast<size_t>(m * c_out));
      const int8_t* xq = nullptr;
      if (q_in) {
        xq = xc.data_ptr<int8_t>() + r0 * k;  // codes at in_qp already (the previous op of an int8 chain)
      } else {
        xq_buf.resize(static_cast<size_t>(m * k));
        if (!quantize_into(xc.data_ptr<float>() + r0 * k, m * k, xq_buf.data(), in_qp, r)) bad.store(true);
        xq = xq_buf.data();
      }
      if (k > 0) {
        S8GemmRaw g;
        g.m = m, g.k = k, g.n = c_out;
        g.a = xq, g.lda = k;
        g.b = wp, g.b_stride_k = 1, g.b_stride_n = k;  // W (O, K) read as W^T
        g.c = acc_buf.data(), g.ldc = c_out;
        onednn_s8_gemm_raw(g);
      } else {
        std::fill(acc_buf.begin(), acc_buf.end(), 0);
      }
      if (heads > 0) {
        // The row's codes in scratch, then each head's span to its place: row (item, t) of
        // group g, head h at ((g * lead + item) * H + h) * T + t.
        thread_local std::vector<int8_t> codes_buf;
        codes_buf.resize(static_cast<size_t>(m * c_out));
        requantize_rows(acc_buf.data(), m, c_out, comp, w.bias_q, mult, out_qp, r, nullptr, codes_buf.data(), nullptr,
                        out_spec.column_tables.data(), column_groups);
        for (int64_t row = r0; row < r1; ++row) {
          const int64_t item = row / seq, t = row % seq;
          const int8_t* src = codes_buf.data() + (row - r0) * c_out;
          for (int64_t g = 0; g < column_groups; ++g)
            for (int64_t h = 0; h < heads; ++h)
              copy_short(dst_q + (((g * lead + item) * heads + h) * seq + t) * head_dim, src + (g * heads + h) * head_dim,
                         head_dim);
        }
        return;
      }
      requantize_rows(acc_buf.data(), m, c_out, comp, w.bias_q, mult, out_qp, r, dst_f ? dst_f + r0 * c_out : nullptr,
                      dst_q ? dst_q + r0 * c_out : nullptr, out_spec.int8 ? out_spec.table : nullptr,
                      out_spec.column_tables.data(), column_groups);
    };
    // Many rows run in chunks whose int8 input and int32 sums stay in L2 (as the convs below).
    run_in_chunks(rows, k + 4 * c_out, run);
    CSIPOSE_CHECK(!bad.load(), "quantize_tensor: the tensor has non-finite values (NaN or Inf)");
    return y;
  }
  torch::Tensor xq = x;
  if (!q_in) {
    RECORD_FUNCTION("csipose::int8_quantize_input", std::vector<c10::IValue>());
    xq = quantize_cpu_fused(x, in_qp, r);
  }
  const auto nd = static_cast<int64_t>(conv->stride.size());
  CSIPOSE_CHECK(w.q.dim() == 2 + nd, "int8_op_fused: weight of shape ", w.q.sizes(), " for a ", nd, "-d convolution");
  CSIPOSE_CHECK(conv->out_limit >= 0, "int8_op_fused: out_limit must be >= 0, got ", conv->out_limit);
  const int64_t n = x.size(0), groups = conv->groups;
  // The output layout directly: W (1, G, Og, K') @ cols (N, G, K', P) = (N, G, Og, P) = (N, O, *S_out).
  std::vector<int64_t> out_size;
  const bool copies = std::any_of(w.q.sizes().begin() + 2, w.q.sizes().end(), [](int64_t k) { return k > 1; }) ||
                      std::any_of(conv->stride.begin(), conv->stride.end(), [](int64_t s) { return s > 1; }) ||
                      std::any_of(conv->padding.begin(), conv->padding.end(), [](int64_t p) { return p > 0; });
  thread_local std::vector<int8_t> cols_buf;  // per-thread scratch, reused by every conv
  torch::Tensor cols;  // the ATen route's columns (N, G, K', P)
  // Anything unusual (bad geometry included) takes the ATen route, whose checks name the problem.
  const auto nds = static_cast<size_t>(nd);
  bool direct = copies && nd <= 2 && xq.dim() == 2 + nd && x.size(1) == w.q.size(1) * groups &&
                w.out_channels() % groups == 0 && conv->padding.size() == nds && conv->dilation.size() == nds;
  for (size_t i = 0; direct && i < nds; ++i)
    direct = conv->stride[i] >= 1 && conv->dilation[i] >= 1 && conv->padding[i] >= 0 &&
             x.size(static_cast<int64_t>(2 + i)) + 2 * conv->padding[i] >=
                 conv->dilation[i] * (w.q.size(static_cast<int64_t>(2 + i)) - 1) + 1;
  const torch::Tensor xc = direct ? xq.contiguous() : xq;
  int64_t rows = 0, positions = 0;
  Conv2dGeometry geo{};
  if (direct) {
    geo = conv_geometry(xc, w.q.sizes(), *conv);
    if (conv->out_limit > 0) geo.o1 = std::min(geo.o1, conv->out_limit);
    rows = geo.c / groups * geo.k0 * geo.k1, positions = geo.o0 * geo.o1;
    if (nd == 2) out_size = {geo.o0, geo.o1};
    else out_size = {geo.o1};
  } else {
    Im2col ic = im2col("int8_op_fused", xq, w.q.sizes(), conv->stride, conv->padding, conv->dilation, groups,
                       static_cast<double>(in_qp.zero_point[0]), /*positions_last=*/true);
    cols = std::move(ic.cols);
    out_size = std::move(ic.out_size);
    rows = cols.size(2), positions = cols.size(3);
  }
  const int64_t og = c_out / groups;
  const torch::Tensor wg = w.q.reshape({1, groups, og, -1});
  CSIPOSE_CHECK(rows == wg.size(3), "int8_op_fused: internal im2col size mismatch");
  const ConvRequant rq = conv_requant(c_out, comp, w.bias_q, mult);
  std::vector<int64_t> out_shape = {n, c_out};
  out_shape.insert(out_shape.end(), out_size.begin(), out_size.end());
  torch::Tensor y = torch::empty(out_shape, out_options);
  if (y.numel() == 0) return y;
  float* dst_f = out_spec.int8 ? nullptr : y.data_ptr<float>();
  int8_t* dst_q = out_spec.int8 ? y.data_ptr<int8_t>() : nullptr;
  const int64_t out_per_sample = c_out * positions;
  // Samples [s0, s1): columns (own im2col into per-thread scratch, or a slice of the ATen ones), the
  // int32 product, the requantization into y.
  const auto run = [&](int64_t s0, int64_t s1) {
    torch::Tensor cols_part;
    if (direct) {
      Conv2dGeometry part = geo;
      part.n = s1 - s0;
      cols_buf.resize(static_cast<size_t>(part.n * groups * rows * positions));
      im2col_s8(xc.data_ptr<int8_t>() + s0 * geo.c * geo.s0 * geo.s1, part, static_cast<int8_t>(in_qp.zero_point[0]),
                cols_buf.data());
      cols_part = torch::from_blob(cols_buf.data(), {part.n, groups, rows, positions}, xc.options());
    } else {
      cols_part = cols.narrow(0, s0, s1 - s0);
    }
    const torch::Tensor raw = onednn_s8_gemm(wg, cols_part);  // (n, G, Og, P), contiguous
    RECORD_FUNCTION("csipose::int8_requantize", std::vector<c10::IValue>());
    requantize_conv_into(raw.data_ptr<int32_t>(), s1 - s0, c_out, positions, rq, out_qp, r,
                         dst_f ? dst_f + s0 * out_per_sample : nullptr, dst_q ? dst_q + s0 * out_per_sample : nullptr,
                         out_spec.table);
  };
  // A large batch runs in chunks of samples whose columns and int32 sums stay in the core's L2
  // cache (at batch 256 the whole-batch int32 result is megabytes, and writing it out and reading
  // it back for the requantization cost as much as the GEMM), one chunk per task: each thread runs
  // its chunks' im2col, GEMM and requantization itself. A small batch is one chunk whose stages
  // use all threads.
  run_in_chunks(n, (direct ? groups * rows * positions : 0) + out_per_sample * 4, run);
  // The ATen route computed every position: keep the first out_limit (the direct one computed only those).
  if (!direct && conv->out_limit > 0 && conv->out_limit < y.size(-1)) return y.narrow(-1, 0, conv->out_limit).contiguous();
  return y;
}
}  // namespace

std::array<int8_t, 256> int8_code_table(const std::function<torch::Tensor(const torch::Tensor&)>& f,
                                        const QuantParams& from, const QuantParams& to, Rounding r) {
  check_activation_params(from, "int8_code_table");
  check_activation_params(to, "int8_code_table");
  // Every int8 code in bit-pattern order (0..127, then -128..-1), dequantized as the op's output
  // point does, f in float32 as the model computes it, quantized as the next op's input point does.
  std::vector<int8_t> codes(256);
  for (int b = 0; b < 256; ++b) codes[static_cast<size_t>(b)] = static_cast<int8_t>(static_cast<uint8_t>(b));
  const torch::Tensor q = torch::tensor(std::vector<int64_t>(codes.begin(), codes.end()), torch::kLong).to(torch::kInt8);
  QuantParams wide = from;  // dequantize every code, also those outside [qmin, qmax] (never produced)
  wide.qmin = -128, wide.qmax = 127;
  const torch::Tensor fx = f(dequantize_tensor(q, wide)).contiguous();
  CSIPOSE_CHECK(fx.scalar_type() == torch::kFloat && fx.numel() == 256,
                "int8_code_table: the function must map 256 float32 values to 256 float32 values");
  const torch::Tensor out = quantize_tensor(fx, to, r).contiguous();
  std::array<int8_t, 256> table{};
  std::copy(out.data_ptr<int8_t>(), out.data_ptr<int8_t>() + 256, table.begin());
  return table;
}

namespace {

/// The int32 products of an attention matmul in per-thread scratch: the operands' int8 codes (a
/// row-major (nb, m, k); b (nb, k, n) read through bsk / bsn) and the raw sums sum_k a b (nb, m, n),
/// before the zero-point terms. Valid until the calling thread's next matmul_raw.
struct MatmulRaw {
  int64_t nb = 0, m = 0, k = 0, n = 0;
  std::vector<int64_t> out_shape;  ///< broadcast batch dimensions, then (m, n)
  const int8_t* a = nullptr;
  const int8_t* b = nullptr;
  int64_t bsk = 0, bsn = 0;  ///< element (kk, j) of product bi's b: b[bi * k * n + kk * bsk + j * bsn]
  const int32_t* raw = nullptr;
};

/// An operand of an attention matmul as row-major int8 codes (nb, rows, cols) in dst: a float32
/// tensor (any layout) quantized with p, or int8 codes at p already (copied unless they are laid out
/// so already, in which case the returned pointer is the tensor's own memory).
const int8_t* operand_codes(const torch::Tensor& x, const QuantParams& p, Rounding r, std::vector<int8_t>& dst) {
  if (x.scalar_type() == torch::kInt8) {
    if (x.is_contiguous()) return x.data_ptr<int8_t>();
    dst.resize(static_cast<size_t>(x.numel()));
    torch::from_blob(dst.data(), x.sizes(), x.options()).copy_(x);
    return dst.data();
  }
  dst.resize(static_cast<size_t>(x.numel()));
  CSIPOSE_CHECK(quantize_strided_into(x, dst.data(), p, r), "quantize_tensor: the tensor has non-finite values (NaN or Inf)");
  return dst.data();
}

MatmulRaw matmul_raw(const char* op, const torch::Tensor& a, const QuantParams& a_qp, const torch::Tensor& b,
                     const QuantParams& b_qp, const QuantParams& out_qp, Rounding r) {
  CSIPOSE_CHECK(int8_fused_available(a.device()) && b.device() == a.device(), op,
                ": the fused path needs the onednn backend on the CPU");
  for (const torch::Tensor* t : {&a, &b}) {
    CSIPOSE_CHECK(t->defined(), op, ": undefined tensor");
    CSIPOSE_CHECK(t->scalar_type() == torch::kFloat || t->scalar_type() == torch::kInt8, op, ": tensor of dtype ",
                  t->scalar_type(), "; expected float32 (or int8 codes at the operand's params)");
  }
  check_matmul_operands(op, a, a_qp, b, b_qp, out_qp);
  MatmulRaw mr;
  mr.k = a.size(-1), mr.m = a.size(-2), mr.n = b.size(-1);
  const std::vector<int64_t> batch = at::infer_size(a.sizes().slice(0, a.dim() - 2), b.sizes().slice(0, b.dim() - 2));
  std::vector<int64_t> ea = batch, eb = batch;
  mr.out_shape = batch;
  ea.insert(ea.end(), {mr.m, mr.k});
  eb.insert(eb.end(), {mr.k, mr.n});
  mr.out_shape.insert(mr.out_shape.end(), {mr.m, mr.n});
  int64_t nb = 1;
  for (const int64_t d : batch) nb *= d;
  mr.nb = nb;
  if (nb * mr.m * mr.n == 0) return mr;
  // Per-thread scratch for the int8 operands and the int32 products (no allocation per call).
  thread_local std::vector<int8_t> aq_buf, bq_buf;
  thread_local std::vector<int32_t> raw_buf;
  raw_buf.resize(static_cast<size_t>(nb * mr.m * mr.n));
  // Attention operands are transposed / expanded views: quantized in place of a contiguous copy.
  // A b that is the transpose of a row-major tensor (k^T in Q K^T, or probabilities^T) is taken in
  // its own order (contiguous reads) and handed to oneDNN as column-major.
  const torch::Tensor be = b.expand(eb);
  const bool b_colmajor = mr.k > 1 && mr.n > 1 && be.stride(-2) == 1 && be.stride(-1) == mr.k;
  {
    RECORD_FUNCTION("csipose::int8_matmul_quantize", std::vector<c10::IValue>());
    mr.a = operand_codes(a.expand(ea), a_qp, r, aq_buf);
    mr.b = operand_codes(b_colmajor ? be.transpose(-2, -1) : be, b_qp, r, bq_buf);
  }
  mr.bsk = b_colmajor ? 1 : mr.n, mr.bsn = b_colmajor ? mr.k : 1;
  if (mr.k > 0) {
    S8GemmRaw g;
    g.m = mr.m, g.k = mr.k, g.n = mr.n;
    g.a = mr.a, g.lda = mr.k, g.b = mr.b, g.b_stride_k = mr.bsk, g.b_stride_n = mr.bsn, g.c = raw_buf.data(), g.ldc = mr.n;
    g.batch = nb, g.a_batch = mr.m * mr.k, g.b_batch = mr.k * mr.n, g.c_batch = mr.m * mr.n;
    onednn_s8_gemm_raw(g);
  } else {
    std::fill(raw_buf.begin(), raw_buf.end(), 0);
  }
  mr.raw = raw_buf.data();
  return mr;
}

/// The requantized, dequantized float32 rows of products [b0, b1) of mr (m rows of n each, product
/// bi's rows at out_at(bi)): sum (a - za)(b - zb) = sum a b - za sum_k b - zb sum_k a + K za zb,
/// then the contract's requantize and dequantize. Where out_at returns int8_t pointers, the
/// requantized codes at out_qp instead (no dequantize).
template <typename Out>
void matmul_requantize(const MatmulRaw& mr, const QuantParams& a_qp, const QuantParams& b_qp,
                       const QuantParams& out_qp, Rounding r, int64_t b0, int64_t b1, Out out_at) {
  const int64_t m = mr.m, k = mr.k, n = mr.n, mn = m * n;
  const int64_t za = a_qp.zero_point[0], zb = b_qp.zero_point[0];
  const float mult = requantize_multiplier(a_qp.scale[0], b_qp.scale[0], out_qp.scale[0]);
  const float zo = static_cast<float>(out_qp.zero_point[0]), s_out = out_qp.scale[0];
  const float lo = static_cast<float>(out_qp.qmin), hi = static_cast<float>(out_qp.qmax);
  // Column sums of b and row sums of a fit int32 (|sum| <= 128 k, and k * 128 * 128 fits: check_matmul_bound).
  thread_local std::vector<int32_t> colsum, rowsum;
  thread_local std::vector<uint32_t> add;  // the zero-point terms of one product, per element
  thread_local std::vector<float> mults;
  colsum.resize(static_cast<size_t>(n));
  rowsum.resize(static_cast<size_t>(m));
  add.resize(static_cast<size_t>(mn));
  if (mults.size() != static_cast<size_t>(mn) || (mn > 0 && mults[0] != mult)) mults.assign(static_cast<size_t>(mn), mult);
  int32_t* cs = colsum.data();
  int32_t* rs = rowsum.data();
  uint32_t* ad = add.data();
  for (int64_t bi = b0; bi < b1; ++bi) {
    auto* y = out_at(bi);
    const int8_t* bb = mr.b + bi * k * n;
    const int8_t* aa = mr.a + bi * m * k;
    std::fill(cs, cs + n, 0);
    if (za != 0) {
      if (mr.bsn == 1) {
        for (int64_t kk = 0; kk < k; ++kk)
          for (int64_t j = 0; j < n; ++j) cs[j] += bb[kk * mr.bsk + j];
      } else {
        row_sums_i8(bb, n, k, mr.bsn, cs);  // column j of b is k contiguous values (bsk = 1)
      }
    }
    if (zb != 0)
      row_sums_i8(aa, m, k, k, rs);
    else
      std::fill(rs, rs + m, 0);
    // acc = raw - za colsum[j] - zb rowsum[i] + K za zb fits int32 (check_matmul_bound), so the
    // terms in wrapped 32-bit arithmetic add up to it exactly.
    const uint32_t kzz = wrap32(k * za * zb), za32 = wrap32(za), zb32 = wrap32(zb);
    for (int64_t i = 0; i < m; ++i) {
      const uint32_t row = kzz - zb32 * static_cast<uint32_t>(rs[i]);
      uint32_t* arow = ad + i * n;
      for (int64_t j = 0; j < n; ++j) arow[j] = row - za32 * static_cast<uint32_t>(cs[j]);
    }
    const int32_t* raw = mr.raw + bi * mn;
    constexpr bool codes = std::is_same_v<std::remove_pointer_t<decltype(y)>, int8_t>;
    if (r == Rounding::half_even) {
      // The whole product in one pass.
      if constexpr (codes)
        requant_span_even_q(raw, ad, mults.data(), mn, zo, lo, hi, y);
      else
        requant_span_even(raw, ad, mults.data(), mn, zo, lo, hi, s_out, y);
      continue;
    }
    for (int64_t e = 0; e < mn; ++e) {
      const int32_t acc = static_cast<int32_t>(static_cast<uint32_t>(raw[e]) + ad[e]);
      float u = round_one(static_cast<float>(acc) * mult, r) + zo;
      u = u < lo ? lo : (u > hi ? hi : u);
      if constexpr (codes)
        y[e] = static_cast<int8_t>(u);
      else
        y[e] = (u - zo) * s_out;
    }
  }
}

/// Products per task from their size: a batch-1 attention (two 10x10 heads) stays on the caller's
/// thread instead of paying an OpenMP region for microseconds of work.
int64_t matmul_grain(const MatmulRaw& mr) {
  const int64_t work = mr.m * mr.n + mr.k * (mr.m + mr.n);
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(work, 1));
}

}  // namespace

torch::Tensor int8_matmul_float(const torch::Tensor& a, const QuantParams& a_qp, const torch::Tensor& b,
                                const QuantParams& b_qp, const QuantParams& out_qp, Rounding r) {
  RECORD_FUNCTION("csipose::int8_matmul_float", std::vector<c10::IValue>());
  const MatmulRaw mr = matmul_raw("int8_matmul_float", a, a_qp, b, b_qp, out_qp, r);
  torch::Tensor y = torch::empty(mr.out_shape, a.options().dtype(torch::kFloat));
  if (y.numel() == 0) return y;
  float* yp = y.data_ptr<float>();
  {
    RECORD_FUNCTION("csipose::int8_matmul_requantize", std::vector<c10::IValue>());
    at::parallel_for(0, mr.nb, matmul_grain(mr), [&](int64_t b0, int64_t b1) {
      matmul_requantize(mr, a_qp, b_qp, out_qp, r, b0, b1, [&](int64_t bi) { return yp + bi * mr.m * mr.n; });
    });
  }
  return y;
}

torch::Tensor int8_matmul_softmax(const torch::Tensor& a, const QuantParams& a_qp, const torch::Tensor& b,
                                  const QuantParams& b_qp, const QuantParams& s_qp, float divisor,
                                  const torch::Tensor& scale, const torch::Tensor& shift, const QuantParams& p_qp,
                                  Rounding r) {
  RECORD_FUNCTION("csipose::int8_matmul_softmax", std::vector<c10::IValue>());
  check_activation_params(p_qp, "int8_matmul_softmax");
  const MatmulRaw mr = matmul_raw("int8_matmul_softmax", a, a_qp, b, b_qp, s_qp, r);
  const int64_t channels = mr.out_shape.size() >= 3 ? mr.out_shape[1] : 1;  // dimension 1, as row_softmax
  for (const torch::Tensor* t : {&scale, &shift})
    CSIPOSE_CHECK(!t->defined() || (mr.out_shape.size() >= 3 && t->dim() == 1 && t->size(0) == channels &&
                                    t->scalar_type() == torch::kFloat && t->device().is_cpu()),
                  "int8_matmul_softmax: scale / shift must be float32 CPU vectors of ", channels,
                  " entries (dimension 1 of a product of 3 or more dimensions)");
  torch::Tensor y = torch::empty(mr.out_shape, a.options().dtype(torch::kInt8));
  if (y.numel() == 0) return y;
  const torch::Tensor sc = scale.defined() ? scale.contiguous() : scale;
  const torch::Tensor sh = shift.defined() ? shift.contiguous() : shift;
  const float* ap = sc.defined() ? sc.data_ptr<float>() : nullptr;
  const float* bp = sh.defined() ? sh.data_ptr<float>() : nullptr;
  const bool affine = ap != nullptr || bp != nullptr;
  // Products per channel step: row_softmax's channel of product bi is (bi / per_channel) % channels.
  const int64_t per_channel = mr.out_shape.size() >= 3 ? mr.nb / (mr.out_shape[0] * channels) : 1;
  int8_t* yp = y.data_ptr<int8_t>();
  const int64_t mn = mr.m * mr.n;
  std::atomic<bool> bad{false};
  at::parallel_for(0, mr.nb, matmul_grain(mr), [&](int64_t b0, int64_t b1) {
    // One product at a time through an L1-sized float row block: requantize + dequantize (the
    // scores int8_matmul_float returns), softmax (row_softmax's kernel), quantize (the next input
    // point); the float scores never reach memory.
    // Products in blocks of ~16 KiB of float rows (a pose head's product is 10 x 10: one pass per
    // product paid more in per-call setup than in arithmetic); the softmax per product (its
    // channel's affine map) or, without one, per block.
    const int64_t block = std::max<int64_t>(1, 4096 / std::max<int64_t>(mn, 1));
    thread_local std::vector<float> rows;
    rows.resize(static_cast<size_t>(std::min(block, b1 - b0) * mn));
    bool finite = true;
    for (int64_t p0 = b0; p0 < b1; p0 += block) {
      const int64_t p1 = std::min(b1, p0 + block), count = (p1 - p0) * mn;
      float* v = rows.data();
      matmul_requantize(mr, a_qp, b_qp, s_qp, r, p0, p1, [&](int64_t bi) { return v + (bi - p0) * mn; });
      if (divisor != 1.0f)
        divide_span(v, count, divisor, v);  // IEEE division, as ATen's tensor / scalar (exact, fast)
      if (!affine) {
        finite = softmax_rows_int8(v, (p1 - p0) * mr.m, mr.n, p_qp, r, yp + p0 * mn) && finite;
        continue;
      }
      // Each row's channel map (row_softmax's channel of product bi is (bi / per_channel) % channels).
      thread_local std::vector<float> row_a, row_b;
      row_a.resize(static_cast<size_t>((p1 - p0) * mr.m));
      row_b.resize(row_a.size());
      for (int64_t bi = p0; bi < p1; ++bi) {
        const int64_t c = (bi / per_channel) % channels;
        const float ac = ap != nullptr ? ap[c] : 1.0f, bc = bp != nullptr ? bp[c] : 0.0f;
        for (int64_t i = 0; i < mr.m; ++i) {
          row_a[static_cast<size_t>((bi - p0) * mr.m + i)] = ac;
          row_b[static_cast<size_t>((bi - p0) * mr.m + i)] = bc;
        }
      }
      finite = softmax_rows_int8(v, (p1 - p0) * mr.m, mr.n, p_qp, r, yp + p0 * mn, row_a.data(), row_b.data()) && finite;
    }
    if (!finite) bad.store(true);
  });
  CSIPOSE_CHECK(!bad.load(), "quantize_tensor: the tensor has non-finite values (NaN or Inf)");
  return y;
}

torch::Tensor int8_matmul_codes(const torch::Tensor& a, const QuantParams& a_qp, const torch::Tensor& b,
                                const QuantParams& b_qp, const QuantParams& out_qp, const QuantParams& p_qp,
                                Rounding r, bool merge_heads) {
  RECORD_FUNCTION("csipose::int8_matmul_codes", std::vector<c10::IValue>());
  check_activation_params(p_qp, "int8_matmul_codes");
  const MatmulRaw mr = matmul_raw("int8_matmul_codes", a, a_qp, b, b_qp, out_qp, r);
  CSIPOSE_CHECK(!merge_heads || mr.out_shape.size() == 4, "int8_matmul_codes: merging heads needs a (B, H, m, n) product");
  // Merged heads: memory (B, m, H, n), returned as its (B, H, m, n) view.
  std::vector<int64_t> layout = mr.out_shape;
  if (merge_heads) std::swap(layout[1], layout[2]);
  torch::Tensor y = torch::empty(layout, a.options().dtype(torch::kInt8));
  if (merge_heads) y = y.transpose(1, 2);
  if (y.numel() == 0) return y;
  int8_t* yp = y.data_ptr<int8_t>();
  const int64_t mn = mr.m * mr.n;
  const int64_t heads = merge_heads ? mr.out_shape[1] : 1;
  // The next input point's code of each output code: quantize_span of its dequantized value (the
  // float32 output int8_matmul_float returns), so the codes equal quantizing that output.
  std::array<int8_t, 256> table{};
  {
    std::array<float, 256> dq{};
    const float zo = static_cast<float>(out_qp.zero_point[0]), s_out = out_qp.scale[0];
    for (int c = 0; c < 256; ++c) dq[static_cast<size_t>(c)] = (static_cast<float>(static_cast<int8_t>(c)) - zo) * s_out;
    quantize_into_serial(dq.data(), 256, table.data(), p_qp, r);  // finite: dequantized codes
  }
  at::parallel_for(0, mr.nb, matmul_grain(mr), [&](int64_t b0, int64_t b1) {
    // Products in blocks of ~16 KiB of codes: requantized at out_qp, then mapped through the table.
    const int64_t block = std::max<int64_t>(1, 16384 / std::max<int64_t>(mn, 1));
    thread_local std::vector<int8_t> codes;
    codes.resize(static_cast<size_t>(std::min(block, b1 - b0) * mn));
    for (int64_t p0 = b0; p0 < b1; p0 += block) {
      const int64_t p1 = std::min(b1, p0 + block);
      if (!merge_heads) {
        const int64_t count = (p1 - p0) * mn;
        matmul_requantize(mr, a_qp, b_qp, out_qp, r, p0, p1, [&](int64_t bi) { return yp + bi * mn; });
        apply_lut(yp + p0 * mn, count, table.data());
        continue;
      }
      matmul_requantize(mr, a_qp, b_qp, out_qp, r, p0, p1, [&](int64_t bi) { return codes.data() + (bi - p0) * mn; });
      // The table on the way to the merged layout: row i of product bi goes to
      // ((item * m + i) * H + h) * n.
      for (int64_t bi = p0; bi < p1; ++bi) {
        const int64_t item = bi / heads, h = bi % heads;
        lut_rows_copy(codes.data() + (bi - p0) * mn, mr.n, yp + (item * mr.m * heads + h) * mr.n, heads * mr.n, mr.m,
                      mr.n, table.data());
      }
    }
  });
  return y;
}

// ---- fake-quant references -----------------------------------------------------------------------

torch::Tensor fq_linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b,
                        const QuantParams& in_qp, const QuantParams& w_qp, const QuantParams& out_qp, Rounding r) {
  const torch::Tensor y = torch::linear(fake_quantize(x, in_qp, r), fake_quantize(w, w_qp, r), fq_bias(b, in_qp, w_qp));
  return fake_quantize(y, out_qp, r);
}

torch::Tensor fq_conv1d(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b,
                        const QuantParams& in_qp, const QuantParams& w_qp, const QuantParams& out_qp, int64_t stride,
                        int64_t padding, int64_t dilation, int64_t groups, Rounding r) {
  const torch::Tensor y = torch::conv1d(fake_quantize(x, in_qp, r), fake_quantize(w, w_qp, r), fq_bias(b, in_qp, w_qp),
                                        {stride}, {padding}, {dilation}, groups);
  return fake_quantize(y, out_qp, r);
}

torch::Tensor fq_conv2d(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b,
                        const QuantParams& in_qp, const QuantParams& w_qp, const QuantParams& out_qp,
                        std::array<int64_t, 2> stride, std::array<int64_t, 2> padding, std::array<int64_t, 2> dilation,
                        int64_t groups, Rounding r) {
  const torch::Tensor y =
      torch::conv2d(fake_quantize(x, in_qp, r), fake_quantize(w, w_qp, r), fq_bias(b, in_qp, w_qp),
                    {stride[0], stride[1]}, {padding[0], padding[1]}, {dilation[0], dilation[1]}, groups);
  return fake_quantize(y, out_qp, r);
}

torch::Tensor fq_matmul(const torch::Tensor& a, const QuantParams& a_qp, const torch::Tensor& b,
                        const QuantParams& b_qp, const QuantParams& out_qp, Rounding r) {
  return fake_quantize(torch::matmul(fake_quantize(a, a_qp, r), fake_quantize(b, b_qp, r)), out_qp, r);
}

}  // namespace csipose
