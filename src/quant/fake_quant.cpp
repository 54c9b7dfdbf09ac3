#include "quant/fake_quant.h"

#include <torch/torch.h>

#include <vector>

#include "common/check.h"
#include "quant/reference.h"

namespace csipose {
namespace {

/// The parameters as float32 tensors on x's device, shaped to broadcast against x: 0-dim for
/// per-tensor, (1, .., C, .., 1) with C at p.axis for per-channel.
struct ParamTensors {
  torch::Tensor scale, inv_scale, zero_point;
  double qmin, qmax;
};

ParamTensors param_tensors(const torch::Tensor& x, const QuantParams& p) {
  CSIPOSE_CHECK(x.defined(), "fake_quantize: undefined tensor");
  CSIPOSE_CHECK(x.scalar_type() == torch::kFloat, "fake_quantize: tensor of dtype ", x.scalar_type(),
                "; expected float32 (the contract is float32 arithmetic)");
  p.validate();
  std::vector<float> inv(p.scale.size()), zp(p.scale.size());
  for (size_t c = 0; c < p.scale.size(); ++c) {
    inv[c] = inv_scale_of(p.scale[c]);            // 1.0f / scale, float32, as the reference
    zp[c] = static_cast<float>(p.zero_point[c]);  // exact: zero points lie in [qmin, qmax], |zp| <= 255
  }
  std::vector<int64_t> shape;  // 0-dim for per-tensor
  if (p.per_channel()) {
    CSIPOSE_CHECK(p.axis < x.dim(), "fake_quantize: per-channel axis ", p.axis,
                  " is out of range for a tensor of shape ", x.sizes());
    CSIPOSE_CHECK(x.size(p.axis) == p.size(), "fake_quantize: tensor of shape ", x.sizes(), " has ", x.size(p.axis),
                  " channels along axis ", p.axis, " but the params hold ", p.size());
    shape.assign(static_cast<size_t>(x.dim()), 1);
    shape[static_cast<size_t>(p.axis)] = p.size();
  }
  const auto on_device = [&](const std::vector<float>& v) {
    return torch::tensor(v, torch::kFloat).reshape(shape).to(x.device());
  };
  return {on_device(p.scale), on_device(inv), on_device(zp), static_cast<double>(p.qmin),
          static_cast<double>(p.qmax)};
}

/// u = round(x * inv_scale) + zero_point, the rounded unclamped value (float32, integer-valued).
torch::Tensor unclamped(const torch::Tensor& x, const ParamTensors& t, Rounding r) {
  return round_tensor(x * t.inv_scale, r) + t.zero_point;
}

/// Forward value and STE mask, no autograd.
std::pair<torch::Tensor, torch::Tensor> forward_and_mask(const torch::Tensor& x, const ParamTensors& t, Rounding r) {
  torch::NoGradGuard no_grad;
  const torch::Tensor u = unclamped(x.detach(), t, r);
  torch::Tensor mask = u.ge(t.qmin).logical_and(u.le(t.qmax));
  torch::Tensor out = (u.clamp(t.qmin, t.qmax) - t.zero_point) * t.scale;  // clamp last, then dequantize
  return {out, mask};
}

/// out = fake-quant(x); d out / d x = mask (straight-through estimator).
struct FakeQuantizeFunction : public torch::autograd::Function<FakeQuantizeFunction> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const ParamTensors& params, Rounding r) {
    auto [out, mask] = forward_and_mask(x, params, r);
    ctx->save_for_backward({mask});
    return out;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    const torch::Tensor mask = ctx->get_saved_variables()[0];
    // One gradient per forward argument; the parameters and rounding get none.
    return {grad_out[0] * mask, torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor round_tensor(const torch::Tensor& y, Rounding r) {
  switch (r) {
    case Rounding::half_even:
      return torch::round(y);  // nearbyint / ties-to-even on CPU (SIMD and scalar) and CUDA
    case Rounding::half_away: {
      const torch::Tensor t = torch::trunc(y);
      const torch::Tensor frac = y - t;  // exact: the fractional part of a float is a float
      return t + torch::sign(y) * frac.abs().ge(0.5).to(y.scalar_type());
    }
  }
  fail("round_tensor: unknown rounding ", static_cast<int>(r));
}

torch::Tensor fake_quantize(const torch::Tensor& x, const QuantParams& p, Rounding r) {
  const ParamTensors t = param_tensors(x, p);
  if (!x.requires_grad() || !torch::GradMode::is_enabled()) return forward_and_mask(x, t, r).first;
  return FakeQuantizeFunction::apply(x, t, r);
}

torch::Tensor fake_quantize_mask(const torch::Tensor& x, const QuantParams& p, Rounding r) {
  return forward_and_mask(x, param_tensors(x, p), r).second;
}

}  // namespace csipose
