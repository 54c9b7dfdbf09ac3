#pragma once
// The interface every pose network implements, so training, evaluation, quantization and export
// handle WiFlow and pose-transformer models alike.
#include <torch/nn/module.h>
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace csipose {

class PoseModelImpl : public torch::nn::Module {
 public:
  /// x: (N, *input_shape()) -> (N, num_keypoints(), 2)
  virtual torch::Tensor forward(const torch::Tensor& x) = 0;
  /// Per-sample input shape: {540, 20} (WiFlow) or {3, 114, 10} (MM-Fi).
  virtual std::vector<int64_t> input_shape() const = 0;
  virtual int64_t num_keypoints() const = 0;
  /// "wiflow" | "pose_transformer"
  virtual std::string family() const = 0;
  /// Multiply-accumulates of one forward pass for one sample (convolutions, linears, attention
  /// products; elementwise ops and normalization excluded).
  virtual int64_t macs_per_sample() const = 0;
  /// (conv, BatchNorm) module-name pairs where the BatchNorm directly follows the conv in forward
  /// (nothing but a time crop between them), so that quantization may fold it (quant/prepare.h).
  virtual std::vector<std::pair<std::string, std::string>> bn_fold_pairs() const { return {}; }
};

/// Number of trainable parameters (what the published counts refer to).
int64_t count_parameters(const torch::nn::Module& m);

}  // namespace csipose
