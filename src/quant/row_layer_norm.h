#pragma once
// LayerNorm over the last dimension of short rows, with the residual add before it: the
// post-norm transformer's `norm(x + sublayer(x))` (the pose transformer, rows of d = 48..256).
//
// In a pose_micro forward at batch 256 ATen's add and layer_norm were two passes each over
// (N, T, d) and, in the int8 model, a third pass quantized the result for the next linear op.
// row_layer_norm does the add and the normalization of a row while it is in registers, and
// row_layer_norm_int8 also writes the next op's input codes from them.
#include <torch/types.h>

#include <utility>

#include "quant/quant_spec.h"

namespace csipose {

/// torch::layer_norm(x + residual, {d}, gamma, beta, eps) over the last dimension d (residual
/// undefined: none; gamma and beta (d) as LayerNorm's weight and bias).
///
/// Float32 CPU tensors of one shape (gamma / beta of shape (d)) for which no gradient is recorded
/// go through the row kernel: v = x + residual (float32, as ATen's add); mean = sum(v) / d and the
/// biased variance = sum((v - mean)^2) / d, each sum over 16 interleaved float32 partial sums
/// (element j into sum j mod 16) combined in a fixed tree; rstd = 1 / sqrt(var + eps);
/// y = (v - mean) * rstd * gamma + beta. The same float32 operations on every ISA (no FMA), so the
/// same bits on every machine; within float32 rounding of ATen's layer_norm (which sums in its own
/// order; tested against float64). A row holding a NaN comes out all NaN. Anything else
/// (autograd, CUDA, other dtypes) is computed with torch ops.
torch::Tensor row_layer_norm(const torch::Tensor& x, const torch::Tensor& residual, const torch::Tensor& gamma,
                             const torch::Tensor& beta, double eps);

/// row_layer_norm and, from the same rows in the same pass, quantize_tensor of it at `point`
/// (per-tensor; the next int8 op's input point, which then takes the codes as they are): {float
/// result, int8 codes}. Float32 CPU tensors only; a non-finite result is an error, as
/// quantize_tensor.
std::pair<torch::Tensor, torch::Tensor> row_layer_norm_int8(const torch::Tensor& x, const torch::Tensor& residual,
                                                            const torch::Tensor& gamma, const torch::Tensor& beta,
                                                            double eps, const QuantParams& point, Rounding r);

}  // namespace csipose
