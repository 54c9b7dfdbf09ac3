#include "models/artifact_registry.h"

#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <sstream>

#include "common/atomic_file.h"
#include "common/config_node.h"
#include "common/json.h"

namespace csipose {
namespace {

std::string q(const std::string& s) { return json_quote(s); }  // a JSON string is a YAML double-quoted scalar

std::string number(double v) {
  std::ostringstream o;
  o.precision(17);
  o << v;
  return o.str();
}

bool is_hex_sha256(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

}  // namespace

const char* to_string(DeployMode m) {
  switch (m) {
    case DeployMode::fp32: return "fp32";
    case DeployMode::dynamic: return "dynamic";
    case DeployMode::static_int8: return "static";
    case DeployMode::qat: return "qat";
  }
  return "?";
}

RegistryEntry RegistryEntry::from_yaml(const ConfigNode& n) {
  RegistryEntry e;
  e.name = n.get<std::string>("name");
  if (e.name.empty()) n.error("name", "must not be empty");
  e.fp32 = n.get<std::string>("fp32");
  if (e.fp32.empty()) n.error("fp32", "must name the fp32 checkpoint");
  e.quant_mode = n.get_enum<DeployMode>("quant_mode", {{"fp32", DeployMode::fp32},
                                                       {"dynamic", DeployMode::dynamic},
                                                       {"static", DeployMode::static_int8},
                                                       {"qat", DeployMode::qat}});
  e.int8 = n.get<std::string>("int8", "");
  if (has_int8_file(e.quant_mode) && e.int8.empty())
    n.error("int8", std::string("required for quant_mode ") + to_string(e.quant_mode) + " (the .csq file)");
  if (!has_int8_file(e.quant_mode) && !e.int8.empty())
    n.error("int8", std::string("quant_mode ") + to_string(e.quant_mode) +
                        " ships no .csq (dynamic quantizes the fp32 checkpoint at run time); remove the key");
  e.calibration = n.get<std::string>("calibration", "");
  e.policy = n.get<std::string>("policy", "");
  if (!e.policy.empty() && e.quant_mode == DeployMode::fp32) n.error("policy", "quant_mode fp32 has no quantization policy");
  const ConfigNode b = n.child("budget");
  e.budget.max_pck20_drop = b.get_double("max_pck20_drop", e.budget.max_pck20_drop, 0.0, 100.0);
  if (b.has("max_latency_ms"))
    e.budget.max_latency_ms = b.get_double("max_latency_ms", 0.0, 1e-6, std::numeric_limits<double>::max());
  e.data = n.get<std::string>("data", "");
  e.split = n.get<std::string>("split", e.split);
  if (e.split != "train" && e.split != "val" && e.split != "test")
    n.error("split", "unknown value \"" + e.split + "\"; expected one of: train, val, test");
  e.device = n.get<std::string>("device", e.device);
  e.sha256 = n.get<std::string>("sha256", "");
  if (!e.sha256.empty() && !is_hex_sha256(e.sha256)) n.error("sha256", "expected 64 lower-case hex digits, got \"" + e.sha256 + "\"");
  e.fp32_sha256 = n.get<std::string>("fp32_sha256", "");
  if (!e.fp32_sha256.empty() && !is_hex_sha256(e.fp32_sha256))
    n.error("fp32_sha256", "expected 64 lower-case hex digits, got \"" + e.fp32_sha256 + "\"");
  e.git_sha = n.get<std::string>("git_sha", "");
  e.created = n.get<std::string>("created", "");
  return e;
}

std::string RegistryEntry::to_yaml() const {
  std::ostringstream o;
  o << "  - name: " << q(name) << "\n    fp32: " << q(fp32) << "\n    quant_mode: " << to_string(quant_mode) << "\n";
  if (!int8.empty()) o << "    int8: " << q(int8) << "\n";
  if (!calibration.empty()) o << "    calibration: " << q(calibration) << "\n";
  if (!policy.empty()) o << "    policy: " << q(policy) << "\n";
  o << "    budget: {max_pck20_drop: " << number(budget.max_pck20_drop);
  if (budget.max_latency_ms) o << ", max_latency_ms: " << number(*budget.max_latency_ms);
  o << "}\n";
  if (!data.empty()) o << "    data: " << q(data) << "\n";
  o << "    split: " << split << "\n    device: " << q(device) << "\n";
  if (!sha256.empty()) o << "    sha256: " << sha256 << "\n";
  if (!fp32_sha256.empty()) o << "    fp32_sha256: " << fp32_sha256 << "\n";
  if (!git_sha.empty()) o << "    git_sha: " << q(git_sha) << "\n";
  if (!created.empty()) o << "    created: " << q(created) << "\n";
  return o.str();
}

ModelRegistry ModelRegistry::parse(const std::string& yaml, const std::string& source) {
  const ConfigNode root = ConfigNode::load_string(yaml, source);
  ModelRegistry r;
  std::map<std::string, std::string> seen;  // name -> key path of its first entry
  for (const ConfigNode& n : root.elements("entries")) {
    RegistryEntry e = RegistryEntry::from_yaml(n);
    if (auto it = seen.find(e.name); it != seen.end())
      n.error("name", "duplicate entry name \"" + e.name + "\" (first at " + it->second + ")");
    seen[e.name] = n.path_of("name");
    r.entries.push_back(std::move(e));
  }
  root.finish();
  return r;
}

ModelRegistry ModelRegistry::load(const std::string& path) {
  CSIPOSE_CHECK(std::filesystem::is_regular_file(path), "registry ", path, " does not exist (csipose export creates it)");
  return parse(read_text_file(path), path);
}

ModelRegistry ModelRegistry::load_or_empty(const std::string& path) {
  return std::filesystem::exists(path) ? load(path) : ModelRegistry{};
}

std::string ModelRegistry::to_yaml() const {
  std::string out = "# csipose model registry (docs/registry.md): `csipose gate` checks every entry against its budget\n";
  if (entries.empty()) return out + "entries: []\n";
  out += "entries:\n";
  for (size_t i = 0; i < entries.size(); ++i) out += (i ? "\n" : "") + entries[i].to_yaml();
  return out;
}

void ModelRegistry::save(const std::string& path) const { write_text_atomic(path, to_yaml()); }

const RegistryEntry* ModelRegistry::find(const std::string& name) const {
  for (const auto& e : entries)
    if (e.name == name) return &e;
  return nullptr;
}

void ModelRegistry::add(RegistryEntry entry, bool replace, const std::string& registry_path) {
  for (auto& e : entries) {
    if (e.name != entry.name) continue;
    CSIPOSE_CHECK(replace, "registry ", registry_path, ": an entry named \"", entry.name, "\" exists (", to_string(e.quant_mode),
                  ", ", e.artefact(), "); pass --replace to replace it or --name to add another");
    e = std::move(entry);
    return;
  }
  entries.push_back(std::move(entry));
}

std::vector<RegistryEntry> ModelRegistry::select(const std::vector<std::string>& only, const std::string& registry_path) const {
  if (only.empty()) return entries;
  std::vector<RegistryEntry> out;
  for (const auto& name : only) {
    if (!find(name)) {
      std::string names;
      for (const auto& e : entries) names += (names.empty() ? "" : ", ") + e.name;
      fail("registry ", registry_path, ": no entry named \"", name, "\"; entries: ", names.empty() ? "(none)" : names);
    }
  }
  for (const auto& e : entries)
    for (const auto& name : only)
      if (e.name == name) {
        out.push_back(e);
        break;
      }
  return out;
}

}  // namespace csipose
