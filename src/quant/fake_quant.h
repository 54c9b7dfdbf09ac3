#pragma once
// Fake quantization for QAT: x -> dequantize(quantize(x)) with plain torch ops (CPU and CUDA, no
// custom kernels), bit-identical to the scalar reference (quant/reference.h) and to PyTorch's
// torch.fake_quantize_per_tensor_affine / per_channel_affine for round half-even.
//
// Forward, elementwise with the element's channel parameters (float32 throughout):
//   u   = round(x * inv_scale) + zero_point      inv_scale = 1.0f / scale on the host
//   out = (clamp(u, qmin, qmax) - zero_point) * scale
// Backward, the straight-through estimator in PyTorch's convention:
//   dx  = dout * (qmin <= u <= qmax)
// i.e. the mask is taken on the rounded, unclamped value u. At the ends of the range this means a
// value that rounds onto qmax (x up to (qmax - zp + 0.5) * scale, a tie included only if it
// rounds down) still gets gradient 1, and one that rounds past it gets 0. No gradient flows to
// the scale or zero point (they are not learned here).
#include <torch/types.h>

#include "quant/quant_spec.h"

namespace csipose {

/// Fake-quantizes a float32 tensor on any device with per-tensor params, or per-channel params
/// along p.axis (p.size() must equal x.size(p.axis)). Differentiable w.r.t. x (STE above).
/// Throws csipose::Error for other dtypes, or params that do not fit x.
torch::Tensor fake_quantize(const torch::Tensor& x, const QuantParams& p, Rounding r = Rounding::half_even);

/// The STE mask (bool, same shape and device as x): true where the gradient passes.
torch::Tensor fake_quantize_mask(const torch::Tensor& x, const QuantParams& p, Rounding r = Rounding::half_even);

/// round() of a float tensor with the given tie rule, with torch ops: half_even is torch::round;
/// half_away is trunc(y) + sign(y) * (|y - trunc(y)| >= 0.5), exact for every float (unlike
/// floor(|y| + 0.5), whose addition rounds for y = 0.49999997 and for odd y >= 2^23).
torch::Tensor round_tensor(const torch::Tensor& y, Rounding r);

}  // namespace csipose
