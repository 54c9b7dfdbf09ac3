#pragma once
// Optimizers over named parameters, written out so that their state is plain named tensors (it goes
// into checkpoints under "optim.<param>.<slot>") and so the update is PyTorch's to the operation:
//   AdamW (torch.optim.AdamW, foreach=False, amsgrad=False):
//     p *= 1 - lr*wd;  m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g*g
//     p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
//   SGD with momentum (torch.optim.SGD, dampening 0, nesterov off):
//     g += wd*p;  buf = b1*buf + g (buf = g at t=1);  p -= lr*buf
// The per-step learning rate is passed in by the caller (the schedule owns it).
#include <torch/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "train/train_config.h"

namespace torch::nn {
class Module;
}

namespace csipose {

struct NamedParam {
  std::string name;
  torch::Tensor param;
  bool decay = true;  ///< weight decay applies
  double lr_scale = 1.0;  ///< this parameter's learning rate is lr * lr_scale (learned step sizes)
};

/// The trainable parameters of a module in registration order. With decay_norm_and_bias false,
/// 1-D parameters (biases, BatchNorm/LayerNorm weights) get no weight decay.
std::vector<NamedParam> optimizer_params(const torch::nn::Module& module, bool decay_norm_and_bias);

class Optimizer {
 public:
  Optimizer(OptimizerConfig config, std::vector<NamedParam> params);
  /// Sets every gradient to undefined (set_to_none).
  void zero_grad();
  /// One update with learning rate lr from the parameters' current .grad(); parameters without a
  /// gradient are skipped (as PyTorch does).
  void step(double lr);
  int64_t steps() const { return steps_; }
  const OptimizerConfig& config() const { return config_; }
  /// "optim.<param>.exp_avg" / ".exp_avg_sq" (AdamW) or ".momentum" (SGD); slots not yet created
  /// are absent.
  std::vector<std::pair<std::string, torch::Tensor>> state_tensors() const;
  /// Restores state_tensors() output; every slot must match a parameter's shape.
  void load_state(const std::map<std::string, torch::Tensor>& tensors, int64_t steps);

 private:
  OptimizerConfig config_;
  std::vector<NamedParam> params_;
  std::vector<torch::Tensor> m_, v_;  // per parameter; undefined until first used
  int64_t steps_ = 0;
};

/// Scales gradients so that their global L2 norm is at most max_norm (torch.nn.utils.clip_grad_norm_:
/// coef = min(max_norm / (norm + 1e-6), 1)). Returns the norm before clipping as a 0-d tensor on
/// the parameters' device, without a host synchronisation.
torch::Tensor clip_grad_norm(const std::vector<NamedParam>& params, double max_norm);

}  // namespace csipose
