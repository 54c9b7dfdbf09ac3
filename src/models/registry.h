#pragma once
// One factory for every model: a `type:` key selects the family, an optional `preset:` names the
// starting point, and any field of that family may follow. Presets live in configs/models/*.yaml
// (written out field by field) and in code (model_preset) so tests need no files.
#include <memory>
#include <string>
#include <vector>

#include "models/pose_model.h"
#include "models/pose_transformer.h"
#include "models/wiflow.h"

namespace csipose {
class ConfigNode;

enum class ModelType { wiflow, pose_transformer };
const char* to_string(ModelType t);

struct ModelConfig {
  ModelType type = ModelType::wiflow;
  std::string preset;                 ///< the preset it started from ("" if none)
  WiFlowConfig wiflow;                ///< used when type == wiflow
  PoseTransformerConfig pose;         ///< used when type == pose_transformer

  /// Reads `type`, optional `preset`, then the family's fields. Does not call finish().
  static ModelConfig from_yaml(const ConfigNode& node);
  /// `type:`, `preset:` (if any) and every field, readable by from_yaml.
  std::string to_yaml() const;
  /// The dataset layout the model consumes: "wiflow" for WiFlow, "mmfi" for pose transformers.
  std::string dataset() const;
};

/// wiflow_full, wiflow_half, wiflow_quarter, wiflow_tiny, pose_nano, ..., pose_flagship.
const std::vector<std::string>& model_preset_names();
/// Throws listing the names for an unknown preset.
ModelConfig model_preset(const std::string& name);
/// A preset name or a YAML file (with optional `--set` overrides); the file's unknown keys are errors.
ModelConfig resolve_model_config(const std::string& preset_or_file, const std::vector<std::string>& overrides = {});

/// Builds the network (random init from the current torch seed).
std::shared_ptr<PoseModelImpl> make_model(const ModelConfig& config);

}  // namespace csipose
