#include "models/registry.h"

#include <filesystem>
#include <sstream>

#include "common/check.h"
#include "common/config_node.h"

namespace csipose {

const char* to_string(ModelType t) { return t == ModelType::wiflow ? "wiflow" : "pose_transformer"; }

const std::vector<std::string>& model_preset_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n = {"wiflow_full", "wiflow_half", "wiflow_quarter", "wiflow_tiny"};
    for (const auto& p : pose_transformer_preset_names()) n.push_back(p);
    return n;
  }();
  return names;
}

ModelConfig model_preset(const std::string& name) {
  ModelConfig c;
  c.preset = name;
  if (name == "wiflow_full") c.wiflow = wiflow_full();
  else if (name == "wiflow_half") c.wiflow = wiflow_half();
  else if (name == "wiflow_quarter") c.wiflow = wiflow_quarter();
  else if (name == "wiflow_tiny") c.wiflow = wiflow_tiny();
  else {
    bool known = false;
    for (const auto& p : pose_transformer_preset_names()) known |= p == name;
    if (!known) {
      std::string all;
      for (const auto& n : model_preset_names()) all += (all.empty() ? "" : ", ") + n;
      fail("unknown model preset \"", name, "\"; expected one of: ", all);
    }
    c.type = ModelType::pose_transformer;
    c.pose = pose_transformer_preset(name);
  }
  return c;
}

ModelConfig ModelConfig::from_yaml(const ConfigNode& node) {
  ModelConfig c;
  c.type = node.get_enum<ModelType>("type", {{"wiflow", ModelType::wiflow}, {"pose_transformer", ModelType::pose_transformer}});
  if (node.has("preset")) {
    const std::string preset = node.get<std::string>("preset");
    ModelConfig base;
    try {
      base = model_preset(preset);
    } catch (const Error& e) {
      node.error("preset", e.what());
    }
    if (base.type != c.type)
      node.error("preset", "preset \"" + preset + "\" is a " + to_string(base.type) + " model, but type is " + to_string(c.type));
    c = base;
  }
  if (c.type == ModelType::wiflow) c.wiflow = WiFlowConfig::from_yaml(node, c.wiflow);
  else c.pose = PoseTransformerConfig::from_yaml(node, c.pose);
  return c;
}

std::string ModelConfig::to_yaml() const {
  std::ostringstream o;
  o << "type: " << to_string(type) << "\n";
  if (!preset.empty()) o << "preset: " << preset << "\n";
  o << (type == ModelType::wiflow ? wiflow.to_yaml() : pose.to_yaml());
  return o.str();
}

std::string ModelConfig::dataset() const { return type == ModelType::wiflow ? "wiflow" : "mmfi"; }

ModelConfig resolve_model_config(const std::string& preset_or_file, const std::vector<std::string>& overrides) {
  if (!std::filesystem::exists(preset_or_file)) {
    const bool looks_like_path = preset_or_file.find('/') != std::string::npos ||
                                 preset_or_file.find(".yaml") != std::string::npos;
    CSIPOSE_CHECK(!looks_like_path, "model config file ", preset_or_file, " does not exist");
    CSIPOSE_CHECK(overrides.empty(), "--set needs a model config file, not the preset name ", preset_or_file);
    return model_preset(preset_or_file);
  }
  const ConfigNode node = ConfigNode::load_file(preset_or_file, overrides);
  ModelConfig c = ModelConfig::from_yaml(node);
  node.finish();
  return c;
}

std::shared_ptr<PoseModelImpl> make_model(const ModelConfig& config) {
  if (config.type == ModelType::wiflow) return std::make_shared<WiFlowImpl>(config.wiflow);
  return std::make_shared<PoseTransformerImpl>(config.pose);
}

}  // namespace csipose
