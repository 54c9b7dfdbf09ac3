#pragma once
// Folding an eval-mode BatchNorm into the convolution or linear layer before it, so that the
// converted model runs one int8 op where the float model ran two. With
//     a[c] = gamma[c] / sqrt(running_var[c] + eps)
// the folded layer is
//     w'[c, ...] = w[c, ...] * a[c]                      (per output channel, axis 0)
//     b'[c]      = (b[c] - running_mean[c]) * a[c] + beta[c]   (b = 0 when the layer has no bias)
// so that w' * x + b' = gamma * (w * x + b - mean) / sqrt(var + eps) + beta: the BatchNorm of the
// layer's output in eval mode. The arithmetic is float64 and the results are rounded once to the
// weight's dtype; QAT with folded BN quantizes w' (not w), so the int8 weights see the BN scale.
#include <torch/torch.h>

namespace csipose {

struct FoldedConv {
  torch::Tensor weight;  ///< same shape, dtype and device as the layer's weight
  torch::Tensor bias;    ///< (out), always defined
};

/// Folds BatchNorm statistics into a weight (out, ...) of a Linear / Conv1d / Conv2d and its bias
/// (out) or an undefined tensor. gamma / beta may be undefined (BatchNorm with affine = false:
/// gamma 1, beta 0); running_mean and running_var are required (out). eps > 0. Throws
/// csipose::Error for shapes that do not fit or a negative running variance.
FoldedConv fold_bn(const torch::Tensor& w, const torch::Tensor& b, const torch::Tensor& gamma,
                   const torch::Tensor& beta, const torch::Tensor& running_mean, const torch::Tensor& running_var,
                   double eps);

/// The same with the statistics and eps of a BatchNorm module (which must track running stats).
FoldedConv fold_bn(const torch::Tensor& w, const torch::Tensor& b, const torch::nn::BatchNorm1dImpl& bn);
FoldedConv fold_bn(const torch::Tensor& w, const torch::Tensor& b, const torch::nn::BatchNorm2dImpl& bn);

}  // namespace csipose
