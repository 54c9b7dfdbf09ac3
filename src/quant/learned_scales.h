#pragma once
// The `qat.learned_scales` config of LSQ / LSQ+ (quant/lsq.h has the estimator); kept apart so
// config headers do not pull in LibTorch.
#include <string>

namespace csipose {
class ConfigNode;

enum class LearnedActivations { none, lsq, lsq_plus };
enum class LsqInit { mse, minmax };
const char* to_string(LearnedActivations a);
const char* to_string(LsqInit i);

/// The `qat.learned_scales` section:
///   learned_scales:
///     weights: true            # LSQ step size per weight channel (per tensor for per-tensor specs)
///     activations: lsq_plus    # none | lsq (scale learned, zero point fixed at init) | lsq_plus
///     init: mse                # mse | minmax
///     grad_scale: true         # LSQ's 1/sqrt(N*Qp) gradient scale
///     lr_scale: 0.01           # the learned tensors' learning rate, relative to train.optimizer.lr
/// With learned scales, a learned point's qparams come from its parameters, not from its observer:
/// qat.observer_update_epochs then only affects the points that are not learned.
struct LearnedScalesConfig {
  bool weights = false;
  LearnedActivations activations = LearnedActivations::none;
  LsqInit init = LsqInit::mse;
  bool grad_scale = true;
  /// With AdamW an update moves a parameter by about lr whatever its gradient's size, and step
  /// sizes are 1e-3..1e-1: at the weights' lr a scale would change by several percent per step.
  double lr_scale = 0.01;

  bool enabled() const { return weights || activations != LearnedActivations::none; }
  /// Reads the keys above (absent keys keep the defaults). Does NOT call node.finish().
  static LearnedScalesConfig from_yaml(const ConfigNode& node);
  std::string to_yaml() const;
  bool operator==(const LearnedScalesConfig& o) const;
};

}  // namespace csipose
