#pragma once
// QuantPolicy: which layers are quantized how, from YAML. An ordered list of rules, each a glob on
// the module name (as named by torch::nn::Module::named_modules, e.g. "tcn.2.conv1_group") that
// sets the weight and / or activation format of the layers it matches; the FIRST matching rule
// wins, and what it leaves unset (or every side of a layer no rule matches) takes the defaults.
//
//   fold_bn: true               # optional (default true): fold each BatchNorm into the conv
//                               # before it (the model's bn_fold_pairs; quant/qmodules.h)
//   defaults:                   # optional; these are the built-in defaults
//     weights:     {bits: 8, signed: true, symmetric: true, granularity: per_channel, axis: 0}
//     activations: {bits: 8, signed: true, symmetric: false, granularity: per_tensor}
//   observers:                  # optional; built-in: per_channel_minmax / moving_average
//     weights:     {type: per_channel_minmax}
//     activations: {type: moving_average, averaging_constant: 0.01}
//   rules:                      # optional, ordered
//     - match: "pose_head.*"    # fp32 island: neither weights nor activations quantized
//       weights: fp32
//       activations: fp32
//     - match: "tcn.*_group"
//       weights: {bits: 4}      # a spec's absent keys keep the default spec's values
//
// A side is either the string `fp32` or a QuantSpec mapping (quant_spec.h); in a rule, the mapping
// starts from the policy's default spec for that side (or the built-in one when that default is
// fp32). Every quantized format must be one the int8 ops run (quant/int8_ops.h): weights signed and
// symmetric (zero point 0), per-tensor or per-channel along axis 0, with granularity matching the
// weight observer (per_channel_minmax <=> per_channel); activations per-tensor with an integer range
// inside int8 [-128, 127], and an activation observer that is not per_channel_minmax.
//
// Globs: `*` matches any run of characters, dots included ("tcn.*" matches "tcn.0.conv1"), `?`
// exactly one character; every other character matches itself; the whole name must match.
#include <optional>
#include <string>
#include <vector>

#include "quant/observers.h"
#include "quant/quant_spec.h"

namespace csipose {
class ConfigNode;

/// True when the glob `pattern` matches all of `name` (see above).
bool glob_match(const std::string& pattern, const std::string& name);

/// The formats of one layer; std::nullopt means fp32 (not quantized).
struct LayerScheme {
  std::optional<QuantSpec> weights;
  std::optional<QuantSpec> activations;

  bool operator==(const LayerScheme& o) const { return weights == o.weights && activations == o.activations; }
  bool operator!=(const LayerScheme& o) const { return !(*this == o); }
};

/// One rule. A side the rule does not set (sets_* false) keeps the policy default.
struct QuantRule {
  std::string match;
  bool sets_weights = false;
  std::optional<QuantSpec> weights;  ///< when sets_weights: the spec, or std::nullopt for fp32
  bool sets_activations = false;
  std::optional<QuantSpec> activations;

  bool operator==(const QuantRule& o) const;
  bool operator!=(const QuantRule& o) const { return !(*this == o); }
};

struct QuantPolicy {
  /// Fold BatchNorms into the quantized conv before them (prepare's fold pairs).
  bool fold_bn = true;
  /// Built-in: QuantSpec::weight_default() and QuantSpec::activation_default().
  LayerScheme defaults{QuantSpec::weight_default(), QuantSpec::activation_default()};
  /// Built-in: per_channel_minmax.
  ObserverConfig weight_observer = default_weight_observer();
  /// Built-in: moving_average with constant 0.01 (PyTorch's QAT activation observer).
  ObserverConfig activation_observer = default_activation_observer();
  std::vector<QuantRule> rules;

  static ObserverConfig default_weight_observer();
  static ObserverConfig default_activation_observer();

  /// The formats of the layer called `name`: the first matching rule's sides, the defaults for the rest.
  LayerScheme resolve(const std::string& name) const;
  /// Index of the first rule matching `name`, or -1.
  int64_t first_match(const std::string& name) const;

  /// Reads `defaults`, `observers` and `rules` (all optional) and validates; errors name the source,
  /// line and key path. Does NOT call node.finish(): the caller owns the node.
  static QuantPolicy from_yaml(const ConfigNode& node);
  /// Loads a policy file (with "a.b=value" overrides) and rejects unknown keys (finish()).
  static QuantPolicy load_file(const std::string& path, const std::vector<std::string>& overrides = {});
  /// YAML readable by from_yaml, every spec written in full.
  std::string to_yaml() const;
  /// Throws csipose::Error naming the rule and side of the first format the int8 ops cannot run.
  void validate() const;

  bool operator==(const QuantPolicy& o) const;
  bool operator!=(const QuantPolicy& o) const { return !(*this == o); }
};

}  // namespace csipose
