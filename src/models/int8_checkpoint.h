#pragma once
// The int8 model file (.csq): what `csipose convert` (and `ptq --out`, and the end of a QAT run)
// writes and what `eval` / `predict` run. One safetensors file:
//
//   tensors   "model.<name>"            the float state of everything that stays float (LayerNorm,
//                                       unfolded BatchNorm, float-island layers, embeddings)
//             "int8.<op>.weight_q"      I8, the packed weight of an int8 op (the float layout,
//                                       quant/int8_ops.h PackedWeight)
//             "int8.<op>.weight_packed" U8, instead of weight_q when the weights have 2..7 bits:
//                                       the same values packed (quant/bitpack.h; format version 2)
//             "int8.<op>.bias_q"        I32, its bias at scale s_in * s_w[c]
//             "int8.<op>.weight"/".bias" F32, the weight / bias of an op that runs as a float op
//                                       between quantization points (weight-only or fp32 weights)
//   metadata  magic "csipose-int8", format_version, model_config (YAML), policy (YAML, with the
//             fold_bn setting), qparams (JSON: per op the input / output activation qparams and
//             the weight qparams), metric (the MetricSpec the model was evaluated under),
//             payload_sha256 (sha256 of the tensors serialized without metadata), and the caller's
//             provenance keys (source checkpoint, git sha, ...).
//
// The float weights of converted ops and the BatchNorms folded into them are NOT stored: the file
// holds the int8 weights only. A loaded model therefore has NaN in those float parameters (they
// are unused in int8 mode, and NaN makes any accidental use visible).
#include <map>
#include <memory>
#include <string>

#include "models/registry.h"
#include "quant/policy.h"

namespace csipose {

constexpr const char* kInt8Magic = "csipose-int8";
/// The newest format this code reads (2: packed sub-byte weights; written only when present).
constexpr int kInt8Version = 2;

struct Int8Checkpoint {
  ModelConfig config;
  QuantPolicy policy;
  std::shared_ptr<PoseModelImpl> model;         ///< in eval mode, on CPU, every hook in int8 mode
  std::map<std::string, std::string> metadata;  ///< the file's metadata ("format" = "int8")
};

/// Writes a converted model (every hook in int8 mode: PreparedModel::convert) atomically.
/// `metadata` must hold "metric" (MetricSpec::describe of the evaluation data); other keys are
/// stored as given. Throws when a hook is not converted.
void save_int8_checkpoint(const std::string& path, const ModelConfig& config, const QuantPolicy& policy,
                          PoseModelImpl& model, const std::map<std::string, std::string>& metadata);
/// Reads, verifies the magic, version and payload sha256, rebuilds the model, prepares it with the
/// stored policy and installs every op's int8 state. One-line errors name the file.
Int8Checkpoint load_int8_checkpoint(const std::string& path);
/// True when `path` is a safetensors file with the int8 magic (cheap: reads the header only).
bool is_int8_checkpoint(const std::string& path);

/// Bytes of the weights as stored: int8 weights + int32 biases + float tensors.
struct Int8Size {
  int64_t int8_weight_bytes = 0;  ///< packed int8 weights and int32 biases
  int64_t float_bytes = 0;        ///< tensors kept as float
  int64_t file_bytes = 0;         ///< the .csq file
};
Int8Size int8_checkpoint_size(const std::string& path);

}  // namespace csipose
