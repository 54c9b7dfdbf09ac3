#pragma once
// Learned step sizes for QAT: LSQ (Esser et al., "Learned Step Size Quantization", ICLR 2020) for
// weights and activations, and LSQ+ (Bhalgat et al., CVPR-W 2020), which also learns the offset
// (zero point) of affine activations. PyTorch's counterpart is
// torch.ao.quantization._LearnableFakeQuantize; the estimator below is its
// torch._fake_quantize_learnable_per_{tensor,channel}_affine, which the tests cross-check.
//
// Forward: EXACTLY quant/fake_quant.h's contract with the current learned values, so a learned
// point converts bit-exactly (its QuantParams are the learned scale and the rounded zero point):
//     s = learned scale (kept >= kMinScale),   z = round_half_even(learned zero point) in [qmin, qmax]
//     u = round(x * (1/s)) + z                 (1/s in float32, as the contract's inv_scale)
//     out = (clamp(u, qmin, qmax) - z) * s
// Backward (LSQ's estimator), elementwise, then summed over the elements that share a parameter:
//     qmin <= u <= qmax:   dx = dout   ds = dout * (out - x) / s * g   dz = 0
//     u < qmin:            dx = 0      ds = dout * (qmin - z) * g      dz = -dout * s * g
//     u > qmax:            dx = 0      ds = dout * (qmax - z) * g      dz = -dout * s * g
// g is LSQ's gradient scale 1 / sqrt(N * Qp): N the number of elements sharing the parameter (per
// sample for activations: numel / batch; per output channel for per-channel weights), Qp =
// max(-qmin, qmax) (128 for int8, 8 for int4), or 1 with `grad_scale: false`.
//
// Initialization (once, before the first step): `mse` searches the clipping range that minimizes
// the squared fake-quantization error, `minmax` takes the observed range (what the observers
// would give). Weights: per channel, amax_c * a for a in {0.20, 0.21, .., 1.00}. Activations
// (on the first batch they see): the observed [min, max] (widened to include 0) scaled by the same
// grid, through qparams_from_range, so the zero point is the contract's.
#include <torch/types.h>

#include <string>

#include "quant/learned_scales.h"
#include "quant/quant_spec.h"

namespace csipose {

/// LSQ fake quantization (forward and backward above). `scale`: float32 (1) for per-tensor, or
/// (C) with C = x.size(axis) for per-channel (axis >= 0). `zero_point`: float32 of the scale's
/// shape (integer-valued or not: it is rounded), or undefined for zero points 0. Differentiable
/// w.r.t. x, scale and zero_point. Throws csipose::Error for shapes that do not fit.
torch::Tensor lsq_fake_quantize(const torch::Tensor& x, const torch::Tensor& scale, const torch::Tensor& zero_point,
                                int64_t qmin, int64_t qmax, int64_t axis, double grad_factor,
                                Rounding r = Rounding::half_even);

/// LSQ's gradient scale for `elements` values sharing one parameter of a [qmin, qmax] range.
double lsq_grad_factor(int64_t elements, int64_t qmin, int64_t qmax);

/// The QuantParams a learned (scale, zero point) pair stands for (scale clamped to kMinScale, zero
/// point rounded half-even and clamped); `axis` -1 for per-tensor.
QuantParams learned_qparams(const torch::Tensor& scale, const torch::Tensor& zero_point, int64_t qmin, int64_t qmax,
                            int64_t axis);

/// Initial weight scales (per channel along spec.axis, or one), float32 (C) on w's device.
torch::Tensor init_weight_scales(const torch::Tensor& w, const QuantSpec& spec, LsqInit init);
/// Initial activation qparams from one batch (per-tensor).
QuantParams init_activation_qparams(const torch::Tensor& x, const QuantSpec& spec, LsqInit init);

}  // namespace csipose
