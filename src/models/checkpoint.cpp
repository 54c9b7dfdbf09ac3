#include "models/checkpoint.h"

#include <filesystem>

#include "common/check.h"
#include "common/config_node.h"
#include "models/safetensors.h"

namespace csipose {
namespace {

std::map<std::string, torch::Tensor> strip_prefix(const std::map<std::string, torch::Tensor>& in, const std::string& prefix) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& kv : in)
    if (kv.first.rfind(prefix, 0) == 0) out.emplace(kv.first.substr(prefix.size()), kv.second);
  return out;
}

}  // namespace

void save_checkpoint(const std::string& path, const ModelConfig& config, const PoseModelImpl& model,
                     const std::map<std::string, std::string>& extra,
                     const std::vector<std::pair<std::string, torch::Tensor>>& extra_tensors) {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& kv : state_dict(model)) tensors.emplace_back("model." + kv.first, kv.second);
  for (const auto& kv : extra_tensors) {
    CSIPOSE_CHECK(kv.first.rfind("model.", 0) != 0, "checkpoint: extra tensor name ", kv.first, " collides with the model section");
    tensors.push_back(kv);
  }
  std::map<std::string, std::string> meta = extra;
  meta["magic"] = kCheckpointMagic;
  meta["format_version"] = std::to_string(kCheckpointVersion);
  meta["model_config"] = config.to_yaml();
  save_safetensors(path, tensors, meta);
}

Checkpoint load_checkpoint(const std::string& path) {
  CSIPOSE_CHECK(std::filesystem::is_regular_file(path), "checkpoint ", path, " does not exist");
  SafetensorsFile file = load_safetensors(path);
  auto magic = file.metadata.find("magic");
  CSIPOSE_CHECK(magic != file.metadata.end() && magic->second == kCheckpointMagic, path,
                ": not a csipose checkpoint (a plain weight file? use `csipose weights import`)");
  auto version = file.metadata.find("format_version");
  CSIPOSE_CHECK(version != file.metadata.end(), path, ": checkpoint has no format_version");
  const int v = std::atoi(version->second.c_str());
  CSIPOSE_CHECK(v >= 1 && v <= kCheckpointVersion, path, ": checkpoint format version ", version->second,
                " is not supported by this csipose (reads 1..", kCheckpointVersion, ")");
  auto cfg_text = file.metadata.find("model_config");
  CSIPOSE_CHECK(cfg_text != file.metadata.end(), path, ": checkpoint has no model_config");
  Checkpoint ck;
  const ConfigNode node = ConfigNode::load_string(cfg_text->second, path + " [model_config]");
  ck.config = ModelConfig::from_yaml(node);
  node.finish();
  ck.model = make_model(ck.config);
  try {
    load_state_dict(*ck.model, strip_prefix(file.tensors, "model."), /*strict=*/true);
  } catch (const Error& e) {
    fail(path, ": ", e.what());
  }
  ck.model->eval();
  for (auto& kv : file.tensors)
    if (kv.first.rfind("model.", 0) != 0) ck.extra.emplace(kv.first, kv.second);
  ck.metadata = std::move(file.metadata);
  return ck;
}

void export_weights(const std::string& path, const ModelConfig& config, const PoseModelImpl& model) {
  save_safetensors(path, state_dict(model), {{"format", "pt"}, {"csipose_model", config.to_yaml()}});
}

std::shared_ptr<PoseModelImpl> import_weights(const std::string& path, const ModelConfig& config) {
  CSIPOSE_CHECK(std::filesystem::is_regular_file(path), "weights file ", path, " does not exist");
  SafetensorsFile file = load_safetensors(path);
  auto model = make_model(config);
  try {
    load_state_dict(*model, file.tensors, /*strict=*/true);
  } catch (const Error& e) {
    fail(path, ": does not fit model ", config.preset.empty() ? to_string(config.type) : config.preset, ": ", e.what());
  }
  model->eval();
  return model;
}

}  // namespace csipose
