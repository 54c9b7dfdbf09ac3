#pragma once
// The model registry (models/registry.yaml): which model files are shipped, in which numerics, and
// the accuracy / latency budget each must meet against its fp32 source. `csipose gate` evaluates
// every entry (train/gate.h); `csipose export` adds entries (train/export.h). docs/registry.md.
//
//   entries:
//     - name: wiflow_half_int8
//       fp32: experiments/main/wiflow_half/checkpoints/best.safetensors
//       quant_mode: qat                 # fp32 | dynamic | static | qat
//       int8: models/wiflow_half/model.csq
//       budget: {max_pck20_drop: 0.5, max_latency_ms: 20}
//       sha256: 3f1c...                 # provenance, written by export
//
// Paths are relative to the working directory (as data.root and qat.init_from are). Not to be
// confused with models/registry.h, the factory of model architectures.
#include <optional>
#include <string>
#include <vector>

namespace csipose {
class ConfigNode;

/// How the shipped model computes: the fp32 checkpoint itself, the fp32 checkpoint quantized at
/// run time (dynamic PTQ, as `csipose ptq --mode dynamic`), or a converted int8 file (.csq) made
/// by static PTQ (`ptq --out`) or by QAT (`qat`, `convert`).
enum class DeployMode { fp32, dynamic, static_int8, qat };
const char* to_string(DeployMode m);
/// True for the modes whose shipped model is a .csq file (static, qat).
inline bool has_int8_file(DeployMode m) { return m == DeployMode::static_int8 || m == DeployMode::qat; }

struct RegistryBudget {
  /// Max test/clean PCK@20 drop fp32 -> shipped model, in percentage points (>= 0).
  double max_pck20_drop = 0.5;
  /// Max median batch-1 CPU forward time of the shipped model (ms); absent = latency not gated.
  std::optional<double> max_latency_ms;
};

struct RegistryEntry {
  std::string name;                    ///< unique in the registry
  std::string fp32;                    ///< the fp32 checkpoint (the reference, and the model of fp32 / dynamic)
  DeployMode quant_mode = DeployMode::fp32;
  std::string int8;                    ///< the .csq (required for static / qat, absent otherwise)
  std::string calibration;             ///< optional: calibration-set JSON (`ptq --calibration-out`)
  std::string policy;                  ///< optional: policy YAML (dynamic: used; static / qat: must equal the .csq's)
  RegistryBudget budget;
  std::string data;                    ///< optional dataset directory; "" = the one the fp32 checkpoint names
  std::string split = "test";          ///< train | val | test
  std::string device = "cpu";          ///< evaluation device (latency is always CPU)
  // Provenance (written by `csipose export`; verified by `csipose gate` when present):
  std::string sha256;                  ///< of the shipped file: int8 for static / qat, fp32 otherwise
  std::string fp32_sha256;             ///< of the fp32 checkpoint
  std::string git_sha;                 ///< the code that made the artefact
  std::string created;                 ///< UTC time of the export

  /// The file the entry ships: `int8` for static / qat, `fp32` otherwise.
  const std::string& artefact() const { return has_int8_file(quant_mode) ? int8 : fp32; }
  /// Reads one entry and checks it (required keys, mode-dependent int8, budget >= 0, split name).
  static RegistryEntry from_yaml(const ConfigNode& node);
  /// A list item ("- name: ...") readable by from_yaml; optional fields only when set.
  std::string to_yaml() const;
};

struct ModelRegistry {
  std::vector<RegistryEntry> entries;

  /// Loads a registry file; unknown keys and duplicate names are errors naming file:line and key.
  static ModelRegistry load(const std::string& path);
  /// load() when the file exists, else an empty registry (export creates the file).
  static ModelRegistry load_or_empty(const std::string& path);
  static ModelRegistry parse(const std::string& yaml, const std::string& source);
  std::string to_yaml() const;
  /// Writes atomically (temp file + rename).
  void save(const std::string& path) const;

  /// The entry named `name`, or null.
  const RegistryEntry* find(const std::string& name) const;
  /// Adds an entry; an existing name is replaced only when `replace` is true (otherwise an error
  /// naming the registry and the flag). Other entries keep their order; a new one is appended.
  void add(RegistryEntry entry, bool replace, const std::string& registry_path);
  /// The entries named in `only` (all when empty), in registry order; unknown names are an error.
  std::vector<RegistryEntry> select(const std::vector<std::string>& only, const std::string& registry_path) const;
};

}  // namespace csipose
