#pragma once
// csipose checkpoints: one safetensors file whose tensors are the model's state dict under
// "model." (later sections: optimizer, EMA, ... under their own prefixes) and whose metadata holds
// the magic, the format version and the resolved model config. Weight exports are plain
// safetensors with PyTorch names (no prefix), which `safetensors.torch.load_file` reads directly.
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "models/registry.h"

namespace csipose {

constexpr const char* kCheckpointMagic = "csipose-checkpoint";
constexpr int kCheckpointVersion = 1;

struct Checkpoint {
  ModelConfig config;
  std::shared_ptr<PoseModelImpl> model;        ///< in eval mode, on CPU
  std::map<std::string, std::string> metadata; ///< everything in the file's metadata
  /// Tensors outside "model." (training state: "optim.", "ema.", ...), names as stored.
  std::map<std::string, torch::Tensor> extra;
};

/// Writes atomically. `extra` metadata is stored beside the csipose keys.
void save_checkpoint(const std::string& path, const ModelConfig& config, const PoseModelImpl& model,
                     const std::map<std::string, std::string>& extra = {},
                     const std::vector<std::pair<std::string, torch::Tensor>>& extra_tensors = {});
/// Reads and validates (magic, version, config, strict state dict). Clear one-line errors for a
/// missing file, a corrupt file, a plain weight file, a newer format version, a shape mismatch.
Checkpoint load_checkpoint(const std::string& path);

/// Plain PyTorch-named weights: {"format": "pt", "csipose_model": <yaml>} metadata.
void export_weights(const std::string& path, const ModelConfig& config, const PoseModelImpl& model);
/// Loads plain weights into a fresh model of `config` (strict: every name and shape must match).
std::shared_ptr<PoseModelImpl> import_weights(const std::string& path, const ModelConfig& config);

}  // namespace csipose
