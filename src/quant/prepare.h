#pragma once
// prepare(model, policy): attaches a QuantHook to every quantizable op (QConv1d, QConv2d, QLinear,
// QMatmul, the pose transformer's in-projection) that the policy quantizes, named by the module's
// path ("tcn.network.0.conv1_group"). Ops the policy leaves fully fp32 get no hook. The model's
// parameters, buffers and fp32 forward are untouched; unprepare() removes the hooks again.
//
// Weight points take their qparams from the current weights' min / max (per channel along axis 0
// by default: the policy's per_channel_minmax weight observer) on every forward, so the qparams of
// the last QAT step are exactly the ones convert packs. Activation points use the policy's
// activation observer (moving average by default).
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/json.h"
#include "quant/policy.h"
#include "quant/qmodules.h"

namespace torch::nn {
class Module;
}

namespace csipose {

struct PreparedModel {
  /// (module name, hook) in named_modules order.
  std::vector<std::pair<std::string, std::shared_ptr<QuantHook>>> hooks;
  void set_mode(QuantMode m);
  void freeze_observers(bool frozen);
  void set_dynamic(bool dynamic);
  /// Freezes (or releases) every folded BatchNorm's statistics (QAT's BN-freeze epoch).
  void freeze_bn(bool frozen);
  /// Number of hooks with a folded BatchNorm.
  int64_t folded_bn() const;
  /// Converts every op to its int8 form (QuantHook::convert) from the weights in `model`, which
  /// must be the module this PreparedModel was made from; afterwards the hooks are in int8 mode.
  void convert(torch::nn::Module& model);
  /// Learned step sizes (quant/lsq.h) on every hook, weight scales initialized from the current
  /// effective weights of `model` (the module this PreparedModel was made from).
  void enable_learned(torch::nn::Module& model, const LearnedScalesConfig& config);
  /// Every hook's learned tensors, named "<op>.<tensor>" (e.g. "tcn.0.conv1.weight.scale").
  std::vector<std::pair<std::string, torch::Tensor>> learned_parameters() const;
  /// Every hook's observer state, by name (for QAT checkpoints and calibration files).
  Json state() const;
  /// Restores state(); the set of hooks must match exactly.
  void load_state(const Json& state);
  /// One line per op: name, kind, weight and activation formats.
  std::string describe() const;
};

/// `fold_pairs`: (conv, BatchNorm) module names (PoseModelImpl::bn_fold_pairs); with
/// policy.fold_bn, each BatchNorm (a FoldableBn) is folded into its conv when the conv has a hook
/// with quantized weights (see QuantHook, "BatchNorm folding"). Unknown names are an error.
PreparedModel prepare(torch::nn::Module& model, const QuantPolicy& policy,
                      const std::vector<std::pair<std::string, std::string>>& fold_pairs = {});
void unprepare(torch::nn::Module& model);
/// The hooks already attached to `model` (by an earlier prepare), in named_modules order.
PreparedModel prepared_hooks(torch::nn::Module& model);

}  // namespace csipose
