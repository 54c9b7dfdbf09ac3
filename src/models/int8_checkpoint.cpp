#include "models/int8_checkpoint.h"

#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "common/check.h"
#include "common/config_node.h"
#include "common/hash.h"
#include "common/json.h"
#include "models/pose_model.h"
#include "models/safetensors.h"
#include "quant/bitpack.h"
#include "quant/prepare.h"

namespace csipose {
namespace {

using Named = std::vector<std::pair<std::string, torch::Tensor>>;

/// The tensors of the file that a loaded model gets from its int8 state instead of the state dict:
/// the float weight / bias of every op with a weight and the buffers and parameters of the
/// BatchNorms folded into them, identified by storage.
std::set<const void*> replaced_storage(PoseModelImpl& model, const PreparedModel& prepared) {
  std::set<const void*> out;
  const auto modules = model.named_modules("", false);
  for (const auto& [name, hook] : prepared.hooks) {
    auto* q = dynamic_cast<Quantizable*>(modules[name].get());
    for (const torch::Tensor& t : {q->op_weight(), q->op_bias()})
      if (t.defined()) out.insert(t.data_ptr());
    if (FoldableBn* bn = hook->bn())
      for (const torch::Tensor& t : {bn->bn_weight(), bn->bn_bias(), bn->bn_running_mean(), bn->bn_running_var(),
                                     bn->bn_num_batches_tracked()})
        if (t.defined()) out.insert(t.data_ptr());
  }
  return out;
}

std::string payload_sha(const Named& tensors) { return sha256_hex(serialize_safetensors(tensors, {})); }

Json qparams_json(const QuantHook::Int8State& s) {
  Json j = Json::object(), in = Json::array();
  for (const auto& p : s.inputs) in.push(p.to_json());
  j.set("inputs", in);
  j.set("output", s.output ? s.output->to_json() : Json());
  if (s.packed) j.set("weight", s.packed->params.to_json()).set("weight_input", s.packed->input_params.to_json());
  return j;
}

}  // namespace

void save_int8_checkpoint(const std::string& path, const ModelConfig& config, const QuantPolicy& policy,
                          PoseModelImpl& model, const std::map<std::string, std::string>& metadata) {
  CSIPOSE_CHECK(metadata.count("metric"), "save_int8_checkpoint: the metadata must name the metric");
  const PreparedModel prepared = prepared_hooks(model);
  CSIPOSE_CHECK(!prepared.hooks.empty(), "save_int8_checkpoint: the model has no quantized op");
  const std::set<const void*> replaced = replaced_storage(model, prepared);
  Named tensors;
  for (const auto& [name, t] : state_dict(model))
    if (!replaced.count(t.data_ptr())) tensors.emplace_back("model." + name, t);
  Json qp = Json::object();
  bool sub_byte = false;
  for (const auto& [name, hook] : prepared.hooks) {
    const QuantHook::Int8State* s = hook->int8_state();
    CSIPOSE_CHECK(s != nullptr && hook->mode() == QuantMode::int8, "save_int8_checkpoint: ", name,
                  " is not converted (run PreparedModel::convert first)");
    const std::string pre = "int8." + name + ".";
    Json op_qp = qparams_json(*s);
    if (s->packed) {
      const int bits = hook->weight_spec()->bits;
      if (bits < 8) {  // sub-byte weights are stored packed (quant/bitpack.h)
        tensors.emplace_back(pre + "weight_packed", pack_bits(s->packed->q, bits));
        op_qp.set("weight_bits", bits).set("weight_shape", s->packed->q.sizes().vec());
        sub_byte = true;
      } else {
        tensors.emplace_back(pre + "weight_q", s->packed->q);
      }
      if (s->packed->bias_q.defined()) tensors.emplace_back(pre + "bias_q", s->packed->bias_q);
    } else {
      if (s->weight.defined()) tensors.emplace_back(pre + "weight", s->weight);
      if (s->bias.defined()) tensors.emplace_back(pre + "bias", s->bias);
    }
    qp.set(name, op_qp);
  }
  std::map<std::string, std::string> meta = metadata;
  meta["magic"] = kInt8Magic;
  meta["format"] = "int8";
  // Version 2 added packed sub-byte weights; files without them stay readable by version-1 readers.
  meta["format_version"] = sub_byte ? "2" : "1";
  meta["model_config"] = config.to_yaml();
  meta["policy"] = policy.to_yaml();
  meta["qparams"] = qp.dump();
  meta["payload_sha256"] = payload_sha(tensors);
  save_safetensors(path, tensors, meta);
}

bool is_int8_checkpoint(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  unsigned char len[8];
  if (!f.read(reinterpret_cast<char*>(len), 8)) return false;
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len[i];
  if (n == 0 || n > (100u << 20)) return false;
  std::string header(n, '\0');
  if (!f.read(header.data(), static_cast<std::streamsize>(n))) return false;
  return header.find(std::string("\"magic\":\"") + kInt8Magic + "\"") != std::string::npos;
}

Int8Checkpoint load_int8_checkpoint(const std::string& path) {
  CSIPOSE_CHECK(std::filesystem::is_regular_file(path), "int8 model ", path, " does not exist");
  SafetensorsFile file = load_safetensors(path);
  auto get = [&](const std::string& key) -> const std::string& {
    auto it = file.metadata.find(key);
    CSIPOSE_CHECK(it != file.metadata.end(), path, ": int8 model has no ", key);
    return it->second;
  };
  CSIPOSE_CHECK(file.metadata.count("magic") && file.metadata["magic"] == kInt8Magic, path,
                ": not a csipose int8 model (.csq)");
  const int v = std::atoi(get("format_version").c_str());
  CSIPOSE_CHECK(v >= 1 && v <= kInt8Version, path, ": int8 format version ", get("format_version"),
                " is not supported by this csipose (reads 1..", kInt8Version, ")");
  Named tensors(file.tensors.begin(), file.tensors.end());
  const std::string sha = payload_sha(tensors);
  CSIPOSE_CHECK(sha == get("payload_sha256"), path, ": payload sha256 ", sha, " does not match the recorded ",
                get("payload_sha256"), " (the file is corrupt or was modified)");

  Int8Checkpoint out;
  try {
    const ConfigNode node = ConfigNode::load_string(get("model_config"), path + " [model_config]");
    out.config = ModelConfig::from_yaml(node);
    node.finish();
    const ConfigNode pnode = ConfigNode::load_string(get("policy"), path + " [policy]");
    out.policy = QuantPolicy::from_yaml(pnode);
    pnode.finish();
  } catch (const Error& e) {
    fail(path, ": ", e.what());
  }
  out.model = make_model(out.config);
  PreparedModel prepared = prepare(*out.model, out.policy, out.model->bn_fold_pairs());
  const std::set<const void*> replaced = replaced_storage(*out.model, prepared);
  std::map<std::string, torch::Tensor> float_state;
  std::vector<std::string> missing;
  for (const auto& [name, t] : state_dict(*out.model)) {
    auto it = file.tensors.find("model." + name);
    if (replaced.count(t.data_ptr())) {
      CSIPOSE_CHECK(it == file.tensors.end(), path, ": ", name, " is stored as float but belongs to an int8 op");
      continue;  // unused in int8 mode: the op runs its packed int8 weight (dropped below)
    }
    if (it == file.tensors.end()) missing.push_back(name);
    else float_state.emplace(name, it->second);
  }
  CSIPOSE_CHECK(missing.empty(), path, ": int8 model lacks ", missing.size(), " float tensors, e.g. ", missing.front());
  {
    // The int8 ops' float tensors keep their shapes but become stride-0 views of one NaN: the
    // loaded model holds those weights as int8 only (the constructor's float storage is freed),
    // and any accidental read shows up as NaN.
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> held;
    for (const auto& p : out.model->parameters(/*recurse=*/true)) held.push_back(p);
    for (const auto& b : out.model->buffers(/*recurse=*/true)) held.push_back(b);
    for (torch::Tensor& t : held)
      if (t.is_floating_point() && replaced.count(t.data_ptr()))
        t.set_(torch::full({1}, std::numeric_limits<float>::quiet_NaN(), t.options()).expand(t.sizes()));
  }
  try {
    load_state_dict(*out.model, float_state, /*strict=*/false);
  } catch (const Error& e) {
    fail(path, ": ", e.what());
  }
  const Json qp = Json::parse(get("qparams"));
  CSIPOSE_CHECK(qp.is_object() && qp.size() == prepared.hooks.size(), path, ": qparams hold ", qp.size(),
                " ops, the policy quantizes ", prepared.hooks.size());
  size_t used = float_state.size();
  for (auto& [name, hook] : prepared.hooks) {
    CSIPOSE_CHECK(qp.contains(name), path, ": no qparams for ", name);
    const Json& j = qp.at(name);
    const std::string pre = "int8." + name + ".";
    auto tensor = [&](const std::string& key) -> torch::Tensor {
      auto it = file.tensors.find(pre + key);
      if (it == file.tensors.end()) return {};
      ++used;
      return it->second;
    };
    QuantHook::Int8State s;
    try {
      for (size_t i = 0; i < j.at("inputs").size(); ++i) s.inputs.push_back(QuantParams::from_json(j.at("inputs").at(i)));
      if (!j.at("output").is_null()) s.output = QuantParams::from_json(j.at("output"));
      if (j.contains("weight")) {
        PackedWeight pw;
        if (j.contains("weight_bits")) {
          const int bits = static_cast<int>(j.at("weight_bits").as_int());
          CSIPOSE_CHECK(hook->weight_spec() && hook->weight_spec()->bits == bits, "weights stored with ", bits,
                        " bits, the policy says ", hook->weight_spec() ? hook->weight_spec()->bits : 32);
          std::vector<int64_t> shape;
          for (size_t d = 0; d < j.at("weight_shape").size(); ++d) shape.push_back(j.at("weight_shape").at(d).as_int());
          const torch::Tensor bytes = tensor("weight_packed");
          CSIPOSE_CHECK(bytes.defined(), "missing packed weight_packed");
          pw.q = unpack_bits(bytes, bits, shape);
        } else {
          pw.q = tensor("weight_q");
        }
        CSIPOSE_CHECK(pw.q.defined() && pw.q.scalar_type() == torch::kInt8, "missing int8 weight_q");
        pw.bias_q = tensor("bias_q");
        CSIPOSE_CHECK(!pw.bias_q.defined() || pw.bias_q.scalar_type() == torch::kInt, "bias_q is not int32");
        pw.params = QuantParams::from_json(j.at("weight"));
        pw.input_params = QuantParams::from_json(j.at("weight_input"));
        pw = pw.with_row_sum();
        CSIPOSE_CHECK(pw.params.size() == 1 || pw.params.size() == pw.q.size(0), "weight qparams hold ",
                      pw.params.size(), " channels, the weight ", pw.q.size(0));
        s.packed = std::move(pw);
      } else {
        s.weight = tensor("weight");
        s.bias = tensor("bias");
      }
      hook->set_int8(std::move(s));
    } catch (const Error& e) {
      fail(path, ": op ", name, ": ", e.what());
    }
  }
  CSIPOSE_CHECK(used == file.tensors.size(), path, ": holds ", file.tensors.size() - used,
                " tensors that no op of this model uses");
  out.model->eval();
  out.metadata = std::move(file.metadata);
  return out;
}

Int8Size int8_checkpoint_size(const std::string& path) {
  const SafetensorsFile f = load_safetensors(path);
  Int8Size s;
  for (const auto& [name, t] : f.tensors) {
    const int64_t bytes = t.numel() * static_cast<int64_t>(t.element_size());
    if (name.rfind("int8.", 0) == 0 &&
        (t.scalar_type() == torch::kInt8 || t.scalar_type() == torch::kUInt8 || t.scalar_type() == torch::kInt))
      s.int8_weight_bytes += bytes;
    else
      s.float_bytes += bytes;
  }
  s.file_bytes = static_cast<int64_t>(std::filesystem::file_size(path));
  return s;
}

}  // namespace csipose
