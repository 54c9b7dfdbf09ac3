#include "quant/int8_ops.h"

#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "common/check.h"
#include "quant/fake_quant.h"
#include "quant/int8_backend.h"
#include "quant/reference.h"

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
int quantize_span_even(const float* src, int64_t n, int8_t* dst, float inv, float zp, float lo, float hi) {
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
void requant_span_even(const int32_t* src, const uint32_t* add, const float* mult, int64_t n, float zp, float lo,
                       float hi, float s_out, float* dst) {
  for (int64_t i = 0; i < n; ++i) {
    const int32_t acc = static_cast<int32_t>(static_cast<uint32_t>(src[i]) + add[i]);
    const float u = clamp_f((round_half_even_select(static_cast<float>(acc) * mult[i]) + zp), lo, hi);
    dst[i] = (u - zp) * s_out;  // dequantize: float(q - zp) * scale
  }
}

/// The int8 codes themselves (no dequantize): an int8 op that hands its output to the next one.
CSIPOSE_SIMD_CLONES
void requant_span_even_q(const int32_t* src, const uint32_t* add, const float* mult, int64_t n, float zp, float lo,
                         float hi, int8_t* dst) {
  for (int64_t i = 0; i < n; ++i) {
    const int32_t acc = static_cast<int32_t>(static_cast<uint32_t>(src[i]) + add[i]);
    const float u = clamp_f((round_half_even_select(static_cast<float>(acc) * mult[i]) + zp), lo, hi);
    dst[i] = static_cast<int8_t>(static_cast<int32_t>(u));
  }
}

/// Conv outputs: `rows` consecutive rows of np contiguous positions, row r (counted from row0)
/// belonging to channel (row0 + r) % channels with that channel's add and multiplier; float32
/// dequantized output (dst_f) or int8 codes (dst_q, mapped through table when given). One call per
/// block of rows: conv rows are short (a TCN row is ~20-40 positions), and a call per row cost as
/// much as its arithmetic.
CSIPOSE_SIMD_CLONES
void requant_rows_even(const int32_t* src, int64_t row0, int64_t rows, int64_t np, int64_t channels,
                       const uint32_t* add, const float* mult, float zp, float lo, float hi, float s_out, float* dst_f,
                       int8_t* dst_q, const int8_t* table) {
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
      if (table != nullptr)
        for (int64_t i = 0; i < np; ++i) d[i] = table[static_cast<uint8_t>(d[i])];
    }
  }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

/// dst[i] = table[bit pattern of dst[i]] (an Int8Output table), in place.
inline void apply_lut(int8_t* dst, int64_t n, const int8_t* table) {
  for (int64_t i = 0; i < n; ++i) dst[i] = table[static_cast<uint8_t>(dst[i])];
}

/// round() of a float with the contract's tie rule, as round_tensor does elementwise.
inline float round_one(float y, Rounding r) {
  if (r == Rounding::half_even) return round_half_even_select(y);
  const float t = std::trunc(y);
  return t + (std::fabs(y - t) >= 0.5f ? (y > 0 ? 1.0f : -1.0f) : 0.0f);
}

/// The 32-bit pattern of an int64 constant that is added to int32 sums (see requant_span_even).
inline uint32_t wrap32(int64_t v) { return static_cast<uint32_t>(static_cast<uint64_t>(v)); }

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

/// quantize() of every element of a float32 CPU tensor of any layout (views, transposes, expanded
/// dimensions) into dst in row-major order, without a contiguous copy first: rows along the last
/// dimension, each a contiguous span when its stride is 1. False when a value is not finite.
bool quantize_strided_into(const torch::Tensor& x, int8_t* dst, const QuantParams& p, Rounding r) {
  if (x.is_contiguous()) return quantize_into(x.data_ptr<float>(), x.numel(), dst, p, r);
  if (x.is_non_overlapping_and_dense()) {
    // A permutation of a dense block (attention's transposed and head-split views): quantize the
    // block in memory order (one vectorized pass; elementwise, so every element gets its own code),
    // then lay the int8 codes out row-major (a copy of a quarter of the bytes).
    torch::Tensor q = torch::empty_strided(x.sizes(), x.strides(), x.options().dtype(torch::kInt8));
    const bool finite = quantize_into(x.data_ptr<float>(), x.numel(), q.data_ptr<int8_t>(), p, r);
    torch::from_blob(dst, x.sizes(), q.options()).copy_(q);
    return finite;
  }
  const int64_t nd = x.dim(), len = x.size(nd - 1), step = x.stride(nd - 1);
  const int64_t rows = len == 0 ? 0 : x.numel() / len;
  const float* base = x.data_ptr<float>();
  const float inv = inv_scale_of(p.scale[0]);
  const float zp = static_cast<float>(p.zero_point[0]);
  const float lo = static_cast<float>(p.qmin), hi = static_cast<float>(p.qmax);
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
torch::Tensor requantize_conv_cpu(const torch::Tensor& raw, int64_t n, int64_t o, int64_t np, const torch::Tensor& comp,
                                  const torch::Tensor& bias, const std::vector<float>& mult, const QuantParams& out,
                                  const Int8Output& out_spec, Rounding r) {
  CSIPOSE_CHECK(raw.is_contiguous() && raw.numel() == n * o * np, "requantize_conv_cpu: internal layout mismatch");
  const bool q_out = out_spec.int8;
  torch::Tensor y = torch::empty({n, o, np}, raw.options().dtype(q_out ? torch::kInt8 : torch::kFloat));
  const int32_t* src = raw.data_ptr<int32_t>();
  const torch::Tensor comp_c = comp.defined() ? comp.contiguous() : comp;
  const torch::Tensor bias_c = bias.defined() ? bias.contiguous() : bias;
  const int64_t* cp = comp_c.defined() ? comp_c.data_ptr<int64_t>() : nullptr;
  const int32_t* bp = bias_c.defined() ? bias_c.data_ptr<int32_t>() : nullptr;
  const float zp = static_cast<float>(out.zero_point[0]), s_out = out.scale[0];
  const float lo = static_cast<float>(out.qmin), hi = static_cast<float>(out.qmax);
  float* dst_f = q_out ? nullptr : y.data_ptr<float>();
  int8_t* dst_q = q_out ? y.data_ptr<int8_t>() : nullptr;
  const int8_t* table = out_spec.table;
  // Per-channel constants once. acc + bias fits int32 (pack_weight's bound): the wrapped 32-bit
  // constant adds up to it exactly.
  std::vector<uint32_t> add32(static_cast<size_t>(o));
  std::vector<float> mv(static_cast<size_t>(o));
  for (int64_t c = 0; c < o; ++c) {
    add32[static_cast<size_t>(c)] = wrap32((bp ? static_cast<int64_t>(bp[c]) : 0) - (cp ? cp[c] : 0));
    mv[static_cast<size_t>(c)] = mult[static_cast<size_t>(mult.size() == 1 ? 0 : c)];
  }
  at::parallel_for(0, n * o, std::max<int64_t>(1, 16384 / std::max<int64_t>(np, 1)), [&](int64_t b, int64_t e) {
    if (r == Rounding::half_even) {  // blocks of whole rows per call (requant_rows_even)
      requant_rows_even(src + b * np, b, e - b, np, o, add32.data(), mv.data(), zp, lo, hi, s_out,
                        dst_f ? dst_f + b * np : nullptr, dst_q ? dst_q + b * np : nullptr, table);
      return;
    }
    for (int64_t row = b; row < e; ++row) {
      const int64_t c = row % o;
      for (int64_t pi = 0; pi < np; ++pi) {
        const int32_t sum = static_cast<int32_t>(static_cast<uint32_t>(src[row * np + pi]) + add32[static_cast<size_t>(c)]);
        float u = round_one(static_cast<float>(sum) * mv[static_cast<size_t>(c)], r) + zp;
        u = u < lo ? lo : (u > hi ? hi : u);
        if (q_out) {
          const auto q = static_cast<int8_t>(static_cast<int32_t>(u));
          dst_q[row * np + pi] = table != nullptr ? table[static_cast<uint8_t>(q)] : q;
        } else {
          dst_f[row * np + pi] = (u - zp) * s_out;  // dequantize: float(q - zp) * scale
        }
      }
    }
  });
  return y;
}

/// The same for a linear op's raw (M, O) int32 GEMM result (row-major, channels last), written to
/// dst_f (M, O) float32, or as int8 codes (through `table` when given) to dst_q.
void requantize_rows(const int32_t* src, int64_t m, int64_t o, const torch::Tensor& comp, const torch::Tensor& bias,
                     const std::vector<float>& mult, const QuantParams& out, Rounding r, float* dst_f, int8_t* dst_q,
                     const int8_t* table) {
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
    for (int64_t row = b; row < e; ++row) {
      const int32_t* s_row = src + row * o;
      if (r == Rounding::half_even) {
        if (dst_q != nullptr) {
          requant_span_even_q(s_row, add32p, mvp, o, zp, lo, hi, dst_q + row * o);
          if (table != nullptr) apply_lut(dst_q + row * o, o, table);
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
          const auto q = static_cast<int8_t>(static_cast<int32_t>(u));
          dst_q[row * o + c] = table != nullptr ? table[static_cast<uint8_t>(q)] : q;
        } else {
          dst_f[row * o + c] = (u - zp) * s_out;  // dequantize: float(q - zp) * scale
        }
      }
    }
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

void im2col_s8(const int8_t* x, const Conv2dGeometry& g, int8_t pad, int8_t* cols) {
  RECORD_FUNCTION("csipose::im2col_s8", std::vector<c10::IValue>());
  const int64_t kk = g.k0 * g.k1, np = g.o0 * g.o1;
  const auto fill = [pad](int8_t* p, int64_t count) {  // mostly 0-2 bytes: no call
    for (int64_t i = 0; i < count; ++i) p[i] = pad;
  };
  // Stride 1 with "same" rows (o1 == s1): a tap's block is the input shifted by one flat offset,
  // so one copy covers all its in-range rows and only the padded columns at row ends are fixed.
  const bool flat = g.st0 == 1 && g.st1 == 1 && g.o1 == g.s1;
  at::parallel_for(0, g.n * g.c, std::max<int64_t>(1, 32768 / std::max<int64_t>(kk * np, 1)), [&](int64_t b, int64_t e) {
    for (int64_t nc = b; nc < e; ++nc) {
      const int8_t* src = x + nc * g.s0 * g.s1;
      int8_t* dst = cols + nc * kk * np;
      for (int64_t a0 = 0; a0 < g.k0; ++a0) {
        const int64_t off0 = a0 * g.dl0 - g.pd0;
        for (int64_t a1 = 0; a1 < g.k1; ++a1, dst += np) {
          // Output columns p1 in [lo, hi) read inside the row: 0 <= p1 * st1 + a1 * dl1 - pd1 < s1.
          const int64_t off = a1 * g.dl1 - g.pd1;
          const int64_t lo = std::min(g.o1, off >= 0 ? 0 : (-off + g.st1 - 1) / g.st1);
          const int64_t hi = std::max(lo, std::min(g.o1, g.s1 - off > 0 ? (g.s1 - off + g.st1 - 1) / g.st1 : 0));
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

bool int8_fused_available(const torch::Device& device) { return use_onednn(device); }

torch::Tensor int8_op_float(const torch::Tensor& x, const QuantParams& in_qp, const PackedWeight& w,
                            const QuantParams& out_qp, const Int8Conv* conv, Rounding r) {
  return int8_op_fused(x, in_qp, w, out_qp, conv, Int8Output{}, r);
}

torch::Tensor int8_op_fused(const torch::Tensor& x, const QuantParams& in_qp, const PackedWeight& w,
                            const QuantParams& out_qp, const Int8Conv* conv, const Int8Output& out_spec, Rounding r) {
  RECORD_FUNCTION("csipose::int8_op_fused", std::vector<c10::IValue>());
  CSIPOSE_CHECK(int8_fused_available(x.device()), "int8_op_fused: the fused path needs the onednn backend on the CPU");
  const bool q_in = x.scalar_type() == torch::kInt8;
  if (!q_in) check_float_tensor(x, "int8_op_fused");
  check_activation_params(in_qp, "int8_op_fused");
  check_activation_params(out_qp, "int8_op_fused");
  check_int8_tensor(w.q, "int8_op_fused");
  CSIPOSE_CHECK(w.input_params == in_qp, "int8_op_fused: input params differ from those the weight was packed for");
  CSIPOSE_CHECK(out_spec.table == nullptr || out_spec.int8, "int8_op_fused: a code table needs int8 output");
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
    torch::Tensor y = torch::empty(shape, out_options);
    if (rows == 0) return y;
    thread_local std::vector<int8_t> xq_buf;
    thread_local std::vector<int32_t> acc_buf;
    acc_buf.resize(static_cast<size_t>(rows * c_out));
    const int8_t* xq = nullptr;
    if (q_in) {
      xq = xc.data_ptr<int8_t>();  // codes at in_qp already (the previous op of an int8 chain)
    } else {
      xq_buf.resize(static_cast<size_t>(rows * k));
      CSIPOSE_CHECK(quantize_into(xc.data_ptr<float>(), rows * k, xq_buf.data(), in_qp, r),
                    "quantize_tensor: the tensor has non-finite values (NaN or Inf)");
      xq = xq_buf.data();
    }
    if (k > 0) {
      S8GemmRaw g;
      g.m = rows, g.k = k, g.n = c_out;
      g.a = xq, g.lda = k;
      g.b = wq.data_ptr<int8_t>(), g.b_stride_k = 1, g.b_stride_n = k;  // W (O, K) read as W^T
      g.c = acc_buf.data(), g.ldc = c_out;
      onednn_s8_gemm_raw(g);
    } else {
      std::fill(acc_buf.begin(), acc_buf.end(), 0);
    }
    if (out_spec.int8) {
      requantize_rows(acc_buf.data(), rows, c_out, comp, w.bias_q, mult, out_qp, r, nullptr, y.data_ptr<int8_t>(),
                      out_spec.table);
    } else {
      requantize_rows(acc_buf.data(), rows, c_out, comp, w.bias_q, mult, out_qp, r, y.data_ptr<float>(), nullptr,
                      nullptr);
    }
    return y;
  }
  const torch::Tensor xq = q_in ? x : quantize_cpu_fused(x, in_qp, r);
  const auto nd = static_cast<int64_t>(conv->stride.size());
  CSIPOSE_CHECK(w.q.dim() == 2 + nd, "int8_op_fused: weight of shape ", w.q.sizes(), " for a ", nd, "-d convolution");
  const int64_t n = x.size(0), groups = conv->groups;
  // The output layout directly: W (1, G, Og, K') @ cols (N, G, K', P) = (N, G, Og, P) = (N, O, *S_out).
  torch::Tensor cols;
  std::vector<int64_t> out_size;
  const bool copies = std::any_of(w.q.sizes().begin() + 2, w.q.sizes().end(), [](int64_t k) { return k > 1; }) ||
                      std::any_of(conv->stride.begin(), conv->stride.end(), [](int64_t s) { return s > 1; }) ||
                      std::any_of(conv->padding.begin(), conv->padding.end(), [](int64_t p) { return p > 0; });
  thread_local std::vector<int8_t> cols_buf;  // per-thread scratch, reused by every conv
  // Anything unusual (bad geometry included) takes the ATen route, whose checks name the problem.
  const auto nds = static_cast<size_t>(nd);
  bool direct = copies && nd <= 2 && xq.dim() == 2 + nd && x.size(1) == w.q.size(1) * groups &&
                w.out_channels() % groups == 0 && conv->padding.size() == nds && conv->dilation.size() == nds;
  for (size_t i = 0; direct && i < nds; ++i)
    direct = conv->stride[i] >= 1 && conv->dilation[i] >= 1 && conv->padding[i] >= 0 &&
             x.size(static_cast<int64_t>(2 + i)) + 2 * conv->padding[i] >=
                 conv->dilation[i] * (w.q.size(static_cast<int64_t>(2 + i)) - 1) + 1;
  if (direct) {
    const torch::Tensor xc = xq.contiguous();
    const Conv2dGeometry geo = conv_geometry(xc, w.q.sizes(), *conv);
    const int64_t rows = geo.c / groups * geo.k0 * geo.k1, positions = geo.o0 * geo.o1;
    cols_buf.resize(static_cast<size_t>(geo.n * geo.c * geo.k0 * geo.k1 * positions));
    im2col_s8(xc.data_ptr<int8_t>(), geo, static_cast<int8_t>(in_qp.zero_point[0]), cols_buf.data());
    cols = torch::from_blob(cols_buf.data(), {geo.n, groups, rows, positions}, xc.options());
    if (nd == 2) out_size = {geo.o0, geo.o1};
    else out_size = {geo.o1};
  } else {
    Im2col ic = im2col("int8_op_fused", xq, w.q.sizes(), conv->stride, conv->padding, conv->dilation, groups,
                       static_cast<double>(in_qp.zero_point[0]), /*positions_last=*/true);
    cols = std::move(ic.cols);
    out_size = std::move(ic.out_size);
  }
  const int64_t positions = cols.size(3), og = c_out / groups;
  const torch::Tensor wg = w.q.reshape({1, groups, og, -1});
  CSIPOSE_CHECK(cols.size(2) == wg.size(3), "int8_op_fused: internal im2col size mismatch");
  const torch::Tensor raw = onednn_s8_gemm(wg, cols);  // (N, G, Og, P), contiguous
  torch::Tensor y = requantize_conv_cpu(raw, n, c_out, positions, comp, w.bias_q, mult, out_qp, out_spec, r);
  std::vector<int64_t> out_shape = {n, c_out};
  out_shape.insert(out_shape.end(), out_size.begin(), out_size.end());
  return y.reshape(out_shape);
}

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

torch::Tensor int8_matmul_float(const torch::Tensor& a, const QuantParams& a_qp, const torch::Tensor& b,
                                const QuantParams& b_qp, const QuantParams& out_qp, Rounding r) {
  RECORD_FUNCTION("csipose::int8_matmul_float", std::vector<c10::IValue>());
  CSIPOSE_CHECK(int8_fused_available(a.device()) && b.device() == a.device(),
                "int8_matmul_float: the fused path needs the onednn backend on the CPU");
  check_float_tensor(a, "int8_matmul_float");
  check_float_tensor(b, "int8_matmul_float");
  check_matmul_operands("int8_matmul_float", a, a_qp, b, b_qp, out_qp);
  const int64_t k = a.size(-1), m = a.size(-2), n = b.size(-1);
  const std::vector<int64_t> batch = at::infer_size(a.sizes().slice(0, a.dim() - 2), b.sizes().slice(0, b.dim() - 2));
  std::vector<int64_t> ea = batch, eb = batch, out = batch;
  ea.insert(ea.end(), {m, k});
  eb.insert(eb.end(), {k, n});
  out.insert(out.end(), {m, n});
  torch::Tensor y = torch::empty(out, a.options());
  if (y.numel() == 0) return y;
  const int64_t nb = y.numel() / (m * n);
  // Per-thread scratch for the int8 operands and the int32 products (no allocation per call).
  thread_local std::vector<int8_t> aq_buf, bq_buf;
  thread_local std::vector<int32_t> raw_buf;
  aq_buf.resize(static_cast<size_t>(nb * m * k));
  bq_buf.resize(static_cast<size_t>(nb * k * n));
  raw_buf.resize(static_cast<size_t>(nb * m * n));
  // Attention operands are transposed / expanded views: quantized in place of a contiguous copy.
  // A b that is the transpose of a row-major tensor (k^T in Q K^T) is quantized in its own order
  // (contiguous reads) and handed to oneDNN as column-major.
  const torch::Tensor be = b.expand(eb);
  const bool b_colmajor = k > 1 && n > 1 && be.stride(-2) == 1 && be.stride(-1) == k;
  {
    RECORD_FUNCTION("csipose::int8_matmul_quantize", std::vector<c10::IValue>());
    CSIPOSE_CHECK(quantize_strided_into(a.expand(ea), aq_buf.data(), a_qp, r) &&
                      quantize_strided_into(b_colmajor ? be.transpose(-2, -1) : be, bq_buf.data(), b_qp, r),
                  "quantize_tensor: the tensor has non-finite values (NaN or Inf)");
  }
  const int8_t* ap = aq_buf.data();
  const int8_t* bp = bq_buf.data();
  const int32_t* rp = raw_buf.data();
  // Element (kk, j) of product bi's b in the scratch layout.
  const int64_t bsk = b_colmajor ? 1 : n, bsn = b_colmajor ? k : 1;
  if (k > 0) {
    S8GemmRaw g;
    g.m = m, g.k = k, g.n = n;
    g.a = ap, g.lda = k, g.b = bp, g.b_stride_k = bsk, g.b_stride_n = bsn, g.c = raw_buf.data(), g.ldc = n;
    g.batch = nb, g.a_batch = m * k, g.b_batch = k * n, g.c_batch = m * n;
    onednn_s8_gemm_raw(g);
  } else {
    std::fill(raw_buf.begin(), raw_buf.end(), 0);
  }
  const int64_t za = a_qp.zero_point[0], zb = b_qp.zero_point[0];
  const float mult = requantize_multiplier(a_qp.scale[0], b_qp.scale[0], out_qp.scale[0]);
  const float zo = static_cast<float>(out_qp.zero_point[0]), s_out = out_qp.scale[0];
  const float lo = static_cast<float>(out_qp.qmin), hi = static_cast<float>(out_qp.qmax);
  float* yp = y.data_ptr<float>();
  // sum (a - za)(b - zb) = sum a b - za sum_k b - zb sum_k a + K za zb, then requantize + dequantize.
  // Products per task from their size: a batch-1 attention (two 10x10 heads) stays on the caller's
  // thread instead of paying an OpenMP region for microseconds of work.
  const int64_t work = m * n + k * (m + n);
  {
    RECORD_FUNCTION("csipose::int8_matmul_requantize", std::vector<c10::IValue>());
    at::parallel_for(0, nb, std::max<int64_t>(1, 32768 / std::max<int64_t>(work, 1)), [&](int64_t b0, int64_t b1) {
      std::vector<int64_t> colsum(static_cast<size_t>(n));
      std::vector<uint32_t> add(static_cast<size_t>(n));
      const std::vector<float> mults(static_cast<size_t>(n), mult);
      for (int64_t bi = b0; bi < b1; ++bi) {
        std::fill(colsum.begin(), colsum.end(), 0);
        const int8_t* bb = bp + bi * k * n;
        for (int64_t kk = 0; kk < k; ++kk)
          for (int64_t j = 0; j < n; ++j) colsum[static_cast<size_t>(j)] += bb[kk * bsk + j * bsn];
        for (int64_t i = 0; i < m; ++i) {
          int64_t rowsum = 0;
          for (int64_t kk = 0; kk < k; ++kk) rowsum += ap[(bi * m + i) * k + kk];
          const int64_t c = k * za * zb - zb * rowsum;
          const int32_t* rrow = rp + (bi * m + i) * n;
          float* yrow = yp + (bi * m + i) * n;
          if (r == Rounding::half_even) {
            // acc fits int32 (check_matmul_bound), so the wrapped 32-bit terms add up to it exactly.
            for (int64_t j = 0; j < n; ++j) add[static_cast<size_t>(j)] = wrap32(c - za * colsum[static_cast<size_t>(j)]);
            requant_span_even(rrow, add.data(), mults.data(), n, zo, lo, hi, s_out, yrow);
            continue;
          }
          for (int64_t j = 0; j < n; ++j) {
            const int32_t acc = static_cast<int32_t>(rrow[j] - za * colsum[static_cast<size_t>(j)] + c);
            float u = round_one(static_cast<float>(acc) * mult, r) + zo;
            u = u < lo ? lo : (u > hi ? hi : u);
            yrow[j] = (u - zo) * s_out;
          }
        }
      }
    });
  }
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
